"""Paired per-user recall difference between two methods of *different* compare results.

`trainer merge --reference` gives paired differences inside one table; this is for a control
run that merge rightly refuses to pool because it was trained with other options (e.g. JTM-H
given as many epochs as JTM's loop spends). Same data, same seeds, same test users are
checked; the difference is pooled over all seeds' users, as compare does.

    .venv/bin/python -m bench.paired_difference \\
        bench/results/converged/ml-auto-guard-3seeds.json:jtm \\
        bench/results/converged/ml-baselines-3seeds.json:tdm

Either side may list several results, comma-separated (`a-s0.json:jtm,a-s1.json:jtm`): one
seed each, run separately, pooled as one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trainer.evaluate.compare import SeedRun
from trainer.evaluate.metrics import paired_difference


def per_user(spec: str, metric: str) -> tuple[dict, dict[int, np.ndarray]]:
    path, _, method = spec.rpartition(":")
    if not Path(path).is_file():
        raise SystemExit(f"{path}: no such result file")
    result = json.loads(Path(path).read_text())
    if "per_seed" not in result or method not in result["per_seed"]:
        raise SystemExit(f"{path}: no per-user results for {method!r} (run compare with --per-user)")
    runs = [SeedRun.from_json(r) for r in result["per_seed"][method]]
    return result, {run.seed: getattr(run.metrics, metric) for run in runs}


def pooled(specs: str, metric: str) -> tuple[dict, dict[int, np.ndarray]]:
    """per_user over comma-separated specs, their seeds pooled (each seed in one spec only)."""
    first, merged = None, {}
    for spec in specs.split(","):
        result, values = per_user(spec, metric)
        if first is not None and result["dataset"]["fingerprint"] != first["dataset"]["fingerprint"]:
            raise SystemExit(f"{spec}: other data than {specs.split(',')[0]}")
        if set(values) & set(merged):
            raise SystemExit(f"{spec}: seed {sorted(set(values) & set(merged))} already given")
        first = first or result
        merged.update(values)
    return first, merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="RESULT.json:method[,RESULT.json:method...]")
    parser.add_argument("b", help="RESULT.json:method[,...] (the one subtracted)")
    parser.add_argument("--metric", default="recall", choices=("precision", "recall", "f_measure"))
    args = parser.parse_args()
    result_a, a = pooled(args.a, args.metric)
    result_b, b = pooled(args.b, args.metric)
    if result_a["dataset"]["fingerprint"] != result_b["dataset"]["fingerprint"]:
        raise SystemExit("the results come from different data")
    if sorted(a) != sorted(b):
        raise SystemExit(f"the results cover different seeds: {sorted(a)} vs {sorted(b)}")
    for seed in a:
        if len(a[seed]) != len(b[seed]):
            raise SystemExit(f"seed {seed}: different test users ({len(a[seed])} vs {len(b[seed])})")
    seeds = sorted(a)
    diff = paired_difference(np.concatenate([a[s] for s in seeds]), np.concatenate([b[s] for s in seeds]))
    per_seed = ", ".join(f"seed {s}: {100 * (a[s].mean() - b[s].mean()):+.2f}" for s in seeds)
    print(f"{args.a} - {args.b}: {args.metric} {100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} points "
          f"(z {diff['z']:+.1f}, {diff['users']} users; {per_seed})")


if __name__ == "__main__":
    main()
