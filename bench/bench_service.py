"""End-to-end latency of POST /v1/recommend against a real uvicorn process.

For each corpus size a synthetic artifact is built once (cached under bench/.cache), the service
is started as a subprocess (micro-batching on, then off), and `--requests` requests with random
histories are sent one at a time (single stream; open-loop load is bench/loadtest). Reports
p50/p90/p99 in milliseconds and the in-process search time for comparison, and writes JSON.

    .venv/bin/python bench/bench_service.py --sizes 100000,1000000 --json bench/results/service.json
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"


def artifact_for(n_items: int) -> Path:
    path = CACHE / f"artifact-{n_items}"
    if not (path / "manifest.json").exists():
        from bench.synthetic_artifact import build

        print(f"building a {n_items:,}-item artifact ...", file=sys.stderr, flush=True)
        build(n_items, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(artifact: Path, extra: list[str], device: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--artifact", str(artifact), "--port", str(port),
                                "--log-level", "warning", "--device", device, *extra],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read())
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("service not ready")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{p}": float(np.percentile(ms, p)) for p in (50, 90, 99)} | {"mean": float(ms.mean())}


def measure(url: str, ids: np.ndarray, requests: int, k: int, seed: int) -> dict:
    """Sequential requests over one keep-alive connection (stdlib http.client: a lean client,
    so the figure is the server's, not Python client overhead; httpx adds ~0.7 ms)."""
    import http.client
    from urllib.parse import urlparse

    rng = np.random.default_rng(seed)
    bodies = [json.dumps({"history": ids[rng.integers(0, len(ids), rng.integers(5, 70))].tolist(), "k": k})
              for _ in range(requests + 20)]
    latencies = []
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        for i, body in enumerate(bodies):
            started = time.perf_counter()
            connection.request("POST", "/v1/recommend", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200 or len(json.loads(payload)["items"]) != k:
                raise RuntimeError(f"bad answer: {response.status} {payload[:200]!r}")
            if i >= 20:  # warm-up requests excluded
                latencies.append(elapsed)
    finally:
        connection.close()
    return percentiles(latencies)


def in_process(artifact: Path, ids: np.ndarray, requests: int, k: int, seed: int) -> dict:
    from service.config import Settings
    from service.model_store import load_bundle
    from service.retrieval import search

    bundle = load_bundle(artifact, Settings(batching=False))
    rng = np.random.default_rng(seed)
    histories = [bundle.catalog.items.lookup(ids[rng.integers(0, len(ids), rng.integers(5, 70))].tolist())
                 for _ in range(requests)]
    times = []
    for history in histories:
        started = time.perf_counter()
        search(bundle, history, k, bundle.default_beam)
        times.append(time.perf_counter() - started)
    bundle.close()
    return percentiles(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for n_items in (int(s) for s in args.sizes.split(",")):
        artifact = artifact_for(n_items)
        with np.load(artifact / "items.npz") as archive:
            ids = archive["item_ids"]
        row = {"items": n_items, "search_in_process": in_process(artifact, ids, args.requests, args.k, 1)}
        for name, extra in (("batching", []), ("no_batching", ["--no-batching"])):
            process, url = start(artifact, extra, args.device)
            try:
                row[name] = measure(url, ids, args.requests, args.k, seed=2)
            finally:
                process.terminate()
                process.wait(timeout=30)
        rows.append(row)
        print(f"{n_items:,} items done", file=sys.stderr, flush=True)

    print(f"\nPOST /v1/recommend, single stream, k = {args.k}, {args.requests} requests, device {args.device}\n")
    print("| items | batching p50 | p90 | p99 | no batching p50 | p90 | p99 | search only p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, n, s = r["batching"], r["no_batching"], r["search_in_process"]
        print(f"| {r['items']:,} | {b['p50']:.2f} | {b['p90']:.2f} | {b['p99']:.2f} | {n['p50']:.2f} | {n['p90']:.2f} "
              f"| {n['p99']:.2f} | {s['p50']:.2f} | {s['p99']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "device": args.device,
                                               "machine": platform.processor() or platform.machine(),
                                               "k": args.k, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
