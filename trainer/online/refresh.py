"""`trainer refresh`: the served model, brought up to date with the traffic it served.

From the registry's current artifact and the Parquet log since its watermark (the last log
segment it has seen, kept in its manifest):

1. hold out, for a share of the users active since the watermark, their latest event: the
   gate's test, kept out of everything below;
2. add the items first seen since (`trainer add-items`: placed by co-consumption in the new
   events, their rows made from the rows of what placed them);
3. continue training the served model (`trainer.export.load_method`) on the new events, their
   users' earlier events within the lookback window as features; every `tree_every`-th refresh
   then takes one tree-learning step (kept only when validation recall improves), every
   `retrain_every`-th trains from scratch on the window instead;
4. export the candidate, score it and the served model on the held-out events
   (`trainer.online.gate`), and publish it through the registry only if it is not worse beyond
   the tolerance. The decision, both scores and their paired difference are kept in the
   registry (`decisions/`) and logged.

Nothing new since the watermark: nothing happens (and it says so). A crash anywhere leaves the
registry as it was, or with the new version complete (publishing is the registry's atomic
copy-then-point); a rerun starts again from what is served.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from service.core.artifact import Artifact, read_artifact
from service.core.registry import Registry
from trainer.config import option
from trainer.errors import DataError
from trainer.online import gate
from trainer.online.event_log import Segments

log = logging.getLogger(__name__)

STAGING = ".refresh"  # inside the registry: candidates are built there, removed when done


@dataclass(frozen=True)
class RefreshConfig:
    fine_tune_epochs: int = option(1, "epochs over the new events per refresh", at_least=1)
    # A share of the active users' latest events: enough users for the paired difference to
    # mean something, few enough that the fine-tune still sees most of the new traffic.
    holdout: float = option(0.1, "share of the users active since the watermark whose latest event judges the "
                            "candidate (kept out of training)", above=0, at_most=0.5)
    tolerance: float = option(0.005, "publish unless the candidate's held-out recall@k is below the served "
                              "model's by more than this (absolute)", at_least=0)
    gate_k: int = option(200, "k of the gate's next-event recall@k", at_least=1)  # the service's default k
    # Tree learning moves items and re-trains: worth it once a few refreshes have changed the
    # model's view of the items, not on every small batch of events.
    tree_every: int = option(4, "a JTM tree-learning step every Nth refresh (0: never)", at_least=0)
    retrain_every: int = option(0, "train from scratch on the lookback window every Nth refresh (0: never)",
                                at_least=0)
    lookback_hours: float = option(24 * 14, "hours of the log that give users their earlier events (and a full "
                                   "retrain its data)", above=0)
    min_events: int = option(1, "refresh only with at least this many new events", at_least=1)
    valid_fraction: float = 0.1  # of the remaining active users: chooses epochs and judges a tree step


class RefreshMetrics:
    """Prometheus metrics of a refresher loop (served with --metrics-port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        self.runs = Counter("jtm_refresh_runs_total", "Refreshes by decision (publish, refuse, nothing, error)",
                            ["decision"], registry=r)
        self.last_run = Gauge("jtm_refresh_last_run_timestamp_seconds", "When the last refresh ended", registry=r)
        self.seconds = Gauge("jtm_refresh_last_duration_seconds", "Wall time of the last refresh", registry=r)
        self.recall = Gauge("jtm_refresh_heldout_recall", "Held-out recall@k at the last judged refresh", ["model"],
                            registry=r)

    def observe(self, decision: dict, seconds: float) -> None:
        self.runs.labels(decision["decision"]).inc()
        self.last_run.set(time.time())
        self.seconds.set(seconds)
        if "candidate_recall" in decision:
            self.recall.labels("served").set(decision["served_recall"])
            self.recall.labels("candidate").set(decision["candidate_recall"])


@dataclass(frozen=True)
class Window:
    """The log a refresh works from: every event of the lookback window (`frame`), which of
    them are new since the watermark, and the held-out latest events."""

    frame: pd.DataFrame  # ingestion order; column `new`
    held_out: pd.Index  # rows of `frame` kept out of training
    watermark: int
    through: int


def refresh(registry_dir: Path, log_dir: Path, config: RefreshConfig, redis_url: str | None = None,
            seed: int = 0) -> dict:
    """One refresh; returns the decision (also kept in the registry when a candidate was judged)."""
    started = time.perf_counter()
    registry = Registry(registry_dir)
    current = registry.current()
    if current is None:
        raise DataError("the registry serves nothing yet: publish a trained artifact first", registry_dir)
    served = read_artifact(registry.path(current))
    lineage = served.manifest.get("log", {})
    watermark = int(lineage.get("watermark", 0))
    segments = Segments(log_dir)
    through = segments.last_seq()
    fresh = segments.read(after=watermark, through=through)
    if len(fresh) < config.min_events:
        message = (f"nothing to do: {len(fresh)} new events since log segment {watermark} "
                   f"(at least {config.min_events} needed); {current} keeps serving")
        log.info(message)
        return {"decision": "nothing", "served": current, "new_events": len(fresh), "watermark": watermark,
                "message": message}

    window = _window(segments, fresh, watermark, through, config, seed)
    phases = {"read": time.perf_counter() - started}
    count = int(lineage.get("refreshes", 0)) + 1
    mode = ("retrain" if config.retrain_every and count % config.retrain_every == 0 else
            "tree" if config.tree_every and count % config.tree_every == 0 else "fine-tune")
    staging = Path(registry_dir) / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # what a crashed refresh left
    staging.mkdir(parents=True)
    try:
        candidate, added = _candidate(served, window, mode, config, staging, seed,
                                      {"watermark": through, "previous_watermark": watermark, "refreshes": count,
                                       "new_events": int(window.frame["new"].sum()), "mode": mode}, phases)
        gate_started = time.perf_counter()
        held_out = _held_out(window)
        before, after = gate.score(served, held_out, config.gate_k), gate.score(candidate, held_out, config.gate_k)
        verdict = gate.judge(before, after, config.tolerance)
        phases["gate"] = time.perf_counter() - gate_started
        reason = (None if len(held_out) else
                  "no held-out user (a user with a new event and an earlier one) to judge the candidate by")
        decision = {
            "decision": "publish" if verdict["publish"] else "refuse", "served": current,
            "candidate": candidate.version, "mode": mode, "watermark": {"from": watermark, "to": through},
            "new_events": int(window.frame["new"].sum()), "held_out_users": len(held_out), "k": config.gate_k,
            **{key: value for key, value in verdict.items() if key != "publish"},
            "new_items": {"added": len(added), "coverage": gate.coverage(after, added)},
            "seconds": time.perf_counter() - started, "phases": phases, "time": time.time(),
            **({"reason": reason} if reason else {}),
        }
        registry.record_decision(decision)
        paired = decision["paired_difference"]
        log.info("refresh %s (%s, %d new events, %d new items): held-out recall@%d %.4f -> %.4f "
                 "(paired %+.4f +- %.4f, %d users): %s", candidate.version, mode, decision["new_events"], len(added),
                 config.gate_k, decision["served_recall"], decision["candidate_recall"], paired["mean"], paired["se"],
                 len(held_out), decision["decision"])
        if verdict["publish"]:
            from trainer.publish import publish

            publish(candidate.path, Path(registry_dir), redis_url)
        return decision
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _window(segments: Segments, fresh: pd.DataFrame, watermark: int, through: int, config: RefreshConfig,
            seed: int) -> Window:
    """The lookback window before the newest new event. New events older than it (the first
    refresh after a training, whose watermark is 0, sees the whole log as new) are passed over:
    the watermark still moves past them."""
    start = float(fresh["timestamp"].max()) - 3600 * config.lookback_hours
    earlier = segments.read(through=watermark, since=start)
    earlier = earlier[earlier["timestamp"] >= start]
    fresh = fresh[fresh["timestamp"] >= start]
    frame = pd.concat([earlier.assign(new=False), fresh.assign(new=True)], ignore_index=True)
    # Held out: the latest new event of a share of the users with a new event and an earlier one.
    order = frame.sort_values("timestamp", kind="stable")
    last_new = order[order["new"]].groupby("user_id").tail(1)
    counts = frame.groupby("user_id").size()
    candidates = last_new[last_new["user_id"].map(counts) >= 2]
    rng = np.random.default_rng([seed, through])
    n = int(np.ceil(config.holdout * len(candidates)))
    chosen = candidates.index[np.sort(rng.permutation(len(candidates))[:n])] if n else pd.Index([])
    return Window(frame, pd.Index(chosen), watermark, through)


def _held_out(window: Window) -> gate.HeldOut:
    """Each held-out event with its user's earlier events in the window (time order)."""
    frame = window.frame.sort_values("timestamp", kind="stable")
    users = set(frame.loc[window.held_out, "user_id"])
    by_user = {user: group for user, group in frame[frame["user_id"].isin(users)].groupby("user_id", sort=False)}
    histories, truth = [], []
    for row in window.held_out:
        events = by_user[frame.at[row, "user_id"]]
        position = events.index.get_loc(row)
        histories.append(events["item_id"].iloc[:position].to_numpy(dtype=object))
        truth.append(frame.at[row, "item_id"])
    return gate.HeldOut(histories, np.asarray(truth, dtype=object))


def _candidate(served: Artifact, window: Window, mode: str, config: RefreshConfig, staging: Path, seed: int,
               lineage: dict, phases: dict[str, float]) -> tuple[Artifact, list[str]]:
    """Build the candidate artifact in `staging`; returns it and the original ids of the items
    added. `phases` gets the seconds of each step."""
    training = window.frame.drop(index=window.held_out)
    started = time.perf_counter()
    base, added = _with_new_items(served, training, staging)
    phases["add_items"] = time.perf_counter() - started
    started = time.perf_counter()
    if mode == "retrain":
        method, items_file = _retrain(served, training, config, staging, seed)
    else:
        method = _continue(base, training, mode, config, seed)
        items_file = _recent_popularity(base, training, staging / "items.npz")
    phases["train"] = time.perf_counter() - started
    started = time.perf_counter()
    from trainer.data.split import sampled_histories
    from trainer.export import write_artifact

    assert method.tree is not None
    k = min(served.default_k, method.tree.n_items)
    sections = {"log": lineage, "catalogue": base.manifest.get("catalogue")}
    manifest = write_artifact(
        method, items_file, staging / "candidate", method_name=served.manifest.get("method", method.config.method),
        metrics={}, k=k, beam=served.default_beam,
        parity_histories=sampled_histories(method.tree.n_items, method.config.scorer.max_history, 50, seed),
        dataset=served.manifest.get("dataset") or {}, sections={k_: v for k_, v in sections.items() if v is not None})
    log.info("candidate %s written (%s)", manifest["version"], mode)
    candidate = read_artifact(staging / "candidate")
    phases["export"] = time.perf_counter() - started
    return candidate, added


def _recent_popularity(base: Artifact, training: pd.DataFrame, path: Path) -> Path:
    """`base`'s catalogue, written to `path` with its popularity list (what a user with no known
    item is served) ranked by the window's events, items without one after them in their old
    order: the fallback follows what is popular now, as a retrain's would (the replay benchmark
    found the served list frozen at the initial training's)."""
    catalog = base.catalog
    codes = catalog.items.lookup(list(training["item_id"]))
    counts = np.bincount(codes[codes >= 0], minlength=catalog.n_items)
    old_rank = np.full(catalog.n_items, catalog.n_items, dtype=np.int64)
    old_rank[catalog.popular] = np.arange(len(catalog.popular))
    listed = (counts > 0) | (old_rank < catalog.n_items)
    order = np.lexsort((old_rank, -counts))
    replace(catalog, popular=order[listed[order]].astype(np.int32)).save(path)
    return path


def _with_new_items(served: Artifact, training: pd.DataFrame, staging: Path) -> tuple[Artifact, list[str]]:
    """`served` grown by the items of `training` it does not know (add-items: co-consumption in
    these events places them), or `served` itself when there are none. Ids that cannot be of the
    catalogue's type (text where its ids are integers) are left out, with a warning."""
    known = served.catalog.items.lookup(list(training["item_id"]))
    unknown = training[known < 0]
    if served.catalog.items.numeric:
        integral = pd.to_numeric(unknown["item_id"], errors="coerce")
        fits = integral.notna() & (integral == integral.round())
        if not fits.all():
            log.warning("%d events name %d item ids that are not integers, as the catalogue's are: left out",
                        int((~fits).sum()), unknown.loc[~fits, "item_id"].nunique())
        unknown = unknown[fits]
    if not len(unknown):
        return served, []
    from trainer.catalogue.update import add_items

    items = unknown.drop_duplicates("item_id")[["item_id", "category_id"]]
    items = items.assign(category_id=items["category_id"].fillna(""))
    with_category = (items["category_id"] != "").all()
    items[["item_id", "category_id"] if with_category else ["item_id"]].to_csv(staging / "new_items.csv", index=False)
    training[["user_id", "item_id", "timestamp"]].to_csv(staging / "events.csv", index=False)
    add_items(served.path, staging / "new_items.csv", staging / "added", events=staging / "events.csv",
              fmt="generic")
    return read_artifact(staging / "added"), [str(i) for i in items["item_id"]]


def _interactions(frame: pd.DataFrame, source: Path):
    """The log's events as `Interactions` (timestamps in microseconds, categories when every
    event names one), users with at least two events."""
    from trainer.data.formats import RawLog
    from trainer.data.interactions import build_interactions

    raw = pd.DataFrame({"user": frame["user_id"].astype(str).to_numpy(),
                        "item": frame["item_id"].astype(str).to_numpy(),
                        "timestamp": (frame["timestamp"].to_numpy() * 1e6).astype(np.int64)})
    if frame["category_id"].notna().all() and (frame["category_id"] != "").all():
        raw["category"] = frame["category_id"].astype(str).to_numpy()
    return build_interactions(RawLog(raw, "generic", source), min_interactions=2)


def _context(data, samples_since: float | None, config: RefreshConfig, m: int, seed: int):
    """Training context: the active users' events; a validation share of the users (at least
    10 of them) is held out of it, to choose epochs and judge a tree step; samples only from
    `samples_since` on (None: every event)."""
    from trainer.data.split import SampleSet, UserSplit, make_eval_set, make_samples
    from trainer.fit.context import FitContext

    users = np.random.default_rng(seed).permutation(data.n_users)
    n_valid = int(round(config.valid_fraction * data.n_users)) if data.n_users >= 10 else 0
    valid, train = np.sort(users[:n_valid]), np.sort(users[n_valid:])
    samples = make_samples(data, train)
    if samples_since is not None:
        keep = data.timestamp[samples.rows] >= int(samples_since * 1e6)
        samples = SampleSet(samples.items, samples.rows[keep], samples.first[keep], samples.max_history)
    split = UserSplit(train=train, valid=valid, test=np.zeros(0, dtype=np.int64), seed=seed,
                      valid_fraction=config.valid_fraction, test_fraction=0.0)
    return FitContext(data=data, split=split, samples=samples, valid=make_eval_set(data, valid), m=m,
                      exclude_seen=False, seed=seed)


def _continue(base: Artifact, training: pd.DataFrame, mode: str, config: RefreshConfig, seed: int):
    """The served model (grown by the new items), trained on the new events; in "tree" mode
    then one tree-learning step, kept when validation recall improves."""
    from trainer.export import load_method
    from trainer.fit.epochs import seed_everything, train_on_tree
    from trainer.incremental import one_tree_step, reindex

    method = load_method(base)
    data, dropped = reindex(_interactions(training, base.path), base.catalog)
    first_new = float(training.loc[training["new"], "timestamp"].min())
    ctx = _context(data, first_new, config, base.default_k, seed)
    if not len(ctx.samples):
        raise DataError("no new event has an earlier event of its user to learn from")
    seed_everything(seed)
    train = replace(method.config.train, epochs=config.fine_tune_epochs)
    assert method.model is not None and method.tree is not None
    method.history = train_on_tree(method.model, method.tree, ctx, train, method.config.search_beam(ctx.m),
                                   method.config.method)
    if mode == "tree" and len(ctx.valid):
        one_tree_step(method, ctx, method.history)
    log.info("fine-tuned on %d samples of %d users (%d events of unknown items dropped)", len(ctx.samples),
             data.n_users, dropped)
    return method


def _retrain(served: Artifact, training: pd.DataFrame, config: RefreshConfig, staging: Path, seed: int):
    """A model trained from scratch on the window, with the served model's configuration."""
    from trainer.deep_retrieval import DeepRetrieval
    from trainer.export import load_method
    from trainer.fit.epochs import seed_everything
    from trainer.run import item_catalog

    template = load_method(served).config
    data = _interactions(training, served.path)
    ctx = _context(data, None, config, served.default_k, seed)
    tree = None if template.tree is None else replace(template.tree, init="auto")  # the window's own categories
    seed_everything(seed)
    method = DeepRetrieval(replace(template, tree=tree, train=replace(template.train, snapshot_epoch=None)))
    method.fit(ctx)
    item_catalog(data, ctx.split).save(staging / "retrained_items.npz")
    return method, staging / "retrained_items.npz"
