"""Tune JTM's joint loop on validation users: several loop settings from one iteration-0 model.

The joint loop has knobs the paper leaves open (re-initialising internal nodes after a tree step,
the guard that keeps the old tree when the learnt one scores worse, the gap d, the sample cap
per item, retraining epochs). This trains JTM-H once (iteration 0), then runs Algorithm 1 from
that same model under each variant and reports validation recall@M and L(theta, pi) per
iteration. Test users are never touched: the split's test part is not even loaded into an
evaluation set, so the results can pick settings without tuning on the test split.

    .venv/bin/python -m experiments.tune_joint --data ../shared/data/movielens-100k/u.data \\
        --epochs 3 --iterations 2 --retrain-epochs 1 \\
        --variant default: --variant mean:internal_init=mean --variant noguard:guard=false \\
        --json bench/results/tune_joint_ml.json --plot bench/results/tune_joint_ml.png

A variant is `NAME:key=value,key=value` over the method flags' keys (`trainer.cli.method_flag_keys`)
(internal_init, guard, gap, max_samples_per_item, retrain_epochs, iterations, lr, ...).
Prints a table and writes JSON (and the recall/loss plot with one line per variant).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bench import command_line
from trainer.cli import method_flag_keys
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.deep_retrieval import DeepRetrieval
from trainer.fit.context import FitContext
from trainer.joint import plot_joint
from trainer.methods import build_method


def parse_variant(spec: str) -> tuple[str, dict]:
    """`name:key=value,...` -> (name, overrides), values typed from their text."""
    name, _, body = spec.partition(":")
    if not name:
        raise SystemExit(f"variant {spec!r}: expected NAME:key=value,...")
    known = method_flag_keys()
    overrides: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in known:
            raise SystemExit(f"variant {name}: unknown option {key!r} (one of {sorted(known)})")
        if value.lower() in ("true", "false", "on", "off"):
            overrides[key] = value.lower() in ("true", "on")
        else:
            try:
                overrides[key] = int(value)
            except ValueError:
                try:
                    overrides[key] = float(value)
                except ValueError:
                    overrides[key] = value
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--m", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=None, help="iteration 0's epochs (JTM-H)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--retrain-epochs", type=int, default=None)
    parser.add_argument("--variant", action="append", required=True, help="NAME:key=value,... (repeatable)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    variants = [parse_variant(v) for v in args.variant]
    base_options = {"epochs": args.epochs, "iterations": args.iterations, "retrain_epochs": args.retrain_epochs}
    data = load_interactions(DataConfig(path=args.data))
    split = split_users(data.n_users, args.seed)
    ctx = FitContext(data=data, split=split, samples=make_samples(data, split.train),
                     valid=make_eval_set(data, split.valid), m=args.m, exclude_seen=False, seed=args.seed)
    started = time.perf_counter()
    base = build_method("jtm-h", base_options)
    assert isinstance(base, DeepRetrieval)
    base.fit(ctx)
    base_seconds = time.perf_counter() - started
    histories, rows = {}, []
    for name, overrides in variants:
        options = {**base_options, **overrides}
        method = build_method("jtm", options)
        assert isinstance(method, DeepRetrieval)
        started = time.perf_counter()
        method.fit(ctx, start_from=base)
        assert method.joint_history is not None
        history = method.joint_history
        histories[name] = history
        records = history.records
        rows.append({
            "variant": name, "overrides": overrides, "seconds": time.perf_counter() - started,
            "valid_recall": [r.valid["recall"] for r in records],
            "global_loss": [r.global_loss for r in records],
            "moved": [r.moved_fraction for r in records[1:]],
            "best_iteration": history.best_iteration,
            "best_valid_recall": max(r.valid["recall"] for r in records),
            "history": history.to_json(),
        })
        logging.info("variant %s done: best validation R@%d %.4f (iteration %d)", name, args.m,
                     rows[-1]["best_valid_recall"], history.best_iteration)
        _write(args, base_seconds, rows)  # after every variant: a stopped run keeps what it measured
    print(f"\nvalidation users: {len(ctx.valid)}, iteration 0 (JTM-H) trained in {base_seconds:.0f}s\n")
    print(f"| variant | validation R@{args.m} per iteration | L(θ, π)/sample per iteration | items moved | best |")
    print("|---|---|---|---|---|")
    for row in rows:
        recall = " → ".join(f"{100 * r:.2f}" for r in row["valid_recall"])
        loss = " → ".join(f"{v:.4f}" for v in row["global_loss"])
        moved = ", ".join(f"{100 * v:.1f}%" for v in row["moved"])
        print(f"| {row['variant']} | {recall} | {loss} | {moved} | {100 * row['best_valid_recall']:.2f} "
              f"(it. {row['best_iteration']}) |")
    if args.plot:
        plot_joint(histories, Path(args.plot), args.m)
        print(f"\nwrote {args.plot}")
    print(f"wrote {args.json}")


def _write(args: argparse.Namespace, base_seconds: float, rows: list[dict]) -> None:
    from service.core.artifact import atomic_write_bytes

    result = {"command": command_line(), "data": args.data, "seed": args.seed, "m": args.m,
              "split": "validation users only (test users untouched)", "base_seconds": base_seconds,
              "variants": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(args.json), json.dumps(result, indent=2).encode())


if __name__ == "__main__":
    main()
