"""Why does a tree step raise its own loss? One tree step of Algorithm 2, taken apart level by level.

    python -m experiments.diagnose_tree_step --data ../shared/data/movielens-100k/u.data \\
        --tree-init random --epochs 3 --json bench/results/tree_step/ml-random-s0.json

Trains a fixed-tree model (TDM by default) on the initial tree, then with that model fixed
scores, on the samples tree learning uses, the global loss L(theta, pi) of equation (2) split by
level for several trees:

- `current`: the tree the model was trained on;
- `learnt`: Algorithm 2's proposal (guard off), and `learnt (segment 1 only)` where only the
  first segment's (top-level) choice is kept and each item keeps its old position below it
  where that leaf is free; `learnt (weights from mean nodes)`: the same step computed by the
  model with the current tree's internal nodes at their items' mean rows (the neutral guard's
  model), so the learner optimises what the guard measures;
- `category` (when the log has categories) and `another random` tree: trees the model was not
  trained on.

What the answer means:
- Segment 1 of the learnt tree is solved exactly (or by the heuristic) on its own objective,
  the levels it covers; the old assignment is feasible there. So over those levels `learnt`
  must score at least as well as `current`: if not, the weights or the assignment are wrong.
- If the levels of segment 1 improve and the levels below get worse, the step is myopic: the
  deeper nodes under an item's new top node were trained on other items (their embeddings
  memorise the current tree), which the segment's objective cannot see.
- If every tree the model was not trained on scores far worse than `current` (category and
  another random tree alike), the model has memorised the current tree's ancestors: under the
  model fixed, the current tree looks optimal whatever its quality.
- With the hierarchical representation (`--method jtm-h`) a user's features are her behaviours'
  ancestors, so they change with the tree. The learner scores every candidate with the current
  tree's features; the guard with the candidate's own. The mean-node table reports both: if the
  learnt tree wins with the current features and loses with its own, the step is undone by the
  features it changes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.core.tree import Tree
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import SampleSet, make_eval_set, make_samples, split_users
from trainer.deep_retrieval import DeepRetrieval
from trainer.evaluate.protocol import validation_metrics
from trainer.fit.context import FitContext
from trainer.methods import deep_config
from trainer.model.scorer import TreeScorer
from trainer.tree.build import category_tree, random_tree
from trainer.tree.learning import (
    TreeLearningConfig,
    capped_samples,
    learn_tree,
    reinit_internal_nodes,
    segments,
    tree_level_objectives,
)


def level_losses(model: TreeScorer, trees: dict[str, Tree], feature_tree: Tree, samples: SampleSet,
                 index: np.ndarray, hierarchical: bool) -> dict[str, np.ndarray]:
    """name -> (depth,) sum over samples[index] of -log p(b_j(pi(c)) | u), per level j = 1..depth."""
    per_level = tree_level_objectives(model, list(trees.values()), feature_tree, samples, index, hierarchical)
    return dict(zip(trees, per_level, strict=True))


def top_segment_only(current: Tree, learnt: Tree, end: int) -> Tree:
    """Keep the learnt tree's level-`end` node of every item, and below it the item's old
    offset where free (else the first free leaf): the first segment's decision alone."""
    width = current.capacity(end)
    new_leaf = np.full(current.n_items, -1, dtype=np.int64)
    top = learnt.item_leaf // width
    wanted = top * width + current.item_leaf % width
    order = np.argsort(wanted, kind="stable")
    taken: set[int] = set()
    for item in order:
        if int(wanted[item]) not in taken:
            new_leaf[item] = wanted[item]
            taken.add(int(wanted[item]))
    for item in np.flatnonzero(new_leaf < 0):
        base = int(top[item]) * width
        leaf = next(base + j for j in range(width) if base + j not in taken)
        new_leaf[item] = leaf
        taken.add(leaf)
    return Tree.from_leaves(new_leaf, arity=current.arity, depth=current.depth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--method", default="tdm", choices=["tdm", "jtm-h"], help="the fixed-tree model")
    parser.add_argument("--tree-init", default="random")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gap", type=int, default=None, help="tree learning d (default: the trainer's)")
    parser.add_argument("--m", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    data = load_interactions(DataConfig(path=args.data))
    split = split_users(data.n_users, args.seed)
    ctx = FitContext(data=data, split=split, samples=make_samples(data, split.train),
                     valid=make_eval_set(data, split.valid), m=args.m, exclude_seen=False, seed=args.seed)
    method = DeepRetrieval(deep_config(args.method, epochs=args.epochs, tree_init=args.tree_init))
    started = time.perf_counter()
    method.fit(ctx)
    train_seconds = time.perf_counter() - started
    model, current = method.model, method.tree
    hierarchical = method.config.scorer.hierarchical
    learning = TreeLearningConfig(guard=False, seed=args.seed + 1)  # joint iteration 1's seed
    if args.gap is not None:
        learning = replace(learning, gap=args.gap)
    started = time.perf_counter()
    learnt, report = learn_tree(model, current, ctx.samples, hierarchical, learning)
    step_seconds = time.perf_counter() - started
    # The same step with the weights computed by the model whose internal nodes are the current
    # tree's item means: the learner then optimises what the neutral guard measures.
    current_as_means = copy.deepcopy(model)
    reinit_internal_nodes(current_as_means, current)
    learnt_from_means, _ = learn_tree(current_as_means, current, ctx.samples, hierarchical, learning)
    del current_as_means
    first_end = segments(current.depth, learning.gap)[0][1]
    trees = {"current": current, "learnt": learnt,
             "learnt (segment 1 only)": top_segment_only(current, learnt, first_end),
             "learnt (weights from mean nodes)": learnt_from_means,
             "another random": random_tree(data.n_items, args.seed + 101, current.arity)}
    if data.has_category and data.n_categories > 1:
        trees["category"] = category_tree(data.item_category, args.seed, current.arity)
    index = capped_samples(ctx.samples.targets, learning.max_samples_per_item, learning.seed)
    losses = level_losses(model, trees, current, ctx.samples, index, hierarchical)
    valid = {name: validation_metrics(model, tree, ctx, args.m)["recall"] for name, tree in trees.items()}
    # The same, with every tree's internal nodes set to the mean of their items' rows: a judge
    # that cannot have memorised any tree (the leaves, i.e. the items, are the trained model's).
    # With the hierarchical representation the features depend on the tree too: `neutral` maps a
    # user's behaviours through the current tree (what the learner assumes), `neutral_own` through
    # the tree being scored (what the guard measures and what serving that tree would see).
    neutral, neutral_own, neutral_valid = {}, {}, {}
    for name, tree in trees.items():
        nodes_as_means = copy.deepcopy(model)
        reinit_internal_nodes(nodes_as_means, tree)
        neutral[name] = level_losses(nodes_as_means, {name: tree}, current, ctx.samples, index, hierarchical)[name]
        neutral_own[name] = (level_losses(nodes_as_means, {name: tree}, tree, ctx.samples, index, hierarchical)[name]
                             if hierarchical else neutral[name])
        neutral_valid[name] = validation_metrics(nodes_as_means, tree, ctx, args.m)["recall"]

    depth = current.depth
    print(f"\n{args.method} trained {len(method.history.epochs)} epochs on a {args.tree_init} tree "
          f"({train_seconds:.0f} s); one tree step ({step_seconds:.0f} s, gap {learning.gap}, segments "
          f"{segments(depth, learning.gap)}), {len(index):,} samples; model fixed throughout.\n")
    print("| tree | L, levels of segment 1 | L, levels below | L, all | vs current | items moved | "
          f"validation R@{args.m} (same model) |\n|---|---|---|---|---|---|---|")
    base = losses["current"].sum()
    for name, per_level in losses.items():
        moved = float((trees[name].item_leaf != current.item_leaf).mean())
        print(f"| {name} | {per_level[:first_end].sum():,.0f} | {per_level[first_end:].sum():,.0f} | "
              f"{per_level.sum():,.0f} | {100 * (per_level.sum() / base - 1):+.2f}% | {100 * moved:.1f}% | "
              f"{100 * valid[name]:.2f} |")
    print("\nThe same model with each tree's internal nodes at the mean of their items' rows:\n")
    print(f"| tree | L, segment 1 | L, below | L, all | vs current | L, features through this tree | vs current "
          f"| validation R@{args.m} |\n|---|---|---|---|---|---|---|---|")
    base, base_own = neutral["current"].sum(), neutral_own["current"].sum()
    for name, per_level in neutral.items():
        own = neutral_own[name].sum()
        print(f"| {name} | {per_level[:first_end].sum():,.0f} | {per_level[first_end:].sum():,.0f} | "
              f"{per_level.sum():,.0f} | {100 * (per_level.sum() / base - 1):+.2f}% | {own:,.0f} | "
              f"{100 * (own / base_own - 1):+.2f}% | {100 * neutral_valid[name]:.2f} |")
    print("\nL per level (sum over the samples), current -> learnt:\n")
    print("| level | " + " | ".join(str(j) for j in range(1, depth + 1)) + " |\n|---|" + "---|" * depth)
    for name in ("current", "learnt"):
        print(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in losses[name]) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "epochs": len(method.history.epochs), "train_seconds": train_seconds,
            "step_seconds": step_seconds, "segments": segments(depth, learning.gap), "samples": len(index),
            "report": report.to_json(), "level_losses": {k: v.tolist() for k, v in losses.items()},
            "valid_recall": valid, "mean_node_level_losses": {k: v.tolist() for k, v in neutral.items()},
            "mean_node_own_feature_level_losses": {k: v.tolist() for k, v in neutral_own.items()},
            "mean_node_valid_recall": neutral_valid,
            "moved": {k: float((t.item_leaf != current.item_leaf).mean()) for k, t in trees.items()}}, indent=2))


if __name__ == "__main__":
    main()
