"""The event log: every event the service accepts, in the order it accepted them, for the trainer.

The service appends each accepted event (`LoggedEvent`'s fields) in the same step that stores it
for features, so "accepted" means "logged"; `trainer ingest` reads the log into Parquet segments
and releases what it has made durable. Two carriers, one format:

- Redis: a Stream per deployment (`stream_key(prefix)`), one entry per event, read by the
  consumer group `GROUP`. Its length is bounded (`JTM_EVENT_LOG_MAX`): the service refuses a
  call that would overflow it (503, nothing stored) rather than drop an event nobody has read.
- No Redis (the in-process store): a spool directory of JSON-lines files, one per writer
  process (`SpoolWriter`), each line an event with its byte offset as position.

An event accepted without an `event_id` gets its position as id when read (a Stream entry id or
a spool offset is unique), so every logged event has one. Stdlib only: the service writes this
format, the trainer reads it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

GROUP = "ingest"  # the Redis consumer group of `trainer ingest`
FIELDS = ("user_id", "item_id", "category_id", "timestamp", "event_id")
SPOOL_SUFFIX = ".jsonl"


def stream_key(prefix: str) -> str:
    return f"{prefix}:events"


@dataclass(frozen=True)
class LoggedEvent:
    """One accepted event. Ids are the original ids as text; category_id "" when not given;
    timestamp in seconds since the epoch (the event's own, else when it was accepted)."""

    user_id: str
    item_id: str
    category_id: str
    timestamp: float
    event_id: str  # "" in the carrier when the client sent none: readers give it the position


class LogFull(Exception):
    """The event log holds its maximum of events not yet ingested: nothing of the call was stored."""


def encode(event: LoggedEvent) -> dict[str, str]:
    return {"user_id": event.user_id, "item_id": event.item_id, "category_id": event.category_id,
            "timestamp": repr(float(event.timestamp)), "event_id": event.event_id}


def decode(fields: dict[str, str], position: str) -> LoggedEvent:
    """A carrier's fields back to an event; an event without id takes its `position`."""
    return LoggedEvent(user_id=fields["user_id"], item_id=fields["item_id"],
                       category_id=fields.get("category_id", ""), timestamp=float(fields["timestamp"]),
                       event_id=fields.get("event_id") or position)


class SpoolWriter:
    """Appends events to `directory/<start time>-<pid>.jsonl`, flushed and fsynced before
    `append` returns (the spool is the only copy until ingest has read it). A new file is
    started past `max_bytes`, so files that ingest has read can be removed whole."""

    def __init__(self, directory: Path, max_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._file = None
        self._lock = threading.Lock()

    def _open(self):
        name = f"{time.time_ns():020d}-{os.getpid()}{SPOOL_SUFFIX}"
        return open(self.directory / name, "ab")

    def append(self, events: Sequence[LoggedEvent]) -> None:
        if not events:
            return
        data = b"".join(json.dumps(encode(e), separators=(",", ":")).encode() + b"\n" for e in events)
        with self._lock:
            if self._file is None or self._file.tell() > self.max_bytes:
                if self._file is not None:
                    self._file.close()
                self._file = self._open()
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def spool_files(directory: Path) -> list[Path]:
    """The spool's files in the order they were started."""
    return sorted(Path(directory).glob(f"*{SPOOL_SUFFIX}"))


def read_spool(path: Path, offset: int, max_events: int) -> Iterator[tuple[int, LoggedEvent]]:
    """(offset after the line, event) for up to `max_events` complete lines from `offset`. A
    last line without its newline is a write in progress: it is read on a later call."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        for _ in range(max_events):
            line = fh.readline()
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield offset, decode(json.loads(line), f"{path.stem}:{offset - len(line)}")
