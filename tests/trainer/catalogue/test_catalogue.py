"""Catalogue updates: add-items places new items into a learnt tree and grows the
scorer's table, retire-items keeps items out of every answer; both write artifacts that pass
the export's own verification and that the real service hot-reloads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.core.artifact import read_artifact
from service.core.index import SearchParams, TreeIndex
from service.core.registry import Registry
from service.core.tree import Tree
from service.main import create_app
from service.scorer import OnnxScorer
from tests.helpers import item_ids
from trainer.catalogue.placement import CoConsumption, FreeLeaves, place
from trainer.catalogue.update import add_items, retire_items
from trainer.cli import main as trainer_main
from trainer.publish import publish

NEW = 990_000  # ids of new items (the synthetic catalogue's ids are 5,000,000 + i)


def top_k(artifact: Path, histories: list[np.ndarray], k: int, beam: int = 200) -> np.ndarray:
    """The service's search (shared beam search, ONNX scorer, the catalogue's retired filter)."""
    return search(artifact, histories, k, beam).items


def search(artifact: Path, histories: list[np.ndarray], k: int, beam: int = 200):
    loaded = read_artifact(artifact)
    rows = np.full((len(histories), loaded.history_length), -1, dtype=np.int64)
    for i, h in enumerate(histories):
        rows[i, :len(h)] = h[:loaded.history_length]
    index = TreeIndex(loaded.tree, OnnxScorer(loaded.scorer_file), loaded.hierarchical)
    return index.search(rows, k, SearchParams(beam=beam, allowed=loaded.catalog.served_filter))


@pytest.fixture(scope="module")
def stand_ins(trained, tmp_path_factory) -> dict:
    """Three existing items each get a new stand-in: recent events are the training log with the
    item's events given to the stand-in. Its co-consumed items are then the original's."""
    root = tmp_path_factory.mktemp("catalogue")
    run, base = trained["tdm"]
    log = pd.read_parquet(run.parent / "log.parquet")
    popular = log["item_id"].value_counts().index
    originals = [int(popular[i]) for i in (5, 20, 50)]
    events = log.copy()
    events["item_id"] = events["item_id"].replace({y: NEW + i for i, y in enumerate(originals)})
    events[["user_id", "item_id", "timestamp"]].to_csv(root / "events.csv", index=False)
    pd.DataFrame({"item_id": [NEW + i for i in range(3)]}).to_csv(root / "new.csv", index=False)
    grown = root / "grown"
    add_items(base, root / "new.csv", grown, events=root / "events.csv")
    return {"base": base, "grown": grown, "log": log, "originals": originals, "root": root}


def test_new_item_is_retrieved_for_users_of_its_co_consumed_items(stand_ins) -> None:
    """Users who consumed what the new item is co-consumed with get it (k = 150 of 503: the tiny
    fixture model is barely personal, the original items rank 10-200 for their own users), and
    the beam search finds it wherever the brute-force scan ranks it inside the top k."""
    grown, log = stand_ins["grown"], stand_ins["log"]
    loaded = read_artifact(grown)
    manifest = json.loads((grown / "manifest.json").read_text())
    assert manifest["catalogue"]["placed_by"]["co_consumed"] == 3
    for i, original in enumerate(stand_ins["originals"]):
        users = log.loc[log["item_id"] == original, "user_id"].unique()[:20]
        histories = [loaded.catalog.items.lookup(
            log.loc[(log["user_id"] == u) & (log["item_id"] != original), "item_id"].to_numpy()[::-1])
            for u in users]
        new_index = int(loaded.catalog.items.lookup([NEW + i])[0])
        found = top_k(grown, histories, k=150)
        assert (found == new_index).any(axis=1).mean() >= 0.9, original
        rows = np.full((1, loaded.history_length), -1)
        rows[0, :min(len(histories[0]), loaded.history_length)] = histories[0][:loaded.history_length]
        index = TreeIndex(loaded.tree, OnnxScorer(loaded.scorer_file), loaded.hierarchical)
        exact = index.search(rows, 150).items[0]  # no beam: every item scored
        assert (new_index in exact) == (new_index in found[0])


def test_grown_artifact_verifies_like_an_export(stand_ins, tmp_path: Path) -> None:
    """The same checks as any export: publish (checksums, tree, catalog, scorer binding and
    probe) accepts it; its scorer equals the old one on every shared row, checked here against
    the old ONNX directly."""
    base, grown = stand_ins["base"], stand_ins["grown"]
    publish(grown, tmp_path / "registry")
    old, new = read_artifact(base), read_artifact(grown)
    manifest = new.manifest
    assert manifest["parity"]["grown_vs_base_max_abs"] <= 1e-5 and manifest["catalogue"]["added"] == 3
    assert new.tree.n_items == old.tree.n_items + 3
    assert np.array_equal(new.catalog.items.ids[:old.tree.n_items], old.catalog.items.ids)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, old.tree.n_rows, size=(8, 40))
    moved = np.where(rows < old.tree.n_items, rows, rows + 3)  # internal rows follow the three new items
    history = rng.integers(0, old.tree.n_items, size=(8, old.history_length))
    np.testing.assert_allclose(OnnxScorer(new.scorer_file).score(history, moved),
                               OnnxScorer(old.scorer_file).score(history, rows), atol=1e-6)


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_retired_items_are_never_served_across_hot_reload(trained, tmp_path: Path) -> None:
    """The service follows a registry: base, then retired (the items most recommended before),
    then new items added on top; retired items appear in no answer (history, exclude_seen,
    category filter, popularity fallback) from the moment the version serves, and stay out."""
    base = trained["jtm-h"][1]
    ids = item_ids(base)
    registry = Registry(tmp_path / "registry")
    registry.publish(base)
    rng = np.random.default_rng(0)
    histories = [ids[rng.choice(len(ids), 8, replace=False)].tolist() for _ in range(15)]
    with TestClient(create_app(Settings(registry=tmp_path / "registry", registry_poll_s=0.05))) as client:
        def answers(payloads) -> list[list]:
            return [[i["item_id"] for i in client.post("/v1/recommend", json=p).json()["items"]] for p in payloads]

        payloads = [{"history": h, "k": 100} for h in histories] + [{"k": 100}] + \
                   [{"history": h, "k": 100, "exclude_seen": True} for h in histories[:3]]
        counts = pd.Series([i for answer in answers(payloads) for i in answer]).value_counts()
        gone = counts.index[:20].tolist()  # what the base serves most
        pd.DataFrame({"item_id": gone}).to_csv(tmp_path / "gone.csv", index=False)
        retire_items(base, tmp_path / "gone.csv", tmp_path / "retired")
        version = registry.publish(tmp_path / "retired")
        assert wait_for(lambda: client.get("/readyz").json().get("version") == version)
        category = read_artifact(base).catalog.categories.ids[0].item()
        payloads += [{"history": h, "k": 100, "categories": [category]} for h in histories[:3]]
        for answer in answers(payloads):
            assert answer and not set(gone) & set(answer)
        serving = client.get("/v1/model").json()["serving"]
        assert serving["retired_items"] == 20 and serving["catalogue"]["operation"] == "retire-items"
        pd.DataFrame({"item_id": [NEW, NEW + 1]}).to_csv(tmp_path / "new.csv", index=False)
        add_items(tmp_path / "retired", tmp_path / "new.csv", tmp_path / "added")
        version = registry.publish(tmp_path / "added")
        assert wait_for(lambda: client.get("/readyz").json().get("version") == version)
        for answer in answers(payloads):
            assert answer and not set(gone) & set(answer)
        body = client.post("/v1/recommend", json={"history": gone[:5], "k": 10}).json()
        assert body["fallback"] is None and body["unknown_items"] == 0  # still known as history


def test_full_tree_is_split_once_and_answers_away_from_new_items_are_unchanged(tmp_path: Path) -> None:
    """A tree without free leaves (512 items, 2**9 leaves) is split one level: every item gets a
    free sibling, the old leaf level becomes internal nodes carrying their item's row. Old rows
    score exactly as before and internal nodes keep theirs, so every user's list with the new
    items taken out is a prefix of the old one, and a user whose search never reached a new
    item's parent (no old top-k item shares a parent with a new item) gets the same list."""
    from bench.synthetic_artifact import build

    base = tmp_path / "full"
    build(512, base, parity_users=4)
    pd.DataFrame({"item_id": [1, 2, 3], "category_id": [7, 7, 1000]}).to_csv(tmp_path / "new.csv", index=False)
    manifest = add_items(base, tmp_path / "new.csv", tmp_path / "grown")
    assert manifest["catalogue"]["grown_levels"] == 1 and manifest["tree"]["depth"] == 10
    assert manifest["catalogue"]["placed_by"] == {"co_consumed": 0, "category": 2, "popularity": 1}
    assert manifest["parity"]["grown_vs_base_max_abs"] == 0.0
    grown = read_artifact(tmp_path / "grown")
    assert grown.catalog.categories.ids.tolist()[-1] == 1000  # a new category is added
    rng = np.random.default_rng(0)
    histories = [rng.choice(512, 10, replace=False) for _ in range(100)]
    before, after = search(base, histories, 20, beam=20), search(tmp_path / "grown", histories, 20, beam=20)
    changed = set((grown.tree.item_leaf[512:] // 2).tolist())
    untouched = 0
    for old, old_scores, new, new_scores in zip(before.items, before.scores, after.items, after.scores, strict=True):
        kept = new < 512
        # Scores, not ids: the same scores in the same order (ids of exact ties may swap, as the
        # candidates are batched differently).
        np.testing.assert_allclose(new_scores[kept], old_scores[:kept.sum()], atol=1e-5)
        assert set(new[kept]) <= set(old)
        if not changed & set((grown.tree.item_leaf[old] // 2).tolist()):
            untouched += 1
            np.testing.assert_allclose(new_scores, old_scores, atol=1e-5)
            assert set(new) == set(old)
    assert untouched >= 10, untouched


def common_level(a: int, b: int, depth: int) -> int:
    """Deepest level at which binary-tree leaves a and b share an ancestor."""
    return max(level for level in range(depth + 1) if a >> (depth - level) == b >> (depth - level))


def test_placement_takes_the_leaf_sharing_the_lowest_ancestor_and_reuses_retired_leaves() -> None:
    """Against a brute-force reference: the chosen free leaf shares the deepest common ancestor
    with the anchor of all free leaves; a retired item's leaf next to the anchor is taken, and
    the retired item is parked on a free leaf."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        depth = int(rng.integers(2, 7))
        free = rng.random(2**depth) < 0.3
        free[rng.integers(2**depth)] = True
        slots = FreeLeaves(2, depth, free)
        anchor = int(rng.integers(2**depth))
        leaf = slots.nearest(anchor)
        assert free[leaf] and common_level(leaf, anchor, depth) == max(
            common_level(int(f), anchor, depth) for f in np.flatnonzero(free))
    # 6 items on 8 leaves: item 1 (leaf 1) retired; a new item co-consumed with item 0 (leaf 0).
    tree = Tree.from_leaves(np.array([0, 1, 2, 3, 4, 5]), arity=2, depth=3)
    retired = np.array([False, True, False, False, False, False])
    co = CoConsumption(offsets=np.array([0, 1]), items=np.array([0]), counts=np.array([3]))
    placement = place(tree, retired, np.zeros(6, np.int32), np.arange(6), np.array([-1]), co, local_levels=3)
    assert placement.item_leaf[6] == 1 and placement.parked == 1 and placement.item_leaf[1] in (6, 7)
    assert placement.grown == 0 and placement.sources[0].tolist() == [0]


@pytest.mark.parametrize("command, files, fragment", [
    ("add-items", {"items.xlsx": "item_id\n1\n"}, "unknown format '.xlsx'"),
    ("add-items", {"items.csv": "item_id\n990001\n990001\n"}, "appears 2 times"),
    ("add-items", {"items.csv": "item_id\n{known}\n"}, "already in the catalogue"),
    ("add-items", {"items.csv": "item_id\nabc\n"}, "is not an integer"),
    ("add-items", {"items.csv": "item_id\n990001\n", "events.weird": "a b c\n"}, "cannot detect the format"),
    ("add-items", {"items.csv": ""}, "the file is empty"),
    ("retire-items", {"items.csv": "item_id\n990001\n"}, "not in the catalogue"),
    ("retire-items", {"items.csv": "item_id\n{known}\n{known}\n"}, "appears 2 times"),
])
def test_bad_input_exits_2_with_one_line(trained, tmp_path: Path, capsys, command: str, files: dict,
                                         fragment: str) -> None:
    base = trained["tdm"][1]
    known = int(item_ids(base)[0])
    for name, text in files.items():
        (tmp_path / name).write_text(text.format(known=known))
    items = next(name for name in files if name.startswith("items"))
    argv = [command, "--artifact", str(base), "--items", str(tmp_path / items), "--out", str(tmp_path / "out")]
    if "events.weird" in files:
        argv += ["--events", str(tmp_path / "events.weird")]
    assert trainer_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err, err
    assert not (tmp_path / "out").exists()


def test_retiring_twice_or_everything_is_refused(trained, tmp_path: Path, capsys) -> None:
    base = trained["tdm"][1]
    ids = item_ids(base)
    pd.DataFrame({"item_id": ids[:2]}).to_csv(tmp_path / "two.csv", index=False)
    retire_items(base, tmp_path / "two.csv", tmp_path / "once")
    argv = ["retire-items", "--artifact", str(tmp_path / "once"), "--items", str(tmp_path / "two.csv"), "--out"]
    assert trainer_main([*argv, str(tmp_path / "twice")]) == 2
    assert "already retired" in capsys.readouterr().err
    pd.DataFrame({"item_id": ids[2:]}).to_csv(tmp_path / "rest.csv", index=False)
    assert trainer_main(["retire-items", "--artifact", str(tmp_path / "once"), "--items", str(tmp_path / "rest.csv"),
                         "--out", str(tmp_path / "all")]) == 2
    assert "nothing to serve" in capsys.readouterr().err


def test_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    """bench.bench_catalogue at a small size (no swap): table printed, JSON written, every new
    item placed, the scorer equal to the base's on shared rows."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "bench.bench_catalogue", "--items", "3000", "--new", "300",
                           "--no-swap", "--cache", str(tmp_path), "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 3,000 | 300 |" in done.stdout
    result = json.loads(out.read_text())
    assert sum(result["placed_by"].values()) == 300 and result["parity"]["grown_vs_base_max_abs"] == 0.0


@pytest.mark.slow
def test_grown_artifact_swaps_under_load_without_failures(stand_ins, tmp_path: Path) -> None:
    """A real service process under open-loop load from a separate process, the base and the
    grown artifact published alternately (bench.swap_under_load): zero failed requests."""
    from bench.swap_under_load import run

    result = run([stand_ins["base"], stand_ins["grown"]], rate=40, duration=12, swaps=4, window=2.0,
                 workdir=tmp_path)
    assert result["sent"] >= 450
    assert result["failed"] == 0, result["errors"]
    assert len(result["versions_seen"]) == 2


def test_new_item_signal_counts_what_the_recent_events_know() -> None:
    """bench.catalogue_eval's ceiling on a log whose answer is worked out by hand: after the cut,
    new item 10 has two recent events, 11 one, and 12 none before the test users' truth."""
    from bench.catalogue_eval import new_item_signal, temporal_split

    past = [(u, i, t) for t, (u, i) in enumerate([(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (2, 1), (0, 3), (1, 1),
                                                    (2, 2)])]
    # After the cut (the last 10 of 19 events), per user in time order: the first half are
    # features (recent events), the second half truth.
    recent = [(0, 10, 100), (0, 11, 101), (0, 10, 102), (0, 12, 103),    # user 0: truth (0, 10), (0, 12)
              (1, 10, 104), (1, 2, 105), (1, 11, 106), (1, 12, 107),     # user 1: truth (1, 11), (1, 12)
              (3, 10, 108), (3, 1, 109)]                                 # user 3: truth (3, 1)
    frame = pd.DataFrame(past + recent, columns=["user", "item", "timestamp"])
    split = temporal_split(frame, 0.5)  # cut after event 9 (int(9.5))
    assert sorted(split["new_items"]) == [10, 11, 12]
    signal = new_item_signal(split)
    # recent events (features): 10 x3 (users 0, 1, 3), 11 x1 (user 0), 2 x1; item 12 never
    assert signal["new_items_with_events"] == 2 and signal["new_items_with_one_event"] == 0.5
    assert signal["truth_new_pairs"] == 4 and signal["truth_new_with_event"] == 0.5  # (0,10), (1,11) of 4
    assert signal["users_with_new_items"] == 2 and signal["per_user_ceiling"] == 0.5


def test_reciprocal_rank_fusion_by_hand() -> None:
    """Scores 1/(60 + rank) summed over the rankings: b (ranks 2 and 1) beats a (1, absent) and
    c (3, 2); an item in one list only still counts."""
    from service.core.fusion import reciprocal_rank_fusion

    fused = reciprocal_rank_fusion([np.array(["a", "b", "c"]), np.array(["b", "c", "d"])], 3)
    # b: 1/62 + 1/61, c: 1/63 + 1/62, a: 1/61, d: 1/63
    assert fused.tolist() == ["b", "c", "a"]
    assert reciprocal_rank_fusion([np.array([1, 2]), np.array([], dtype=np.int64)], 5).tolist() == [1, 2]


def test_fresh_requests_rank_only_added_items_by_the_fused_ranking(stand_ins, tmp_path: Path) -> None:
    """`fresh: true` answers with the items added since training: by recent events alone
    without a history (fallback "popular"), else the model's ranking among them (the served
    search with an allow-list, computed here by the offline evaluator's own path) fused with
    those events by reciprocal rank. Retired fresh items stay out; an artifact with no added
    items refuses with 409 (the request is valid; the model has nothing to rank)."""
    from bench.catalogue_eval import recommend as offline_recommend
    from service.core.fusion import reciprocal_rank_fusion

    grown, log = stand_ins["grown"], stand_ins["log"]
    new_ids = [NEW + i for i in range(3)]
    events = pd.read_csv(stand_ins["root"] / "events.csv")
    counts = events["item_id"].value_counts()
    by_events = sorted(new_ids, key=lambda i: (-counts.get(i, 0), new_ids.index(i)))
    catalog = read_artifact(grown).catalog
    assert catalog.items.original(catalog.fresh) == by_events  # this update's items, most events first
    user = log[log["item_id"] == stand_ins["originals"][0]]["user_id"].iloc[0]
    history = log[log["user_id"] == user].sort_values("timestamp")["item_id"].tolist()[-20:]
    model_ranking = offline_recommend(grown, [np.asarray(history)], 1000, only=np.asarray(new_ids))[0]
    expected = reciprocal_rank_fusion([model_ranking, np.asarray(by_events)], 3).tolist()

    with TestClient(create_app(Settings(artifact=grown))) as client:
        assert client.get("/v1/model").json()["serving"]["fresh_items"] == 3
        body = client.post("/v1/recommend", json={"history": history, "k": 3, "fresh": True}).json()
        assert [i["item_id"] for i in body["items"]] == expected and body["fallback"] is None
        assert all(i["score"] is None for i in body["items"])
        cold = client.post("/v1/recommend", json={"k": 5, "fresh": True}).json()
        assert [i["item_id"] for i in cold["items"]] == by_events and cold["fallback"] == "popular"
        assert cold["fallback_reason"] == "no_history"
        seen = client.post("/v1/recommend", json={"history": history + [by_events[0]], "k": 3, "fresh": True,
                                                  "exclude_seen": True}).json()
        assert sorted(i["item_id"] for i in seen["items"]) == sorted(by_events[1:])

    pd.DataFrame({"item_id": [by_events[0]]}).to_csv(tmp_path / "gone.csv", index=False)
    retire_items(grown, tmp_path / "gone.csv", tmp_path / "retired")
    assert read_artifact(tmp_path / "retired").catalog.items.original(
        read_artifact(tmp_path / "retired").catalog.fresh) == by_events[1:]
    with TestClient(create_app(Settings(artifact=tmp_path / "retired"))) as client:
        body = client.post("/v1/recommend", json={"history": history, "k": 3, "fresh": True}).json()
        assert set(i["item_id"] for i in body["items"]) == set(by_events[1:])
    with TestClient(create_app(Settings(artifact=stand_ins["base"]))) as client:
        refused = client.post("/v1/recommend", json={"history": history, "k": 3, "fresh": True})
        assert refused.status_code == 409 and "fresh" in refused.json()["message"]
