"""TDM benchmark: training samples/s, beam-search latency per request, brute force, tree load.

For each corpus size a synthetic log with a planted hierarchy is generated, a category tree is
built, and the TDM scorer (default config) is

- trained for a fixed number of batches (samples/s, layer-wise sampling included), and
- used, with the weights it has, to retrieve k = 200 items by beam search for single requests
  (latency percentiles) and for a batch of users, and by brute force for a few requests.

Timing, not accuracy: the scorer is barely trained. Run:

    .venv/bin/python -m bench.bench_tdm --sizes 10000,100000,1000000 --json bench/results/tdm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import command_line
from service.core.beam import beam_search, brute_force
from service.core.tree import Tree
from trainer.data.formats import RawLog
from trainer.data.interactions import build_interactions
from trainer.data.split import make_samples, split_users
from trainer.data.synth import SynthConfig, generate
from trainer.evaluate.recommend import torch_index
from trainer.fit.sampler import LayerwiseSampler
from trainer.fit.step import ScorerStep, TrainConfig, make_builder
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import category_tree


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(array, 50)), "p90_ms": float(np.percentile(array, 90)),
            "p99_ms": float(np.percentile(array, 99)), "mean_ms": float(array.mean())}


def bench_size(n_items: int, train_batches: int, requests: int, k: int, beam: int, seed: int) -> dict:
    users = max(2000, n_items // 3)
    frame = generate(SynthConfig(n_items=n_items, n_users=users, n_interactions=10 * users, seed=seed))
    frame = frame.rename(columns={"user_id": "user", "item_id": "item", "category_id": "category"})
    data = build_interactions(RawLog(frame[["user", "item", "category", "timestamp"]], "generic", Path("synth")), 5)
    split = split_users(data.n_users, seed)
    samples = make_samples(data, split.train)
    tree = category_tree(data.item_category, seed)

    with tempfile.TemporaryDirectory() as tmp:
        tree.save(Path(tmp) / "tree.npz")
        started = time.perf_counter()
        Tree.load(Path(tmp) / "tree.npz")
        load_seconds = time.perf_counter() - started

    torch.manual_seed(seed)
    model = TreeScorer(tree.n_rows, ScorerConfig())
    sampler = LayerwiseSampler.create(tree)
    rng = np.random.default_rng(seed)
    step = ScorerStep(model, TrainConfig())
    builder = make_builder(model, samples, sampler, tree, False)
    batch_size = 256
    for i in range(train_batches + 3):
        if i == 3:
            started = time.perf_counter()
        step(builder(rng.integers(0, len(samples), batch_size), rng))
    train_seconds = time.perf_counter() - started
    model.eval()
    index = torch_index(model, tree)

    histories = samples.histories(rng.integers(0, len(samples), requests))
    single = []
    for row in range(requests):
        started = time.perf_counter()
        beam_search(tree, index.score_fn(histories[row:row + 1]), 1, k, beam)
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    batched = beam_search(tree, index.score_fn(histories), requests, k, beam)
    batch_seconds = time.perf_counter() - started

    brute = []
    for row in range(min(3, requests)):
        started = time.perf_counter()
        brute_force(tree.n_items, index.score_fn(histories[row:row + 1]), 1, k, tree.depth,
                    chunk=65536)
        brute.append(time.perf_counter() - started)
    return {
        "items": tree.n_items, "depth": tree.depth, "training_samples": len(samples),
        "train_samples_per_s": train_batches * batch_size / train_seconds,
        "pairs_per_sample": int(len(sampler.label)),
        "beam_single": percentiles(single[1:]),
        "beam_batched_ms_per_request": 1000 * batch_seconds / requests,
        "candidates_per_request": batched.candidates_scored / requests,
        "brute_force": percentiles(brute),
        "brute_over_beam": float(np.median(brute) / np.median(single[1:])),
        "tree_load_ms": 1000 * load_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--train-batches", type=int, default=30)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--beam", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"benchmarking {size:,} items ...", file=sys.stderr, flush=True)
        rows.append(bench_size(size, args.train_batches, args.requests, args.k, args.beam, args.seed))

    print(f"\nTDM, k = {args.k}, beam = {args.beam}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| items | depth | train samples/s | pairs/sample | beam p50 ms | beam p99 ms | batched ms/req "
          "| candidates/req | brute p50 ms | brute/beam | tree load ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']:,} | {r['depth']} | {r['train_samples_per_s']:,.0f} | {r['pairs_per_sample']} "
              f"| {r['beam_single']['p50_ms']:.1f} | {r['beam_single']['p99_ms']:.1f} "
              f"| {r['beam_batched_ms_per_request']:.2f} | {r['candidates_per_request']:,.0f} "
              f"| {r['brute_force']['p50_ms']:.0f} | {r['brute_over_beam']:.0f}x | {r['tree_load_ms']:.1f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": command_line(), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "k": args.k, "beam": args.beam, "results": rows,
        }, indent=2))


if __name__ == "__main__":
    main()
