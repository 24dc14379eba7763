"""The event log: every stored event is logged in the same step (a Redis Stream, or the spool
without Redis), duplicates are not, and an overflowing or failing log stores nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from service.behavior_store import LogFull, MemoryStore, RedisStore, StoredEvent, StoreUnavailable
from service.core.event_log import SpoolWriter, decode, read_spool, spool_files, stream_key
from tests.helpers import redis_url


def logged_in_redis(prefix: str) -> list[dict]:
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        return [dict(fields, position=position) for position, fields in client.xrange(stream_key(prefix))]
    finally:
        client.close()


def logged_in_spool(directory: Path) -> list[dict]:
    return [dict(vars(event), position=offset) for path in spool_files(directory)
            for offset, event in read_spool(path, 0, 10_000)]


def batches() -> list[list[StoredEvent]]:
    return [[StoredEvent("u", "a", "e1", "c1", 100.0), StoredEvent("u", "b", None, "", 101.5)],
            [StoredEvent("u", "a", "e1", "c1", 100.0), StoredEvent("v", "x", "e1")]]  # a retry of (u, e1)


def test_redis_logs_what_it_stores_in_the_same_call(redis_prefix: str) -> None:
    store = RedisStore(redis_url(), capacity=10, prefix=redis_prefix)
    assert [store.append(batch) for batch in batches()] == [2, 1]
    log = logged_in_redis(redis_prefix)
    assert [(e["user_id"], e["item_id"], e["category_id"], e["event_id"]) for e in log] == [
        ("u", "a", "c1", "e1"), ("u", "b", "", ""), ("v", "x", "", "e1")]
    assert float(log[0]["timestamp"]) == 100.0 and float(log[1]["timestamp"]) == 101.5
    assert float(log[2]["timestamp"]) > 1e9  # no timestamp given: when it was accepted
    assert decode(log[1], log[1]["position"]).event_id == log[1]["position"]  # no id: its position
    assert store.log_length == 3
    store.close()


def test_a_full_redis_log_refuses_the_whole_call(redis_prefix: str) -> None:
    store = RedisStore(redis_url(), capacity=10, prefix=redis_prefix, event_log_max=3)
    store.append([StoredEvent("u", "a"), StoredEvent("u", "b")])
    with pytest.raises(LogFull, match="JTM_EVENT_LOG_MAX 3"):
        store.append([StoredEvent("u", "c"), StoredEvent("w", "d")])
    assert store.recent("u", 10) == ["b", "a"] and store.recent("w", 10) == []  # nothing of it stored
    assert len(logged_in_redis(redis_prefix)) == 2
    store.append([StoredEvent("u", "c")])  # still room for one
    assert len(logged_in_redis(redis_prefix)) == 3


def test_no_log_when_its_bound_is_zero(redis_prefix: str) -> None:
    store = RedisStore(redis_url(), capacity=10, prefix=redis_prefix, event_log_max=0)
    assert store.append([StoredEvent("u", "a")]) == 1
    assert logged_in_redis(redis_prefix) == [] and store.recent("u", 1) == ["a"]


def test_the_spool_logs_the_same_events_as_redis(tmp_path: Path, redis_prefix: str) -> None:
    memory = MemoryStore(10, spool=SpoolWriter(tmp_path))
    redis_store = RedisStore(redis_url(), capacity=10, prefix=redis_prefix)
    for batch in batches():
        assert memory.append(batch) == redis_store.append(batch)
    memory.close()
    fields = ("user_id", "item_id", "category_id", "event_id")
    spooled = [tuple(e[f] for f in fields) for e in logged_in_spool(tmp_path)]
    in_redis = [tuple(e[f] for f in fields) for e in logged_in_redis(redis_prefix)]
    in_redis[1] = (*in_redis[1][:3], "")  # the id an event without one gets is its own position
    spooled[1] = (*spooled[1][:3], "")
    assert spooled == in_redis


def test_a_failed_spool_write_stores_nothing(tmp_path: Path) -> None:
    spool = SpoolWriter(tmp_path / "spool")
    store = MemoryStore(10, spool=spool)
    store.append([StoredEvent("u", "a", "e1")])

    def broken(events):
        raise OSError("disk full")

    spool.append = broken
    with pytest.raises(StoreUnavailable, match="disk full"):
        store.append([StoredEvent("u", "b", "e2")])
    assert store.recent("u", 10) == ["a"]
    del spool.append  # the write works again: the same event is new, not a duplicate
    assert store.append([StoredEvent("u", "b", "e2")]) == 1


def test_a_partial_last_line_is_read_once_it_is_complete(tmp_path: Path) -> None:
    SpoolWriter(tmp_path).append([StoredEvent("u", "a").logged(5.0)])
    (path,) = spool_files(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b'{"user_id":"u","item_id":"b"')  # a write in progress
    done = list(read_spool(path, 0, 10))
    assert [e.item_id for _, e in done] == ["a"]
    with open(path, "ab") as fh:
        fh.write(b',"category_id":"","timestamp":"6.0","event_id":""}\n')
    more = list(read_spool(path, done[-1][0], 10))
    assert [e.item_id for _, e in more] == ["b"] and more[0][1].event_id == f"{path.stem}:{done[-1][0]}"
