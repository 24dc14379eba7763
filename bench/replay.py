"""Learning from served traffic, replayed: a static model, refresh, full retrain and popularity.

A timestamped log is replayed in time. Its first `--initial` share of events (by time) trains
the first model; the rest is cut into `--slices` slices of equal event counts. Each strategy
serves slice s with a model built only from the events before it:

- static: the initial model, served for every slice;
- refresh: the initial model, published in a registry; after each slice its events are appended
  to a Parquet event log (`trainer.online.event_log.Segments`) and `trainer.online.refresh.refresh`
  runs (hold-out, add-items, fine-tune, a tree step every `--tree-every`th refresh, the gate,
  publish); slice s is served by what the registry serves then;
- full retrain: before each slice, the method trained from scratch on every event before it,
  with the initial model's budget (the upper reference);
- popularity of the last slice: the most popular items of the previous slice (for slice 0, of
  the last slice-sized part of the initial events).

Every model is trained on every user with >= 2 events (a tenth of them validate, choosing
epochs and tree steps), as a refresh trains, and serves through the service's path: catalogue
lookup, ONNX scorer, the shared beam search at the artifact's beam, the retired-items filter,
and the artifact's popularity list when none of the history is known. Per slice, for every user
with an event in it (the same users for every strategy): recall@200 of the distinct items of
the user's slice events given all of the user's earlier events (oldest first); the share of the
slice's *new* items in anyone's top 200, new meaning first seen after the initial part and before
the slice (what the static model cannot know and an update can; items first seen in the slice
itself no strategy can know, so they are only counted); and the CPU seconds (user + sys,
children included) each strategy spent on its model for the slice. Slice 0 is served by the
initial model in all three learnt strategies, so paired differences are pooled over the
(slice, user) pairs of slices 1 on.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.replay --data ../shared/data/movielens-100k/u.data \\
        --method jtm --json bench/results/replay/movielens-jtm.json --plot bench/results/replay/movielens-jtm.png
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from bench import command_line
from service.core.artifact import Artifact, read_artifact
from service.core.event_log import LoggedEvent
from service.core.index import SearchParams, TreeIndex
from service.core.registry import Registry
from trainer.config import add_options, collect, configure, given_options
from trainer.errors import DataError
from trainer.evaluate.metrics import paired_difference
from trainer.online.event_log import Segments
from trainer.online.refresh import RefreshConfig, refresh

M = 200
STRATEGIES = ("static", "refresh", "full retrain", "popularity of the last slice")
VALID_FRACTION = 0.1  # of the users: chooses epochs (and tree steps), as a refresh does
T = TypeVar("T")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def source_version() -> str | None:
    """The commit the benchmark ran at (`-dirty` when tracked files differ from it)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train_artifact(events: pd.DataFrame, out: Path, method_name: str, budget: dict, seed: int,
                   watermark: int) -> Path:
    """`method_name` trained from scratch on `events` (columns user, item, category, timestamp)
    and exported to `out`, its log watermark at segment `watermark` (what a refresh reads after)."""
    from trainer.data.formats import RawLog
    from trainer.data.interactions import build_interactions
    from trainer.data.split import UserSplit, make_eval_set, make_samples, sampled_histories
    from trainer.export import write_artifact
    from trainer.fit.context import FitContext
    from trainer.methods import build_method
    from trainer.run import item_catalog

    columns = ["user", "item", "timestamp"] + (["category"] if (events["category"] != "").all() else [])
    data = build_interactions(RawLog(events[columns], "generic", out), min_interactions=2)
    users = np.random.default_rng(seed).permutation(data.n_users)
    n_valid = int(round(VALID_FRACTION * data.n_users))
    split = UserSplit(train=np.sort(users[n_valid:]), valid=np.sort(users[:n_valid]), test=np.zeros(0, np.int64),
                      seed=seed, valid_fraction=VALID_FRACTION, test_fraction=0.0)
    method = build_method(method_name, budget)
    ctx = FitContext(data=data, split=split, samples=make_samples(data, split.train, method.config.scorer.max_history),
                     valid=make_eval_set(data, split.valid), m=M, exclude_seen=False, seed=seed)
    method.fit(ctx)
    out.mkdir(parents=True)
    item_catalog(data, split).save(out / "items.npz")
    write_artifact(method, out / "items.npz", out / "artifact", method_name=method_name, metrics={}, k=M,
                   beam=method.config.beam or M,
                   parity_histories=sampled_histories(data.n_items, method.config.scorer.max_history, 50, seed),
                   dataset={"source": "replay", "format": "generic", "users": data.n_users, "items": data.n_items,
                            "fingerprint": data.fingerprint()},
                   sections={"log": {"watermark": watermark, "refreshes": 0}})
    return out / "artifact"


def trained(events: pd.DataFrame, out: Path, method_name: str, budget: dict, seed: int,
            watermark: int) -> tuple[Artifact, dict]:
    """`train_artifact` and its cost, or the model and cost that an earlier run left in `out`
    for the same events, method, budget, seed and watermark: the models do not depend on the
    refresh settings, so runs that vary only those train them once."""
    key = {"method": method_name, "budget": budget, "seed": seed, "watermark": watermark,
           "events": int(pd.util.hash_pandas_object(events, index=False).sum())}
    record = out / "trained.json"
    if record.exists() and json.loads(record.read_text())["key"] == key:
        return read_artifact(out / "artifact"), {**json.loads(record.read_text())["cost"], "reused": True}
    shutil.rmtree(out, ignore_errors=True)
    path, cost = measured(train_artifact, events, out, method_name, budget, seed, watermark)
    record.write_text(json.dumps({"key": key, "cost": cost}))
    return read_artifact(path), cost


def served_top(artifact: Artifact, histories: list[np.ndarray]) -> list[np.ndarray]:
    """Top-M original ids (as text) per history (original ids, oldest first), as the service
    answers: beam search on the known items, the popularity list when none is known."""
    from service.scorer import OnnxScorer

    catalog = artifact.catalog
    index = TreeIndex(artifact.tree, OnnxScorer(artifact.scorer_file, threads=1), artifact.hierarchical,
                      batch_users=64)
    k = min(M, catalog.n_served)
    rows = np.full((len(histories), artifact.history_length), -1, dtype=np.int64)
    for u, history in enumerate(histories):
        known = catalog.items.lookup(list(history[::-1]))  # most recent first
        known = known[known >= 0][: artifact.history_length]
        rows[u, : len(known)] = known
    cold = rows[:, 0] < 0
    found = np.full((len(histories), k), -1, dtype=np.int64)
    if (~cold).any():
        params = SearchParams(beam=artifact.default_beam, allowed=catalog.served_filter)
        found[~cold] = index.search(rows[~cold], k, params).items
    popular = catalog.popular.astype(np.int64)
    if catalog.served_filter is not None:
        popular = popular[catalog.served_filter(popular[None, :])[0]]
    found[cold, : min(k, len(popular))] = popular[:k]
    return [np.asarray(catalog.items.original(row[row >= 0]), dtype=object).astype(str) for row in found]


def recall(top: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """(U,) share of each user's distinct truth items found in their top list."""
    return np.array([np.isin(want, got).mean() for got, want in zip(top, truth, strict=True)])


def logged(events: pd.DataFrame) -> list[LoggedEvent]:
    """The events as the service logs them (the row number as event id)."""
    return [LoggedEvent(u, i, c, float(t), str(e)) for u, i, c, t, e in
            zip(events["user"], events["item"], events["category"], events["timestamp"], events.index, strict=True)]


def measured(work: Callable[..., T], *args: object) -> tuple[T, dict]:
    """`work(*args)`, and the CPU seconds (user + sys, children included) and wall seconds it took."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = work(*args)
    return result, {"cpu_seconds": cpu_seconds() - cpu, "wall_seconds": time.perf_counter() - wall}


def refresh_once(registry: Path, log: Path, config: RefreshConfig, seed: int) -> dict:
    """One `refresh`; a refresh that fails leaves the registry serving what it served."""
    try:
        return refresh(registry, log, config, seed=seed)
    except DataError as exc:
        return {"decision": "error", "message": str(exc)}


def score_slice(part: pd.DataFrame, before: pd.DataFrame, models: dict[str, Artifact | np.ndarray],
                new: np.ndarray) -> dict:
    """Recall@M of each model (an artifact, or a fixed list of original ids) on the users of
    `part` given their events in `before`, and the share of `new` items in anyone's top M."""
    users = part["user"].unique()
    history_of = before.groupby("user")["item"].apply(lambda items: items.to_numpy())
    truth_of = part.groupby("user")["item"].apply(lambda items: np.unique(items.to_numpy()))
    histories = [history_of.get(u, np.zeros(0, dtype=object)) for u in users]
    truth = [truth_of[u] for u in users]
    scored = {}
    for name, model in models.items():
        top = served_top(model, histories) if isinstance(model, Artifact) else [model] * len(users)
        per_user = recall(top, truth)
        scored[name] = {"recall": float(per_user.mean()), "se": float(per_user.std(ddof=1) / np.sqrt(len(users))),
                        "coverage": float(np.isin(new, np.concatenate(top)).mean()) if len(new) else None,
                        "per_user": np.round(per_user, 5).tolist()}
    return {"users": len(users), "user_ids": users.tolist(), "has_history": [len(h) > 0 for h in histories],
            "scored": scored}


def replay(frame: pd.DataFrame, work: Path, method: str, budget: dict, initial: float, n_slices: int,
           config: RefreshConfig, seed: int) -> dict:
    """Run the four strategies over the slices; returns the result (see the module docstring)."""
    from trainer.publish import publish

    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame = frame.astype({"user": str, "item": str, "category": str})
    cut = int(len(frame) * initial)
    bounds = np.linspace(cut, len(frame), n_slices + 1).astype(int)
    first_seen = frame.drop_duplicates("item")["item"]  # indexed by the row of the item's first event

    segments = Segments(work / "log")
    state = segments.commit(segments.recover(), logged(frame.iloc[:cut]), {"row": cut})
    static, initial_cost = trained(frame.iloc[:cut], work / "static", method, budget, seed, segments.last_seq())
    retrained = static
    registry = Registry(work / "registry")
    publish(static.path, registry.root)
    slices = []
    for s in range(n_slices):
        part, before = frame.iloc[bounds[s]:bounds[s + 1]], frame.iloc[:bounds[s]]
        costs = {name: {"cpu_seconds": 0.0, "wall_seconds": 0.0} for name in STRATEGIES}
        decision = None
        if s == 0:  # the initial model, for every learnt strategy
            costs.update({name: initial_cost for name in STRATEGIES[:3]})
        else:
            state = segments.commit(state, logged(frame.iloc[bounds[s - 1]:bounds[s]]), {"row": int(bounds[s])})
            decision, costs["refresh"] = measured(refresh_once, registry.root, work / "log", config, seed)
            retrained, costs["full retrain"] = trained(before, work / f"retrain-{s}", method, budget, seed,
                                                       segments.last_seq())
        previous = frame.iloc[max(0, bounds[s] - len(part)):bounds[s]]["item"].value_counts(sort=False)
        popular = previous.sort_values(ascending=False, kind="stable").index.to_numpy()[:M].astype(str)
        models = dict(zip(STRATEGIES, (static, read_artifact(registry.path(registry.current())), retrained, popular),
                          strict=True))
        new = first_seen[(first_seen.index >= cut) & (first_seen.index < bounds[s])]
        new = np.intersect1d(new.to_numpy().astype(str), part["item"].unique())
        scored = score_slice(part, before, models, new)
        slices.append({
            "slice": s, "events": len(part), "time": part["timestamp"].iloc[[0, -1]].astype(float).tolist(),
            "users": scored["users"], "users_with_history": int(sum(scored["has_history"])), "new_items": len(new),
            "first_seen_items": int(((first_seen.index >= bounds[s]) & (first_seen.index < bounds[s + 1])).sum()),
            "served": {name: models[name].version for name in STRATEGIES[:3]}, "refresh_decision": _brief(decision),
            "strategies": {name: {key: value for key, value in scored["scored"][name].items() if key != "per_user"}
                           | costs[name] for name in STRATEGIES},
            "user_ids": scored["user_ids"], "has_history": scored["has_history"],
            "per_user": {name: scored["scored"][name]["per_user"] for name in STRATEGIES},
        })
        print(_row(slices[-1]), flush=True)
    return {"slices": slices, "initial_events": cut, "pooled": pooled(slices), "targets": targets(slices)}


def _brief(decision: dict | None) -> dict | None:
    keep = ("decision", "mode", "new_events", "held_out_users", "served_recall", "candidate_recall",
            "paired_difference", "new_items", "seconds", "message", "reason")
    return None if decision is None else {key: decision[key] for key in keep if key in decision}


def pooled(slices: list[dict], first: int = 1) -> dict:
    """Paired differences over the (slice, user) pairs of slices `first` on: every user, the
    users with earlier events, and those without (each model answers them with its popularity list)."""
    pairs = [("refresh", "static"), ("refresh", "full retrain"), ("full retrain", "static"),
             ("refresh", "popularity of the last slice")]
    result = {}
    known = np.concatenate([s["has_history"] for s in slices[first:]]).astype(bool)
    for who, mask in (("all users", np.ones_like(known)), ("users with history", known), ("users without", ~known)):
        values = {name: np.concatenate([s["per_user"][name] for s in slices[first:]])[mask] for name in STRATEGIES}
        result[who] = {"recall": {name: float(v.mean()) for name, v in values.items()},
                       **{f"{a} - {b}": paired_difference(values[a], values[b]) for a, b in pairs}}
    return result


def targets(slices: list[dict], first: int = 1) -> dict:
    """The issue's done-when figures over slices `first` on: refresh beats static with paired
    z >= 2, reaches >= 90% of full retrain's recall at <= 25% of its CPU seconds."""
    recall = pooled(slices, first)["all users"]
    cpu = {name: sum(s["strategies"][name]["cpu_seconds"] for s in slices[first:]) for name in STRATEGIES}
    z = recall["refresh - static"]["z"]
    share = recall["recall"]["refresh"] / recall["recall"]["full retrain"]
    cost = cpu["refresh"] / cpu["full retrain"]
    return {"refresh_vs_static_z": z, "recall_share_of_full_retrain": share, "cpu_share_of_full_retrain": cost,
            "cpu_seconds": cpu, "met": {"z >= 2": z >= 2, "recall >= 90%": share >= 0.9, "cpu <= 25%": cost <= 0.25}}


SHORT = {"static": "static", "refresh": "refresh", "full retrain": "full retrain",
         "popularity of the last slice": "last slice's pop."}


def _row(s: dict) -> str:
    cells = [f"{s['strategies'][n]['recall']:6.2%} {s['strategies'][n]['cpu_seconds']:6.0f} s" for n in STRATEGIES]
    decision = s["refresh_decision"] or {"decision": "-"}
    return (f"{s['slice']:>5} {s['users']:>6} {s['users_with_history']:>6} {s['new_items']:>6}  "
            + "  ".join(f"{cell:<17}" for cell in cells) + f"  {decision['decision']} {decision.get('mode', '')}")


def header() -> str:
    """The table's columns: users with an event in the slice, those with earlier events, new
    items; per strategy its recall@M and the CPU seconds it spent on the slice's model."""
    return "slice  users  known    new  " + "  ".join(f"{SHORT[n]:<17}" for n in STRATEGIES) + "  refresh"


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x = [s["slice"] for s in result["slices"]]
    for name in STRATEGIES:
        rows = [s["strategies"][name] for s in result["slices"]]
        ax.errorbar(x, [100 * r["recall"] for r in rows], yerr=[100 * r["se"] for r in rows], marker="o",
                    capsize=3, label=name)
    ax.set(xlabel="slice (time order)", ylabel="recall@200 of the slice (%)", title=title, xticks=x)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a timestamped interaction log")
    parser.add_argument("--format", default="auto", help="log format (default auto)")
    parser.add_argument("--method", default="jtm", help="tree method to train (default jtm)")
    parser.add_argument("--initial", type=float, default=0.5, help="share of events (by time) of the initial model")
    parser.add_argument("--slices", type=int, default=5, help="slices of equal event counts after it (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="training budget: max epochs (default: the method's)")
    parser.add_argument("--iterations", type=int, default=None, help="joint iterations (default: the method's)")
    parser.add_argument("--retrain-epochs", type=int, default=None, help="epochs per joint iteration")
    parser.add_argument("--tree-init", default=None, help="initial tree (default: the method's)")
    parser.add_argument("--threads", type=int, default=1, help="training threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep the log, registry and models here, and reuse the models "
                        "(and their recorded cost) that an earlier run left for the same events and budget "
                        "(default: a temporary directory, removed)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot", default=None, metavar="PNG")
    refresh_group = parser.add_argument_group("refresh (RefreshConfig)")
    refresh_flags = collect([("", RefreshConfig)])
    add_options(refresh_group, refresh_flags)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    from trainer.data.formats import read_log

    config = configure(RefreshConfig(), given_options(args, refresh_flags))
    budget = {key: value for key, value in {"epochs": args.epochs, "iterations": args.iterations,
                                            "retrain_epochs": args.retrain_epochs, "tree_init": args.tree_init,
                                            "threads": args.threads}.items() if value is not None}
    frame = read_log(Path(args.data), args.format).frame
    if "category" not in frame:
        frame = frame.assign(category="")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="replay-"))
    for name in ("log", "registry"):  # what a refresh reads and writes: every run starts from the initial model
        shutil.rmtree(work / name, ignore_errors=True)
    started = time.perf_counter()
    print(header(), flush=True)
    try:
        result = replay(frame, work, args.method, budget, args.initial, args.slices, config, args.seed)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result = {"command": command_line(), "source": source_version(), "data": args.data, "method": args.method,
              "budget": budget, "seed": args.seed, "initial": args.initial, "refresh_config": asdict(config),
              "wall_seconds": time.perf_counter() - started, **result}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    for who, rows in result["pooled"].items():
        pairs = [f"{pair} {v['mean']:+.2%} ± {v['se']:.2%} (z {v['z']:.1f})" for pair, v in rows.items()
                 if pair != "recall"]
        print(f"slices 1-{args.slices - 1}, {who}: " + "; ".join(pairs))
    met = result["targets"]
    print(f"refresh - static z {met['refresh_vs_static_z']:.1f}; refresh's recall "
          f"{met['recall_share_of_full_retrain']:.1%} of full retrain's at {met['cpu_share_of_full_retrain']:.1%} of "
          f"its CPU seconds; wall {result['wall_seconds']:.0f} s")
    if args.plot:
        plot(result, Path(args.plot), f"{Path(args.data).parent.name}, {args.method}")


if __name__ == "__main__":
    main()
