"""Training throughput and where its time goes, against an earlier commit, in one run.

For each data set and method (TDM: plain features; JTM: the hierarchical representation),
both versions of the code train the same scorer on the same samples for a fixed number of
steps, in separate processes, alternating (ours, baseline, ours, baseline, ...) so that a
noisy machine affects both alike; medians over the rounds are reported. Per step it shows
where the time goes: batch building (sampling, history mapping, row ids: a background thread
in ours, inline in the baseline), data movement, embedding lookups, forward, backward,
embedding backward, the dense and the sparse optimiser; then one validation pass (beam search
for the validation users, M = beam = 200). Beside it, the compute the step needs (FLOP per
sample of the model's minimal algorithm: pairs x (first layer split, H1 x d) + MLP, x3 for
backward, plus the per-user state) and the machine's GEMM rate measured in the same run, so
the roofline says what is left.

    .venv/bin/python -m bench.bench_training --baseline 44754df \\
        --data ml=../shared/data/movielens-100k/u.data --data ciao=../shared/data/ciao/ciao_ratings.csv.gz \\
        --json bench/results/training/profile.json

`--leaf-negatives` sets the sampler for both (the same work per sample: the implementation's
speed-up); `--baseline-leaf-negatives 100` runs the baseline at its own default instead (what
a user gets from upgrading).

The baseline is checked out into a temporary git worktree (`git worktree add --detach`) and
driven through its own API (`trainer.train.make_step` and `AdamWithSparseEmbeddings` before
the fused kernel); `--baseline none` measures ours alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_root_from_argv() -> None:
    """Import `trainer` from --code-root (the baseline's worktree) before anything imports it.

    The one path insertion in bench/, on purpose: the main process runs as `python -m
    bench.bench_training` from the repository root, but it starts its workers by this file's path
    with `--code-root DIR`, and a baseline worker must import the `trainer` of DIR (a worktree of
    an older commit), not ours, so DIR has to come first on sys.path."""
    if "--code-root" in sys.argv:
        sys.path.insert(0, sys.argv[sys.argv.index("--code-root") + 1])


# --------------------------------------------------------------------------- worker side


def _setup(data_path: str, hierarchical: bool, seed: int, leaf_negatives: int):
    import numpy as np
    import torch

    from trainer.data.interactions import DataConfig, load_interactions
    from trainer.data.split import make_eval_set, make_samples, split_users
    from trainer.fit.sampler import LayerwiseSampler, default_negative_counts
    from trainer.model.scorer import ScorerConfig, TreeScorer
    from trainer.tree.build import category_tree

    data = load_interactions(DataConfig(data_path))
    split = split_users(data.n_users, seed)
    samples = make_samples(data, split.train)
    valid = make_eval_set(data, split.valid)
    tree = category_tree(data.item_category, seed)
    torch.manual_seed(seed)
    model = TreeScorer(tree.n_rows, ScorerConfig(hierarchical=hierarchical))
    sampler = LayerwiseSampler.create(tree, default_negative_counts(tree, leaf_negatives))
    return np, torch, data, samples, valid, tree, model, sampler


def _validation_seconds(model, valid, tree, hierarchical: bool) -> float:
    from trainer.evaluate.recommend import retrieve

    histories = valid.histories(model.config.max_history)
    started = time.perf_counter()
    retrieve(model, histories, 200, tree, 200)
    return time.perf_counter() - started


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def worker_ours(args: argparse.Namespace) -> dict:
    np, torch, data, samples, valid, tree, model, sampler = _setup(args.data_path, args.hierarchical, args.seed,
                                                                  args.leaf_negatives)
    from trainer.fit.batches import prefetch
    from trainer.fit.step import ScorerStep, StepTimes, TrainConfig, make_builder

    times = StepTimes()
    step = ScorerStep(model, TrainConfig(batch_size=args.batch_size, threads=args.threads, precision=args.precision,
                                         kernel=args.kernel), times)
    builder = make_builder(model, samples, sampler, tree, args.hierarchical, times)
    rng = np.random.default_rng(args.seed)
    indices = [rng.integers(0, len(samples), args.batch_size) for _ in range(args.warmup + args.steps)]
    started = None
    for i, batch in enumerate(prefetch(lambda index: builder(index, rng), indices)):
        if i == args.warmup:
            times.seconds.clear()
            times.steps = 0
            started = time.perf_counter()
        step(batch)
    seconds = time.perf_counter() - started
    phases = times.per_step_ms()
    return {"samples_per_s": args.steps * args.batch_size / seconds, "step_ms": 1000 * seconds / args.steps,
            "phases_ms": phases, "validation_s": _validation_seconds(model, valid, tree, args.hierarchical),
            "pairs_per_sample": int(len(sampler.label)), "groups": tree.depth if args.hierarchical else 1,
            "threads": step.threads, "kernel": step.kernel, "autocast": str(step.autocast),
            "peak_rss_gb": _peak_rss_gb(),
            "torch": torch.__version__, "valid_users": len(valid), "depth": tree.depth, "items": tree.n_items}


def worker_baseline(args: argparse.Namespace) -> dict:
    """The training step before the fused kernel, through its own API, timed piece by piece."""
    np, torch, data, samples, valid, tree, model, sampler = _setup(args.data_path, args.hierarchical, args.seed,
                                                                  args.leaf_negatives)
    from torch.nn import functional as F
    from trainer.train import TrainingForward, resolve_precision

    from trainer.fit.epochs import AdamWithSparseEmbeddings

    forward = TrainingForward(model)
    optimizer = AdamWithSparseEmbeddings(model, 1e-3)
    label = torch.from_numpy(sampler.label)
    slices = sampler.level_slices()
    autocast = resolve_precision("auto", "cpu")
    rng = np.random.default_rng(args.seed)
    phases: dict[str, float] = {}

    def mark(phase: str, since: float) -> float:
        now = time.perf_counter()
        phases[phase] = phases.get(phase, 0.0) + now - since
        return now

    started = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            phases.clear()
            started = time.perf_counter()
        t = time.perf_counter()
        index = rng.integers(0, len(samples), args.batch_size)
        nodes = sampler.sample(samples.targets[index], rng)
        t = mark("sampling", t)
        history = samples.histories(index)
        if args.hierarchical:
            history = np.stack([tree.ancestor_ids(history, level) for level in slices])
        t = mark("history mapping", t)
        history_t = torch.from_numpy(history.astype(np.int64))
        nodes_t = torch.from_numpy(nodes)
        t = mark("data movement", t)
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits = forward(history_t, nodes_t, list(slices.values())) if args.hierarchical else forward(
                history_t, nodes_t)
        loss = F.binary_cross_entropy_with_logits(logits.float(), label.expand_as(logits))
        t = mark("forward", t)
        optimizer.zero_grad()
        loss.backward()
        t = mark("backward", t)
        optimizer.optimizers[0].step()
        t = mark("optimizer dense", t)
        optimizer.optimizers[1].step()
        mark("optimizer rows (SparseAdam)", t)
    seconds = time.perf_counter() - started
    return {"samples_per_s": args.steps * args.batch_size / seconds, "step_ms": 1000 * seconds / args.steps,
            "phases_ms": {k: 1000 * v / args.steps for k, v in phases.items()},
            "validation_s": _validation_seconds(model, valid, tree, args.hierarchical),
            "pairs_per_sample": int(len(sampler.label)), "groups": tree.depth if args.hierarchical else 1,
            "threads": torch.get_num_threads(), "kernel": "autograd", "autocast": str(autocast),
            "peak_rss_gb": _peak_rss_gb(),
            "torch": torch.__version__, "valid_users": len(valid), "depth": tree.depth, "items": tree.n_items}


def worker_gemm(args: argparse.Namespace) -> dict:
    """The machine's matrix-multiply rate: the training step's biggest GEMM shape, and a
    large square one (the practical peak), on all threads and on one."""
    import torch

    def rate(m: int, k: int, n: int, repeats: int, dtype=torch.float32) -> float:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return 2 * m * k * n * repeats / (time.perf_counter() - started) / 1e9

    threads = torch.get_num_threads()
    out = {"threads": threads}
    for label, shape, repeats in (("training shape (57,856 x 128) @ (128 x 64)", (57856, 128, 64), 30),
                                  ("square 2048", (2048, 2048, 2048), 5)):
        torch.set_num_threads(threads)
        all_threads = max(rate(*shape, repeats) for _ in range(3))
        torch.set_num_threads(1)
        one = max(rate(*shape, repeats) for _ in range(3))
        out[label] = {"all_threads_gflops": all_threads, "one_thread_gflops": one}
    torch.set_num_threads(threads)
    # bf16 (fp32 accumulation): the rate the autograd kernel reaches under bf16 autocast
    out["training shape, bf16"] = {"all_threads_gflops": max(rate(57856, 128, 64, 30, torch.bfloat16)
                                                             for _ in range(3))}
    return out


# --------------------------------------------------------------------------- orchestration


def flop_per_sample(pairs: int, groups: int, dim: int = 32, hidden=(128, 64, 24), windows: int = 3) -> float:
    """Multiply-adds x 2 of the model's minimal training algorithm for one sample: per pair the
    split first layer (H1 x d) and the MLP, per (sample, behaviour mapping) the user state
    (a: H1 x W d, M: H1 x W d); backward costs twice the forward."""
    per_pair = hidden[0] * dim + sum(a * b for a, b in zip(hidden[:-1], hidden[1:], strict=False)) + hidden[-1]
    per_group = 2 * hidden[0] * windows * dim
    return 3 * 2 * (pairs * per_pair + groups * per_group)


def run_worker(role: str, code_root: Path, data_path: str, method: str, args: argparse.Namespace) -> dict:
    leaf = args.leaf_negatives
    if role == "baseline" and args.baseline_leaf_negatives is not None:
        leaf = args.baseline_leaf_negatives
    # By path, not `-m bench.bench_training`: in the baseline's worktree (cwd) that would run the
    # baseline's copy of this script; --code-root picks which `trainer` the worker imports.
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--code-root", str(code_root),
               "--data-path", data_path, "--method", method, "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
               "--leaf-negatives", str(leaf), "--threads", str(args.threads), "--precision", args.precision,
               "--kernel", args.kernel]
    result = subprocess.run(command, capture_output=True, text=True, cwd=code_root, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{role} worker failed on {data_path} {method}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline_worktree(ref: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="jtm-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), ref], check=True,
                   capture_output=True)
    return target


def median_result(runs: list[dict]) -> dict:
    phases = sorted({p for r in runs for p in r["phases_ms"]})
    return {
        "samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
        "step_ms": statistics.median(r["step_ms"] for r in runs),
        "validation_s": statistics.median(r["validation_s"] for r in runs),
        "phases_ms": {p: statistics.median(r["phases_ms"].get(p, 0.0) for r in runs) for p in phases},
        "rounds": [r["samples_per_s"] for r in runs],
        **{k: runs[0][k] for k in ("pairs_per_sample", "groups", "threads", "kernel", "autocast", "torch",
                                   "valid_users", "depth", "items")},
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", default=[], help="name=path (repeatable)")
    parser.add_argument("--methods", default="tdm,jtm")
    parser.add_argument("--baseline", default="none", help="git ref to compare against, or none")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--leaf-negatives", type=int, default=50, help="ours (default: the trainer's default)")
    parser.add_argument("--baseline-leaf-negatives", type=int, default=None,
                        help="the baseline's (default: the same as ours, i.e. the same work per sample)")
    parser.add_argument("--threads", type=int, default=0, help="fused kernel workers (0: all torch threads)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="ours (the baseline always runs its own default, `auto`)")
    parser.add_argument("--kernel", default="auto", help="ours: auto, fused or autograd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    # worker flags
    parser.add_argument("--role", default="main", choices=["main", "ours", "baseline", "gemm"])
    parser.add_argument("--code-root", default=str(ROOT))
    parser.add_argument("--data-path")
    parser.add_argument("--method", default="tdm")
    args = parser.parse_args()
    args.hierarchical = args.method == "jtm"

    if args.role != "main":
        worker = {"ours": worker_ours, "baseline": worker_baseline, "gemm": worker_gemm}[args.role]
        print(json.dumps(worker(args)))
        return

    datasets = [(name, str(Path(path).resolve())) for name, path in (d.split("=", 1) for d in args.data)]
    datasets = datasets or [("ml", str(ROOT.parent / "shared/data/movielens-100k/u.data"))]
    methods = [m.strip() for m in args.methods.split(",")]
    worktree = None if args.baseline == "none" else baseline_worktree(args.baseline)
    results = []
    try:
        gemm = run_worker("gemm", ROOT, "", "tdm", args)
        for name, path in datasets:
            for method in methods:
                runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
                for round_ in range(args.rounds):
                    for role in ("ours", "baseline") if worktree else ("ours",):
                        print(f"{name} {method} round {round_ + 1}/{args.rounds}: {role} ...", file=sys.stderr,
                              flush=True)
                        runs[role].append(run_worker(role, worktree if role == "baseline" else ROOT, path, method,
                                                     args))
                row = {"data": name, "method": method, "ours": median_result(runs["ours"])}
                if runs["baseline"]:
                    row["baseline"] = median_result(runs["baseline"])
                results.append(row)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)
    report(results, gemm, args)


def report(results: list[dict], gemm: dict, args: argparse.Namespace) -> None:
    shape = gemm["training shape (57,856 x 128) @ (128 x 64)"]
    square = gemm["square 2048"]
    print(f"\nGEMM rate, {gemm['threads']} threads: {shape['all_threads_gflops']:.0f} GFLOP/s at the training "
          f"shape ({shape['one_thread_gflops']:.0f} on one thread), {square['all_threads_gflops']:.0f} on a 2048 "
          f"square ({square['one_thread_gflops']:.0f} on one); bf16 at the training shape "
          f"{gemm['training shape, bf16']['all_threads_gflops']:.0f} (the roofline of rows under bf16 autocast)\n")
    print("| data | method | code | kernel | samples/s | vs baseline | pairs/sample | MFLOP/sample | GFLOP/s | "
          "% of GEMM rate | roofline samples/s | validation pass s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        for code in ("baseline", "ours"):
            if code not in row:
                continue
            r = row[code]
            flop = flop_per_sample(r["pairs_per_sample"], r["groups"])
            r["mflop_per_sample"] = flop / 1e6
            r["gflops"] = flop * r["samples_per_s"] / 1e9
            bf16 = r.get("autocast") == "torch.bfloat16"
            rate = (gemm["training shape, bf16"] if bf16 else shape)["all_threads_gflops"]
            r["gemm_gflops"] = rate
            r["roofline_samples_per_s"] = rate * 1e9 / flop
            ratio = f"{r['samples_per_s'] / row['baseline']['samples_per_s']:.2f}x" if "baseline" in row else "-"
            kernel = r["kernel"] + (" bf16" if r.get("autocast") == "torch.bfloat16" else "")
            print(f"| {row['data']} | {row['method']} | {code} | {kernel} | {r['samples_per_s']:,.0f} | {ratio} | "
                  f"{r['pairs_per_sample']} | {flop / 1e6:.1f} | {r['gflops']:.1f} | "
                  f"{100 * r['gflops'] / rate:.0f}% | {r['roofline_samples_per_s']:,.0f} | "
                  f"{r['validation_s']:.2f} | {r['peak_rss_gb']:.2f} |")
    for row in results:
        codes = [c for c in ("baseline", "ours") if c in row]
        phases = sorted({p for c in codes for p in row[c]["phases_ms"]}, key=lambda p: PHASE_ORDER.get(p, 99))
        print(f"\n{row['data']} {row['method']}: ms per step of {args.batch_size} samples "
              f"(medians of {args.rounds} rounds; builder-thread phases overlap the step)\n")
        print("| phase | " + " | ".join(codes) + " |")
        print("|---|" + "---|" * len(codes))
        for phase in phases:
            cells = [f"{row[c]['phases_ms'][phase]:.1f}" if phase in row[c]["phases_ms"] else "-" for c in codes]
            print(f"| {phase} | " + " | ".join(cells) + " |")
        print("| **step (wall)** | " + " | ".join(f"**{row[c]['step_ms']:.1f}**" for c in codes) + " |")
    if args.json:
        from bench import command_line  # not at the top: workers run this file without our `bench`

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "command": command_line(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "baseline": args.baseline, "steps": args.steps, "rounds": args.rounds,
            "batch_size": args.batch_size, "gemm": gemm, "results": results}, indent=2))


PHASE_ORDER = {p: i for i, p in enumerate([
    "sampling", "sampling (builder thread)", "history mapping", "history mapping (builder thread)",
    "bags and row ids (builder thread)", "data movement", "embedding gather", "forward", "backward",
    "forward+backward (autograd)", "embedding backward", "gradient exchange", "optimizer dense",
    "optimizer rows", "optimizer rows (SparseAdam)"])}


if __name__ == "__main__":
    _code_root_from_argv()
    main()
