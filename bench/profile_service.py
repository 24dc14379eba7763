"""Where a request's time goes: sample the running service with py-spy and sum by category.

Starts `python -m service` on a synthetic artifact (bench/.cache), sends either a single stream
of sequential requests or an open-loop load (`--rate`), samples every thread of the service
process with py-spy (`--nonblocking`, so the service is not paused; idle threads are not
sampled), and sums the samples into: onnxruntime (the scorer calls of the beam search), the
numpy beam-search bookkeeping, the route's own work (id lookup, response body, metrics), the
worker threads' hand-off, and the event loop (HTTP parsing, middleware, validation, sending).
Prints a table (share of samples and milliseconds per request) and writes JSON with the
heaviest functions. py-spy is not a project dependency: `pip install py-spy` into the venv.

    .venv/bin/python -m bench.profile_service --items 1000000 --requests 3000 --json bench/results/profile_1m.json
    .venv/bin/python -m bench.profile_service --items 1000000 --rate 150 --seconds 20 --workers 2 \\
        --json bench/results/profile_1m_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import command_line
from bench.bench_service import Stream, artifact_for, catalog_ids, request_bodies, start, stop

CATEGORIES = (
    ("search: onnxruntime (scorer calls)", ("Session.run (onnxruntime",)),
    ("search: hierarchical history mapping", ("level_score_fn.<locals>.score",)),
    ("search: numpy beam bookkeeping", ("search (service/retrieval.py",)),
    ("route: ids, response body, metrics", ("_recommend (service/api/routes.py", "recommend (service/api/routes.py")),
    ("worker threads: hand-off", ("WorkerThread", "_bootstrap_inner")),
)
WAITS = ("Condition.wait", "Event.wait", "Queue.get", "Lock.acquire")


def category(stack: list[str]) -> str:
    joined = ";".join(stack)
    if stack and stack[-1].startswith(WAITS):
        return "threads blocked in a wait (sampled as busy)"
    for name, marks in CATEGORIES:
        if any(mark in joined for mark in marks):
            return name
    return "event loop: HTTP, middleware, validation, sending"


def read_profile(path: Path) -> list[tuple[list[str], int]]:
    rows = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        rows.append((frames, int(count)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=3000, help="single stream: sequential requests")
    parser.add_argument("--rate", type=float, default=None, help="open loop at this rate instead of a single stream")
    parser.add_argument("--seconds", type=float, default=20.0, help="open loop: seconds")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--sample-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("error: py-spy not found (pip install py-spy into the venv)")

    artifact = artifact_for(args.items)
    flags = ["--no-batching", "--workers", str(args.workers)]  # explicit: the default is one per CPU
    process, url = start(artifact, flags)
    raw = Path(f"/tmp/profile-{process.pid}.txt")
    try:
        time.sleep(3 if args.workers > 1 else 0)  # every worker ready
        ids = catalog_ids(artifact)
        bodies = request_bodies(ids, args.requests + 50, args.k, seed=11)
        sampler = [spy, "record", "--nonblocking", "--rate", str(args.sample_rate), "--format", "raw", "--output",
                   str(raw), "--pid", str(process.pid)] + (["--subprocesses"] if args.workers > 1 else [])
        if args.rate is None:
            stream = Stream(url)
            for body in bodies[:50]:
                stream.send(body)
            recorder = subprocess.Popen(sampler, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
            started = time.perf_counter()
            latencies = [stream.send(body) for body in bodies[50:]]
            wall = time.perf_counter() - started
            stream.close()
            count = len(latencies)
            load = {"mode": "single stream", "requests": count,
                    "latency_ms_p50": 1000 * float(np.median(latencies))}
        else:
            from loadtest.generator import bodies_from, run_load

            mix = bodies_from(artifact, 2000, args.k, seed=0)
            asyncio.run(run_load(url, mix, args.rate, 3.0))
            recorder = subprocess.Popen(sampler + ["--duration", str(int(args.seconds))], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
            time.sleep(1.0)
            started = time.perf_counter()
            result = asyncio.run(run_load(url, mix, args.rate, args.seconds - 1.0))
            wall = time.perf_counter() - started
            count = len(result.records)
            summary = result.summary()
            load = {"mode": f"open loop {args.rate:g}/s", "requests": count,
                    "latency_ms_p50": summary["latency_ms"]["p50"], "latency_ms_p99": summary["latency_ms"]["p99"],
                    "errors": summary["errors"]}
        if args.rate is None:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
        recorder.wait(timeout=120)
    finally:
        stop(process)
    rows = read_profile(raw)
    raw.unlink(missing_ok=True)
    total = sum(n for _, n in rows)
    by_category = Counter()
    by_function = Counter()
    for stack, n in rows:
        by_category[category(stack)] += n
        by_function[re.sub(r" \((.*?)\)$", r" [\1]", stack[-1]) if stack else "?"] += n
    seconds_per_sample = 1 / args.sample_rate
    sampled_ms = 1000 * total * seconds_per_sample / count  # thread-time per request, all threads
    table = [{"category": name, "share": n / total, "ms_per_request": 1000 * n * seconds_per_sample / count}
             for name, n in by_category.most_common()]
    print(f"\n{args.items:,} items, k = {args.k}, {load['mode']}, {args.workers} process(es), no batching: "
          f"{count} requests in {wall:.1f} s, p50 {load['latency_ms_p50']:.2f} ms (under the sampler); "
          f"{total} samples at {args.sample_rate}/s = {sampled_ms:.2f} ms of busy thread time per request\n")
    print("| where | share of samples | ms per request |")
    print("|---|---|---|")
    for row in table:
        print(f"| {row['category']} | {100 * row['share']:.1f}% | {row['ms_per_request']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": command_line(), "items": args.items, "k": args.k, "workers": args.workers,
            "load": load, "samples": total, "sample_rate": args.sample_rate, "busy_ms_per_request": sampled_ms,
            "categories": table,
            "top_functions": [{"function": f, "share": n / total} for f, n in by_function.most_common(30)],
        }, indent=2))


if __name__ == "__main__":
    main()
