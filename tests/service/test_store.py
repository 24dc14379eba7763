"""The Redis store and the in-process store behave the same."""

from __future__ import annotations

import pytest

from service.features import MemoryStore, RedisStore, StoredEvent, StoreUnavailable
from tests.helpers import redis_url


def stores(prefix: str, capacity: int):
    return [MemoryStore(capacity), RedisStore(redis_url(), capacity, prefix=prefix)]


def test_same_behaviour(redis_prefix: str) -> None:
    results = []
    for store in stores(redis_prefix, capacity=5):
        store.append([StoredEvent("u1", "a"), StoredEvent("u1", "b"), StoredEvent("u2", "x")])
        store.append([StoredEvent("u1", "c")])
        store.append([StoredEvent("u1", str(i)) for i in range(4)])  # over capacity: oldest dropped
        results.append((store.recent("u1", 100), store.recent("u1", 2), store.recent("u2", 10),
                        store.recent("nobody", 10), store.ping()))
        store.close()
    memory, redis_ = results
    assert memory == redis_
    assert memory[0] == ["3", "2", "1", "0", "c"]  # most recent first, capped at 5
    assert memory[1] == ["3", "2"] and memory[2] == ["x"] and memory[3] == [] and memory[4] is True


def test_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", capacity=5, timeout_s=0.2)
    assert store.ping() is False
    with pytest.raises(StoreUnavailable):
        store.append([StoredEvent("u", "i")])
    with pytest.raises(StoreUnavailable):
        store.recent("u", 5)


def test_event_ids_make_retries_idempotent(redis_prefix: str) -> None:
    for store in stores(redis_prefix, capacity=10):
        assert store.append([StoredEvent("u", "a", "e1"), StoredEvent("u", "b", "e2")]) == 2
        assert store.append([StoredEvent("u", "a", "e1"), StoredEvent("u", "c", "e3")]) == 1  # e1 is a retry
        assert store.append([StoredEvent("v", "a", "e1")]) == 1  # ids are per user
        assert store.append([StoredEvent("u", "d"), StoredEvent("u", "d")]) == 2  # no id: always stored
        assert store.recent("u", 10) == ["d", "d", "c", "b", "a"]
        store.close()
