"""Hot reload under load: publish versions while an open-loop load runs; count failures.

Starts the service as a real process following a registry, drives `--rate` requests/s for
`--duration` s from a separate load-generator process, and publishes `--swaps` versions
(alternating between two artifacts with different trees) during the run. Reports failed
requests, the versions seen in responses, and p99 latency inside swap windows (the `--window`
seconds after each publish) next to p99 outside them. Prints a table and writes JSON.

    .venv/bin/python -m bench.swap_under_load --artifacts A B --json bench/results/swap.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench import command_line
from service.core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(artifacts: list[Path], rate: float, duration: float, swaps: int, window: float, workdir: Path) -> dict:
    registry = Registry(workdir / "registry")
    versions = [registry.add(a) for a in artifacts]
    registry.set_current(versions[0])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "service.log", "w")
    service = subprocess.Popen(
        [sys.executable, "-m", "service", "--registry", str(registry.root), "--port", str(port), "--log-level",
         "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "JTM_REGISTRY_POLL_S": "0.2"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError(f"service not ready: {(workdir / 'service.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raw, summary_path = workdir / "records.jsonl", workdir / "summary.json"
        load = subprocess.Popen(
            [sys.executable, "-m", "loadtest", "--url", url, "--rate", str(rate), "--duration", str(duration),
             "--data", str(artifacts[0]), "--k", "50", "--raw", str(raw), "--json", str(summary_path)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(duration * 0.15)
        published = []
        gap = duration * 0.7 / swaps
        for i in range(swaps):
            version = versions[(i + 1) % len(versions)]
            registry.set_current(version, reason="swap test")
            published.append(time.time())
            time.sleep(gap)
        output, _ = load.communicate(timeout=duration + 60)
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()
    summary = json.loads(summary_path.read_text())
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    start = summary["started"]
    in_window = np.array([any(0 <= start + r["intended"] - t <= window for t in published) for r in records])
    ok = np.array([r["outcome"] == "ok" for r in records])
    latency = np.array([r["latency"] for r in records]) * 1000
    result = {
        "rate": rate, "duration": duration, "swaps": swaps, "window_s": window,
        "sent": len(records), "failed": int((~ok).sum()), "errors": summary["errors"],
        "versions_seen": summary["versions"],
        "p99_ms_during_swaps": float(np.percentile(latency[ok & in_window], 99)) if (ok & in_window).any() else None,
        "p99_ms_steady": float(np.percentile(latency[ok & ~in_window], 99)) if (ok & ~in_window).any() else None,
        "p50_ms_steady": float(np.percentile(latency[ok & ~in_window], 50)) if (ok & ~in_window).any() else None,
        "requests_in_swap_windows": int(in_window.sum()),
        "loadtest_output": output.strip().splitlines()[-2:],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", nargs=2, required=True, type=Path)
    parser.add_argument("--rate", type=float, default=80)
    parser.add_argument("--duration", type=float, default=25)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--window", type=float, default=2.0, help="seconds after a publish counted as 'during swap'")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.artifacts, args.rate, args.duration, args.swaps, args.window, Path(tmp))
    print("| rate | duration | swaps | sent | failed | versions seen | p99 during swaps | p99 steady | p50 steady |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.rate:g}/s | {args.duration:g}s | {args.swaps} | {result['sent']} | {result['failed']} "
          f"| {len(result['versions_seen'])} | {result['p99_ms_during_swaps']:.1f} ms "
          f"| {result['p99_ms_steady']:.1f} ms | {result['p50_ms_steady']:.1f} ms |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command_line(), **result}, indent=2))


if __name__ == "__main__":
    main()
