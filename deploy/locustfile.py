"""Locust scenario for people who use locust (`pip install locust`; not a project dependency).

    locust -f deploy/locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 60s

Users send behaviour events and ask for recommendations with their own history, in a 1:4 mix.
Set JTM_LOCUST_ITEMS to an artifact directory to draw item ids from its catalog; otherwise ids
are random integers (unknown items are counted and ignored by the service, so the popular
fallback gets exercised). Locust measures closed-loop latency; for open-loop numbers that
cannot hide queueing use `python -m loadtest`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from locust import HttpUser, between, task


def _catalog() -> list:
    directory = os.environ.get("JTM_LOCUST_ITEMS")
    if directory:
        import numpy as np

        with np.load(Path(directory) / "items.npz") as archive:
            return archive["item_ids"].tolist()
    return list(range(1, 100_000))


ITEMS = _catalog()


class Shopper(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.user_id = f"locust-{random.getrandbits(32)}"
        self.history = random.sample(ITEMS, k=min(len(ITEMS), random.randint(3, 40)))

    @task(1)
    def view_item(self) -> None:
        item = random.choice(ITEMS)
        self.history.append(item)
        self.client.post("/v1/events", json={"user_id": self.user_id, "item_id": item})

    @task(4)
    def recommend(self) -> None:
        with self.client.post("/v1/recommend", json={"user_id": self.user_id, "history": self.history[-69:], "k": 200},
                              catch_response=True, name="/v1/recommend") as response:
            if response.status_code != 200 or not response.json().get("items"):
                response.failure(f"status {response.status_code}")
