"""How often a node the beam compares, and OTM would label 0, holds an item the user consumes next.

OTM (Zhuo et al., ICML 2020) trains each level on the beam's candidates with pseudo-targets:
1 on a node above one of the instance's target items, 0 on every other candidate. That is
right when the targets list everything the user will consume. With implicit feedback seen one
interaction at a time they do not: the beam's best candidates that hold none of the user's
known items are exactly where her *future* items are most likely to be, and labelling them 0
teaches the model to push down what she will consume (`--beam-aware` lost recall on every data
set: docs/RESULTS.md, "Beam-search-aware negatives").

This measures it directly. TDM trains a few epochs with uniform negatives (as `--beam-aware-warmup`
would before mining); then, for each held-out test user, the beam search (the mining beam,
service's code) runs on her features, and at each level the candidates that hold none of her
feature items, i.e. what mining would draw as negatives, are checked against her truth (the
items of the second half of her timeline). Beside it, the same share for nodes drawn uniformly
from the level (what TDM's sampler draws), and the popularity percentile of the leaf candidates.

    python -m experiments.beam_false_negatives --data ../shared/data/ciao/ciao_ratings.csv.gz \\
        --tree-init category-random --epochs 2 --json bench/results/beam_aware/false-negatives-ciao.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from bench import command_line
from service.core.beam import beam_search
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.evaluate.metrics import user_metrics
from trainer.evaluate.recommend import recommend, torch_index
from trainer.fit.beam_mining import RecordingScore, holds_positive
from trainer.fit.epochs import fit_scorer, make_sampler
from trainer.fit.sampler import BeamAwareConfig
from trainer.fit.step import TrainConfig
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import initial_tree

M = 200


def csr_pairs(items: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, item) pairs of a CSR list of per-user items."""
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return owner, items.astype(np.int64)


def measure(model: TreeScorer, tree, test, beam: int, popularity_rank: np.ndarray, rng: np.random.Generator,
            batch: int = 256) -> list[dict]:
    """Per level: among the beam's candidates that hold none of the user's feature items (what
    mining draws negatives from), the share holding one of her truth items; the same for
    uniform nodes of the level; for the leaf level, the popularity percentile of each."""
    histories = test.histories(69)
    feature_owner, feature_items = csr_pairs(test.feature_items, test.feature_offsets)
    truth_owner, truth_items = csr_pairs(test.truth_items, test.truth_offsets)
    stats: dict[int, dict[str, float]] = {}
    for start in range(0, len(test), batch):
        index = np.arange(start, min(start + batch, len(test)))
        recorder = RecordingScore(torch_index(model, tree).score_fn(histories[index]))
        beam_search(tree, recorder, len(index), min(beam, tree.n_items), beam)

        def local(owner, items, index=index):
            keep = (owner >= index[0]) & (owner <= index[-1])
            return owner[keep] - index[0], items[keep]

        f_owner, f_items = local(feature_owner, feature_items)
        t_owner, t_items = local(truth_owner, truth_items)
        for level, candidates in recorder.candidates.items():
            known = holds_positive(tree, level, candidates, f_owner, f_items)
            mined = (candidates >= 0) & ~known
            future = holds_positive(tree, level, candidates, t_owner, t_items)
            positions = tree.nonempty_positions(level)
            uniform = tree.node_ids(level, positions[rng.integers(len(positions), size=candidates.shape)])
            uniform_known = holds_positive(tree, level, uniform, f_owner, f_items)
            uniform_future = holds_positive(tree, level, uniform, t_owner, t_items)
            row = stats.setdefault(level, {"mined": 0, "mined_future": 0, "uniform": 0, "uniform_future": 0,
                                           "mined_pop": 0.0, "uniform_pop": 0.0})
            row["mined"] += int(mined.sum())
            row["mined_future"] += int((mined & future).sum())
            row["uniform"] += int((~uniform_known).sum())
            row["uniform_future"] += int((~uniform_known & uniform_future).sum())
            if level == tree.depth:  # a leaf's node id is its item
                row["mined_pop"] += float(popularity_rank[candidates[mined]].sum())
                row["uniform_pop"] += float(popularity_rank[uniform[~uniform_known]].sum())
    out = []
    for level in sorted(stats):
        row = stats[level]
        record = {"level": level, "nodes": int(len(tree.nonempty_positions(level))),
                  "mined_candidates": row["mined"], "uniform_draws": row["uniform"],
                  "mined_holding_future_item": row["mined_future"] / max(row["mined"], 1),
                  "uniform_holding_future_item": row["uniform_future"] / max(row["uniform"], 1)}
        if level == tree.depth and row["mined"]:
            record["mined_popularity_percentile"] = row["mined_pop"] / row["mined"]
            record["uniform_popularity_percentile"] = row["uniform_pop"] / max(row["uniform"], 1)
        out.append(record)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tree-init", default="category-random")
    parser.add_argument("--epochs", type=int, default=2, help="uniform-negative epochs before measuring")
    parser.add_argument("--beam", type=int, default=BeamAwareConfig().beam, help="the mining beam")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # the epochs' validation recall
    started = time.perf_counter()
    data = load_interactions(DataConfig(path=args.data))
    split = split_users(data.n_users, args.seed)
    samples = make_samples(data, split.train)
    valid, test = make_eval_set(data, split.valid), make_eval_set(data, split.test)
    tree = initial_tree(data, split.train, args.tree_init, args.seed, 2)
    torch.manual_seed(args.seed)
    model = TreeScorer(tree.n_rows, ScorerConfig())

    def validate() -> float:
        return user_metrics(recommend(model, tree, valid, M, False, M), valid, M).means()["recall"]

    history = fit_scorer(model, samples, make_sampler(tree, data.n_items, 50), tree, False,
                         TrainConfig(epochs=args.epochs), seed=args.seed, validate=validate,
                         description="tdm (uniform)")
    model.eval()
    counts = data.item_counts(split.train)
    popularity_rank = 100.0 * (1.0 - np.argsort(np.argsort(-counts, kind="stable")) / len(counts))  # 100: most popular
    rows = measure(model, tree, test, args.beam, popularity_rank, np.random.default_rng(args.seed))

    print(f"\nTDM, {args.epochs} epochs of uniform negatives on the {args.tree_init} tree "
          f"({data.n_items:,} items, validation R@{M} {100 * history.best_score:.2f}); {len(test)} test users, beam "
          f"{args.beam}\n")
    print("| level | nodes | beam candidates without a known item | of them holding a future item | "
          "uniform nodes holding a future item | ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["mined_holding_future_item"] / max(row["uniform_holding_future_item"], 1e-12)
        print(f"| {row['level']} | {row['nodes']:,} | {row['mined_candidates']:,} | "
              f"{100 * row['mined_holding_future_item']:.2f}% | {100 * row['uniform_holding_future_item']:.3f}% | "
              f"{ratio:,.0f}x |")
    leaf = rows[-1]
    if "mined_popularity_percentile" in leaf:
        print(f"\nleaf candidates: popularity percentile {leaf['mined_popularity_percentile']:.1f} (beam) against "
              f"{leaf['uniform_popularity_percentile']:.1f} (uniform)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": command_line(), "data": args.data, "tree_init": args.tree_init, "epochs": args.epochs,
            "beam": args.beam, "seed": args.seed, "valid_recall": history.best_score, "test_users": len(test),
            "levels": rows, "seconds": time.perf_counter() - started}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
