"""`compare --train FILE --test FILE`: methods on a published split, scored as the field reports.

Every method learns from the train file (less the validation items carved out of it,
`trainer.data.given_split`) and ranks, for each user with test items, every item but the user's
train items; recall@k and NDCG@k at k = 20 (the peers' tables) and 200 (the JTM paper's M),
averaged over those users. Tree methods are scored as they are served: the trained model is
exported (ONNX scorer, tree, catalogue, with the export's parity checks) and the artifact is
searched by the service's index at its default beam. Seeds change the training (and the
validation users), never the test users, so per-user differences pair across methods and seeds.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import MAX_HISTORY
from trainer.data.given_split import GivenSplit, GivenSplitConfig, load_given_split
from trainer.data.interactions import Interactions
from trainer.data.split import EvalSet, UserSplit, make_samples, sampled_histories
from trainer.deep_retrieval import DeepRetrieval
from trainer.errors import DataError
from trainer.evaluate.compare import (
    SeedFits,
    check_same_options,
    check_same_protocol,
    epochs_run,
    fit_order,
    run_environment,
    training_defaults,
    validation_curve,
)
from trainer.evaluate.metrics import paired_difference, ranking_metrics
from trainer.fit.context import FitContext
from trainer.fit.step import TrainConfig
from trainer.methods import TRAINABLE, build_method
from trainer.run import RUN_FORMAT_VERSION, given_split_of, item_catalog, load_run

log = logging.getLogger(__name__)

KS = (20, 200)
METRICS = tuple(f"{name}@{k}" for k in KS for name in ("recall", "ndcg"))
PAIRED = ("recall@20", "ndcg@20")  # the peers' columns: paired differences against the reference


@dataclass(frozen=True)
class GivenCompareConfig:
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    reference: str | None = None
    split: GivenSplitConfig = field(default_factory=GivenSplitConfig)
    m: int = 200  # validation recall@m chooses epochs and joint iterations
    max_history: int = MAX_HISTORY
    sample_history: str = "before"  # trainer.data.split.HISTORIES
    per_user: bool = False


def fit_context(split: GivenSplit, config: GivenCompareConfig, seed: int, device: str) -> FitContext:
    """Every user of the train file is a training user (the validation users with their kept
    items only); the validation users choose epochs; the test users' truth is nowhere in it."""
    fit_data, valid = split.for_training(seed, config.split)
    users = np.arange(fit_data.n_users, dtype=np.int64)
    user_split = UserSplit(train=users, valid=valid.users, test=split.test.users, seed=seed,
                           valid_fraction=config.split.valid_fraction, test_fraction=0.0)
    return FitContext(data=fit_data, split=user_split, samples=make_samples(fit_data, users, config.max_history,
                                                                          history=config.sample_history),
                      valid=valid, m=config.m, exclude_seen=True, seed=seed, device=device)


def served_top(method: Any, data: Interactions, user_split: UserSplit, seed: int, users: EvalSet, k: int,
               work: Path) -> np.ndarray:
    """(U, k) item ids, the users' train items excluded. A tree method is exported to `work` and
    its artifact searched as the service does; other methods rank with their own `recommend`."""
    if getattr(method, "tree", None) is None or getattr(method, "model", None) is None:
        return method.recommend(users, k, True)
    from service.core.artifact import read_artifact
    from service.core.index import SearchParams, TreeIndex
    from service.scorer import OnnxScorer
    from trainer.export import write_artifact

    items_file = work / "items.npz"
    item_catalog(data, user_split).save(items_file)
    beam = method.config.search_beam(max(KS)) or max(KS)
    write_artifact(method, items_file, work / "artifact", method_name=method.name, metrics={}, k=max(KS), beam=beam,
                   parity_histories=sampled_histories(data.n_items, method.config.scorer.max_history, 50, seed),
                   dataset={"source": data.source, "format": data.format, "users": data.n_users,
                            "items": data.n_items, "fingerprint": data.fingerprint()})
    artifact = read_artifact(work / "artifact")
    index = TreeIndex(artifact.tree, OnnxScorer(artifact.scorer_file, threads=1), artifact.hierarchical,
                      batch_users=256)
    seen = np.split(users.feature_items, users.feature_offsets[1:-1])
    return index.search(users.histories(artifact.history_length), k,
                        SearchParams(beam=artifact.default_beam, exclude=seen)).items


def served_metrics(method: Any, data: Interactions, user_split: UserSplit, seed: int, split: GivenSplit
                   ) -> dict[str, np.ndarray]:
    """Per-user recall@k and NDCG@k of `method` (fitted on `data`, the split's train file less
    its validation items) on the split's test users, through the path that serves it."""
    with tempfile.TemporaryDirectory(prefix="given-split-") as work:
        top = served_top(method, data, user_split, seed, split.test, max(KS), Path(work))
    return ranking_metrics(top, split.test, KS)


def metric_summary(metrics: Mapping[str, np.ndarray]) -> dict:
    """Means and standard errors over users (the form `train` and `evaluate` print and write)."""
    n = len(next(iter(metrics.values())))
    return {**{name: float(values.mean()) for name, values in metrics.items()},
            "users": n, "user_se": {name: float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
                                     for name, values in metrics.items()}}


def metrics_line(summary: Mapping[str, Any]) -> str:
    """One line for the terminal: the peers' columns first."""
    cells = [f"{name} {summary[name]:.4f}" + (f" (± {summary['user_se'][name]:.4f} SE)" if name == "recall@20" else "")
             for name in METRICS]
    return f"{'  '.join(cells)}  on {summary['users']:,} test users of the published split, as served"


@dataclass
class GivenRun:
    """One method on one seed: per-user metrics on the test users, and its cost."""

    seed: int
    metrics: dict[str, np.ndarray]
    seconds: float  # fit and retrieval
    epochs: list[int] | None = None
    curve: list[dict] | None = None  # validation recall per epoch and joint iteration, with the seconds so far

    def to_json(self) -> dict:
        return {"seed": self.seed, "seconds": self.seconds, "epochs": self.epochs, "curve": self.curve,
                "users": {name: values.tolist() for name, values in self.metrics.items()}}

    @classmethod
    def from_json(cls, data: dict) -> GivenRun:
        return cls(seed=int(data["seed"]), seconds=float(data["seconds"]), epochs=data.get("epochs"),
                   curve=data.get("curve"),
                   metrics={name: np.asarray(values, dtype=np.float64) for name, values in data["users"].items()})


def run_given_compare(split: GivenSplit, config: GivenCompareConfig, options: Mapping[str, Any],
                      on_result: Callable[[dict], None] | None = None) -> dict:
    """Fit every method on every seed, score it on the split's test users; the JSON-ready result
    (`on_result` gets it after every fitted method, so a stopped run keeps what it measured)."""
    given = {k: v for k, v in options.items() if v is not None}
    given["max_history"] = config.max_history
    runs: dict[str, list[GivenRun]] = {name: [] for name in config.methods}
    environment = run_environment()
    for seed in config.seeds:
        ctx = fit_context(split, config, seed, given.get("device", TrainConfig.device))
        fits = SeedFits(given, ctx)
        for name in fit_order(config.methods):
            method, started = fits.fit(name)
            metrics = served_metrics(method, ctx.data, ctx.split, seed, split)
            fits.seconds_of[name] = time.perf_counter() - started
            run = GivenRun(seed, metrics, fits.seconds_of[name], epochs_run(method), validation_curve(method))
            runs[name].append(run)
            log.info("seed %d %-9s %s (%.0f s)", seed, name,
                     " ".join(f"{metric} {run.metrics[metric].mean():.4f}" for metric in METRICS), run.seconds)
            if on_result is not None:
                on_result(_result(split, config, options, runs, environment, complete=False))
    result = _result(split, config, options, runs, environment, complete=True)
    if on_result is not None:
        on_result(result)
    return result


def _result(split: GivenSplit, config: GivenCompareConfig, options: Mapping[str, Any],
            runs: dict[str, list[GivenRun]], environment: dict, complete: bool) -> dict:
    runs = {name: seed_runs for name, seed_runs in runs.items() if seed_runs}
    reference = config.reference or config.methods[0]
    result = {
        "complete": complete,
        "protocol": {"name": "given split", "methods": list(config.methods), "seeds": list(config.seeds),
                     "reference": reference, "ks": list(KS), "validation_m": config.m,
                     "max_history": config.max_history, "sample_history": config.sample_history,
                     **asdict(config.split),
                     "features": "all of a test user's train items, file order as time",
                     "truth": "the user's distinct test items", "filter": "the user's train items never recommended"},
        "reference": reference,
        "dataset": split.summary(),
        "results": summarize(runs, reference),
        "options": {**options, "max_history": config.max_history},
        "defaults": training_defaults(),
        "environment": environment,
    }
    if config.per_user:
        result["per_seed"] = {name: [r.to_json() for r in seed_runs] for name, seed_runs in runs.items()}
    return result


def merge_given(parts: list[dict], reference: str | None = None) -> dict:
    """Merge `compare --train/--test --per-user` results of the same split, validation and
    training options (other seeds, or other methods of the same seeds: run them as separate
    processes) into the one-run table. A (method, seed) pair present twice must be identical;
    every method must have every seed."""
    from trainer.errors import DataError

    first = parts[0]
    for part in parts:
        if part.get("protocol", {}).get("name") != "given split":
            raise DataError("cannot merge a published-split result with one of our own protocol")
        if "per_seed" not in part:
            raise DataError("a result without per-user metrics: run compare with --per-user")
        if part["dataset"]["fingerprint"] != first["dataset"]["fingerprint"] or \
                part["dataset"]["test_users"] != first["dataset"]["test_users"]:
            raise DataError("results come from different splits (fingerprints or test users differ)")
        check_same_protocol(first, part, ("ks", "validation_m", "max_history", "sample_history", "valid_fraction",
                                          "valid_holdout"))
        check_same_options(first, part)
    runs: dict[str, dict[int, GivenRun]] = {}
    for part in parts:
        for name, records in part["per_seed"].items():
            for record in records:
                run = GivenRun.from_json(record)
                known = runs.setdefault(name, {}).get(run.seed)
                if known is not None and not all(np.array_equal(known.metrics[m], run.metrics[m]) for m in METRICS):
                    raise DataError(f"{name} on seed {run.seed} appears twice with different results")
                runs[name].setdefault(run.seed, run)
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    for name, by_seed in runs.items():
        if missing := [seed for seed in seeds if seed not in by_seed]:
            raise DataError(f"method {name} is missing seed(s) {missing}: every method needs every seed")
    reference = reference or first["reference"]
    if reference not in runs:
        raise DataError(f"the reference method {reference} is not in the results ({', '.join(runs)})")
    merged_runs = {name: [by_seed[seed] for seed in seeds] for name, by_seed in runs.items()}
    return {**first, "complete": all(part.get("complete", True) for part in parts), "reference": reference,
            "protocol": {**first["protocol"], "seeds": seeds, "methods": list(runs), "reference": reference},
            "results": summarize(merged_runs, reference),
            "per_seed": {name: [r.to_json() for r in rs] for name, rs in merged_runs.items()}}


def summarize(runs: dict[str, list[GivenRun]], reference: str) -> dict:
    """Per method: each metric's mean over seeds with its spread across seeds, and the paired
    difference against `reference` (the same test users, seeds pooled) for recall@20 and NDCG@20."""
    ref = {r.seed: r for r in runs.get(reference, [])}
    results = {}
    for name, seed_runs in runs.items():
        means = {metric: [float(r.metrics[metric].mean()) for r in seed_runs] for metric in METRICS}
        row: dict[str, Any] = {metric: float(np.mean(values)) for metric, values in means.items()}
        row["std"] = {metric: float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                      for metric, values in means.items()}
        row["per_seed"] = means
        row["users"] = len(seed_runs[0].metrics[METRICS[0]])
        row["seconds"] = float(np.mean([r.seconds for r in seed_runs]))
        if all(r.epochs for r in seed_runs):
            row["epochs"] = float(np.mean([sum(r.epochs) for r in seed_runs]))
        paired = [r for r in seed_runs if r.seed in ref]
        if name != reference and paired:
            row["vs_reference"] = {metric: paired_difference(
                np.concatenate([r.metrics[metric] for r in paired]),
                np.concatenate([ref[r.seed].metrics[metric] for r in paired])) for metric in PAIRED}
        results[name] = row
    return results


def format_given_table(result: dict) -> str:
    """Markdown: mean ± std over seeds of each metric (as fractions, as the peers print them)."""
    reference = result["reference"]
    dataset = result["dataset"]
    lines = [f"published split {dataset['train']} / {dataset['test']}: {dataset['test_users']:,} test users, "
             f"seeds {result['protocol']['seeds']}, train items never recommended", "",
             "| Method | " + " | ".join(METRICS) + f" | recall@20 vs {reference} (paired) | NDCG@20 vs {reference} "
             "| epochs | seconds |", "|---" * (len(METRICS) + 5) + "|"]
    for name, row in result["results"].items():
        cells = [f"{row[metric]:.4f} ± {row['std'][metric]:.4f}" for metric in METRICS]
        paired = row.get("vs_reference")
        diffs = ["-", "-"] if paired is None else [
            f"{paired[m]['mean']:+.4f} ± {paired[m]['se']:.4f} (z {paired[m]['z']:+.1f})" for m in PAIRED]
        epochs = "-" if "epochs" not in row else f"{row['epochs']:.3g}"
        lines.append(f"| {name} | {' | '.join(cells)} | {' | '.join(diffs)} | {epochs} | {row['seconds']:.0f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class GivenRunSpec:
    """`train --train FILE --test FILE`: a method fitted on a published split's train file."""

    train: str
    test: str
    method: str
    seed: int = 0
    split: GivenSplitConfig = field(default_factory=GivenSplitConfig)
    m: int = 200  # validation recall@m picks epochs (and joint iterations), as GivenCompareConfig
    max_history: int = MAX_HISTORY
    sample_history: str = "before"


def train_given_run(spec: GivenRunSpec, out: Path, given: Mapping[str, Any] | None = None) -> dict:
    """Fit on every user of the split's train file (validation carved from it), score the test
    users as served, write the run directory; the metrics (means and per-user SEs)."""
    if spec.method not in TRAINABLE:
        raise DataError(f"train supports {', '.join(TRAINABLE)} (the baselines: compare --methods ... "
                        "--train FILE --test FILE)")
    given = {**(given or {}), "max_history": spec.max_history}
    split = load_given_split(Path(spec.train), Path(spec.test))
    config = GivenCompareConfig(methods=(spec.method,), seeds=(spec.seed,), split=spec.split, m=spec.m,
                                max_history=spec.max_history, sample_history=spec.sample_history)
    ctx = fit_context(split, config, spec.seed, given.get("device", TrainConfig.device))
    method = build_method(spec.method, given)
    assert isinstance(method, DeepRetrieval)
    started = time.perf_counter()
    method.fit(ctx)
    metrics = metric_summary(served_metrics(method, ctx.data, ctx.split, spec.seed, split))
    metrics["fit_seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    method.save(out)
    item_catalog(ctx.data, ctx.split).save(out / "items.npz")
    ctx.split.save(out / "split.npz", ctx.data)
    config_json = {
        "format": RUN_FORMAT_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": spec.method, "seed": spec.seed,
        "given_split": {"train": spec.train, "test": spec.test, **asdict(spec.split)},
        "dataset": {**split.summary(), "fingerprint": ctx.data.fingerprint()},
        "max_history": spec.max_history, "sample_history": spec.sample_history, "m": spec.m, "exclude_seen": True,
        "method_config": method.config.to_json(),
    }
    (out / "config.json").write_text(json.dumps(config_json, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def is_given_run(run: Path) -> bool:
    """Whether `run` was trained on a published split (`train --train --test`)."""
    config = run / "config.json"
    return config.exists() and "given_split" in json.loads(config.read_text())


def evaluate_given_run(run: Path, m: int | None = None, beam: int | None = None, exclude_seen: bool | None = None
                       ) -> dict:
    """A published-split run's test metrics, recomputed through the exported artifact (the
    protocol's own knobs, M, beam and the seen-item rule, do not apply to it)."""
    if m is not None or beam is not None or exclude_seen is not None:
        raise DataError("--m, --beam and --exclude-seen apply to runs of our protocol: a published-split run "
                        "reports recall@20/200 and NDCG@20/200 at its artifact's beam, train items excluded", run)
    config, data, split, method = load_run(run)
    given_split, _ = given_split_of(config)
    return {"run": str(run), "method": config["method"], "given_split": config["given_split"],
            **metric_summary(served_metrics(method, data, split, config["seed"], given_split))}
