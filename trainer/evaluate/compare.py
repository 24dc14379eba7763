"""`compare`: several methods, several seeds, one protocol, one table (the paper's Table 1).

For each seed the users are split anew, every method is fit on the same training users
(validation users for early stopping) and scored on the same test users, so per-user paired
differences between methods are meaningful.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trainer.data.interactions import Interactions
from trainer.data.split import make_eval_set
from trainer.errors import DataError
from trainer.evaluate.metrics import METRICS, UserMetrics, paired_difference, summarize_seeds
from trainer.evaluate.protocol import EvalProtocol, evaluate
from trainer.fit.context import FitContext
from trainer.fit.step import TrainConfig
from trainer.methods import METHODS, build_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    methods: tuple[str, ...]
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    seeds: tuple[int, ...] = (0,)
    reference: str | None = None  # paired differences are reported against this method
    per_user: bool = False  # keep per-user metrics of every seed in the result (for merging)


def run_compare(data: Interactions, config: CompareConfig, options: Mapping[str, Any],
                on_result: Callable[[dict], None] | None = None) -> dict:
    """Fit and evaluate every method on every seed; return the JSON-ready result.

    `options`: every method flag's value, None where the flag was not given (each method keeps
    its own default there); recorded with the result, so `merge_results` can refuse to pool
    runs trained differently. With `per_user`, the result also keeps each seed's per-user
    metrics, so that results of runs on other seeds (or machines) can be merged exactly
    (`merge_results`). `on_result` gets the result so far after every fitted method
    (`"complete": false` until the end), so a run of hours that is stopped keeps what it measured."""
    protocol = config.protocol
    given = {k: v for k, v in options.items() if v is not None}
    given["max_history"] = protocol.max_history
    runs: dict[str, list[SeedRun]] = {name: [] for name in config.methods}
    split_sizes = None
    environment = run_environment()  # once: the result is rewritten after every method
    for seed in config.seeds:
        split = protocol.split(data, seed)
        split_sizes = {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)}
        ctx = protocol.fit_context(data, split, seed, given.get("device", TrainConfig.device))
        test = make_eval_set(data, split.test)
        fits = SeedFits(given, ctx)
        for name in fit_order(config.methods):
            method, started = fits.fit(name)
            fit_seconds = time.perf_counter() - started
            scored = evaluate(method, test, protocol.m, protocol.exclude_seen, fidelity=True)
            seconds = fit_seconds + scored.seconds  # fit and retrieval, not the fidelity scan
            fits.seconds_of[name] = seconds
            metrics = scored.metrics
            run = SeedRun(seed=seed, metrics=metrics, seconds=seconds, epochs=epochs_run(method),
                          fidelity=scored.fidelity, brute_force_recall=scored.brute_force_recall,
                          curve=validation_curve(method))
            if getattr(method, "joint_history", None) is not None:
                run.joint = method.joint_history.to_json()  # L(theta, pi) and recall per iteration
            run.tuning = getattr(method, "tuning", None) or None  # the grid a tuned baseline chose from
            runs[name].append(run)
            log.info("seed %d %-8s P %.4f R %.4f F %.4f (%.1fs)", seed, name,
                     *(metrics.means()[k] for k in METRICS), seconds)
            if on_result is not None:
                on_result(_result(data, config, options, runs, split_sizes, environment, complete=False))
    result = _result(data, config, options, runs, split_sizes, environment, complete=True)
    if on_result is not None:
        on_result(result)
    return result


class SeedFits:
    """The methods of one seed, fitted in `fit_order` on the same context: a joint method
    continues from the fixed-tree method fitted before it (its iteration 0) instead of
    training that again, and is charged the shared part of its cost."""

    def __init__(self, given: Mapping[str, Any], ctx: FitContext) -> None:
        self.given, self.ctx = given, ctx
        self.fitted: list = []  # fixed-tree methods: a joint method's possible iteration 0
        self.seconds_of: dict[str, float] = {}  # each method's whole cost, set by the caller once scored

    def fit(self, name: str) -> tuple[Any, float]:
        """The fitted method and the `time.perf_counter()` its cost counts from."""
        method = build_method(name, self.given)
        started = time.perf_counter()
        base = next((f for f in self.fitted if hasattr(method, "can_start_from") and method.can_start_from(f)), None)
        if base is not None:
            method.fit(self.ctx, start_from=base)
            log.info("%s continues from %s's model (its iteration 0)", name, base.name)
            started -= shared_seconds(base, self.seconds_of[base.name])  # report the whole cost
        else:
            method.fit(self.ctx)
        if getattr(method, "tree", None) is not None and not METHODS[name].joint:
            self.fitted.append(method)
        return method, started


def run_environment() -> dict:
    """Where the result was computed. Training is bit-reproducible on one machine, but float
    sums may differ on another CPU (a seed-0 rerun on another VM changed 9 of 94 users'
    recall by one item), so duplicates from other machines can disagree in merge."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def shared_seconds(base, base_seconds: float) -> float:
    """The part of `base`'s cost that a joint method continuing from it shares: all of it, or
    (--equal-epochs, where the base trained on past the joint method's iteration 0) the
    training seconds of the epochs up to its snapshot."""
    snapshot = getattr(base.history, "snapshot", None)
    if snapshot is None:
        return base_seconds
    return float(sum(e.seconds for e in snapshot.epochs))


def validation_curve(method) -> list[dict] | None:
    """Validation recall against seconds of training so far (scorer methods; None for others)."""
    if not hasattr(method, "validation_curve"):
        return None
    return method.validation_curve() or None


def epochs_run(method) -> list[int] | None:
    """Training epochs each phase of `method` ran (joint: iteration 0, then each iteration)."""
    if hasattr(method, "epochs_run"):
        return method.epochs_run() or None
    history = getattr(method, "history", None)
    return [len(history.epochs)] if history is not None else None


def _result(data: Interactions, config: CompareConfig, options: Mapping[str, Any], runs: dict[str, list[SeedRun]],
            split_sizes: dict | None, environment: dict, complete: bool) -> dict:
    """The JSON-ready result of the methods fitted so far (all of them when `complete`).
    `options` (the training budget and model overrides) is kept, so `merge_results` can
    refuse to pool runs trained differently."""
    runs = {name: seed_runs for name, seed_runs in runs.items() if seed_runs}
    result = {
        "complete": complete,
        "m": config.protocol.m,
        "exclude_seen": config.protocol.exclude_seen,
        "seeds": list(config.seeds),
        "reference": config.reference or config.methods[0],
        "results": summarize_runs(runs, config.reference or config.methods[0]),
        "dataset": {**data.summary(), "split": split_sizes},
        "protocol": {
            "methods": list(config.methods), **asdict(config.protocol), "seeds": list(config.seeds),
            "reference": config.reference, "per_user": config.per_user,
            "features": "first half (n // 2) of each held-out user's time-ordered behaviours",
            "truth": "distinct items of the second half",
            "filter": "feature-half items never recommended" if config.protocol.exclude_seen else "none (paper)",
        },
        "options": {**options, "max_history": config.protocol.max_history},
        "defaults": training_defaults(),
        "environment": environment,
    }
    if config.per_user:
        result["per_seed"] = {name: [r.to_json() for r in seed_runs] for name, seed_runs in runs.items()}
    return result


@dataclass
class SeedRun:
    """One method on one seed: per-user metrics and what the table reports beside them."""

    seed: int
    metrics: UserMetrics
    seconds: float
    fidelity: float | None = None
    brute_force_recall: float | None = None
    joint: dict | None = None  # joint methods: the loop's history (global loss, moves, recall)
    epochs: list[int] | None = None  # epochs run per training phase (joint: per iteration)
    tuning: list[dict] | None = None  # methods that tune on validation users (two-tower): each candidate
    curve: list[dict] | None = None  # validation recall per epoch and joint iteration, with the seconds so far

    def to_json(self) -> dict:
        return {"seed": self.seed, "seconds": self.seconds, "fidelity": self.fidelity,
                "brute_force_recall": self.brute_force_recall, "joint": self.joint, "epochs": self.epochs,
                "tuning": self.tuning, "curve": self.curve,
                "users": {k: getattr(self.metrics, k).tolist() for k in METRICS}}

    def same_metrics(self, other: SeedRun) -> bool:
        """Identical per-user metrics (the same users, the same recommendations' scores)."""
        return all(np.array_equal(getattr(self.metrics, k), getattr(other.metrics, k)) for k in METRICS)

    @classmethod
    def from_json(cls, data: dict) -> SeedRun:
        metrics = UserMetrics(**{k: np.asarray(data["users"][k], dtype=np.float64) for k in METRICS})
        return cls(seed=int(data["seed"]), metrics=metrics, seconds=float(data["seconds"]),
                   fidelity=data.get("fidelity"), brute_force_recall=data.get("brute_force_recall"),
                   joint=data.get("joint"), epochs=data.get("epochs"), tuning=data.get("tuning"),
                   curve=data.get("curve"))


def summarize_runs(runs: dict[str, list[SeedRun]], reference: str) -> dict:
    """Table rows: mean ± std over seeds, per-user SE, paired recall difference against
    `reference` (same users, all seeds pooled), beam-search fidelity for tree methods."""
    by_seed_reference = {r.seed: r.metrics.recall for r in runs.get(reference, [])}
    results = {}
    for name, seed_runs in runs.items():
        summary = summarize_seeds([r.metrics for r in seed_runs])
        summary["seconds"] = float(np.mean([r.seconds for r in seed_runs]))
        if all(r.epochs for r in seed_runs):  # results written before epochs were recorded lack them
            summary["epochs"] = float(np.mean([sum(r.epochs) for r in seed_runs]))
        if name != reference and by_seed_reference:
            diffs = [r.metrics.recall - by_seed_reference[r.seed] for r in seed_runs if r.seed in by_seed_reference]
            if diffs:
                summary["recall_vs_reference"] = paired_difference(np.concatenate(diffs), 0.0)
        fidelity = [r.fidelity for r in seed_runs if r.fidelity is not None]
        if fidelity:
            summary["beam_fidelity"] = float(np.mean(fidelity))
            summary["brute_force_recall"] = float(np.mean([r.brute_force_recall for r in seed_runs
                                                           if r.brute_force_recall is not None]))
        results[name] = summary
    return results


# Options that change where or how fast a method runs, not what it learns.
_EXECUTION_OPTIONS = ("device", "workers", "kernel", "threads")


def merge_results(parts: list[dict], reference: str | None = None) -> dict:
    """Merge `compare --per-user` results on the same data and protocol into one table,
    exactly as if one run had covered all their seeds and methods.

    Parts may hold other seeds (seeds run in parallel) or other methods of the same seed (a
    method added later, or a long run split up): every (method, seed) pair is pooled. A pair
    that appears twice is accepted only when both copies have identical per-user metrics (a
    reproducible rerun); every method must end up with the same seeds, so that mean ± std
    and the paired differences compare like with like. A run that did not finish (complete:
    false) contributes the methods it finished; the merge is complete when every method any
    part asked for is there. `reference` re-bases the paired differences (default: the first
    part's reference)."""
    if not parts:
        raise DataError("nothing to merge")
    for part in parts:
        if "per_seed" not in part:
            raise DataError("a result without per-user metrics: run compare with --per-user")
    first = parts[0]
    for part in parts[1:]:
        if part["dataset"]["fingerprint"] != first["dataset"]["fingerprint"]:
            raise DataError("results come from different data (fingerprints differ)")
        check_same_protocol(first, part, ("m", "exclude_seen", "valid_fraction", "test_fraction", "max_history",
                                          "sample_history"))
        check_same_options(first, part)
    if any("options" not in part for part in parts):
        log.warning("merge: %d of %d results do not record their training options (written by an older "
                    "version): make sure all parts ran with the same --epochs/--iterations/... flags",
                    sum("options" not in part for part in parts), len(parts))
    runs: dict[str, dict[int, SeedRun]] = {}
    for part in parts:
        for name, records in part["per_seed"].items():
            by_seed = runs.setdefault(name, {})
            for record in records:
                run = SeedRun.from_json(record)
                if run.seed in by_seed:
                    if not by_seed[run.seed].same_metrics(run):
                        raise DataError(f"{name} on seed {run.seed} appears twice with different results")
                    log.info("merge: %s on seed %d appears twice with identical results; kept once",
                             name, run.seed)
                    continue
                by_seed[run.seed] = run
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    for name, by_seed in runs.items():
        missing = [seed for seed in seeds if seed not in by_seed]
        if missing:
            raise DataError(f"method {name} is missing seed(s) {missing}: every method needs every seed")
    reference = reference or first["reference"]
    if reference not in runs:
        raise DataError(f"the reference method {reference} is not in the results ({', '.join(runs)})")
    wanted = list(dict.fromkeys(name for part in parts for name in part["protocol"].get("methods", part["per_seed"])))
    lacking = [name for name in wanted if name not in runs]
    if lacking:
        log.warning("merge: no results for %s (a run that did not finish): the table leaves them out",
                    ", ".join(lacking))
    order = [name for name in wanted if name in runs] + [name for name in runs if name not in wanted]
    merged_runs = {name: [runs[name][seed] for seed in seeds] for name in order}
    merged = {**first, "complete": not lacking, "seeds": seeds, "reference": reference,
              "results": summarize_runs(merged_runs, reference)}
    merged["protocol"] = {**first["protocol"], "seeds": seeds, "methods": order, "reference": reference}
    merged["per_seed"] = {name: [r.to_json() for r in rs] for name, rs in merged_runs.items()}
    environments = [part["environment"] for part in parts if "environment" in part]
    merged.pop("environment", None)
    if environments:  # every machine the parts ran on
        merged["environments"] = [e for i, e in enumerate(environments) if e not in environments[:i]]
    return merged


def training_defaults() -> dict:
    """The values an option left at None (the method's default) stands for, recorded with
    every result: a default that changes between versions must not let merge pool results
    trained differently."""
    from trainer.joint import JointConfig

    train, joint = TrainConfig(), JointConfig()
    return {"leaf_negatives": train.leaf_negatives, "lr": train.lr, "tree_judge": joint.learning.judge,
            "internal_init": joint.internal_init}


# What each default was before results recorded it.
_DEFAULTS_BEFORE_RECORDING = {"leaf_negatives": 100, "lr": 1e-3, "tree_judge": "trained", "internal_init": "keep"}


# Results written before a flag was renamed recorded it under its old key.
_RENAMED_OPTIONS = {"guard": "tree_guard"}
# On/off flags, recorded as None (not given) by older versions and as False now.
_SWITCHES = ("retrain_unchanged", "equal_epochs", "beam_aware")


def _effective_options(part: dict) -> dict:
    options = {_RENAMED_OPTIONS.get(k, k): v for k, v in part["options"].items()}
    options.update({k: bool(options.get(k)) for k in _SWITCHES})
    defaults = {**_DEFAULTS_BEFORE_RECORDING, **part.get("defaults", {})}
    return {k: defaults.get(k) if v is None and k in defaults else v for k, v in options.items()}


def check_same_protocol(first: dict, other: dict, keys: tuple[str, ...]) -> None:
    """Refuse to pool results whose protocols differ in any of `keys` (a result written before
    `sample_history` existed trained on the behaviours before each sample)."""
    for key in keys:
        mine, theirs = (part["protocol"].get(key, "before" if key == "sample_history" else None)
                        for part in (first, other))
        if mine != theirs:
            raise DataError(f"results differ in {key}: {mine} vs {theirs}")


def check_same_options(first: dict, other: dict) -> None:
    """Refuse to pool results trained with different budgets or model settings. Results
    written before the options were recorded cannot be checked: say so, and go on."""
    if "options" not in first or "options" not in other:
        return  # cannot be checked; merge_results warns once
    theirs = _effective_options(first), _effective_options(other)
    keys = (set(theirs[0]) | set(theirs[1])) - set(_EXECUTION_OPTIONS)
    differ = sorted(k for k in keys if theirs[0].get(k) != theirs[1].get(k))
    if differ:
        detail = ", ".join(f"{k}: {theirs[0].get(k)} vs {theirs[1].get(k)}" for k in differ)
        raise DataError(f"results were trained with different options ({detail})")


def fit_order(methods: tuple[str, ...]) -> list[str]:
    """Fixed-tree methods before the joint ones, so a joint method can continue from its
    iteration 0 (the table keeps the order the user asked for)."""
    return [m for m in methods if not METHODS[m].joint] + [m for m in methods if METHODS[m].joint]


def format_table(result: dict) -> str:
    """Markdown table in the layout of the paper's Table 1: mean ± std over seeds, in percent."""
    reference = result["reference"]
    lines = [
        f"M = {result['m']}, seeds = {result['seeds']}, filter: {result['protocol']['filter']}, "
        f"test users per seed: {result['results'][next(iter(result['results']))]['users']}",
        "",
        f"| Method | Precision | Recall | F-Measure | Recall SE (users) | Recall vs {reference} (paired) "
        "| epochs trained |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        cells = [f"{100 * r[k]:.2f}% ± {100 * r['std'][k]:.2f}" for k in METRICS]
        diff = r.get("recall_vs_reference")
        diff_cell = "-" if diff is None else f"{100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} (z {diff['z']:+.1f})"
        epochs = "-" if "epochs" not in r else f"{r['epochs']:.3g}"  # a mean over seeds: 5.33, not 5.33333
        lines.append(f"| {name} | {' | '.join(cells)} | {100 * r['user_se']['recall']:.2f} | {diff_cell} "
                     f"| {epochs} |")
    fidelity = {n: r for n, r in result["results"].items() if "beam_fidelity" in r}
    if fidelity:
        lines += ["", f"| Approximate method | top-{result['m']} overlap with brute force (beam search, ANN) "
                      "| brute-force recall "
                      "(same model) |", "|---|---|---|"]
        for name, r in fidelity.items():
            lines.append(f"| {name} | {100 * r['beam_fidelity']:.1f}% | {100 * r['brute_force_recall']:.2f}% |")
    lines += _joint_lines(result)
    return "\n".join(lines)


def _joint_lines(result: dict) -> list[str]:
    """Per joint method and seed: the global loss L(theta, pi) per iteration (equation 2,
    per sample), each tree-learning step's loss before and after with the model fixed (summed
    over the samples tree learning used; the reports hold -L, the objective it maximises), the
    share of items moved and validation recall, so that "the loss does not rise" can be read
    off the table. Needs the per-seed records (`--per-user`)."""
    joint = [(name, run) for name, runs in result.get("per_seed", {}).items() for run in runs if run.get("joint")]
    if not joint:
        return []
    lines = ["", "| Joint method | seed | L(θ, π) per iteration | tree step, model fixed: L before → after "
                 "(sum) | items moved | validation recall | category purity | best |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in joint:
        its = run["joint"]["iterations"]
        loss = " → ".join(f"{it['global_loss']:.4f}" for it in its)
        steps = ", ".join(f"{-it['objective_before']:,.0f} → {-it['objective_after']:,.0f}" for it in its
                          if it.get("objective_after") is not None and it.get("objective_before") is not None)
        moved = ", ".join(f"{100 * it['moved_fraction']:.1f}%" for it in its[1:])
        recall = " → ".join(f"{100 * it['valid']['recall']:.2f}" for it in its)
        purity = "-"
        if its[0].get("category_purity"):
            level = its[0]["purity_level"]
            purity = f"level {level}: " + " → ".join(f"{100 * it['category_purity'][level - 1]:.1f}%" for it in its)
        lines.append(f"| {name} | {run['seed']} | {loss} | {steps or '-'} | {moved or '-'} | {recall} "
                     f"| {purity} | {run['joint']['best_iteration']} |")
    return lines
