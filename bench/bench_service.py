"""End-to-end latency and throughput of POST /v1/recommend against real uvicorn processes.

Synthetic artifacts (random weights, random tree; built once per corpus size and cached under
bench/.cache) are served by `python -m service` subprocesses. Each section runs when its
option is given, prints a Markdown table and goes into the JSON (`--json`), with the command:

- `--sizes`: per corpus size, the search alone in-process, then single-stream HTTP latency
  with micro-batching on and off (`--requests` sequential requests per server).
- `--ks`, `--beams` (at `--sweep-size`): single-stream HTTP latency per k (at the artifact's
  default beam) and per beam width (at `--k`), and the candidates scored per request.
- `--ort-threads`: single-stream HTTP latency per onnxruntime intra-op thread count.
- `--rates` with `--configs`: open-loop throughput (loadtest's generator) for each server
  configuration at each rate for `--duration` s after a `--warmup`; the highest rate with no
  errors, p99 <= `--slo-ms` and the schedule kept is the configuration's sustainable rate.
- `--versions DIR[:ARTIFACT_DIR],...`: the same single-stream comparison across code versions
  (git worktrees of other commits): each serves an artifact built by its own exporter (or by
  ARTIFACT_DIR's), and runs the in-process search with its own code.

Single-stream requests go over one keep-alive connection with a lean client (stdlib
http.client), in blocks of `--block` requests that rotate over the servers compared (all are
up at once), so slow drift of the machine falls on all of them alike; 20 warm-up requests per
server are not counted. Latency is measured from just before sending to the end of the body.

    .venv/bin/python -m bench.bench_service --sizes 10000,100000,1000000 --json bench/results/service.json
    .venv/bin/python -m bench.bench_service --sizes '' --ks 50,200,1000 --beams 100,200,400,800 \\
        --ort-threads 1,2 --json bench/results/service_sweeps.json
    .venv/bin/python -m bench.bench_service --sizes '' --rates 200,250 --duration 60 --warmup 5 --repeat 2 \\
        --configs default --json bench/results/service_throughput.json
    .venv/bin/python -m bench.bench_service --gpu-quick --json bench/results/service_gpu.json   # with a GPU

`--gpu-quick` needs onnxruntime's CUDA provider (`pip install onnxruntime-gpu` in place of
onnxruntime); each configuration prints the providers the server really uses, since
`--device cuda` falls back to the CPU without it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench import command_line

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"

# Server configurations: name -> (`python -m service` flags, environment). Micro-batching is
# set explicitly either way (its default depends on the device and changed over time).
BATCHING = ([], {"JTM_BATCHING": "true"})
NO_BATCHING = (["--no-batching"], {})
CONFIGS = {
    "default": ([], {}),  # what `python -m service --artifact DIR` runs: one process per usable CPU
    "1 process": (["--workers", "1", "--no-batching"], {}),
    "1 process, batching": (["--workers", "1"], {"JTM_BATCHING": "true"}),
    "1 process, 2 ORT threads": (["--workers", "1", "--no-batching", "--ort-threads", "2"], {}),
    "2 processes": (["--workers", "2", "--no-batching"], {}),
    "2 processes, batching": (["--workers", "2"], {"JTM_BATCHING": "true"}),
}

IN_PROCESS = """
import json, sys, time
import numpy as np
from service.config import Settings
from service.model_store import load_bundle
from service.retrieval import search
artifact, requests, k, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bundle = load_bundle(artifact, Settings(batching=False))
with np.load(artifact + "/items.npz") as archive:
    ids = archive["item_ids"]
rng = np.random.default_rng(seed)
histories = [bundle.catalog.items.lookup(ids[rng.integers(0, len(ids), rng.integers(5, 70))].tolist())
             for _ in range(requests + 20)]
times = []
for history in histories:
    started = time.perf_counter()
    search(bundle, history, k, bundle.default_beam)
    times.append(time.perf_counter() - started)
print(json.dumps(times[20:]))
"""


def artifact_for(n_items: int, root: Path = ROOT) -> Path:
    """The cached synthetic artifact of `n_items` built by the exporter of the code in `root`."""
    path = root / "bench" / ".cache" / f"artifact-{n_items}"
    if not (path / "manifest.json").exists():
        print(f"building a {n_items:,}-item artifact with {root} ...", file=sys.stderr, flush=True)
        if root == ROOT:
            from bench.synthetic_artifact import build

            build(n_items, path)
        else:
            # as a module of that code root (its working directory comes first on sys.path)
            subprocess.run([sys.executable, "-m", "bench.synthetic_artifact", "--items", str(n_items),
                            "--out", str(path)], cwd=root, check=True, stdout=subprocess.DEVNULL)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(artifact: Path, extra: list[str], device: str = "cpu", root: Path = ROOT,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m service` with the code in `root` (its working directory comes first on sys.path)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--artifact", str(artifact), "--port", str(port),
                                "--log-level", "warning", "--device", device, *extra],
                               cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read())
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                connection.close()
                return process, url
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("service not ready")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its descendants (uvicorn's worker processes),
    from /proc: what the server spent, whatever its process layout."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(p, 0.0) for p in tree)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return ({f"p{p:g}": float(np.percentile(ms, p)) for p in (50, 90, 99, 99.9)}
            | {"mean": float(ms.mean()), "max": float(ms.max()), "n": int(len(ms))})


def request_bodies(ids: np.ndarray, count: int, k: int, seed: int, beam: int | None = None) -> list[str]:
    """Random histories of 5..69 catalog items (the service's history window is 69)."""
    rng = np.random.default_rng(seed)
    extra = {} if beam is None else {"beam": beam}
    return [json.dumps({"history": ids[rng.integers(0, len(ids), rng.integers(5, 70))].tolist(), "k": k, **extra})
            for _ in range(count)]


class Stream:
    """One keep-alive connection; `send` returns the latency of one request in seconds."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)

    def send(self, body: str) -> float:
        started = time.perf_counter()
        self.connection.request("POST", "/v1/recommend", body=body, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"bad answer: {response.status} {payload[:200]!r}")
        want = json.loads(body)["k"]
        if len(json.loads(payload)["items"]) != want:
            raise RuntimeError(f"expected {want} items: {payload[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.connection.close()


def single_stream(targets: dict[str, tuple[str, list[str]]], block: int, warmup: int = 20) -> dict[str, dict]:
    """targets: name -> (url, bodies). Blocks of `block` sequential requests rotate over the
    targets until each has sent all its bodies; returns latency percentiles per target."""
    streams = {name: Stream(url) for name, (url, _) in targets.items()}
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for name, (_, bodies) in targets.items():
            for body in bodies[:warmup]:
                streams[name].send(body)
        position = {name: warmup for name in targets}
        while any(position[name] < len(bodies) for name, (_, bodies) in targets.items()):
            for name, (_, bodies) in targets.items():
                for body in bodies[position[name]:position[name] + block]:
                    latencies[name].append(streams[name].send(body))
                position[name] += block
    finally:
        for stream in streams.values():
            stream.close()
    return {name: percentiles(values) for name, values in latencies.items()}


def in_process(artifact: Path, requests: int, k: int, seed: int, root: Path = ROOT) -> dict:
    """The search alone (no HTTP), one request at a time, with the code in `root`."""
    output = subprocess.run([sys.executable, "-c", IN_PROCESS, str(artifact), str(requests), str(k), str(seed)],
                            cwd=root, check=True, capture_output=True, text=True).stdout
    return percentiles(json.loads(output.strip().splitlines()[-1]))


def catalog_ids(artifact: Path) -> np.ndarray:
    with np.load(artifact / "items.npz") as archive:
        return archive["item_ids"]


def candidates_per_request(artifact: Path, k: int, beam: int, requests: int = 30) -> float:
    """Mean (user, node) pairs the beam search scores per request at this k and beam."""
    from service.config import Settings
    from service.core.index import SearchParams
    from service.model_store import load_bundle

    bundle = load_bundle(artifact, Settings(batching=False))
    rng = np.random.default_rng(0)
    total = 0
    for _ in range(requests):
        row = np.full((1, bundle.history_length), -1, dtype=np.int64)
        history = rng.integers(0, bundle.tree.n_items, rng.integers(5, 70))
        row[0, :len(history)] = history
        total += bundle.index.search(row, k, SearchParams(beam=beam)).candidates_scored
    bundle.close()
    return total / requests


# ----------------------------------------------------------------------------- sections


def section_sizes(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n_items in (int(s) for s in args.sizes.split(",")):
        artifact = artifact_for(n_items)
        ids = catalog_ids(artifact)
        row = {"items": n_items, "search_in_process": in_process(artifact, args.requests, args.k, 1)}
        servers = {name: start(artifact, flags, args.device, env=env) for name, (flags, env) in
                   (("batching", BATCHING), ("no_batching", NO_BATCHING))}
        try:
            bodies = request_bodies(ids, args.requests + 20, args.k, seed=2)
            row |= single_stream({name: (url, bodies) for name, (_, url) in servers.items()}, args.block)
        finally:
            for process, _ in servers.values():
                stop(process)
        rows.append(row)
        print(f"{n_items:,} items done", file=sys.stderr, flush=True)
    print(f"\nPOST /v1/recommend, single stream, k = {args.k}, {args.requests} requests per server, "
          f"device {args.device} (ms)\n")
    print("| items | batching p50 | p90 | p99 | no batching p50 | p90 | p99 | search only p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, n, s = r["batching"], r["no_batching"], r["search_in_process"]
        print(f"| {r['items']:,} | {b['p50']:.2f} | {b['p90']:.2f} | {b['p99']:.2f} | {n['p50']:.2f} | {n['p90']:.2f} "
              f"| {n['p99']:.2f} | {s['p50']:.2f} | {s['p99']:.2f} |")
    return rows


def section_sweeps(args: argparse.Namespace) -> dict:
    """k and beam sweeps on one default server: every value gets its own bodies, and the
    values rotate in blocks like servers do."""
    artifact = artifact_for(args.sweep_size)
    ids = catalog_ids(artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    default_beam = manifest["defaults"]["beam"]
    result: dict = {"items": args.sweep_size, "default_beam": default_beam}
    process, url = start(artifact, ["--no-batching"], args.device)
    try:
        if args.ks:
            ks = [int(k) for k in args.ks.split(",")]
            stats = single_stream({f"k={k}": (url, request_bodies(ids, args.requests + 20, k, seed=3))
                                   for k in ks}, args.block)
            result["k"] = [{"k": k, "beam": default_beam, "latency_ms": stats[f"k={k}"],
                            "candidates": candidates_per_request(artifact, k, default_beam)} for k in ks]
        if args.beams:
            beams = [int(b) for b in args.beams.split(",")]
            stats = single_stream({f"beam={b}": (url, request_bodies(ids, args.requests + 20, args.k, 4, beam=b))
                                   for b in beams}, args.block)
            result["beam"] = [{"k": args.k, "beam": b, "latency_ms": stats[f"beam={b}"],
                               "candidates": candidates_per_request(artifact, args.k, b)} for b in beams]
    finally:
        stop(process)
    for key in ("k", "beam"):
        if key not in result:
            continue
        print(f"\n{args.sweep_size:,} items, single stream, by {key} (ms; candidates = (user, node) pairs scored)\n")
        print("| k | beam | candidates | p50 | p90 | p99 | p99.9 |")
        print("|---|---|---|---|---|---|---|")
        for r in result[key]:
            lat = r["latency_ms"]
            print(f"| {r['k']} | {r['beam']} | {r['candidates']:,.0f} | {lat['p50']:.2f} | {lat['p90']:.2f} "
                  f"| {lat['p99']:.2f} | {lat['p99.9']:.2f} |")
    return result


def section_threads(args: argparse.Namespace) -> list[dict]:
    artifact = artifact_for(args.sweep_size)
    ids = catalog_ids(artifact)
    threads = [int(t) for t in args.ort_threads.split(",")]
    servers = {t: start(artifact, ["--no-batching", "--ort-threads", str(t)], args.device) for t in threads}
    try:
        bodies = request_bodies(ids, args.requests + 20, args.k, seed=5)
        stats = single_stream({f"ort_threads={t}": (url, bodies) for t, (_, url) in servers.items()}, args.block)
    finally:
        for process, _ in servers.values():
            stop(process)
    rows = [{"ort_threads": t, "latency_ms": stats[f"ort_threads={t}"]} for t in threads]
    print(f"\n{args.sweep_size:,} items, single stream, k = {args.k}, by onnxruntime intra-op threads (ms)\n")
    print("| ORT threads | p50 | p90 | p99 | p99.9 |")
    print("|---|---|---|---|---|")
    for r in rows:
        lat = r["latency_ms"]
        print(f"| {r['ort_threads']} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['p99.9']:.2f} |")
    return rows


def section_throughput(args: argparse.Namespace) -> list[dict]:
    from loadtest.generator import bodies_from, run_load

    code = Path(args.code).resolve() if args.code else ROOT
    artifact = artifact_for(args.sweep_size, code)
    bodies = bodies_from(artifact, 2000, args.k, seed=0)
    rates = [float(r) for r in args.rates.split(",")]
    results = []
    for name in args.configs.split(";"):
        flags, env = CONFIGS[name]
        process, url = start(artifact, flags, args.device, root=code, env=env)
        providers = serving_providers(url)
        print(f"{name}: onnxruntime providers {providers}", file=sys.stderr, flush=True)
        sweep = []
        try:
            for rate in rates:
                runs = []
                for run in range(args.repeat):
                    server_cpu, own_cpu, machine = process_tree_cpu_seconds(process.pid), time.process_time(), \
                        machine_busy_seconds()
                    load = asyncio.run(run_load(url, bodies, rate, args.duration + args.warmup, timeout=10.0))
                    summary = load.summary(args.warmup)
                    sent = max(len(load.records), 1)
                    busy, total = (after - before for after, before in zip(machine_busy_seconds(), machine,
                                                                          strict=True))
                    # CPU per request over the whole run, warm-up included (the server cannot tell
                    # them apart): the server's process tree, and the load generator (this process).
                    summary["cpu_ms_per_request"] = {
                        "server": round(1000 * (process_tree_cpu_seconds(process.pid) - server_cpu) / sent, 3),
                        "load_generator": round(1000 * (time.process_time() - own_cpu) / sent, 3),
                        "machine_busy_share": round(busy / total, 3) if total else None}
                    counted = summary["counted"]
                    summary["ok_rate"] = summary["ok"] / args.duration
                    summary["run"] = run + 1
                    summary["meets_slo"] = bool(summary["error_count"] == 0 and counted
                                                and summary["latency_ms"]["p99"] <= args.slo_ms
                                                and summary["achieved_rate"] >= 0.97 * rate)
                    sweep.append(summary)
                    runs.append(summary)
                    lat, cpu = summary["latency_ms"], summary["cpu_ms_per_request"]
                    print(f"{name} @ {rate:g}/s (run {run + 1}): p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms, "
                          f"errors {summary['errors'] or 0}, achieved {summary['achieved_rate']:.0f}/s, server CPU "
                          f"{cpu['server']:.2f} ms/request, machine {cpu['machine_busy_share']:.0%} busy",
                          file=sys.stderr, flush=True)
                if not all(r["meets_slo"] for r in runs):
                    break  # higher rates only queue more
        finally:
            stop(process)
        passing = sorted({s["target_rate"] for s in sweep}
                         - {s["target_rate"] for s in sweep if not s["meets_slo"]})
        results.append({"config": name, "code": describe(code), "flags": flags, "env": env, "providers": providers,
                        "sweep": sweep,
                        "max_sustainable_rate": max(passing) if passing else None})
    print(f"\nopen loop, {args.sweep_size:,} items, k = {args.k}, {args.duration:g} s per rate after a "
          f"{args.warmup:g} s warm-up; SLO: p99 <= {args.slo_ms:g} ms, no errors (ms)\n")
    print("| config | rate /s | run | achieved /s | p50 | p90 | p99 | p99.9 | max | errors | server CPU ms/request "
          "| machine busy | meets SLO |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for s in r["sweep"]:
            lat, cpu = s["latency_ms"], s["cpu_ms_per_request"]
            print(f"| {r['config']} | {s['target_rate']:g} | {s['run']} | {s['achieved_rate']:.0f} | {lat['p50']:.1f} "
                  f"| {lat['p90']:.1f} | {lat['p99']:.1f} | {lat['p99.9']:.1f} | {lat['max']:.1f} "
                  f"| {s['error_count']} | {cpu['server']:.2f} | {cpu['machine_busy_share']:.0%} "
                  f"| {'yes' if s['meets_slo'] else 'no'} |")
    print("\n| config | highest rate meeting the SLO |")
    print("|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['max_sustainable_rate'] or '-'} |")
    return results


def serving_providers(url: str) -> list[str] | None:
    """The execution providers the server really uses (`--device cuda` falls back to the CPU
    when onnxruntime has no CUDA provider): from GET /v1/model."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
    try:
        connection.request("GET", "/v1/model")
        return (json.loads(connection.getresponse().read()).get("serving") or {}).get("providers")
    except (OSError, ValueError):
        return None
    finally:
        connection.close()


def describe(code_dir: Path) -> str:
    """Short commit of a checkout, with '+changes' when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code_dir, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=code_dir,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+changes" if dirty else "")


def section_versions(args: argparse.Namespace) -> dict:
    """Single-stream latency and the in-process search across code versions, side by side."""
    versions = []
    for entry in args.versions.split(","):
        code, _, artifacts = entry.partition(":")
        code_dir = Path(code).resolve()
        artifact = artifact_for(args.sweep_size, Path(artifacts).resolve() if artifacts else code_dir)
        versions.append({"code": str(code_dir), "commit": describe(code_dir), "artifact": str(artifact),
                         "artifact_exporter": describe(artifact.parents[2]), "name": entry})
    ids = catalog_ids(Path(versions[0]["artifact"]))
    bodies = request_bodies(ids, args.requests + 20, args.k, seed=6)
    for v in versions:  # every artifact has the same catalog (same seed): the same bodies fit all
        if not np.array_equal(catalog_ids(Path(v["artifact"])), ids):
            raise SystemExit(f"{v['artifact']}: a different catalog; build it with the same seed")
    for rounds in range(args.rounds):
        for v in versions:
            times = in_process(Path(v["artifact"]), args.requests, args.k, seed=7 + rounds, root=Path(v["code"]))
            v.setdefault("search_rounds", []).append(times)
    for flags_name, (flags, env) in (("batching", BATCHING), ("no_batching", NO_BATCHING)):
        servers = {v["name"]: start(Path(v["artifact"]), flags, args.device, root=Path(v["code"]), env=env)
                   for v in versions}
        try:
            stats = single_stream({name: (url, bodies) for name, (_, url) in servers.items()}, args.block)
        finally:
            for process, _ in servers.values():
                stop(process)
        for v in versions:
            v[flags_name] = stats[v["name"]]
    for v in versions:
        rounds = v["search_rounds"]
        v["search_in_process"] = {key: float(np.median([r[key] for r in rounds])) for key in ("p50", "p90", "p99")}
    print(f"\n{args.sweep_size:,} items, single stream, k = {args.k}, versions side by side (ms; search: median "
          f"over {args.rounds} rounds)\n")
    print("| code | artifact exported by | search p50 | p99 | HTTP batching p50 | p90 | p99 "
          "| no batching p50 | p90 | p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v in versions:
        s, b, n = v["search_in_process"], v["batching"], v["no_batching"]
        print(f"| {v['commit']} | {v['artifact_exporter']} | {s['p50']:.2f} | {s['p99']:.2f} | {b['p50']:.2f} "
              f"| {b['p90']:.2f} | {b['p99']:.2f} | {n['p50']:.2f} | {n['p90']:.2f} | {n['p99']:.2f} |")
    return {"items": args.sweep_size, "versions": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="corpus sizes for the latency table ('' skips)")
    parser.add_argument("--requests", type=int, default=1000, help="single-stream requests per server or value")
    parser.add_argument("--block", type=int, default=100, help="requests per block when servers or values rotate")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sweep-size", type=int, default=1_000_000, help="corpus size of the other sections")
    parser.add_argument("--ks", default="", help="k values for the k sweep, e.g. 50,200,1000")
    parser.add_argument("--beams", default="", help="beam widths for the beam sweep, e.g. 100,200,400,800")
    parser.add_argument("--ort-threads", default="", help="onnxruntime thread counts to compare, e.g. 1,2")
    parser.add_argument("--rates", default="", help="open-loop rates (requests/s) for the throughput sweep")
    parser.add_argument("--configs", default="1 process;1 process, batching;2 processes",
                        help=f"server configurations for the throughput sweep, ';'-separated: {'; '.join(CONFIGS)}")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds counted per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent before counting, per rate")
    parser.add_argument("--code", default="", help="throughput: serve with the code in this directory (a git "
                        "worktree of another commit) and an artifact built by its exporter; default this one")
    parser.add_argument("--repeat", type=int, default=1, help="runs per rate; a rate is sustained only if every "
                        "run meets the SLO")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 bound for a rate to count as sustained")
    parser.add_argument("--versions", default="", help="CODE_DIR[:ARTIFACT_CODE_DIR],... to compare side by side")
    parser.add_argument("--rounds", type=int, default=3, help="in-process search rounds per version")
    parser.add_argument("--json", default=None)
    parser.add_argument("--gpu-quick", action="store_true", help="the GPU serving check in under 5 minutes: "
                        "--device cuda, 1M items, single stream, then open loop at 200-1600/s for 10 s each with "
                        "micro-batching (the cuda default) and without")
    args = parser.parse_args()
    if args.gpu_quick:
        args.device, args.sizes, args.requests, args.duration, args.warmup = "cuda", "1000000", 300, 10.0, 2.0
        args.rates, args.configs = "200,400,800,1600", "default;1 process"

    result: dict = {"command": command_line(), "device": args.device,
                    "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "k": args.k,
                    "requests": args.requests}
    if args.sizes:
        result["results"] = section_sizes(args)
    if args.ks or args.beams:
        result["sweeps"] = section_sweeps(args)
    if args.ort_threads:
        result["ort_threads"] = section_threads(args)
    if args.rates:
        result["throughput"] = section_throughput(args)
    if args.versions:
        result["versions"] = section_versions(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
