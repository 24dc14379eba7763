"""`compare`: several methods, several seeds, one protocol, one table (the paper's Table 1).

For each seed the users are split anew, every method is fit on the same training users
(validation users for early stopping) and scored on the same test users, so per-user paired
differences between methods are meaningful.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from trainer.data import Interactions, make_eval_set, make_samples, split_users
from trainer.methods import MethodOptions, build_method
from trainer.metrics import METRICS, UserMetrics, paired_difference, summarize_seeds, user_metrics
from trainer.recommender import FitContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    methods: tuple[str, ...]
    m: int = 200
    seeds: tuple[int, ...] = (0,)
    exclude_seen: bool = False
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    max_history: int = 69
    reference: str | None = None  # paired differences are reported against this method


def run_compare(data: Interactions, config: CompareConfig, options: MethodOptions) -> dict:
    """Fit and evaluate every method on every seed; return the JSON-ready result."""
    per_method: dict[str, list[UserMetrics]] = {name: [] for name in config.methods}
    fit_seconds: dict[str, list[float]] = {name: [] for name in config.methods}
    reference = config.reference or config.methods[0]
    paired: dict[str, list[np.ndarray]] = {name: [] for name in config.methods}
    fidelity: dict[str, list[float]] = {name: [] for name in config.methods}
    brute_recall: dict[str, list[float]] = {name: [] for name in config.methods}
    split_sizes = None
    for seed in config.seeds:
        split = split_users(data.n_users, seed, config.valid_fraction, config.test_fraction)
        split_sizes = {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)}
        ctx = FitContext(
            data=data, split=split,
            samples=make_samples(data, split.train, config.max_history),
            valid=make_eval_set(data, split.valid), m=config.m,
            exclude_seen=config.exclude_seen, seed=seed, device=options.device,
        )
        test = make_eval_set(data, split.test)
        recall_by_method = {}
        fitted: list = []  # fixed-tree methods of this seed: the joint loop's iteration 0
        seconds_of: dict[str, float] = {}
        for name in _fit_order(config.methods):
            method = build_method(name, replace(options, max_history=config.max_history))
            started = time.perf_counter()
            base = next((f for f in fitted if hasattr(method, "can_start_from") and method.can_start_from(f)), None)
            if base is not None:
                method.fit(ctx, start_from=base)
                log.info("%s continues from %s's model (its iteration 0)", name, base.name)
                started -= seconds_of[base.name]  # report the whole cost, shared part included
            else:
                method.fit(ctx)
            if getattr(method, "tree", None) is not None and getattr(method.config, "tree_learning", "") == "none":
                fitted.append(method)
            recommended = method.recommend(test, config.m, config.exclude_seen)
            seconds = time.perf_counter() - started
            seconds_of[name] = seconds
            metrics = user_metrics(recommended, test, config.m)
            per_method[name].append(metrics)
            fit_seconds[name].append(seconds)
            if getattr(method, "tree", None) is not None and hasattr(method, "brute_force"):
                from trainer.run import beam_fidelity

                exact = method.brute_force(test, config.m, config.exclude_seen)
                fidelity[name].append(beam_fidelity(recommended, exact))
                brute_recall[name].append(user_metrics(exact, test, config.m).means()["recall"])
            recall_by_method[name] = metrics.recall
            log.info("seed %d %-8s P %.4f R %.4f F %.4f (%.1fs)", seed, name,
                     *(metrics.means()[k] for k in METRICS), seconds)
        if reference in recall_by_method:
            for name in config.methods:
                paired[name].append(recall_by_method[name] - recall_by_method[reference])

    results = {}
    for name in config.methods:
        summary = summarize_seeds(per_method[name])
        summary["seconds"] = float(np.mean(fit_seconds[name]))
        if paired[name] and name != reference:
            summary["recall_vs_reference"] = paired_difference(np.concatenate(paired[name]), 0.0)
        if fidelity[name]:
            summary["beam_fidelity"] = float(np.mean(fidelity[name]))
            summary["brute_force_recall"] = float(np.mean(brute_recall[name]))
        results[name] = summary
    return {
        "m": config.m,
        "exclude_seen": config.exclude_seen,
        "seeds": list(config.seeds),
        "reference": reference,
        "results": results,
        "dataset": {**data.summary(), "split": split_sizes},
        "protocol": {
            **asdict(config),
            "features": "first half (n // 2) of each held-out user's time-ordered behaviours",
            "truth": "distinct items of the second half",
            "filter": "feature-half items never recommended" if config.exclude_seen else "none (paper)",
        },
    }


def _fit_order(methods: tuple[str, ...]) -> list[str]:
    """Fixed-tree methods before the joint ones, so a joint method can continue from its
    iteration 0 (the table keeps the order the user asked for)."""
    joint = {"jtm-j", "jtm", "jtm-cluster"}
    return [m for m in methods if m not in joint] + [m for m in methods if m in joint]


def format_table(result: dict) -> str:
    """Markdown table in the layout of the paper's Table 1: mean ± std over seeds, in percent."""
    reference = result["reference"]
    lines = [
        f"M = {result['m']}, seeds = {result['seeds']}, filter: {result['protocol']['filter']}, "
        f"test users per seed: {result['results'][next(iter(result['results']))]['users']}",
        "",
        f"| Method | Precision | Recall | F-Measure | Recall SE (users) | Recall vs {reference} (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        cells = [f"{100 * r[k]:.2f}% ± {100 * r['std'][k]:.2f}" for k in METRICS]
        diff = r.get("recall_vs_reference")
        diff_cell = "-" if diff is None else f"{100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} (z {diff['z']:+.1f})"
        lines.append(f"| {name} | {' | '.join(cells)} | {100 * r['user_se']['recall']:.2f} | {diff_cell} |")
    fidelity = {n: r for n, r in result["results"].items() if "beam_fidelity" in r}
    if fidelity:
        lines += ["", f"| Tree method | beam top-{result['m']} overlap with brute force | brute-force recall "
                      "(same model) |", "|---|---|---|"]
        for name, r in fidelity.items():
            lines.append(f"| {name} | {100 * r['beam_fidelity']:.1f}% | {100 * r['brute_force_recall']:.2f}% |")
    return "\n".join(lines)
