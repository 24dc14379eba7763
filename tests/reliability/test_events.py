"""No lost events: concurrent posts with duplicates and retries store exactly the accepted
events, in order per user, capped as configured, on Redis and in-process."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.helpers import redis_url


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_concurrent_events_with_retries(artifact: Path, store: str, request) -> None:
    capacity = 50
    kwargs = {}
    if store == "redis":
        kwargs = {"redis_url": redis_url(), "redis_prefix": request.getfixturevalue("redis_prefix")}
    settings = Settings(artifact=artifact, stored_history=capacity, **kwargs)
    users = [f"user-{i}" for i in range(8)]
    sent: dict[str, list[str]] = {u: [] for u in users}
    totals = {"stored": 0, "duplicates": 0, "accepted": 0}
    lock = threading.Lock()

    with TestClient(create_app(settings)) as client:
        def client_for(user: str, seed: int) -> None:
            rng = random.Random(seed)
            sequence = 0
            while sequence < 80:
                batch = []
                for _ in range(rng.randint(1, 10)):
                    batch.append({"user_id": user, "item_id": f"{user}-item-{sequence}", "event_id": f"e{sequence}"})
                    sequence += 1
                tries = 2 if rng.random() < 0.3 else 1  # a client retry of the same batch
                for _ in range(tries):
                    response = client.post("/v1/events", json={"events": batch})
                    assert response.status_code == 202, response.text
                    body = response.json()
                    with lock:
                        for key in totals:
                            totals[key] += body[key]
                sent[user] += [e["item_id"] for e in batch]

        threads = [threading.Thread(target=client_for, args=(u, i)) for i, u in enumerate(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stored = {u: client.app.state.context.store.recent(u, 1000) for u in users}

    unique = sum(len(s) for s in sent.values())
    assert totals["stored"] == unique  # every distinct event stored exactly once
    assert totals["accepted"] == totals["stored"] + totals["duplicates"] and totals["duplicates"] > 0
    for user in users:
        assert stored[user] == sent[user][::-1][:capacity]  # most recent first, in order, capped
