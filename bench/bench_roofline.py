"""Roofline-style accounting of one recommendation: FLOPs per request against what the machine does.

For a synthetic artifact (bench/.cache) this counts, from the scorer's shapes and the candidates
the beam search really scores (k = 200, beam = 200), the floating-point work of one request:
per candidate the node side (a_u + M_u t: H1 x d multiply-adds, then the MLP H1-H2-H3-1) and per
level the user side (window pooling, a_u, M_u; recomputed per level with the hierarchical
representation). It then measures

- the machine's achievable GFLOP/s: a large float32 GEMM with onnxruntime (1 and 2 threads)
  and numpy (its BLAS, 1 and 2 threads),
- the same MatMul shapes the scorer runs for one 400-candidate level, one at a time (1 thread),
- the exported scorer itself per call (400 candidates, 1 row, 1 thread; 4096 candidates, as
  brute force calls it, 1 and 2 threads), and per candidate when one call scores several rows
  (as cross-request micro-batching makes it),
- one search in-process (1 ORT thread), split into onnxruntime time and the rest (numpy beam
  bookkeeping, Python),

and prints the request's compute floor (FLOPs / achievable GFLOP/s) next to the measured times.

    .venv/bin/python -m bench.bench_roofline --items 1000000 --json bench/results/roofline.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import command_line
from bench.bench_service import artifact_for

NUMPY_GEMM = """
import sys, time, numpy as np
n = int(sys.argv[1]); a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32); b = a.copy()
for _ in range(3): a @ b
best = 1e9
for _ in range(10):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(2 * n**3 / best / 1e9)
"""


def best_of(fn, repeat: int, inner: int = 1) -> float:
    """Fastest of `repeat` timings of `inner` calls, per call, in seconds (the machine's capability,
    not a latency distribution)."""
    for _ in range(max(1, repeat // 10)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def median_of(fn, repeat: int) -> float:
    for _ in range(max(1, repeat // 10)):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def ort_session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def matmul_model(m: int, k: int, n: int):
    """ONNX graph: X (m, k) @ W (k, n), W a constant."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_gflops(m: int, k: int, n: int, threads: int, repeat: int) -> float:
    session = ort_session(matmul_model(m, k, n), threads)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    inner = max(1, int(2e7 // (m * k * n)))  # small shapes: time many calls together
    seconds = best_of(lambda: session.run(None, {"X": x}), repeat, inner)
    return 2 * m * k * n / seconds / 1e9


def numpy_gflops(n: int, threads: int) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", NUMPY_GEMM, str(n)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip())


def flop_counts(manifest: dict) -> dict:
    """Multiply-adds count 2 FLOPs; elementwise operations (PReLU, pooling divides) are listed
    apart: they move data more than they compute."""
    scorer = manifest["scorer"]
    d, hidden, windows, length = scorer["dim"], scorer["hidden"], len(scorer["windows"]), scorer["max_history"]
    widths = [*hidden, 1]
    node_gemm = 2 * hidden[0] * d + sum(2 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    node_elementwise = hidden[0] + sum(widths[1:]) + 2 * sum(hidden) + 1  # bias adds, PReLU (mul + max), node bias
    user_gemm = 2 * windows * length * d + 2 * windows * d * hidden[0] + 2 * windows * hidden[0] * d
    return {"dim": d, "hidden": hidden, "windows": windows, "history": length,
            "node_flops_per_candidate": node_gemm, "node_elementwise_per_candidate": node_elementwise,
            "user_flops_per_level": user_gemm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--beam", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from service.config import Settings
    from service.core.beam import beam_search
    from service.model_store import load_bundle
    from service.retrieval import search
    from service.scorer import OnnxScorer

    artifact = artifact_for(args.items)
    manifest = json.loads((artifact / "manifest.json").read_text())
    counts = flop_counts(manifest)
    bundle = load_bundle(artifact, Settings(batching=False))
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, args.items, rng.integers(5, 70)).astype(np.int64) for _ in range(args.requests)]

    # Candidates and levels per request, counted on the real beam search.
    calls: list[tuple[float, int]] = []
    session_run = bundle.scorer.session.run

    def timed_run(*a, **kw):
        started = time.perf_counter()
        out = session_run(*a, **kw)
        calls.append((time.perf_counter() - started, a[1]["nodes"].shape[1]))
        return out

    for h in histories[:20]:
        search(bundle, h, args.k, args.beam)
    bundle.scorer.session.run = timed_run
    search_times, ort_times, candidates, levels = [], [], [], []
    for h in histories:
        calls.clear()
        started = time.perf_counter()
        search(bundle, h, args.k, args.beam)
        search_times.append(time.perf_counter() - started)
        ort_times.append(sum(c[0] for c in calls))
        candidates.append(sum(c[1] for c in calls))
        levels.append(len(calls))
    bundle.scorer.session.run = session_run
    row = np.full((1, bundle.history_length), -1, dtype=np.int64)
    row[0, :30] = histories[0][:30]
    scored = beam_search(bundle.tree, bundle.index.score_fn(row), 1, args.k,
                         args.beam)
    per_request = {
        "levels": float(np.mean(levels)), "candidates": float(np.mean(candidates)),
        "candidates_valid": scored.candidates_scored,
    }
    node_flops = per_request["candidates"] * counts["node_flops_per_candidate"]
    user_flops = per_request["levels"] * counts["user_flops_per_level"]
    per_request["flops"] = node_flops + user_flops
    per_request["node_flops"], per_request["user_flops"] = node_flops, user_flops
    measured = {"search_ms_p50": 1000 * float(np.median(search_times)),
                "onnxruntime_ms_p50": 1000 * float(np.median(ort_times)),
                "rest_ms_p50": 1000 * float(np.median(np.array(search_times) - np.array(ort_times)))}

    # The scorer per call.
    d, hidden = counts["dim"], counts["hidden"]
    history = row.copy()
    calls_measured = {}
    for name, candidates_per_call, threads in (("level (400 candidates), 1 thread", 400, 1),
                                               ("brute-force chunk (4096), 1 thread", 4096, 1),
                                               ("brute-force chunk (4096), 2 threads", 4096, 2)):
        scorer = bundle.scorer if threads == 1 else OnnxScorer(artifact / "scorer.onnx", threads=threads)
        nodes = rng.integers(0, bundle.tree.n_items, (1, candidates_per_call))
        seconds = median_of(lambda s=scorer, n=nodes: s.score(history, n), 400 if candidates_per_call < 1000 else 60)
        flops = candidates_per_call * counts["node_flops_per_candidate"] + counts["user_flops_per_level"]
        calls_measured[name] = {"us": 1e6 * seconds, "gflops": flops / seconds / 1e9}

    # Several rows per call (what cross-request micro-batching does): cost per candidate.
    rows_per_call = {}
    for rows in (1, 2, 4, 8, 16, 64):
        histories_b = np.repeat(history, rows, axis=0)
        nodes = rng.integers(0, bundle.tree.n_items, (rows, 400))
        seconds = median_of(lambda h=histories_b, n=nodes: bundle.scorer.score(h, n), max(20, 400 // rows))
        rows_per_call[rows] = {"us": 1e6 * seconds, "ns_per_candidate": 1e9 * seconds / (rows * 400)}

    # The scorer's MatMul shapes alone, and the machine's large-GEMM rate.
    shapes = {"first layer (400 x 32 @ 32 x 128)": (400, d, hidden[0]),
              "layer 2 (400 x 128 @ 128 x 64)": (400, hidden[0], hidden[1]),
              "layer 3 (400 x 64 @ 64 x 24)": (400, hidden[1], hidden[2])}
    shape_rates = {name: ort_gflops(*shape, threads=1, repeat=200) for name, shape in shapes.items()}
    machine = {
        "onnxruntime_gemm_1024_1_thread": ort_gflops(1024, 1024, 1024, 1, 20),
        "onnxruntime_gemm_1024_2_threads": ort_gflops(1024, 1024, 1024, 2, 20),
        "numpy_gemm_1024_1_thread": numpy_gflops(1024, 1),
        "numpy_gemm_1024_2_threads": numpy_gflops(1024, 2),
    }
    bundle.close()
    peak1 = max(machine["onnxruntime_gemm_1024_1_thread"], machine["numpy_gemm_1024_1_thread"])
    peak2 = max(machine["onnxruntime_gemm_1024_2_threads"], machine["numpy_gemm_1024_2_threads"])
    floor1 = per_request["flops"] / (peak1 * 1e9) * 1000
    floor2 = per_request["flops"] / (peak2 * 1e9) * 1000
    result = {"command": command_line(), "items": args.items, "depth": manifest["tree"]["depth"],
              "k": args.k, "beam": args.beam, "counts": counts, "per_request": per_request, "measured": measured,
              "scorer_calls": calls_measured, "rows_per_call": rows_per_call,
              "matmul_shapes_gflops_1_thread": shape_rates, "machine_gflops": machine,
              "compute_floor_ms": {"1_core": floor1, "2_cores": floor2}}

    print(f"\n{args.items:,} items (depth {result['depth']}), k = {args.k}, beam = {args.beam}\n")
    print("| per request | value |")
    print("|---|---|")
    print(f"| levels scored | {per_request['levels']:.1f} |")
    print(f"| candidates scored | {per_request['candidates']:,.0f} |")
    print(f"| FLOPs per candidate (node side: {hidden[0]}x{d} + MLP {'-'.join(map(str, hidden))}-1) "
          f"| {counts['node_flops_per_candidate']:,} |")
    print(f"| FLOPs per level (user side: pooling, a_u, M_u) | {counts['user_flops_per_level']:,} |")
    print(f"| FLOPs per request | {per_request['flops'] / 1e6:,.1f} M ({100 * user_flops / per_request['flops']:.1f}% "
          "user side) |")
    print("\n| machine (float32 GEMM 1024^3) | GFLOP/s |")
    print("|---|---|")
    for name, value in machine.items():
        print(f"| {name.replace('_', ' ')} | {value:.1f} |")
    print("\n| scorer MatMul shape alone, onnxruntime, 1 thread | GFLOP/s |")
    print("|---|---|")
    for name, value in shape_rates.items():
        print(f"| {name} | {value:.1f} |")
    print("\n| exported scorer, one call | us | GFLOP/s |")
    print("|---|---|---|")
    for name, value in calls_measured.items():
        print(f"| {name} | {value['us']:.0f} | {value['gflops']:.1f} |")
    print("\n| rows (users) per scorer call, 400 candidates each, 1 thread | us per call | ns per candidate |")
    print("|---|---|---|")
    for rows, value in rows_per_call.items():
        print(f"| {rows} | {value['us']:.0f} | {value['ns_per_candidate']:.0f} |")
    print("\n| one request | ms | GFLOP/s achieved |")
    print("|---|---|---|")
    print(f"| compute floor at the 1-thread GEMM rate ({peak1:.0f} GFLOP/s) | {floor1:.2f} | {peak1:.0f} |")
    print(f"| compute floor at the 2-thread GEMM rate ({peak2:.0f} GFLOP/s) | {floor2:.2f} | {peak2:.0f} |")
    print(f"| onnxruntime calls of one search (p50) | {measured['onnxruntime_ms_p50']:.2f} "
          f"| {per_request['flops'] / measured['onnxruntime_ms_p50'] / 1e6:.1f} |")
    print(f"| whole search in-process (p50) | {measured['search_ms_p50']:.2f} "
          f"| {per_request['flops'] / measured['search_ms_p50'] / 1e6:.1f} |")
    print(f"| of which numpy beam bookkeeping and Python (p50) | {measured['rest_ms_p50']:.2f} | |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
