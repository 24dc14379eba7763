"""One tree-learning pass (JTM Algorithm 2) on a real data set: wall time, scorer evaluations
per second, memory, and the objective before/after; in-process and with a process pool.

The scorer is trained briefly first (`--epochs`) on the data set's category tree, so the pass
works on real weights. Prints a table and writes JSON.

    .venv/bin/python -m bench.bench_tree_learning --data ../shared/data/ciao/ciao_ratings.csv.gz \\
        --epochs 1 --json bench/results/tree_learning_ciao.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from bench import command_line
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_samples, split_users
from trainer.fit.epochs import fit_scorer
from trainer.fit.sampler import LayerwiseSampler
from trainer.fit.step import TrainConfig
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import initial_tree
from trainer.tree.learning import TreeLearningConfig, learn_tree


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hierarchical", action="store_true")
    parser.add_argument("--workers", default="1,2", help="comma list of pool sizes to time")
    parser.add_argument("--gap", type=int, default=7)
    parser.add_argument("--max-samples-per-item", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data = load_interactions(DataConfig(path=args.data))
    split = split_users(data.n_users, 0)
    samples = make_samples(data, split.train)
    tree = initial_tree(data, split.train, "auto", 0, 2)
    torch.manual_seed(0)  # the same initial weights every run, so runs move the same items
    model = TreeScorer(tree.n_rows, ScorerConfig(hierarchical=args.hierarchical))
    started = time.perf_counter()
    fit_scorer(model, samples, LayerwiseSampler.create(tree), tree, args.hierarchical,
               TrainConfig(epochs=args.epochs), seed=0, validate=None, description="bench")
    train_seconds = time.perf_counter() - started
    before = rss_mb()
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        config = TreeLearningConfig(gap=args.gap, max_samples_per_item=args.max_samples_per_item, workers=workers)
        new_tree, report = learn_tree(model, tree, samples, args.hierarchical, config)
        rows.append({"workers": workers, "seconds": report.seconds, "evaluations": report.evaluations,
                     "evaluations_per_s": report.evaluations_per_s, "samples_used": report.samples_used,
                     "items_with_samples": report.items_with_samples, "items_moved": report.items_moved,
                     "objective_before": report.objective_before, "objective_after": report.objective_after,
                     "kept_previous": report.kept_previous, "segments": report.segments,
                     "peak_rss_mb": rss_mb()})
    result = {"command": command_line(), "items": tree.n_items, "depth": tree.depth, "samples": len(samples),
              "train_seconds": train_seconds, "rss_before_tree_learning_mb": before, "runs": rows}
    print(f"\ntree learning on {args.data}: {tree.n_items:,} items, depth {tree.depth}, "
          f"{len(samples):,} training samples, gap {args.gap}, cap {args.max_samples_per_item}/item\n")
    print("| workers | wall s | evaluations | evals/s | samples used | items moved | -L before | -L after "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['seconds']:.1f} | {r['evaluations']:,} | {r['evaluations_per_s']:,.0f} "
              f"| {r['samples_used']:,} | {r['items_moved']:,} | {r['objective_before']:,.0f} "
              f"| {r['objective_after']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
