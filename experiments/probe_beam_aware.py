"""Beam-aware negatives against uniform ones, on a planted-cluster catalogue, in minutes.

TDM on the planted tree of a small `trainer synth` catalogue, trained a few epochs per variant
from the same seed (same initial weights, same batch order), validation recall per epoch:
the fast loop for changing `trainer/fit/beam_mining.py`. A variant is `uniform`, or
`SHARE[:MIN_NODE_ITEMS]` (e.g. `0.5` mines half of every level's negatives from the beam,
`0.5:16` only at levels whose nodes hold >= 16 items on average).

    python -m experiments.probe_beam_aware --variants uniform,0.5,0.5:16 --json bench/results/beam_aware/probe.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench import command_line
from trainer.data.formats import RawLog
from trainer.data.interactions import build_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.data.synth import SynthConfig, generate
from trainer.evaluate.metrics import user_metrics
from trainer.evaluate.recommend import recommend
from trainer.fit.epochs import fit_scorer, make_sampler
from trainer.fit.sampler import BeamAwareConfig
from trainer.fit.step import TrainConfig
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import tree_from_order


def parse_variant(spec: str) -> BeamAwareConfig | None:
    if spec == "uniform":
        return None
    share, _, min_items = spec.partition(":")
    return BeamAwareConfig(share=float(share), beam=BEAM_DEFAULT, min_node_items=int(min_items or 1))


BEAM_DEFAULT = BeamAwareConfig().beam


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--m", type=int, default=50, help="results and beam of the validation search")
    parser.add_argument("--variants", default="uniform,0.5,0.5:16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    frame = generate(SynthConfig(n_items=args.items, n_users=args.users, seed=3))
    raw = frame.rename(columns={"user_id": "user", "item_id": "item"})[["user", "item", "timestamp"]]
    data = build_interactions(RawLog(raw, "generic", Path("synth")), 10)
    cluster_by_id = dict(zip(frame.item_id, frame.cluster, strict=False))
    cluster = np.array([cluster_by_id[i] for i in data.item_ids])
    split = split_users(data.n_users, seed=args.seed)
    samples = make_samples(data, split.train)
    valid = make_eval_set(data, split.valid)
    tree = tree_from_order(np.lexsort((np.random.default_rng(args.seed).random(data.n_items), cluster)))

    rows = []
    for spec in variants:
        config = parse_variant(spec)
        torch.manual_seed(args.seed)
        model = TreeScorer(tree.n_rows, ScorerConfig())
        sampler = make_sampler(tree, data.n_items, 50, config)

        def validate(model=model) -> float:
            found = recommend(model, tree, valid, args.m, False, args.m)
            return user_metrics(found, valid, args.m).means()["recall"]

        started = time.perf_counter()
        train = TrainConfig(epochs=args.epochs, patience=args.epochs)  # every epoch, no early stop
        history = fit_scorer(model, samples, sampler, tree, False, train, seed=args.seed, validate=validate,
                             description=f"probe {spec}")
        rows.append({"variant": spec, "valid_recall": [e.valid_score for e in history.epochs],
                     "train_loss": [e.train_loss for e in history.epochs], "seconds": time.perf_counter() - started})

    print(f"\nTDM on the planted tree, {data.n_items} items, {len(samples)} samples; validation R@{args.m} per epoch\n")
    print("| variant | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs)) + " | seconds |")
    print("|---|" + "---|" * args.epochs + "---|")
    for row in rows:
        cells = " | ".join(f"{100 * r:.2f}" for r in row["valid_recall"])
        print(f"| {row['variant']} | {cells} | {row['seconds']:.0f} |")
    if args.json:
        import json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command_line(), "items": data.n_items,
                                               "samples": len(samples), "m": args.m, "runs": rows}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
