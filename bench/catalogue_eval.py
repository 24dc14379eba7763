"""New items without retraining, measured on a temporal split.

The log is cut in time: the first 90% of events (by time) train a model whose tree holds only
the items seen by then; the items first seen in the last 10% are the new items. Test users are
those with at least two events after the cut: the first half of those events (after everything
they did before the cut) are their features, the distinct items of the second half the truth.
The *recent events* are everything after the cut except the test users' second halves: what
add-items may use, and what a full retrain trains on in addition. Compared, through the
service's own search (ONNX scorer, shared beam search, M = 200, no filter):

- add-items: the 90% model with the new items added from the recent events (`trainer add-items`);
- full retrain: the same method trained on the 90% log plus the recent events;
- no update: the 90% model as it is (it cannot recommend a new item);
- popularity of new items: the new items ranked by their recent events, alone in the list (as
  many of them as there are, up to M: when there are fewer than M, every one of them);
- add-items, new items only: the add-items model's top-M among the new items alone (the
  search with an allow-list of the new items): the list the popularity of new items is a fair
  comparison for, since both rank the same items. When there are fewer than M new items it
  lists every one, so the comparison only means something where they are many (Ciao);
- add-items + popularity, new items only: what the service answers to a `fresh` request, the
  model's ranking of the new items (to depth 1,000) fused by reciprocal rank
  (`service.core.fusion`: score = sum of 1 / (60 + rank), Cormack et al.'s constant, not tuned
  here) with the new items' order by recent events that add-items stores in the catalogue;
- recent popularity, all items: every item ranked by its recent events.

Recall of new items is over the test users with at least one new item in their truth, of those
new items; overall recall over all test users and their whole truth.

What any method can know about a new item is bounded by the recent events: an item nobody
touched before a test user's truth half has no co-consumption and no popularity, only its
category. `new_item_signal` measures that ceiling from the split alone (`--signal-only` prints it
without training): the share of the truth's new items with at least one recent event, per user,
and how many events those items have.

    .venv/bin/python -m bench.catalogue_eval --data ../shared/data/movielens-100k/u.data \\
        --json bench/results/catalogue/movielens.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import command_line
from service.core.artifact import read_artifact
from service.core.filters import allow_items, combine
from service.core.fusion import reciprocal_rank_fusion
from service.core.index import SearchParams, TreeIndex
from service.scorer import OnnxScorer
from trainer.catalogue.update import add_items
from trainer.data.formats import read_log
from trainer.data.interactions import DataConfig
from trainer.export import export_run
from trainer.run import RunSpec, train_run

M = 200


def temporal_split(frame: pd.DataFrame, fraction: float) -> dict:
    """Cut the time-sorted log at `fraction` of its events; see the module docstring."""
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(len(frame) * fraction)
    past, recent = frame.iloc[:cut], frame.iloc[cut:]
    new_items = np.setdiff1d(recent["item"].unique(), past["item"].unique())
    position = recent.groupby("user").cumcount().to_numpy()
    size = recent.groupby("user")["item"].transform("size").to_numpy()
    test_user = size >= 2
    truth_half = test_user & (position >= size // 2)
    return {"past": past, "recent": recent, "events": recent[~truth_half], "truth": recent[truth_half],
            "new_items": new_items, "cut_time": int(frame["timestamp"].iloc[cut])}


def new_item_signal(split: dict) -> dict:
    """The evidence the recent events hold about the new items the test users go on to consume:
    a method that places or ranks new items from those events (add-items, popularity) finds at
    most the ones with an event, so `per_user_ceiling` bounds its new-item recall."""
    new_items, events = split["new_items"], split["events"]
    counts = events["item"].value_counts()
    counts_new = counts[counts.index.isin(new_items)]
    truth_new = split["truth"][split["truth"]["item"].isin(new_items)].drop_duplicates(["user", "item"])
    seen = truth_new["item"].isin(counts.index)
    per_user = seen.groupby(truth_new["user"]).mean()
    return {"truth_new_pairs": len(truth_new), "truth_new_with_event": float(seen.mean()) if len(seen) else None,
            "per_user_ceiling": float(per_user.mean()) if len(per_user) else None,
            "users_with_new_items": len(per_user), "new_items_with_events": len(counts_new),
            "new_items_with_one_event": float((counts_new == 1).mean()) if len(counts_new) else None,
            "median_events_per_new_item": float(counts_new.median()) if len(counts_new) else None}


FUSION_DEPTH = 1000  # how deep the model's ranking of the new items is read for the fusion


def write_log(frame: pd.DataFrame, path: Path) -> Path:
    columns = {"user": "user_id", "item": "item_id", "category": "category_id", "timestamp": "timestamp"}
    frame[[c for c in columns if c in frame]].rename(columns=columns).to_csv(path, index=False)
    return path


def train_export(log: Path, out: Path, method: str, epochs: int, seed: int) -> tuple[Path, float | None]:
    """Train and export, or reuse an artifact a previous run of this script left (seconds None)."""
    artifact, timing = out / f"artifact-{log.stem}", out / f"seconds-{log.stem}.txt"
    if (artifact / "manifest.json").exists():
        return artifact, float(timing.read_text()) if timing.exists() else None
    started = time.perf_counter()
    run = out / f"run-{log.stem}"
    train_run(RunSpec(data=DataConfig(path=str(log)), method=method, seed=seed, fidelity=False), run,
              {"epochs": epochs})
    export_run(run, artifact, parity_users=50)
    seconds = time.perf_counter() - started
    timing.write_text(f"{seconds:.1f}")
    return artifact, seconds


def recommend(artifact: Path, histories: list[np.ndarray], m: int, only: np.ndarray | None = None) -> list[np.ndarray]:
    """Original ids of the top-m items for each history (original ids, oldest first), by the
    service's path: catalogue lookup, ONNX scorer, the shared beam search, the retired filter;
    `only` (original ids): an allow-list, applied as the service applies its filters."""
    loaded = read_artifact(artifact)
    index = TreeIndex(loaded.tree, OnnxScorer(loaded.scorer_file, threads=1), loaded.hierarchical, batch_users=64)
    allowed = loaded.catalog.served_filter
    if only is not None:
        internal = loaded.catalog.items.lookup(list(only))
        listed = np.zeros(loaded.tree.n_items, dtype=bool)
        listed[internal[internal >= 0]] = True
        allowed = combine(allowed, allow_items(listed))
        m = min(m, int(listed.sum()))
    results = []
    for start in range(0, len(histories), 64):
        chunk = histories[start:start + 64]
        rows = np.full((len(chunk), loaded.history_length), -1, dtype=np.int64)
        for i, history in enumerate(chunk):
            known = loaded.catalog.items.lookup(list(history[::-1]))
            known = known[known >= 0][:loaded.history_length]
            rows[i, :len(known)] = known
        params = SearchParams(beam=loaded.default_beam, allowed=allowed)  # the served path
        items = index.search(rows, min(m, loaded.catalog.n_served), params).items
        results += [np.asarray(loaded.catalog.items.original(row[row >= 0])) for row in items]
    return results


def recalls(recommended: list[np.ndarray], truth: list[np.ndarray], new_items: np.ndarray) -> dict:
    overall, new, users_new = [], [], 0
    new_per_list = float(np.mean([np.isin(got, new_items).sum() for got in recommended]))
    for got, want in zip(recommended, truth, strict=True):
        want = np.unique(want)
        overall.append(len(np.intersect1d(got, want)) / len(want))
        want_new = want[np.isin(want, new_items)]
        if len(want_new):
            users_new += 1
            new.append(len(np.intersect1d(got, want_new)) / len(want_new))
    return {"per_user": overall, "per_user_new": new,
            "recall": float(np.mean(overall)), "recall_se": float(np.std(overall) / np.sqrt(len(overall))),
            "new_item_recall": float(np.mean(new)) if new else None,
            "new_item_recall_se": float(np.std(new) / np.sqrt(len(new))) if new else None,
            "users": len(overall), "users_with_new_items": users_new, "new_items_per_list": new_per_list}


def signal_only(data: Path, fmt: str, fraction: float) -> dict:
    """`new_item_signal` of the split, without training anything."""
    split = temporal_split(read_log(data, fmt).frame, fraction)
    return {"command": command_line(), "data": str(data), "fraction": fraction, "new_items": len(split["new_items"]),
            "signal": new_item_signal(split)}


def run(data: Path, fmt: str, out: Path, method: str, epochs: int, fraction: float, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    frame = read_log(data, fmt).frame
    split = temporal_split(frame, fraction)
    past_log = write_log(split["past"], out / "past.csv")
    retrain_log = write_log(pd.concat([split["past"], split["events"]]), out / "retrain.csv")
    events_log = write_log(split["events"], out / "events.csv")
    new_frame = split["recent"].drop_duplicates("item")
    new_frame = new_frame[new_frame["item"].isin(split["new_items"])]
    listed = pd.DataFrame({"item_id": new_frame["item"]})
    if "category" in new_frame:
        listed["category_id"] = new_frame["category"].to_numpy()
    listed.to_csv(out / "new_items.csv", index=False)

    base, base_seconds = train_export(past_log, out, method, epochs, seed)
    started = time.perf_counter()
    shutil.rmtree(out / "artifact-added", ignore_errors=True)
    add_items(base, out / "new_items.csv", out / "artifact-added", events=events_log)
    add_seconds = time.perf_counter() - started
    retrained, retrain_seconds = train_export(retrain_log, out, method, epochs, seed)

    truth_frame = split["truth"]
    features = pd.concat([split["past"], split["events"]])
    users = truth_frame["user"].unique()
    history_of = features.groupby("user")["item"].apply(lambda s: s.to_numpy())
    truth_of = truth_frame.groupby("user")["item"].apply(lambda s: s.to_numpy())
    users = [u for u in users if u in history_of.index]
    histories = [history_of[u] for u in users]
    truth = [truth_of[u] for u in users]
    new_items = split["new_items"]
    recent_popular = split["events"]["item"].value_counts().index.to_numpy()
    popular_new = recent_popular[np.isin(recent_popular, new_items)]

    # The fused list as the service serves a `fresh` request: the model's ranking of the new items
    # and the catalogue's order of them by recent events (`ItemCatalog.fresh`).
    added_catalog = read_artifact(out / "artifact-added").catalog
    fresh_order = np.asarray(added_catalog.items.original(added_catalog.fresh))
    model_new = recommend(out / "artifact-added", histories, FUSION_DEPTH, only=new_items)
    fused = [reciprocal_rank_fusion([ranked, fresh_order], M) for ranked in model_new]
    rows = {
        "add-items": recalls(recommend(out / "artifact-added", histories, M), truth, new_items),
        "full retrain": recalls(recommend(retrained, histories, M), truth, new_items),
        "no update": recalls(recommend(base, histories, M), truth, new_items),
        "popularity of new items": recalls([popular_new[:M]] * len(users), truth, new_items),
        "add-items, new items only": recalls(recommend(out / "artifact-added", histories, M, only=new_items),
                                             truth, new_items),
        "add-items + popularity, new items only": recalls(fused, truth, new_items),
        "recent popularity, all items": recalls([recent_popular[:M]] * len(users), truth, new_items),
    }
    paired = {}
    pairs = [("add-items", other) for other in ("full retrain", "no update", "recent popularity, all items")]
    for ours, other in [*pairs, ("add-items, new items only", "popularity of new items"),
                        ("add-items + popularity, new items only", "popularity of new items"),
                        ("add-items + popularity, new items only", "recent popularity, all items")]:
        for key, label in (("per_user", "recall"), ("per_user_new", "new_item_recall")):
            diff = np.asarray(rows[ours][key]) - np.asarray(rows[other][key])
            paired[f"{label}: {ours} - {other}"] = {"mean": float(diff.mean()),
                                                     "se": float(diff.std() / np.sqrt(len(diff)))}
    for row in rows.values():
        del row["per_user"], row["per_user_new"]
    added = json.loads((out / "artifact-added" / "manifest.json").read_text())["catalogue"]
    return {
        "command": command_line(), "data": str(data), "method": method, "epochs": epochs, "m": M,
        "fraction": fraction, "cut_time": split["cut_time"], "events": len(frame), "past_events": len(split["past"]),
        "recent_events_used": len(split["events"]), "truth_events": len(truth_frame),
        "new_items": len(new_items), "new_items_with_events": len(popular_new),
        "placed_by": added["placed_by"], "grown_levels": added["grown_levels"],
        "seconds": {"train_past": base_seconds, "add_items": add_seconds, "full_retrain": retrain_seconds},
        "signal": new_item_signal(split), "rows": rows, "paired_differences": paired,
    }


def signal_table(signal: dict) -> str:
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    return "\n".join([
        "| new items in the test users' truth | with a recent event | per-user ceiling | new items with events | "
        "of them with one event | median events |", "|---|---|---|---|---|---|",
        f"| {signal['truth_new_pairs']:,} (user, item) pairs, {signal['users_with_new_items']} users | "
        f"{share(signal['truth_new_with_event'])} | {share(signal['per_user_ceiling'])} | "
        f"{signal['new_items_with_events']:,} | {share(signal['new_items_with_one_event'])} | "
        f"{signal['median_events_per_new_item']} |"])


def table(result: dict) -> str:
    lines = [f"| variant | recall@{M} new items | recall@{M} overall | new items per list |", "|---|---|---|---|"]
    for name, row in result["rows"].items():
        new = "n/a" if row["new_item_recall"] is None else \
            f"{100 * row['new_item_recall']:.2f}% ± {100 * row['new_item_recall_se']:.2f}"
        lines.append(f"| {name} | {new} | {100 * row['recall']:.2f}% ± {100 * row['recall_se']:.2f} | "
                     f"{row['new_items_per_list']:.1f} |")
    lines += ["", "| paired difference (same users) | mean ± SE |", "|---|---|"]
    lines += [f"| {name} | {100 * d['mean']:+.2f} ± {100 * d['se']:.2f} |"
              for name, d in result["paired_differences"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default="auto")
    parser.add_argument("--method", default="tdm")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None,
                        help="where runs and artifacts go (default: bench/.cache/catalogue-NAME)")
    parser.add_argument("--signal-only", action="store_true",
                        help="print what the recent events know about the new items (new_item_signal), train nothing")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if args.signal_only:
        result = signal_only(Path(args.data), args.format, args.fraction)
        print(signal_table(result["signal"]))
        json_path.write_text(json.dumps(result, indent=2))
        print(f"wrote {json_path}")
        return
    workdir = Path(args.workdir) if args.workdir else Path("bench/.cache") / f"catalogue-{json_path.stem}"
    result = run(Path(args.data), args.format, workdir, args.method, args.epochs, args.fraction, args.seed)
    print(table(result))
    print(signal_table(result["signal"]))
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "paired_differences")}, indent=1))
    json_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
