"""The load generator: schedule accuracy against a local stub server, percentile arithmetic,
bounded run time, request mixes, and loopback-only targets."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from loadtest.generator import bodies_from, check_loopback, latency_percentiles, run_load
from tests.helpers import free_port


class StubServer:
    """A tiny real HTTP server whose /v1/recommend sleeps `delay` seconds (one at a time when
    `serial`, to create queueing) and records arrival times."""

    def __init__(self, delay: float = 0.0, serial: bool = False, fail_every: int = 0) -> None:
        self.arrivals: list[float] = []
        app = FastAPI()
        lock = asyncio.Lock()
        count = {"n": 0}

        @app.post("/v1/recommend")
        async def recommend() -> JSONResponse:
            self.arrivals.append(time.perf_counter())
            count["n"] += 1
            if fail_every and count["n"] % fail_every == 0:
                return JSONResponse({"error": "unavailable"}, status_code=503)
            if serial:
                async with lock:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(delay)
            return JSONResponse({"items": []}, headers={"x-model-version": "stub-v1"})

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def test_schedule_is_followed() -> None:
    with StubServer() as url:
        result = asyncio.run(run_load(url, [{"k": 1}], rate=100, duration=2.0))
    summary = result.summary()
    assert summary["sent"] == 200 and summary["ok"] == 200 and summary["error_count"] == 0
    assert summary["versions"] == {"stub-v1": 200}
    intended = np.array([r.intended for r in result.records])
    np.testing.assert_allclose(np.diff(intended), 0.01, atol=1e-9)
    assert 95 <= summary["achieved_rate"] <= 105
    assert result.wall < 3.0


def test_latency_counts_from_intended_time_so_queueing_shows() -> None:
    """A server that handles one request at a time for 50 ms, offered 40 req/s: a closed-loop
    client would see ~50 ms; from the intended send time, latency grows with the queue."""
    with StubServer(delay=0.05, serial=True) as url:
        result = asyncio.run(run_load(url, [{"k": 1}], rate=40, duration=1.5))
    latencies = [r.latency for r in result.records if r.outcome == "ok"]
    assert len(latencies) == 60
    assert max(latencies) > 0.5  # the backlog: 60 x 50 ms of work offered in 1.5 s
    assert latencies[-1] > latencies[0] + 0.3


def test_errors_are_counted_by_kind_and_run_is_bounded() -> None:
    with StubServer(fail_every=5) as url:
        started = time.perf_counter()
        result = asyncio.run(run_load(url, [{"k": 1}], rate=50, duration=10, max_requests=50))
        elapsed = time.perf_counter() - started
    summary = result.summary()
    assert summary["sent"] == 50 and summary["errors"] == {"http_503": 10}
    assert elapsed < 2.5  # bounded by max_requests, not by the 10 s duration
    dead = f"http://127.0.0.1:{free_port()}"
    result = asyncio.run(run_load(dead, [{"k": 1}], rate=20, duration=0.5, timeout=1))
    assert result.summary()["errors"] == {"connect": 10}


def test_percentiles() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = latency_percentiles(values)
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["max"] == 100
    assert p["p99.9"] == pytest.approx(99.901) and p["mean"] == pytest.approx(50.5)
    assert np.isnan(latency_percentiles([])["p50"])


def test_request_mixes(tmp_path: Path, artifact: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{100 + (u * 7 + t) % 30},{t}\n"
                                                            for u in range(5) for t in range(10)))
    bodies = bodies_from(log, 20, k=7)
    assert len(bodies) == 20 and all(b["k"] == 7 and 1 <= len(b["history"]) <= 9 for b in bodies)
    jsonl = tmp_path / "bodies.jsonl"
    jsonl.write_text(json.dumps({"history": [1], "k": 3}) + "\n")
    assert bodies_from(jsonl, 5, k=1) == [{"history": [1], "k": 3}]
    from_artifact = bodies_from(artifact, 10, k=5)
    assert len(from_artifact) == 10 and all(b["history"] for b in from_artifact)


def test_refuses_non_loopback_targets() -> None:
    check_loopback("http://127.0.0.1:8000")
    with pytest.raises(SystemExit, match="loopback"):
        check_loopback("http://example.com")
