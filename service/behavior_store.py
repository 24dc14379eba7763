"""User behaviour stores: the only module that reads or writes users' histories (Redis or in-process).

Each user's recent item ids (original ids, most recent first) live in a capped list. One call
stores a batch of events atomically, in order, capped: in Redis a single Lua script does, per
event, the idempotency check, LPUSH and LTRIM, so concurrent calls interleave only between
batches and a failure stores nothing. In-process: a dict of deques under a lock, the embedded
default that needs nothing running. Both implement the same protocol and are tested against
each other.

Idempotency: an event may carry an `event_id`. The first time a (user, event_id) pair is seen
within `dedupe_ttl_s` it is stored; repeats (client retries, duplicate deliveries) are
acknowledged as duplicates and not stored again. Events without an id are always stored.

The event log (`service.core.event_log`): every event stored is also logged, in the same step.
In Redis the script appends it to the deployment's Stream (bounded: a call that would overflow
it raises `LogFull` and stores nothing); in-process, the spool file is written and fsynced
before the histories change (a failed write stores nothing). `trainer ingest` reads the log.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.core.event_log import LogFull, LoggedEvent, SpoolWriter, stream_key

__all__ = ["BehaviorStore", "LogFull", "MemoryStore", "RedisStore", "StoreUnavailable", "StoredEvent", "make_store"]


class StoreUnavailable(Exception):
    """The behaviour store cannot be reached right now; nothing of the call was stored."""


@dataclass(frozen=True)
class StoredEvent:
    user_id: str
    item_id: str
    event_id: str | None = None
    category_id: str = ""  # logged for the trainer; histories keep item ids only
    timestamp: float | None = None  # None: when it was accepted

    def logged(self, now: float) -> LoggedEvent:
        return LoggedEvent(self.user_id, self.item_id, self.category_id,
                           now if self.timestamp is None else float(self.timestamp), self.event_id or "")


class BehaviorStore(Protocol):
    kind: str

    def append(self, events: Sequence[StoredEvent]) -> int:
        """Store events in order; return how many were new (the rest were duplicates)."""

    def recent(self, user_id: str, limit: int) -> list[str]:
        """Up to `limit` item ids of the user, most recent first."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class MemoryStore:
    """In-process store, bounded: at most `max_users` histories (the least recently updated
    user's history is dropped for a new one: `evicted` counts them) and `max_event_ids`
    remembered event ids. Not durable: a restart forgets the histories (use Redis for that);
    with `spool` the events themselves are logged to disk for `trainer ingest`."""

    kind = "memory"

    def __init__(self, capacity: int, dedupe_ttl_s: float = 86_400, max_event_ids: int = 1_000_000,
                 max_users: int = 1_000_000, spool: SpoolWriter | None = None) -> None:
        self.capacity = capacity
        self.dedupe_ttl_s = dedupe_ttl_s
        self.max_event_ids = max_event_ids
        self.max_users = max_users
        self.spool = spool
        self.evicted = 0
        self._lists: OrderedDict[str, deque[str]] = OrderedDict()
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def append(self, events: Sequence[StoredEvent]) -> int:
        now = time.monotonic()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)
            fresh, keys = [], set()
            for event in events:
                key = None if event.event_id is None else (event.user_id, event.event_id)
                if key is not None and (key in self._seen or key in keys):
                    continue
                if key is not None:
                    keys.add(key)
                fresh.append(event)
            if self.spool is not None:  # logged before anything changes: a failed write stores nothing
                accepted = time.time()
                try:
                    self.spool.append([e.logged(accepted) for e in fresh])
                except OSError as exc:
                    raise StoreUnavailable(f"event spool: {exc}") from exc
            for event in fresh:
                if event.event_id is not None:
                    self._seen[(event.user_id, event.event_id)] = now + self.dedupe_ttl_s
                    if len(self._seen) > self.max_event_ids:
                        self._seen.popitem(last=False)
                self._history(event.user_id).appendleft(event.item_id)
        return len(fresh)

    def _history(self, user_id: str) -> deque[str]:
        """The user's list, most recently updated last; evicts the stalest user when full."""
        history = self._lists.get(user_id)
        if history is None:
            if len(self._lists) >= self.max_users:
                self._lists.popitem(last=False)
                self.evicted += 1
            history = self._lists[user_id] = deque(maxlen=self.capacity)
        else:
            self._lists.move_to_end(user_id)
        return history

    def recent(self, user_id: str, limit: int) -> list[str]:
        with self._lock:
            items = self._lists.get(user_id)
            return list(items)[:limit] if items else []

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


# KEYS: for event i, KEYS[2i-1] = the user's list, KEYS[2i] = its dedupe key (= the list key
# when the event has no id); the last key is the event log's Stream. ARGV: five per event
# (user_id, item_id, category_id, timestamp, event_id), then ttl seconds, the history cap and
# the log's bound (0: no log). Returns {events stored, log length}, or {-1, length} when the
# batch could overflow the log (then nothing is stored).
_APPEND = """
local n = (#ARGV - 3) / 5
local ttl = tonumber(ARGV[#ARGV - 2])
local cap = tonumber(ARGV[#ARGV - 1])
local log_max = tonumber(ARGV[#ARGV])
local stream = KEYS[#KEYS]
if log_max > 0 then
  local length = redis.call('XLEN', stream)
  if length + n > log_max then
    return {-1, length}
  end
end
local stored = 0
for i = 1, n do
  local a = 5 * (i - 1)
  local list, dedupe = KEYS[2 * i - 1], KEYS[2 * i]
  local fresh = true
  if dedupe ~= list then
    fresh = redis.call('SET', dedupe, '1', 'NX', 'EX', ttl)
  end
  if fresh then
    redis.call('LPUSH', list, ARGV[a + 2])
    redis.call('LTRIM', list, 0, cap - 1)
    if log_max > 0 then
      redis.call('XADD', stream, '*', 'user_id', ARGV[a + 1], 'item_id', ARGV[a + 2], 'category_id', ARGV[a + 3],
                 'timestamp', ARGV[a + 4], 'event_id', ARGV[a + 5])
    end
    stored = stored + 1
  end
end
if log_max > 0 then
  return {stored, redis.call('XLEN', stream)}
end
return {stored, 0}
"""


class CircuitBreaker:
    """Fail fast while a dependency is down, instead of waiting a timeout on every request.

    After `threshold` consecutive failures the breaker opens for `open_s` seconds: calls fail
    at once. Then one call is let through (half-open); its success closes the breaker.
    """

    def __init__(self, threshold: int = 2, open_s: float = 1.0) -> None:
        self.threshold = threshold
        self.open_s = open_s
        self.failures = 0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self.opened_at is not None and time.monotonic() - self.opened_at < self.open_s

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if time.monotonic() - self.opened_at >= self.open_s:
                self.opened_at = time.monotonic()  # half-open: one probe per period
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at = 0, None

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.opened_at = time.monotonic()


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, capacity: int, prefix: str = "jtm", timeout_s: float = 0.5,
                 dedupe_ttl_s: float = 86_400, event_log_max: int = 1_000_000) -> None:
        import redis

        self._redis_errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           decode_responses=True, health_check_interval=30, retry_on_timeout=False)
        self.capacity = capacity
        self.prefix = prefix
        # Redis expiries are whole seconds, and EX 0 is an error: round up (0.5 s -> 1 s).
        self.dedupe_ttl_s = max(1, math.ceil(dedupe_ttl_s))
        self.event_log_max = event_log_max  # 0: events are not logged
        self.log_length = 0  # the event log's length after the last append: events not yet ingested
        self._append = self.client.register_script(_APPEND)
        self.breaker = CircuitBreaker()

    def _call(self, operation, *args, **kwargs):
        if not self.breaker.allow():
            raise StoreUnavailable("behaviour store circuit open (recent failures)")
        try:
            result = operation(*args, **kwargs)
        except self._redis_errors as exc:
            self.breaker.failure()
            raise StoreUnavailable(str(exc)) from exc
        self.breaker.success()
        return result

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:hist:{user_id}"

    def append(self, events: Sequence[StoredEvent]) -> int:
        if not events:
            return 0
        keys: list[str] = []
        args: list[str | int | float] = []
        accepted = time.time()
        for event in events:
            key = self.key(event.user_id)
            dedupe = key if event.event_id is None else f"{self.prefix}:evt:{event.user_id}:{event.event_id}"
            keys += [key, dedupe]
            logged = event.logged(accepted)
            args += [logged.user_id, logged.item_id, logged.category_id, repr(logged.timestamp), logged.event_id]
        stored, self.log_length = (int(v) for v in self._call(
            self._append, keys=[*keys, stream_key(self.prefix)],
            args=[*args, self.dedupe_ttl_s, self.capacity, self.event_log_max]))
        if stored < 0:
            raise LogFull(f"{self.log_length} events wait to be ingested (JTM_EVENT_LOG_MAX {self.event_log_max})")
        return stored

    def recent(self, user_id: str, limit: int) -> list[str]:
        return self._call(self.client.lrange, self.key(user_id), 0, min(limit, self.capacity) - 1)

    def ping(self) -> bool:
        try:
            return bool(self._call(self.client.ping))
        except StoreUnavailable:
            return False

    def close(self) -> None:
        self.client.close()


def make_store(redis_url: str | None, capacity: int, prefix: str = "jtm", timeout_s: float = 0.5,
               dedupe_ttl_s: float = 86_400, memory_max_users: int = 1_000_000, event_log_max: int = 1_000_000,
               spool_dir: Path | None = None) -> BehaviorStore:
    if redis_url:
        return RedisStore(redis_url, capacity, prefix, timeout_s, dedupe_ttl_s, event_log_max)
    return MemoryStore(capacity, dedupe_ttl_s, max_users=memory_max_users,
                       spool=SpoolWriter(spool_dir) if spool_dir is not None else None)
