"""Training settings against validation recall per epoch and per second (never test users).

The layer-wise sampler's leaf level dominates the pairs a sample costs (100 of 226 on
MovieLens with the default schedule, 50 + 25 + 12 more on the three levels above), and the
learning rate and batch size decide how many epochs reach a given recall. This trains one
fixed-tree method (tdm or jtm-h) under each variant with a fixed number of epochs (no early
stopping, so every curve is complete) and records, per epoch, validation recall@M, the
training loss, samples/s and the seconds spent; the plot shows recall per epoch and per
second of training.

    .venv/bin/python -m experiments.tune_training --data ../shared/data/movielens-100k/u.data --method jtm-h \\
        --epochs 10 --variant leaf100: --variant leaf50:leaf_negatives=50 --variant leaf25:leaf_negatives=25 \\
        --json bench/results/training/schedules-ml.json --plot bench/results/training/schedules-ml.png

A variant is `NAME:key=value,...` over the method flags' keys (leaf_negatives,
lr, batch_size, ...). The split's test users are never loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from bench import command_line
from experiments.tune_joint import parse_variant
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.deep_retrieval import DeepRetrieval
from trainer.fit.context import FitContext
from trainer.fit.epochs import make_sampler
from trainer.methods import deep_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--method", default="jtm-h", choices=["dnn", "tdm", "jtm-h"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--m", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variant", action="append", required=True, help="NAME:key=value,... (repeatable)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    data = load_interactions(DataConfig(path=args.data))
    split = split_users(data.n_users, args.seed)
    ctx = FitContext(data=data, split=split, samples=make_samples(data, split.train),
                     valid=make_eval_set(data, split.valid), m=args.m, exclude_seen=False, seed=args.seed)
    rows = []
    for name, overrides in (parse_variant(v) for v in args.variant):
        config = deep_config(args.method, {"epochs": args.epochs, **overrides})
        config = replace(config, train=replace(config.train, patience=args.epochs))  # complete curves
        method = DeepRetrieval(config)
        started = time.perf_counter()
        method.fit(ctx)
        assert method.history is not None
        epochs = method.history.epochs
        rows.append({
            "variant": name, "overrides": overrides, "seconds": time.perf_counter() - started,
            "pairs_per_sample": int(len(make_sampler(method.tree, data.n_items, config.train.leaf_negatives).label)),
            "valid_recall": [e.valid_score for e in epochs], "train_loss": [e.train_loss for e in epochs],
            "samples_per_s": [e.samples_per_s for e in epochs], "epoch_seconds": [e.seconds for e in epochs],
            "best_epoch": method.history.best_epoch, "best_valid_recall": method.history.best_score,
        })
        logging.info("variant %s: best validation R@%d %.4f at epoch %d", name, args.m,
                     method.history.best_score, method.history.best_epoch)
        _write(args, rows)
    print(f"\n{args.method}, validation users: {len(ctx.valid)}, seed {args.seed}\n")
    print(f"| variant | pairs/sample | samples/s | validation R@{args.m} per epoch | best (epoch) | "
          "seconds to best |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        curve = " ".join(f"{100 * r:.2f}" for r in row["valid_recall"])
        to_best = sum(row["epoch_seconds"][:row["best_epoch"]])
        rate = sorted(row["samples_per_s"])[len(row["samples_per_s"]) // 2]
        print(f"| {row['variant']} | {row['pairs_per_sample']} | {rate:,.0f} | {curve} | "
              f"{100 * row['best_valid_recall']:.2f} ({row['best_epoch']}) | {to_best:.0f} |")
    if args.plot:
        plot(rows, Path(args.plot), args.m, args.method)
        print(f"\nwrote {args.plot}")


def plot(rows: list[dict], path: Path, m: int, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        recall = [100 * r for r in row["valid_recall"]]
        epochs = range(1, len(recall) + 1)
        elapsed = [sum(row["epoch_seconds"][:i + 1]) for i in range(len(recall))]
        left.plot(epochs, recall, marker="o", label=row["variant"])
        right.plot(elapsed, recall, marker="o", label=row["variant"])
    left.set(xlabel="epoch", ylabel=f"validation recall@{m} (%)", title=f"{method}: recall per epoch")
    right.set(xlabel="training seconds", ylabel=f"validation recall@{m} (%)", title="recall per second")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    from service.core.artifact import atomic_write_bytes

    result = {"command": command_line(), "data": args.data, "method": args.method, "seed": args.seed,
              "m": args.m, "split": "validation users only (test users untouched)", "variants": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(args.json), json.dumps(result, indent=2).encode())


if __name__ == "__main__":
    main()
