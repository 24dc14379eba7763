"""Beam-aware negatives: they are the nodes beam search compares (against a hand-run beam over
fixed node scores), never the positive, placed in the sampler's negative columns; training with
them runs end to end and the option reaches the method's configuration."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.beam import start_level
from service.core.tree import Tree
from trainer.fit.beam_mining import BeamAwareSampler, draw_usable, holds_positive, mine_beam_negatives, user_items
from trainer.fit.sampler import BeamAwareConfig, LayerwiseSampler, default_negative_counts
from trainer.tree.build import random_tree


class StaticScore:
    """Every user scores node row r as table[r]: the beam is then the same for every user and
    can be computed by hand."""

    def __init__(self, table: np.ndarray, users: int) -> None:
        self.table, self.users = table, users

    def __call__(self, level: int, node_ids: np.ndarray) -> np.ndarray:
        return np.where(node_ids >= 0, self.table[np.maximum(node_ids, 0)], -np.inf)


def hand_beam_candidates(tree: Tree, table: np.ndarray, beam: int) -> dict[int, set[int]]:
    """Rows compared at each level by a plain layer-wise beam search over static scores."""
    level = start_level(tree, beam)
    positions = list(tree.nonempty_positions(level))
    out = {}
    while True:
        rows = {int(tree.node_ids(level, np.array([p]))[0]): p for p in positions}
        out[level] = set(rows)
        if level == tree.depth:
            return out
        kept = sorted(rows, key=lambda r: -table[r])[:beam]
        nonempty = tree.nonempty(level + 1)
        positions = [c for r in kept for c in range(rows[r] * tree.arity, rows[r] * tree.arity + tree.arity)
                     if nonempty[c]]
        level += 1


def test_mined_negatives_are_the_beams_candidates_and_never_the_positive() -> None:
    tree = random_tree(300, seed=4)
    table = np.random.default_rng(1).normal(size=tree.n_rows)
    beam = 6
    targets = np.random.default_rng(2).integers(0, 300, size=700)
    counts = {level: 5 for level in range(1, tree.depth + 1)}
    # Each sample's positives: its target and the next item id (a second item of its "user").
    def positives_for(index):
        owner = np.repeat(np.arange(len(index)), 2)
        return owner, np.stack([targets[index], (targets[index] + 1) % 300], axis=1).ravel()

    mined = mine_beam_negatives(lambda index: StaticScore(table, len(index)), tree, positives_for, len(targets),
                                counts, beam, np.random.default_rng(3), batch=128)
    expected = hand_beam_candidates(tree, table, beam)
    assert set(mined) == set(expected)  # levels above the search's start are not mined
    for level, rows in mined.items():
        assert rows.shape == (700, 5)
        for item in (targets, (targets + 1) % 300):
            positive = tree.node_ids(level, tree.ancestors(item, level))
            assert not (rows == positive[:, None]).any()
        assert set(np.unique(rows)) <= expected[level]
        # Uniform over the candidates: with 3,500 draws every candidate appears (it is some
        # samples' positive, never all samples').
        assert set(np.unique(rows)) == expected[level]


def test_draw_usable_uses_only_usable_candidates() -> None:
    candidates = np.array([[5, 7, -1, 9], [3, -1, -1, -1], [-1, -1, -1, -1]])
    usable = (candidates >= 0) & (candidates != np.array([7, 3, 1])[:, None])
    drawn = draw_usable(candidates, usable, 400, np.random.default_rng(0))
    assert set(np.unique(drawn[0])) == {5, 9}
    assert (drawn[1] == -1).all() and (drawn[2] == -1).all()
    # Roughly uniform between the two usable ones.
    assert 150 < (drawn[0] == 5).sum() < 250


def test_holds_positive_against_a_direct_check() -> None:
    tree = random_tree(64, seed=2)
    rng = np.random.default_rng(0)
    level = 4
    candidates = tree.node_ids(level, rng.integers(0, tree.level_size(level), size=(6, 9)))
    candidates[0, 0] = -1
    owner = rng.integers(0, 6, size=30)
    items = rng.integers(0, 64, size=30)
    got = holds_positive(tree, level, candidates, owner, items)
    for u in range(6):
        above = {int(tree.node_ids(level, tree.ancestors(np.array([i]), level))[0]) for i in items[owner == u]}
        assert got[u].tolist() == [int(c) in above and c >= 0 for c in candidates[u]]


def test_user_items_are_every_item_of_the_samples_user() -> None:
    from tests.trainer.tree.test_learning import planted_clusters

    _, _, samples = planted_clusters()
    positives_for = user_items(samples)
    index = np.array([0, 5, len(samples) - 1])
    owner, items = positives_for(index)
    for position, sample in enumerate(index):
        same_user = samples.first == samples.first[sample]
        expected = set(samples.items[samples.first[sample]:samples.rows[same_user].max() + 1].tolist())
        assert set(items[owner == position].tolist()) == expected
        assert samples.targets[sample] in expected


def test_sampler_puts_beam_rows_in_the_first_negative_columns() -> None:
    tree = random_tree(500, seed=0)
    base = LayerwiseSampler.create(tree, default_negative_counts(tree, 20))
    sampler = BeamAwareSampler.wrap(base, BeamAwareConfig(share=0.5, beam=8))
    counts = sampler.beam_counts()
    leaf = tree.depth
    marker = tree.node_ids(leaf, np.arange(counts[leaf]))  # any leaf rows, recognisable
    sampler.mined[leaf] = np.tile(marker, (10, 1))
    sampler.mined[leaf][3] = -1  # a sample without beam negatives keeps uniform ones
    targets = np.arange(10) + 100
    index = np.arange(10)
    got = sampler.sample(targets, np.random.default_rng(5), index=index)
    uniform = base.sample(targets, np.random.default_rng(5))
    span = sampler.level_slices()[leaf]
    beam_columns = slice(span.start + 1, span.start + 1 + counts[leaf])
    rows = np.r_[0:3, 4:10]
    np.testing.assert_array_equal(got[rows, beam_columns], np.tile(marker, (9, 1)))
    np.testing.assert_array_equal(got[3], uniform[3])
    rest = np.ones(got.shape[1], dtype=bool)
    rest[beam_columns] = False
    np.testing.assert_array_equal(got[:, rest], uniform[:, rest])  # positives and uniform columns
    assert sampler.label[span.start] == 1 and (sampler.label[beam_columns] == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("warmup", [0, 1])
def test_training_with_beam_aware_negatives_mines_each_epoch_after_the_warmup(warmup: int) -> None:
    from tests.trainer.tree.test_learning import planted_clusters
    from trainer.fit.epochs import fit_scorer, make_sampler
    from trainer.fit.step import TrainConfig
    from trainer.model.scorer import ScorerConfig, TreeScorer

    n_items, cluster, samples = planted_clusters()
    tree = random_tree(n_items, seed=0)
    sampler = make_sampler(tree, n_items, 20, BeamAwareConfig(share=0.5, beam=8, warmup_epochs=warmup))
    assert isinstance(sampler, BeamAwareSampler)
    model = TreeScorer(tree.n_rows, ScorerConfig(dim=8, hidden=(16,)))
    refreshed = []
    original = sampler.refresh

    def counting_refresh(*args, **kwargs):
        refreshed.append(1)
        original(*args, **kwargs)

    object.__setattr__(sampler, "refresh", counting_refresh)
    history = fit_scorer(model, samples, sampler, tree, False, TrainConfig(epochs=2, batch_size=256), seed=0,
                         validate=None, description="test")
    assert len(refreshed) == 2 - warmup and len(history.epochs) == 2
    assert all(np.isfinite(e.train_loss) for e in history.epochs)
    assert sampler.mined and all(len(rows) == len(samples) for rows in sampler.mined.values())


def test_beam_aware_option_reaches_the_configuration_and_round_trips() -> None:
    from trainer.deep_retrieval import DeepConfig
    from trainer.methods import deep_config

    config = deep_config("jtm", beam_aware=True, beam_aware_beam=16, beam_aware_warmup=1)
    assert config.train.beam_aware == BeamAwareConfig(share=0.5, beam=16, warmup_epochs=1)
    assert DeepConfig.from_json(config.to_json()) == config
    assert deep_config("jtm").train.beam_aware is None
    with pytest.raises(ValueError, match="share"):
        BeamAwareConfig(share=0.0)
    with pytest.raises(ValueError, match="warmup"):
        BeamAwareConfig(warmup_epochs=-1)


def test_min_node_items_limits_mining_to_coarse_levels() -> None:
    tree = random_tree(1024, seed=0)  # depth 10, full: level l holds 1024 / 2**l items per node
    base = LayerwiseSampler.create(tree, default_negative_counts(tree, 20))
    counts = BeamAwareSampler.wrap(base, BeamAwareConfig(share=0.5, beam=8, min_node_items=16)).beam_counts()
    assert [level for level, c in counts.items() if c > 0] == [level for level in range(1, 7) if counts[level]]
    assert all(counts[level] == 0 for level in range(7, 11))  # 8 items per node and fewer
    every = BeamAwareSampler.wrap(base, BeamAwareConfig(share=0.5, beam=8)).beam_counts()
    assert every[10] == 10 and every[6] == counts[6]


@pytest.mark.slow
def test_probe_benchmark_runs_and_writes_its_table(tmp_path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, "-m", "experiments.probe_beam_aware", "--items", "256", "--users", "400",
                             "--epochs", "1", "--m", "20", "--variants", "uniform,0.5:16", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| uniform |" in result.stdout and "| 0.5:16 |" in result.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [r["variant"] for r in runs] == ["uniform", "0.5:16"]
    assert all(len(r["valid_recall"]) == 1 and 0.0 <= r["valid_recall"][0] <= 1.0 for r in runs)


def test_false_negative_measure_gives_the_known_shares() -> None:
    """experiments.beam_false_negatives on answers known by construction: every user's truth is the
    whole catalogue (every node holds a future item: both shares 1), or one item that is nobody's
    feature, under a beam that compares every leaf (share 1 of the 253 non-feature leaves)."""
    from experiments.beam_false_negatives import measure
    from trainer.data.split import EvalSet
    from trainer.model.scorer import ScorerConfig, TreeScorer

    n_items, users = 256, 6
    tree = random_tree(n_items, seed=1)
    model = TreeScorer(tree.n_rows, ScorerConfig(dim=8, hidden=(16,))).eval()
    features = np.arange(users * 3, dtype=np.int64)  # user u's features: items 3u, 3u+1, 3u+2
    feature_offsets = np.arange(0, users * 3 + 1, 3, dtype=np.int64)
    popularity = np.linspace(100, 0, n_items)
    everything = EvalSet(np.arange(users), features, feature_offsets, np.tile(np.arange(n_items), users),
                         np.arange(0, users * n_items + 1, n_items), n_items)
    rows = measure(model, tree, everything, 16, popularity, np.random.default_rng(0))
    assert [r["level"] for r in rows] == list(range(start_level(tree, 16), tree.depth + 1))
    assert all(r["mined_holding_future_item"] == 1.0 and r["uniform_holding_future_item"] == 1.0 for r in rows)
    assert all(r["mined_candidates"] > 0 for r in rows)

    # A beam of 128 over 256 leaves compares every leaf: each user's mined leaves are the 253 items
    # that are not her features, and exactly one of them (her truth) holds a future item.
    lone = n_items - 1  # nobody's feature
    one = EvalSet(np.arange(users), features, feature_offsets, np.full(users, lone), np.arange(users + 1), n_items)
    leaf = measure(model, tree, one, 128, popularity, np.random.default_rng(0))[-1]
    assert leaf["level"] == tree.depth and leaf["mined_candidates"] == users * (n_items - 3)
    assert leaf["mined_holding_future_item"] == pytest.approx(1 / (n_items - 3))
    not_features = [np.setdiff1d(np.arange(n_items), features[3 * u:3 * u + 3]) for u in range(users)]
    assert leaf["mined_popularity_percentile"] == pytest.approx(np.mean([popularity[i].mean() for i in not_features]))
