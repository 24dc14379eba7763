"""The loop end to end, with the real processes: events naming items the model never saw are
posted to the service (Redis), `trainer ingest` logs them, `trainer refresh` publishes a new
version, and the service serves it (a `fresh` request and the main list recommend the new
items) without a failed request during the swap."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers import redis_url, start_service, train_and_export
from trainer.online.event_log import Segments
from trainer.publish import publish

NEW_ITEMS = [9_000_000 + i for i in range(6)]


@pytest.mark.slow
def test_posted_traffic_reaches_a_new_served_version(tmp_path: Path, redis_prefix: str) -> None:
    _, artifact = train_and_export(tmp_path, "jtm", 0, "auto")
    registry, log_dir = tmp_path / "registry", tmp_path / "log"
    publish(artifact, registry)
    env = {"JTM_REDIS_URL": redis_url(), "JTM_REDIS_PREFIX": redis_prefix, "JTM_REGISTRY_POLL_S": "0.5",
           "JTM_WORKERS": "1"}
    service, url = start_service("--registry", str(registry), env=env)
    ingest = subprocess.Popen([sys.executable, "-m", "trainer", "ingest", "--redis-url", redis_url(),
                               "--redis-prefix", redis_prefix, "--log", str(log_dir), "--block-ms", "100"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = pd.read_parquet(tmp_path / "log.parquet")
        first = httpx.get(f"{url}/v1/model").json()["serving"]["version"]
        histories = {}
        posted = 0
        with httpx.Client(base_url=url, timeout=10) as client:
            for u in log["user_id"].unique()[:200]:
                items = [int(i) for i in log.loc[log["user_id"] == u, "item_id"].to_numpy()[:8]]
                new = NEW_ITEMS[items[0] % len(NEW_ITEMS)]
                sequence = [*items[:4], items[0], new, *items[4:], items[0], new]
                answer = client.post("/v1/events", json={"events": [
                    {"user_id": int(u), "item_id": i, "event_id": f"{u}-{j}"} for j, i in enumerate(sequence)]})
                assert answer.status_code == 202, answer.text
                posted += len(sequence)
                histories[int(u)] = (items, new)
        deadline = time.monotonic() + 60
        while Segments(log_dir).load_state().events < posted and time.monotonic() < deadline:
            time.sleep(0.2)
        assert Segments(log_dir).load_state().events == posted

        failures, answered = [], []
        done = threading.Event()

        def load() -> None:  # recommend requests all through the refresh and the swap
            with httpx.Client(base_url=url, timeout=10) as client:
                while not done.is_set():
                    r = client.post("/v1/recommend", json={"history": [int(log["item_id"].iloc[0])], "k": 20})
                    (answered if r.status_code == 200 else failures).append(r.status_code)

        loader = threading.Thread(target=load)
        loader.start()
        result = subprocess.run([sys.executable, "-m", "trainer", "refresh", "--registry", str(registry), "--log",
                                 str(log_dir), "--redis-url", redis_url(), "--holdout", "0.2"], cwd=ROOT,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("publish"), result.stdout
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/model").json()["serving"]["version"] == first and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # requests on the new version too
        done.set()
        loader.join()
        assert failures == [] and len(answered) > 20

        model = httpx.get(f"{url}/v1/model").json()
        assert model["serving"]["version"] != first and model["serving"]["fresh_items"] == len(NEW_ITEMS)
        assert model["refresh"]["log"]["watermark"] == Segments(log_dir).last_seq()
        assert model["refresh"]["last_decision"]["decision"] == "publish"
        in_main_list = 0
        with httpx.Client(base_url=url, timeout=10) as client:
            for items, new in list(histories.values())[:30]:
                fresh = client.post("/v1/recommend", json={"history": items[:5], "k": 3, "fresh": True}).json()
                assert fresh["items"] and {i["item_id"] for i in fresh["items"]} <= set(NEW_ITEMS)
                main = client.post("/v1/recommend", json={"history": items[:5], "k": 200}).json()
                in_main_list += new in {i["item_id"] for i in main["items"]}
        assert in_main_list > 0
    finally:
        ingest.terminate()
        ingest.wait(timeout=30)
        service.terminate()
        service.wait(timeout=30)
