"""The JTM paper's scale on one box: a UserBehavior-shaped log (1M users, 4M items, 100M
events), loaded, indexed, turned into samples and trained on, within 16 GB of peak RSS.

    .venv/bin/python -m bench.bench_scale --events data/ub-synth.parquet --generate \\
        --steps 300 --json bench/results/training/scale.json

Each stage runs in its own process, so its peak RSS is its own:
1. `generate` (optional): `python -m trainer synth` in ~10M-event chunks, streamed to Parquet.
2. `prepare`: read the log, keep users with >= 10 events, contiguous int32 ids, sort each
   user's events by time, and write memory-mapped arrays (`trainer.data.prepared`).
3. `train`: map the arrays, build the training samples (int32 row indices, histories gathered
   per batch, never materialised) and the category tree, then train JTM-H (the hierarchical
   representation, the costly case) and TDM for `--steps` steps each: samples/s, and the
   projected time of one epoch over every training sample.
4. `train` again under `torchrun --nproc_per_node 2` (two data-parallel ranks sharing the mapped
   arrays, one core each): the scaling of 2 ranks against 1 process using both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench import command_line

ROOT = Path(__file__).resolve().parents[1]

PREPARE_STATS = "bench-prepare.json"  # the prepare stage's figures, kept beside the arrays it wrote


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def stage_prepare(args: argparse.Namespace) -> dict:
    from trainer.data.interactions import DataConfig, load_interactions
    from trainer.data.prepared import save_prepared

    started = time.perf_counter()
    data = load_interactions(DataConfig(args.events))
    load_seconds = time.perf_counter() - started
    save_prepared(data, Path(args.prepared), 10, None)
    stats = {"interactions": len(data), "users": data.n_users, "items": data.n_items,
             "categories": data.n_categories, "read_and_index_s": load_seconds,
             "write_s": time.perf_counter() - started - load_seconds, "peak_rss_gb": peak_rss_gb()}
    (Path(args.prepared) / PREPARE_STATS).write_text(json.dumps(stats))
    return stats


def stage_train(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from trainer.data.interactions import DataConfig, load_interactions
    from trainer.data.split import make_samples, split_users
    from trainer.fit import distributed
    from trainer.fit.batches import batch_indices, prefetch
    from trainer.fit.sampler import LayerwiseSampler, default_negative_counts
    from trainer.fit.step import ScorerStep, StepTimes, TrainConfig, make_builder
    from trainer.model.scorer import ScorerConfig, TreeScorer
    from trainer.tree.build import category_tree

    ctx = distributed.init_from_env("cpu")
    rank, world = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    out: dict = {"world_size": world, "threads": torch.get_num_threads()}
    started = time.perf_counter()
    data = load_interactions(DataConfig(args.prepared))
    out["map_s"] = time.perf_counter() - started
    started = time.perf_counter()
    split = split_users(data.n_users, 0)
    samples = make_samples(data, split.train)
    out["samples_s"] = time.perf_counter() - started
    out["training_samples"] = len(samples)
    started = time.perf_counter()
    tree = category_tree(data.item_category, 0)
    out["tree_s"] = time.perf_counter() - started
    out["tree_depth"], out["tree_rows"] = tree.depth, tree.n_rows

    def train(method: str) -> dict:
        hierarchical = method == "jtm-h"
        torch.manual_seed(0)
        model = TreeScorer(tree.n_rows, ScorerConfig(hierarchical=hierarchical))
        times = StepTimes()
        step = ScorerStep(model, TrainConfig(batch_size=args.batch_size), times)
        sampler = LayerwiseSampler.create(tree, default_negative_counts(tree, args.leaf_negatives))
        builder = make_builder(model, samples, sampler, tree, hierarchical, times)
        rng = np.random.default_rng(0)
        order = np.random.default_rng(1).integers(0, len(samples), (args.warmup + args.steps) * args.batch_size)
        indices = list(batch_indices(len(order), args.batch_size, order, rank, world))
        losses, begun = [], time.perf_counter()
        for i, batch in enumerate(prefetch(lambda index: builder(index, rng), indices)):
            if i == args.warmup:
                distributed.barrier()
                times.seconds.clear()
                times.steps = 0
                begun = time.perf_counter()
            losses.append(step(batch))
        distributed.barrier()
        rate = args.steps * args.batch_size / (time.perf_counter() - begun)  # global: every rank's share
        return {"samples_per_s": rate, "epoch_hours": len(samples) / rate / 3600, "loss_first": losses[0],
                "loss_last": losses[-1], "pairs_per_sample": len(builder.sampler.label), "kernel": step.kernel,
                "autocast": str(step.autocast), "threads": step.threads,
                "phases_ms": times.per_step_ms()}

    try:
        for method in args.methods.split(","):
            out[method] = train(method)
        out["peak_rss_gb"] = peak_rss_gb()
        if ctx is not None:
            out["peak_rss_gb_all_ranks"] = float(distributed.sum_array(np.array([out["peak_rss_gb"]]))[0])
    finally:
        # A gloo process group left for interpreter exit to tear down can abort the rank
        # ("terminate called without an active exception", seen once in CI).
        distributed.shutdown()
    return out if rank == 0 else {}


# What torchrun reports when a rank died of std::terminate ("terminate called without an
# active exception", SIGABRT). Seen twice in CI (fresh clones, 2 gloo ranks, 1 of about 3
# runs there) and never in 40+ local runs; the rank's own code raised nothing. Such a run is
# repeated once, and the report says so.
_RANK_ABORT = "terminate called without an active exception"


def run_stage(command: list[str], name: str, retry_rank_abort: bool = False) -> dict:
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    retried = False
    if result.returncode != 0 and retry_rank_abort and _RANK_ABORT in result.stderr:
        print(f"{name}: a rank aborted ({_RANK_ABORT}); running the stage once more", file=sys.stderr, flush=True)
        retried = True
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-4000:]}")
    lines = [line for line in result.stdout.strip().splitlines() if line.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    out["wall_s"] = time.perf_counter() - started
    if retried:
        out["retried_after_rank_abort"] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # (Not --log, nor --role below: torchrun's own parser would take them.)
    parser.add_argument("--events", required=True, help="the log (Parquet); made with --generate")
    parser.add_argument("--prepared", default=None, help="where the prepared arrays go (default: LOG.prepared)")
    parser.add_argument("--generate", action="store_true", help="generate the log first if it is absent")
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=100_000_000)
    parser.add_argument("--methods", default="jtm-h,tdm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--leaf-negatives", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--reprepare", action="store_true", help="prepare again even if LOG.prepared exists")
    parser.add_argument("--stage", default="main", choices=["main", "prepare", "train"])
    args = parser.parse_args()
    args.prepared = args.prepared or f"{args.events}.prepared"
    if args.leaf_negatives is None:
        from trainer.fit.sampler import DEFAULT_LEAF_NEGATIVES

        args.leaf_negatives = DEFAULT_LEAF_NEGATIVES
    if args.stage != "main":
        result = {"prepare": stage_prepare, "train": stage_train}[args.stage](args)
        if result:
            print(json.dumps(result))
        return

    me = ["-m", "bench.bench_scale"]  # this script as a module (run_stage runs in ROOT)
    common = ["--events", args.events, "--prepared", args.prepared, "--methods", args.methods, "--steps",
              str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
              "--leaf-negatives", str(args.leaf_negatives)]
    report: dict = {"command": command_line(), "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()}
    if args.generate and not Path(args.events).exists():
        report["generate"] = run_stage([sys.executable, "-m", "trainer", "synth", "--out", args.events, "--items",
                                        str(args.items), "--users", str(args.users), "--interactions",
                                        str(args.interactions)], "generate")
    stats = Path(args.prepared) / PREPARE_STATS
    if stats.exists() and not args.reprepare:
        print(f"prepare: reusing {args.prepared} (its figures from when it was made)", file=sys.stderr)
        report["prepare"] = {**json.loads(stats.read_text()), "reused": True}
    else:
        report["prepare"] = run_stage([sys.executable, *me, *common, "--stage", "prepare"],
                                      "prepare (read + index + write)")
    report["train_1_process"] = run_stage([sys.executable, *me, *common, "--stage", "train"],
                                        "train, one process")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks)]
    # torchrun's -m: each rank runs `python -m bench.bench_scale ...`
    report[f"train_{args.ranks}_ranks"] = run_stage([*torchrun, *me, *common, "--stage", "train"],
                                                    f"train, {args.ranks} ranks", retry_rank_abort=True)
    print_report(report, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


def print_report(report: dict, args: argparse.Namespace) -> None:
    prep, one, many = report["prepare"], report["train_1_process"], report[f"train_{args.ranks}_ranks"]
    print(f"\n{prep['interactions']:,} interactions kept, {prep['users']:,} users, {prep['items']:,} items, "
          f"{prep['categories']:,} categories; {one['training_samples']:,} training samples; tree depth "
          f"{one['tree_depth']}, {one['tree_rows']:,} embedding rows\n")
    print("| stage | wall s | peak RSS GB |\n|---|---|---|")
    if "generate" in report:
        print(f"| generate (synth, chunked) | {report['generate']['wall_s']:.0f} | - |")
    print(f"| read + index the log | {prep['read_and_index_s']:.0f} | {prep['peak_rss_gb']:.1f} |")
    print(f"| write prepared arrays | {prep['write_s']:.0f} | (same process) |")
    print(f"| map prepared arrays | {one['map_s']:.1f} | - |")
    print(f"| build training samples | {one['samples_s']:.1f} | - |")
    print(f"| category tree | {one['tree_s']:.1f} | - |")
    print(f"| training, one process, {one['threads']} threads | - | {one['peak_rss_gb']:.1f} |")
    print(f"| training, {args.ranks} ranks | - | {many['peak_rss_gb']:.1f} per rank, "
          f"{many.get('peak_rss_gb_all_ranks', 0):.1f} summed (mapped pages shared) |")
    print("\n| method | kernel | pairs/sample | 1 process samples/s | epoch h | "
          f"{args.ranks} ranks samples/s | epoch h | scaling |\n|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        a, b = one[method], many[method]
        kernel = a.get("kernel", "?") + (" bf16" if a.get("autocast") == "torch.bfloat16" else "")
        print(f"| {method} | {kernel} | {a['pairs_per_sample']} | {a['samples_per_s']:,.0f} | {a['epoch_hours']:.1f} | "
              f"{b['samples_per_s']:,.0f} | {b['epoch_hours']:.1f} | {b['samples_per_s'] / a['samples_per_s']:.2f}x |")
    methods = args.methods.split(",")
    from bench.bench_training import PHASE_ORDER

    phases = sorted({p for m in methods for p in one[m].get("phases_ms", {})}, key=lambda p: PHASE_ORDER.get(p, 99))
    if phases:
        print(f"\nms per step of {args.batch_size} samples, one process (builder-thread phases overlap the step)\n")
        print("| phase | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
        for phase in phases:
            cells = [f"{one[m]['phases_ms'][phase]:.1f}" if one[m]["phases_ms"].get(phase) else "-" for m in methods]
            print(f"| {phase} | " + " | ".join(cells) + " |")
        print("| **step (wall)** | " + " | ".join(
            f"**{1000 * args.batch_size / one[m]['samples_per_s']:.1f}**" for m in methods) + " |")


if __name__ == "__main__":
    main()
