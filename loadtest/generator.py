"""Open-loop load generator for the service (loopback only).

Requests go out on a fixed schedule (request i at t0 + i / rate) whether or not earlier ones
have answered, and each latency is measured from the request's *intended* send time, so a slow
server cannot hide its queueing by slowing the client down (coordinated omission). The run is
bounded in time (`duration`) and count (`max_requests`); stragglers get `timeout` seconds.

Request mix: bodies are drawn from a data file: a JSON-lines file of request bodies, an
interaction log (CSV/TSV with a header naming user and item columns; users' time-ordered
behaviours give realistic histories), or an artifact directory (random histories over its
catalog).

    python -m loadtest --url http://127.0.0.1:8000 --rate 200 --duration 30 \\
        --data data/demo.parquet.csv --json out/load.json --plot out/load.png
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import json
import random
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Record:
    intended: float  # seconds since the run's start (time.time() of the start is LoadResult.started)
    latency: float  # seconds from intended send to response (or failure)
    outcome: str  # "ok", "http_503", "timeout", "connect", ...
    version: str | None = None


@dataclass
class LoadResult:
    rate: float
    duration: float
    records: list[Record] = field(default_factory=list)
    wall: float = 0.0
    started: float = 0.0  # wall-clock (time.time()) of intended time 0, to line up with other logs

    def summary(self, warmup: float = 0.0) -> dict:
        """Statistics over the records sent at or after `warmup` seconds (all are in `sent`)."""
        counted = [r for r in self.records if r.intended >= warmup]
        ok = [r.latency for r in counted if r.outcome == "ok"]
        errors = Counter(r.outcome for r in counted if r.outcome != "ok")
        versions = Counter(r.version for r in counted if r.version)
        return {
            "target_rate": self.rate,
            "achieved_rate": len(self.records) / self.wall if self.wall else 0.0,
            "sent": len(self.records),
            "ok": len(ok),
            "errors": dict(errors),
            "error_count": sum(errors.values()),
            "counted": len(counted),
            "warmup_s": warmup,
            "latency_ms": latency_percentiles(ok),
            "versions": dict(versions),
            "wall_s": self.wall,
        }


def latency_percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds (linear interpolation; empty -> NaN)."""
    if not seconds:
        return {k: float("nan") for k in ("p50", "p90", "p99", "p99.9", "max", "mean")}
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    result = {f"p{q:g}": float(np.percentile(ms, q)) for q in (50, 90, 99, 99.9)}
    return result | {"max": float(ms.max()), "mean": float(ms.mean())}


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"error: {url}: the load generator only targets loopback addresses ({', '.join(LOOPBACK)})")


class _ConnectionPool:
    """Keep-alive HTTP/1.1 connections over asyncio streams: a lean client, so the load
    generator's own CPU (it shares the machine) does not become the bottleneck. httpx cost
    ~1 ms of CPU per request, enough to stall a 200 req/s schedule on 2 cores."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        # Idle connections are reused oldest first, so requests spread over every connection
        # the load has needed, as from many clients. Newest first kept reusing one connection
        # while latency was low, which sent nearly everything to one `--workers` process.
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self.slots = asyncio.Semaphore(limit)

    async def request(self, payload: bytes) -> tuple[int, dict[str, str]]:
        async with self.slots:
            if self.idle:
                try:
                    return await self._exchange(*self.idle.popleft(), payload)
                except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
                    pass  # the server closed this idle connection meanwhile: retry on a fresh one
            reader, writer = await asyncio.open_connection(self.host, self.port)
            return await self._exchange(reader, writer, payload)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        payload: bytes) -> tuple[int, dict[str, str]]:
        try:
            writer.write(payload)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("connection closed by the server")
            status = int(status_line.split(b" ", 2)[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, headers

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def _http_request(host: str, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def run_load(url: str, bodies: list[dict], rate: float, duration: float, max_requests: int | None = None,
                   timeout: float = 10.0, path: str = "/v1/recommend", concurrency: int = 512) -> LoadResult:
    """Send bodies (cycled) on an open-loop schedule; return per-request records."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    total = int(rate * duration)
    if max_requests is not None:
        total = min(total, max_requests)
    result = LoadResult(rate=rate, duration=duration)
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    payloads = [_http_request(host, path, json.dumps(b).encode()) for b in bodies]
    pool = _ConnectionPool(host, port, concurrency)
    start = time.perf_counter()
    result.started = time.time()

    async def one(i: int, intended: float) -> None:
        version = None
        try:
            async with asyncio.timeout(timeout):  # cheaper than wait_for, which wraps the call in a task
                status, headers = await pool.request(payloads[i % len(payloads)])
            outcome = "ok" if status == 200 else f"http_{status}"
            version = headers.get("x-model-version")
        except TimeoutError:
            outcome = "timeout"
        except ConnectionRefusedError:
            outcome = "connect"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            outcome = exc.__class__.__name__.lower()
        result.records.append(Record(intended, time.perf_counter() - start - intended, outcome, version))

    tasks = []
    for i in range(total):
        intended = i / rate
        delay = start + intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, intended)))
    await asyncio.gather(*tasks)
    result.wall = time.perf_counter() - start
    pool.close()
    result.records.sort(key=lambda r: r.intended)
    return result


# ----------------------------------------------------------------------------- request mix


def bodies_from(data: Path, count: int, k: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    if data.is_dir():
        from service.core.npz import check_members

        check_members(data / "items.npz", {"item_ids": ("iuU", (None,))})  # an artifact's catalog, checked
        with np.load(data / "items.npz", allow_pickle=False) as archive:
            ids = archive["item_ids"].tolist()
        return [{"history": rng.sample(ids, rng.randint(1, min(69, len(ids)))), "k": k} for _ in range(count)]
    name = data.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        with _open(data) as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
        if not lines:
            raise SystemExit(f"error: {data}: no request bodies")
        return lines
    return _bodies_from_log(data, count, k, rng)


def _bodies_from_log(data: Path, count: int, k: int, rng: random.Random) -> list[dict]:
    with _open(data) as fh:
        first = fh.readline()
        sep = "\t" if first.count("\t") > first.count(",") else ","
        header = [h.strip().lower() for h in first.strip().split(sep)]
        user_col = next((i for i, h in enumerate(header) if h in ("user_id", "user", "userid")), None)
        item_col = next((i for i, h in enumerate(header) if h in ("item_id", "item", "itemid", "product_id")), None)
        time_col = next((i for i, h in enumerate(header) if h in ("timestamp", "ts", "time")), None)
        if user_col is None or item_col is None:
            raise SystemExit(f"error: {data}: need a header with user_id and item_id columns")
        sequences: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for n, row in enumerate(csv.reader(fh, delimiter=sep)):
            if len(row) <= max(user_col, item_col):
                continue
            stamp = float(row[time_col]) if time_col is not None and row[time_col] else float(n)
            sequences[row[user_col]].append((stamp, row[item_col]))
    users = [u for u, seq in sequences.items() if len(seq) >= 2]
    if not users:
        raise SystemExit(f"error: {data}: no user with two or more behaviours")
    bodies = []
    for _ in range(count):
        user = rng.choice(users)
        seq = [item for _, item in sorted(sequences[user])]
        cut = rng.randint(1, len(seq) - 1)
        history = [_maybe_int(x) for x in seq[max(0, cut - 69):cut]]
        bodies.append({"user_id": _maybe_int(user), "history": history, "k": k})
    return bodies


def _maybe_int(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def _open(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


# ----------------------------------------------------------------------------- output


def plot(result: LoadResult, path: Path, title: str = "", warmup: float = 0.0) -> None:
    """Latency histogram (requests after the warm-up, as in the summary) and latency over the run
    (all requests, the warm-up shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.array([r.latency for r in result.records if r.outcome == "ok" and r.intended >= warmup]) * 1000
    fig, (hist, timeline) = plt.subplots(1, 2, figsize=(11, 4))
    if len(ok):
        bins = np.logspace(np.log10(max(ok.min(), 0.1)), np.log10(ok.max() + 1e-9), 60)
        hist.hist(ok, bins=bins)
        hist.set_xscale("log")
        for q, style in ((50, "--"), (99, ":")):
            hist.axvline(np.percentile(ok, q), color="k", linestyle=style, label=f"p{q} {np.percentile(ok, q):.1f} ms")
        hist.legend()
    hist.set(xlabel="latency (ms, from intended send time)", ylabel="requests", title="Latency distribution")
    times = np.array([r.intended for r in result.records])
    lat = np.array([r.latency for r in result.records]) * 1000
    failed = np.array([r.outcome != "ok" for r in result.records])
    timeline.scatter(times[~failed], lat[~failed], s=2, alpha=0.5, label="ok")
    if failed.any():
        timeline.scatter(times[failed], lat[failed], s=8, color="red", label="error")
    if warmup > 0:
        timeline.axvspan(0, warmup, color="0.9", label="warm-up (not counted)")
    timeline.set_yscale("log")
    timeline.set(xlabel="intended send time (s)", ylabel="latency (ms)", title="Latency over the run")
    timeline.legend()
    fig.suptitle(title or f"open loop at {result.rate:g} req/s, {len(ok)} requests counted")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="service base URL (loopback only)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, required=True, help="seconds of scheduled sending")
    parser.add_argument("--data", required=True, help="JSONL bodies, an interaction log CSV/TSV, or an artifact dir")
    parser.add_argument("--max-requests", type=int, default=None)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds at the start sent at the same rate but left out of the statistics")
    parser.add_argument("--bodies", type=int, default=2000, help="distinct request bodies to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--raw", default=None, help="write every request's record (JSON lines)")
    args = parser.parse_args(argv)
    check_loopback(args.url)
    data = Path(args.data)
    if not data.exists():
        print(f"error: {data}: no such file or directory", file=sys.stderr)
        return 2
    bodies = bodies_from(data, args.bodies, args.k, args.seed)
    result = asyncio.run(run_load(args.url, bodies, args.rate, args.duration + args.warmup, args.max_requests,
                                  args.timeout))
    summary = result.summary(args.warmup)
    lat = summary["latency_ms"]
    print(f"sent {summary['sent']} at {summary['achieved_rate']:.1f}/s (target {args.rate:g}/s)"
          + (f", {summary['counted']} after a {args.warmup:g}s warm-up" if args.warmup else "")
          + f": ok {summary['ok']}, errors {summary['errors'] or 0}")
    print(f"latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
          f"p99.9 {lat['p99.9']:.2f}  max {lat['max']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "started": result.started, **summary},
                                              indent=2))
    if args.plot:
        plot(result, Path(args.plot), warmup=args.warmup)
    if args.raw:
        with open(args.raw, "w") as fh:
            for r in result.records:
                fh.write(json.dumps({"intended": r.intended, "latency": r.latency, "outcome": r.outcome,
                                     "version": r.version}) + "\n")
    return 0 if summary["error_count"] == 0 else 1

