"""Training on a GPU, ready to run in under five minutes: samples/s for TDM and JTM with and
without bf16, then the whole pipeline (train, tree learning, export) on the device.

    .venv/bin/python -m bench.bench_gpu --json bench/results/training/gpu.json

Part 1 trains the scorer for a fixed number of steps per (method, kernel, precision) on a
synthetic log with a planted hierarchy (or `--data FILE`): the autograd kernel in fp32 and
with bf16 autocast (fp32 master weights), and the fused kernel (fp32), at the default batch
size and at a GPU-sized one. Part 2 runs `python -m trainer train --method jtm --device cuda`
with one epoch and one joint iteration, then `trainer export` (ONNX parity is checked on the
CPU there), and reports the wall time of each stage. `--device cpu --quick` runs the same
script on the CPU in seconds (the test suite does, so the script cannot rot without a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import command_line
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_samples, split_users
from trainer.data.synth import SynthConfig, generate, write
from trainer.fit.batches import prefetch
from trainer.fit.sampler import LayerwiseSampler
from trainer.fit.step import ScorerStep, TrainConfig, make_builder
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import category_tree

ROOT = Path(__file__).resolve().parents[1]


def throughput(data, method: str, kernel: str, precision: str, batch_size: int, steps: int, device: str) -> dict:
    hierarchical = method == "jtm"
    split = split_users(data.n_users, 0)
    samples = make_samples(data, split.train)
    tree = category_tree(data.item_category, 0)
    torch.manual_seed(0)
    model = TreeScorer(tree.n_rows, ScorerConfig(hierarchical=hierarchical)).to(device)
    step = ScorerStep(model, TrainConfig(device=device, kernel=kernel, precision=precision, batch_size=batch_size,
                                         lr=1e-3 * (batch_size / 256) ** 0.5))
    builder = make_builder(model, samples, LayerwiseSampler.create(tree), tree, hierarchical)
    rng = np.random.default_rng(0)
    warmup = 3
    indices = [rng.integers(0, len(samples), batch_size) for _ in range(warmup + steps)]
    started = time.perf_counter()
    losses = []
    for i, batch in enumerate(prefetch(lambda index: builder(index, rng), indices)):
        if i == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
        losses.append(step(batch))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"method": method, "kernel": step.kernel, "precision": "bf16" if step.autocast else "fp32",
            "batch_size": batch_size, "samples_per_s": steps * batch_size / seconds,
            "first_loss": losses[0], "last_loss": losses[-1]}


def pipeline(data_path: Path, device: str, out: Path) -> dict:
    """train (1 epoch + 1 joint iteration), then export, as a user would run them."""
    stages = {}
    commands = {
        "train jtm (1 epoch, 1 joint iteration)": [
            sys.executable, "-m", "trainer", "train", "--data", str(data_path), "--method", "jtm", "--epochs", "1",
            "--iterations", "1", "--retrain-epochs", "1", "--device", device, "--out", str(out / "run")],
        "export (ONNX, parity check)": [
            sys.executable, "-m", "trainer", "export", "--run", str(out / "run"), "--out", str(out / "artifact")],
    }
    for name, command in commands.items():
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
        stages[name] = {"seconds": time.perf_counter() - started, "ok": result.returncode == 0}
        if result.returncode != 0:
            stages[name]["error"] = result.stderr[-2000:]
            break
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", default=None, help="a log to train on (default: synthetic)")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--big-batch", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --quick for a smoke test")
    if args.quick:
        args.items, args.users, args.steps, args.big_batch = 2_000, 600, 3, 512
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.data:
            data_path = Path(args.data)
            data = load_interactions(DataConfig(str(data_path)))
        else:
            frame = generate(SynthConfig(n_items=args.items, n_users=args.users, n_interactions=40 * args.users))
            data_path = tmp_path / "synth.parquet"
            write(frame, data_path)
            data = load_interactions(DataConfig(str(data_path)))
        rows = []
        for method in ("tdm", "jtm"):
            for kernel, precision in (("autograd", "fp32"), ("autograd", "bf16"), ("fused", "fp32")):
                for batch_size in (256, args.big_batch):
                    row = throughput(data, method, kernel, precision, batch_size, args.steps, args.device)
                    rows.append(row)
                    print(f"{method} {row['kernel']} {row['precision']} batch {batch_size}: "
                          f"{row['samples_per_s']:,.0f} samples/s", file=sys.stderr, flush=True)
        stages = pipeline(data_path, args.device, tmp_path)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    print(f"\n{device_name}: {data.n_items:,} items, {len(data):,} interactions, torch {torch.__version__}\n")
    print("| method | kernel | precision | batch | samples/s | loss first -> last |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['kernel']} | {r['precision']} | {r['batch_size']} | {r['samples_per_s']:,.0f} "
              f"| {r['first_loss']:.4f} -> {r['last_loss']:.4f} |")
    print("\n| pipeline stage | seconds | ok |\n|---|---|---|")
    for name, stage in stages.items():
        print(f"| {name} | {stage['seconds']:.1f} | {stage['ok']} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command_line(), "device": device_name,
                                               "throughput": rows, "pipeline": stages}, indent=2))
    if not all(stage["ok"] for stage in stages.values()):
        failed = next(name for name, stage in stages.items() if not stage["ok"])
        raise SystemExit(f"pipeline stage failed: {failed}\n{stages[failed].get('error', '')}")


if __name__ == "__main__":
    main()
