"""The Redis store and the in-process store behave the same."""

from __future__ import annotations

import pytest

from service.behavior_store import MemoryStore, RedisStore, StoredEvent, StoreUnavailable
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


def test_sub_second_dedupe_ttl_works_on_redis(redis_prefix: str) -> None:
    """JTM_DEDUPE_TTL_S accepts any positive number; Redis takes whole seconds and refuses EX 0,
    which once made every event with an id fail (503) when the TTL was under a second."""
    store = RedisStore(redis_url(), capacity=5, prefix=redis_prefix, dedupe_ttl_s=0.5)
    assert store.append([StoredEvent("u", "a", "e1"), StoredEvent("u", "a", "e1")]) == 1
    assert store.recent("u", 5) == ["a"]
    store.close()


def test_memory_store_is_bounded_by_users() -> None:
    from service.behavior_store import MemoryStore, StoredEvent

    store = MemoryStore(capacity=3, max_users=2)
    store.append([StoredEvent("a", "1"), StoredEvent("b", "2")])
    store.append([StoredEvent("a", "3")])  # a is now the most recently updated
    store.append([StoredEvent("c", "4")])  # full: b (stalest) is dropped
    assert store.recent("a", 10) == ["3", "1"] and store.recent("c", 10) == ["4"]
    assert store.recent("b", 10) == [] and store.evicted == 1
