"""Published splits (`compare --train --test`): read as given, validation carved out of train,
recall@k and NDCG@k against a plain-Python reference, and the command end to end, its
popularity row checked against a ranking written here."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.test_errors import assert_one_line_error, run_cli, run_process
from trainer.data.given_split import GivenSplitConfig, load_given_split, read_user_lines
from trainer.data.split import EvalSet
from trainer.evaluate.metrics import ranking_metrics

ROOT = Path(__file__).resolve().parents[3]
AMAZON_BOOK = ROOT.parent / "shared" / "data" / "amazon-book"


def write_lines(path: Path, lines: dict[int, list[int]]) -> Path:
    text = "".join(f"{user} {' '.join(map(str, items))}\n".replace(" \n", "\n") for user, items in lines.items())
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def synthetic_split(tmp_path: Path, users: int = 300, items: int = 120, seed: int = 0,
                    lengths: tuple[int, int] = (6, 15)) -> tuple[Path, Path]:
    """Users with a taste for one of four groups of consecutive item ids; a fifth of each user's
    items is test."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for user in range(users):
        group = user % 4
        size = items // 4
        liked = rng.choice(np.arange(group * size, (group + 1) * size), size=rng.integers(*lengths), replace=False)
        cut = max(1, len(liked) // 5)
        train[user], test[user] = liked[cut:].tolist(), liked[:cut].tolist()
    return write_lines(tmp_path / "train.txt.gz", train), write_lines(tmp_path / "test.txt", test)


def test_lines_are_read_in_order_and_empty_lines_hold_nothing(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.txt.gz", {7: [30, 10, 20], 3: [], 5: [10]})
    frame = read_user_lines(path)
    assert frame["user"].tolist() == [7, 7, 7, 5]
    assert frame["item"].tolist() == [30, 10, 20, 10]
    assert frame["timestamp"].tolist() == [0, 1, 2, 3]


def test_test_users_features_are_all_their_train_items_and_truth_their_test_items(tmp_path: Path) -> None:
    train = write_lines(tmp_path / "train.txt", {0: [5, 3, 9], 1: [3, 4], 2: [9, 5, 4, 3]})
    test = write_lines(tmp_path / "test.txt", {0: [4, 4], 1: [], 2: [77, 9], 8: [3]})  # 77: no train; user 8: none
    split = load_given_split(train, test)
    data, evaluated = split.data, split.test
    assert data.user_ids[evaluated.users].tolist() == [0, 2]  # user 1 has no test item, user 8 no train line
    features = np.split(evaluated.feature_items, evaluated.feature_offsets[1:-1])
    assert [data.item_ids[f].tolist() for f in features] == [[5, 3, 9], [9, 5, 4, 3]]
    truth = np.split(evaluated.truth_items, evaluated.truth_offsets[1:-1])
    assert [data.item_ids[t].tolist() for t in truth] == [[4], [9]]
    assert evaluated.truth_sizes().tolist() == [1, 2]  # item 77 counts, and no method can find it
    assert (split.test_users_not_in_train, split.test_items_not_in_train) == (1, 1)


def test_validation_is_carved_from_train_and_kept_out_of_training(tmp_path: Path) -> None:
    train, test = synthetic_split(tmp_path)
    split = load_given_split(train, test)
    fit_data, valid = split.for_training(seed=3, config=GivenSplitConfig(valid_fraction=0.1, valid_holdout=0.25))
    data = split.data
    assert len(valid) == 30 and fit_data.n_users == data.n_users and fit_data.n_items == data.n_items
    for i, user in enumerate(valid.users):
        full = data.item[data.user_offsets[user]:data.user_offsets[user + 1]]
        kept = fit_data.item[fit_data.user_offsets[user]:fit_data.user_offsets[user + 1]]
        held = full[len(kept):]
        assert kept.tolist() == full[: len(kept)].tolist()  # the first items, in order, are trained on
        assert len(held) == max(1, min(len(full) - 1, round(0.25 * len(full))))
        assert valid.feature_items[valid.feature_offsets[i]:valid.feature_offsets[i + 1]].tolist() == kept.tolist()
        truth = valid.truth_items[valid.truth_offsets[i]:valid.truth_offsets[i + 1]]
        assert sorted(truth.tolist()) == sorted(set(held.tolist()))
    others = np.setdiff1d(np.arange(data.n_users), valid.users)
    assert np.array_equal(np.diff(fit_data.user_offsets)[others], np.diff(data.user_offsets)[others])
    assert len(fit_data) == len(data) - int(valid.truth_sizes().sum())  # truth distinct: items are once per line


def reference_metrics(ranked: list[list[int]], truth: list[set[int]], extra: list[int], k: int) -> tuple[list, list]:
    """recall@k and NDCG@k written from their definitions, one user at a time."""
    recall, ndcg = [], []
    for items, wanted, missing in zip(ranked, truth, extra, strict=True):
        size = len(wanted) + missing
        seen, dcg = set(), 0.0
        for rank, item in enumerate(items[:k], start=1):
            if item in wanted and item not in seen:
                dcg += 1 / math.log2(rank + 1)
            seen.add(item)
        hits = len(seen & wanted)
        ideal = sum(1 / math.log2(r + 1) for r in range(1, min(size, k) + 1))
        recall.append(hits / size if size else 0.0)
        ndcg.append(dcg / ideal if ideal else 0.0)
    return recall, ndcg


def test_ranking_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, width = 60, 40, 25
    ranked = [rng.choice(n_items, size=width, replace=True).tolist() for _ in range(n_users)]  # repeats count once
    ranked[0][5:] = [-1] * (width - 5)  # a short list
    truth = [set(rng.choice(n_items, size=rng.integers(0, 12), replace=False).tolist()) for _ in range(n_users)]
    extra = rng.integers(0, 3, size=n_users).tolist()
    items = [np.array(sorted(t), dtype=np.int32) for t in truth]
    eval_set = EvalSet(users=np.arange(n_users), feature_items=np.zeros(0, np.int32),
                       feature_offsets=np.zeros(n_users + 1, np.int64), truth_items=np.concatenate(items),
                       truth_offsets=np.r_[0, np.cumsum([len(t) for t in items])].astype(np.int64),
                       n_items=n_items, unreachable=np.array(extra))
    got = ranking_metrics(np.array(ranked), eval_set, (5, 20))
    for k in (5, 20):
        recall, ndcg = reference_metrics(ranked, truth, extra, k)
        np.testing.assert_allclose(got[f"recall@{k}"], recall)
        np.testing.assert_allclose(got[f"ndcg@{k}"], ndcg)
    perfect = np.array([sorted(t) + [-1] * (width - len(t)) for t in truth])  # every reachable item first
    full = ranking_metrics(perfect, eval_set.__class__(**{**eval_set.__dict__, "unreachable": None}), (20,))
    assert [v for v, t in zip(full["ndcg@20"], truth, strict=True) if t] == pytest.approx([1.0] * sum(map(bool, truth)))


def popularity_reference(learnt: dict[int, list[int]], train: dict[int, list[int]], test: dict[int, list[int]],
                         k: int) -> float:
    """Mean recall@k of the items most popular in `learnt`, each user's own train items skipped."""
    counts: dict[int, int] = {}
    for items in learnt.values():
        for item in items:
            counts[item] = counts.get(item, 0) + 1
    order = sorted(counts, key=lambda item: (-counts[item], item))
    recalls = []
    for user, wanted in test.items():
        if not wanted:
            continue
        ranked = [item for item in order if item not in set(train[user])][:k]
        recalls.append(len(set(ranked) & set(wanted)) / len(set(wanted)))
    return float(np.mean(recalls))


def read_split(path: Path) -> dict[int, list[int]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return {int(line.split()[0]): [int(t) for t in line.split()[1:]] for line in fh if line.strip()}


@pytest.mark.slow
def test_compare_on_a_published_split_end_to_end(tmp_path: Path) -> None:
    train, test = synthetic_split(tmp_path)
    out = tmp_path / "given.json"
    code = run_cli("compare", "--train", str(train), "--test", str(test), "--methods", "pop,itemcf,tdm",
                   "--epochs", "4", "--m", "20", "--valid-fraction", "0.1", "--per-user", "--json", str(out)).returncode
    assert code == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    assert result["complete"] and set(rows) == {"pop", "itemcf", "tdm"}
    assert result["dataset"]["test_users"] == 300
    # Popularity counts what methods learn from: train less the validation items (carving tested above).
    fit_data, _ = load_given_split(train, test).for_training(0, GivenSplitConfig(valid_fraction=0.1))
    learnt = {int(user): fit_data.item_ids[fit_data.item[fit_data.user_offsets[u]:fit_data.user_offsets[u + 1]]]
              .tolist() for u, user in enumerate(fit_data.user_ids)}
    popular = popularity_reference(learnt, read_split(train), read_split(test), 20)
    assert rows["pop"]["recall@20"] == pytest.approx(popular)
    for name, row in rows.items():
        for metric in ("recall@20", "ndcg@20", "recall@200", "ndcg@200"):
            assert 0 <= row[metric] <= 1 and len(result["per_seed"][name][0]["users"][metric]) == 300
        assert row["recall@200"] >= row["recall@20"]
    # 120 items and lists of 200: every list holds every item but the user's own train items, so
    # each test item is found (the served path excludes the train items and nothing else).
    for name in rows:
        assert min(result["per_seed"][name][0]["users"]["recall@200"]) == 1.0
    assert rows["itemcf"]["recall@20"] > rows["pop"]["recall@20"] + 0.3  # the features reach the method
    assert rows["tdm"]["vs_reference"]["recall@20"]["users"] == 300


@pytest.mark.slow
@pytest.mark.skipif(not (AMAZON_BOOK / "train.txt.gz").exists(), reason="needs ../shared/data/amazon-book")
def test_popularity_on_amazon_book_matches_the_published_figure(tmp_path: Path) -> None:
    """The split's README computes popularity under the peers' protocol: 0.0287 / 0.0123."""
    out = tmp_path / "pop.json"
    assert run_cli("compare", "--train", str(AMAZON_BOOK / "train.txt.gz"), "--test", str(AMAZON_BOOK / "test.txt.gz"),
                   "--methods", "pop", "--valid-fraction", "0", "--json", str(out)).returncode == 0
    row = json.loads(out.read_text())["results"]["pop"]
    assert json.loads(out.read_text())["dataset"]["test_users"] == 70_591
    assert round(row["recall@20"], 4) == 0.0287 and round(row["ndcg@20"], 4) == 0.0123


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--train", "T"], "both --train FILE and --test FILE"),
    (["--data", "D", "--train", "T", "--test", "U"], "not both"),
    (["--train", "T", "--test", "U", "--test-fraction", "0.2"], "--test-fraction does not apply"),
    (["--train", "T", "--test", "U", "--min-interactions", "5"], "apply to --data"),
    (["--data", "D", "--valid-holdout", "0.5"], "--valid-holdout applies to a published split"),
    (["--train", "T", "--test", "U", "--valid-holdout", "1.5"], "--valid-holdout must be"),
    ([], "compare needs --data"),
])
def test_published_split_flags_refused_in_one_line(extra: list[str], fragment: str) -> None:
    assert_one_line_error(run_cli("compare", "--methods", "pop", *extra), fragment)


def test_a_missing_split_file_is_one_line(tmp_path: Path) -> None:
    train = write_lines(tmp_path / "train.txt", {0: [1, 2]})
    assert_one_line_error(run_cli("compare", "--methods", "pop", "--train", str(train), "--test",
                                  str(tmp_path / "missing.txt")), "missing.txt")


def test_seeds_run_apart_merge_into_the_one_run_table(tmp_path: Path) -> None:
    """Seed 0 and seed 1 as separate processes, merged, give the table of one two-seed run; a
    merge with a result of our own protocol is refused in one line."""
    train, test = synthetic_split(tmp_path)
    common = ["compare", "--train", str(train), "--test", str(test), "--methods", "pop,itemcf", "--per-user",
              "--valid-fraction", "0.2"]
    assert run_cli(*common, "--seeds", "2", "--json", str(tmp_path / "both.json")).returncode == 0
    for seed in (0, 1):
        assert run_cli(*common, "--seed", str(seed), "--json", str(tmp_path / f"s{seed}.json")).returncode == 0
    png = tmp_path / "merged.png"
    assert run_cli("merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"), "--json", str(tmp_path / "m.json"),
                   "--plot", str(png)).returncode == 0
    both, merged = (json.loads((tmp_path / name).read_text()) for name in ("both.json", "m.json"))
    assert merged["protocol"]["seeds"] == [0, 1] and png.stat().st_size > 0
    for name, row in both["results"].items():  # every figure but the timing
        assert {k: v for k, v in merged["results"][name].items() if k != "seconds"} == \
            {k: v for k, v in row.items() if k != "seconds"}
    assert both["results"]["pop"]["std"]["recall@20"] > 0  # the validation users, and so the counts, differ by seed
    # A part written before sample_history was recorded trained on the behaviours before each
    # sample: it pools with "before" and is refused beside any other choice, in one line.
    older = json.loads((tmp_path / "s1.json").read_text())
    del older["protocol"]["sample_history"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert run_cli("merge", str(tmp_path / "s0.json"), str(tmp_path / "older.json"), "--json",
                   str(tmp_path / "o.json")).returncode == 0
    other = json.loads((tmp_path / "s0.json").read_text())
    other["protocol"]["sample_history"] = "others"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert_one_line_error(run_cli("merge", str(tmp_path / "older.json"), str(tmp_path / "other.json"), "--json",
                                  str(tmp_path / "x.json")), "results differ in sample_history: before vs others")
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({**both, "protocol": {**both["protocol"], "name": "paper"}}))
    assert_one_line_error(run_cli("merge", str(tmp_path / "s0.json"), str(ours), "--json", str(tmp_path / "x.json")),
                          "cannot merge a published-split result")


@pytest.mark.slow
def test_train_and_evaluate_on_a_published_split_agree_with_compare(tmp_path: Path) -> None:
    """`train --train --test` fits what compare fits for the same seed and options, reports the
    same served metrics; `evaluate` recomputes them from the run directory; `export` ships it."""
    train, test = synthetic_split(tmp_path)
    options = ["--train", str(train), "--test", str(test), "--epochs", "2", "--m", "20", "--valid-fraction", "0.1",
               "--seed", "1"]
    assert run_cli("compare", *options, "--methods", "tdm", "--json", str(tmp_path / "c.json")).returncode == 0
    run = tmp_path / "run"
    trained = run_cli("train", *options, "--method", "tdm", "--out", str(run), "--export", str(tmp_path / "artifact"))
    assert trained.returncode == 0, trained.stderr
    compared = json.loads((tmp_path / "c.json").read_text())["results"]["tdm"]
    metrics = json.loads((run / "metrics.json").read_text())
    for metric in ("recall@20", "ndcg@20", "recall@200", "ndcg@200"):
        assert metrics[metric] == pytest.approx(compared[metric], abs=1e-12), metric
    assert metrics["users"] == 300 and (tmp_path / "artifact" / "manifest.json").exists()
    evaluated = run_process("evaluate", "--run", str(run), "--json", str(tmp_path / "e.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"recall@20 {metrics['recall@20']:.4f}" in evaluated.stdout and "as served" in evaluated.stdout
    again = json.loads((tmp_path / "e.json").read_text())
    assert {m: again[m] for m in ("recall@20", "ndcg@20")} == {m: metrics[m] for m in ("recall@20", "ndcg@20")}
    assert_one_line_error(run_cli("evaluate", "--run", str(run), "--m", "50"), "published-split run")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--train", "T", "--test", "U", "--start-from", "R"], "--start-from applies to --data runs"),
    (["--train", "T", "--test", "U", "--exclude-items", "I"], "--exclude-items applies to --data runs"),
    (["--data", "D", "--valid-holdout", "0.5"], "--valid-holdout applies to a published split"),
    ([], "train needs --data"),
])
def test_train_on_a_published_split_refuses_what_does_not_apply(extra: list[str], fragment: str) -> None:
    assert_one_line_error(run_cli("train", "--method", "tdm", "--out", "never", *extra), fragment)
