"""User behaviour stores: the only module that talks to Redis.

Each user's recent item ids (original ids, most recent first) live in a capped list. Redis:
LPUSH + LTRIM in one MULTI/EXEC pipeline per call, so a batch of events is stored atomically
and the cap holds. In-process: a dict of deques, the embedded default that needs nothing
running. Both implement the same protocol and are tested against each other.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Protocol


class StoreUnavailable(Exception):
    """The behaviour store cannot be reached right now."""


class BehaviorStore(Protocol):
    def append(self, events: Sequence[tuple[str, str]]) -> None:
        """Store (user_id, item_id) events in arrival order."""

    def recent(self, user_id: str, limit: int) -> list[str]:
        """Up to `limit` item ids of the user, most recent first."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...

    @property
    def kind(self) -> str: ...


class MemoryStore:
    kind = "memory"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lists: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=capacity))
        self._lock = threading.Lock()

    def append(self, events: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            for user, item in events:
                self._lists[user].appendleft(item)

    def recent(self, user_id: str, limit: int) -> list[str]:
        with self._lock:
            items = self._lists.get(user_id)
            return list(items)[:limit] if items else []

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, capacity: int, prefix: str = "jtm", timeout_s: float = 0.5) -> None:
        import redis

        self._redis_errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           decode_responses=True, health_check_interval=30)
        self.capacity = capacity
        self.prefix = prefix

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:hist:{user_id}"

    def append(self, events: Sequence[tuple[str, str]]) -> None:
        by_user: dict[str, list[str]] = defaultdict(list)
        for user, item in events:
            by_user[user].append(item)
        try:
            pipe = self.client.pipeline(transaction=True)
            for user, items in by_user.items():
                pipe.lpush(self.key(user), *items)
                pipe.ltrim(self.key(user), 0, self.capacity - 1)
            pipe.execute()
        except self._redis_errors as exc:
            raise StoreUnavailable(str(exc)) from exc

    def recent(self, user_id: str, limit: int) -> list[str]:
        try:
            return self.client.lrange(self.key(user_id), 0, min(limit, self.capacity) - 1)
        except self._redis_errors as exc:
            raise StoreUnavailable(str(exc)) from exc

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except self._redis_errors:
            return False

    def close(self) -> None:
        self.client.close()


def make_store(redis_url: str | None, capacity: int, prefix: str = "jtm", timeout_s: float = 0.5) -> BehaviorStore:
    if redis_url:
        return RedisStore(redis_url, capacity, prefix, timeout_s)
    return MemoryStore(capacity)
