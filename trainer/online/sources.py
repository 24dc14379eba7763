"""Where `trainer ingest` reads accepted events from: the service's event log.

`EventSource` is the whole contract: read events in order, say where reading stands
(`checkpoint`, JSON), resume after a checkpoint (`restore`), and release what the Parquet log
holds durably (`release`). A Kafka topic fits it as well (the checkpoint is the partition
offsets, `release` commits them), for a deployment that outgrows one Redis.

- `RedisStreamSource`: the Stream the service appends to, read by the consumer group
  `service.core.event_log.GROUP` (at-least-once). Released entries are acknowledged and trimmed,
  which is what keeps the Stream under its bound.
- `SpoolSource`: the spool directory the in-process store writes (one JSON-lines file per
  service process); a file fully read whose writer has moved on (a newer file of the same
  process, or the process is gone) is deleted on release.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

from service.core.event_log import GROUP, LoggedEvent, decode, read_spool, spool_files, stream_key


class EventSource(Protocol):
    def restore(self, checkpoint: dict | None) -> None:
        """Resume after `checkpoint` (None: from the beginning): what it covers is in the log."""

    def read(self, max_events: int, block_ms: int) -> list[LoggedEvent]:
        """Up to `max_events` events not read yet, in the order they were accepted; waits up to
        `block_ms` for the first one."""

    def checkpoint(self) -> dict:
        """Where reading stands now: everything read so far (JSON)."""

    def release(self, checkpoint: dict) -> None:
        """The log holds everything through `checkpoint` durably: the source may forget it."""

    def lag(self) -> int:
        """Events accepted and not released yet (read or not)."""

    def close(self) -> None: ...


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSource:
    """The service's Stream (`service.core.event_log.stream_key`), consumer group `GROUP`, one
    consumer (`consumer`): one ingest per Stream, which keeps the log in acceptance order."""

    def __init__(self, url: str, prefix: str = "jtm", consumer: str = "ingest-1", timeout_s: float = 5.0) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s + 30,
                                           socket_connect_timeout=timeout_s)
        self.key = stream_key(prefix)
        self.consumer = consumer
        self._last = "0-0"  # the last entry read
        self._replay: list[LoggedEvent] = []  # delivered before a restart and not in the log yet
        self._replay_ids: list[str] = []
        self._unacked: list[str] = []  # entries read since the last release
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def restore(self, checkpoint: dict | None) -> None:
        done = _stream_id((checkpoint or {}).get("last", "0-0"))
        self._last = (checkpoint or {}).get("last", "0-0")
        self._unacked = []
        # This consumer's pending entries: delivered before a restart, never acknowledged.
        pending = self.client.xreadgroup(GROUP, self.consumer, {self.key: "0"}) or []
        entries = pending[0][1] if pending else []
        durable = [entry_id for entry_id, _ in entries if _stream_id(entry_id) <= done]
        if durable:
            self.client.xack(self.key, GROUP, *durable)
        self._replay = [decode(fields, entry_id) for entry_id, fields in entries if _stream_id(entry_id) > done]
        self._replay_ids = [entry_id for entry_id, _ in entries if _stream_id(entry_id) > done]

    def read(self, max_events: int, block_ms: int) -> list[LoggedEvent]:
        if self._replay:
            events, ids = self._replay[:max_events], self._replay_ids[:max_events]
            self._replay, self._replay_ids = self._replay[max_events:], self._replay_ids[max_events:]
            self._last = ids[-1]
            self._unacked += ids
            return events
        answer = self.client.xreadgroup(GROUP, self.consumer, {self.key: ">"}, count=max_events,
                                        block=block_ms or None)
        entries = answer[0][1] if answer else []
        if entries:
            self._last = entries[-1][0]
            self._unacked += [entry_id for entry_id, _ in entries]
        return [decode(fields, entry_id) for entry_id, fields in entries]

    def checkpoint(self) -> dict:
        return {"last": self._last}

    def release(self, checkpoint: dict) -> None:
        last = checkpoint.get("last", "0-0")
        if last == "0-0":
            return
        # Acknowledge the entries read up to `last`, then drop everything older: one consumer,
        # so no other reader still needs them. (Entries delivered before a restart and already
        # in the log were acknowledged by `restore`.)
        done = _stream_id(last)
        ids = [entry_id for entry_id in self._unacked if _stream_id(entry_id) <= done]
        self._unacked = self._unacked[len(ids):]
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(ids), 10_000):
            pipe.xack(self.key, GROUP, *ids[start:start + 10_000])
        ms, seq = done
        pipe.xtrim(self.key, minid=f"{ms}-{seq + 1}", approximate=False)
        pipe.execute()

    def lag(self) -> int:
        return int(self.client.xlen(self.key))

    def close(self) -> None:
        self.client.close()


class SpoolSource:
    """The spool directory of the in-process store; the checkpoint is each file's offset."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.offsets: dict[str, int] = {}

    def restore(self, checkpoint: dict | None) -> None:
        self.offsets = dict((checkpoint or {}).get("offsets", {}))

    def read(self, max_events: int, block_ms: int) -> list[LoggedEvent]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            events: list[LoggedEvent] = []
            for path in spool_files(self.directory):
                if len(events) >= max_events:
                    break
                offset = self.offsets.get(path.name, 0)
                if path.stat().st_size <= offset:
                    continue
                end = offset
                for end, event in read_spool(path, offset, max_events - len(events)):  # noqa: B007
                    events.append(event)
                self.offsets[path.name] = end
            if events or time.monotonic() >= deadline:
                return events
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def checkpoint(self) -> dict:
        return {"offsets": dict(self.offsets)}

    def release(self, checkpoint: dict) -> None:
        offsets = checkpoint.get("offsets", {})
        files = spool_files(self.directory)
        newest: dict[str, str] = {}
        for path in files:
            newest[_writer(path)] = path.name
        for path in files:
            read_all = offsets.get(path.name, -1) >= path.stat().st_size
            moved_on = newest[_writer(path)] != path.name or not _alive(_writer(path))
            if read_all and moved_on:
                path.unlink(missing_ok=True)
                self.offsets.pop(path.name, None)

    def lag(self) -> int:
        """Events in the spool not read yet (complete lines past each file's offset)."""
        waiting = 0
        for path in spool_files(self.directory):
            with open(path, "rb") as fh:
                fh.seek(self.offsets.get(path.name, 0))
                waiting += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return waiting

    def close(self) -> None:
        pass


def _writer(path: Path) -> str:
    """The process that wrote a spool file (`<start time>-<pid>.jsonl`)."""
    return path.stem.rpartition("-")[2]


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True
