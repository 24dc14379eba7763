"""Redis outage: a real redis-server on its own port, stopped and restarted under the app."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.helpers import free_port, item_ids


class RedisProcess:
    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def redis_process():
    server = RedisProcess()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def test_service_degrades_and_recovers(artifact: Path, redis_process: RedisProcess) -> None:
    history = item_ids(artifact)[:5].tolist()
    settings = Settings(artifact=artifact, redis_url=redis_process.url, redis_timeout_s=0.2)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/events", json={"user_id": "u", "item_id": history[0]}).status_code == 202
        assert client.post("/v1/recommend", json={"user_id": "u", "k": 5}).json()["history_source"] == "store"

        redis_process.stop()
        started = time.monotonic()
        for _ in range(20):  # the circuit breaker keeps these fast after the first failures
            r = client.post("/v1/recommend", json={"user_id": "u", "k": 5})
            assert r.status_code == 200
            body = r.json()
            assert body["fallback"] == "popular" and body["fallback_reason"] == "store_unavailable"
        assert time.monotonic() - started < 3.0
        r = client.post("/v1/recommend", json={"history": history, "k": 5})
        assert r.status_code == 200 and r.json()["fallback"] is None  # request histories still work
        r = client.post("/v1/events", json={"user_id": "u", "item_id": history[1]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"] == ["behavior_store"]
        assert "jtm_behavior_store_up 0.0" in client.get("/metrics").text

        redis_process.start()  # same port, empty data: the service recovers without a restart
        deadline = time.monotonic() + 10
        while client.post("/v1/events", json={"user_id": "u", "item_id": history[2]}).status_code != 202:
            assert time.monotonic() < deadline, "no recovery within 10 s"
            time.sleep(0.2)
        assert client.get("/readyz").json()["degraded"] == []
        assert client.post("/v1/recommend", json={"user_id": "u", "k": 5}).json()["history_source"] == "store"
