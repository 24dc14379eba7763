"""The Parquet event log that `trainer ingest` writes and `trainer refresh` reads.

Layout (Hive partitions by the events' UTC hour, which DuckDB, Spark and pandas read as one
data set: ``pd.read_parquet(DIR)``, ``read_parquet('DIR/**/*.parquet', hive_partitioning=1)``)::

    DIR/date=YYYY-MM-DD/hour=HH/part-<seq>.parquet   user_id, item_id, category_id, timestamp, event_id
    DIR/_ingest/state.json                           where ingest stands (see `commit`)

`seq` numbers the segments in the order they were ingested (12 digits), across partitions:
"the log since a watermark" is every segment with a larger `seq`, whatever hour it belongs to.

A segment is durable before the source is released (`Segments.commit`, two phases): the files
are written under temporary names and fsynced; the state records them as pending with the
source's new checkpoint; they are renamed; the state records the checkpoint as done. A crash at
any point leaves either the old checkpoint with no new segment visible, or pending renames that
`recover` completes, so a restart neither loses nor repeats an event.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from service.core.artifact import atomic_write_bytes
from service.core.event_log import LoggedEvent

COLUMNS = ("user_id", "item_id", "category_id", "timestamp", "event_id")
STATE = Path("_ingest") / "state.json"
_SEGMENT = re.compile(r"part-(\d{12})\.parquet$")


def frame_of(events: Iterable[LoggedEvent]) -> pd.DataFrame:
    rows = list(events)
    return pd.DataFrame({
        "user_id": pd.array([e.user_id for e in rows], dtype="string"),
        "item_id": pd.array([e.item_id for e in rows], dtype="string"),
        "category_id": pd.array([e.category_id or None for e in rows], dtype="string"),
        "timestamp": np.array([e.timestamp for e in rows], dtype=np.float64),
        "event_id": pd.array([e.event_id for e in rows], dtype="string"),
    })


def _partition(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


def segment_seq(path: Path) -> int | None:
    match = _SEGMENT.search(path.name)
    return int(match.group(1)) if match else None


@dataclass
class IngestState:
    checkpoint: dict | None = None  # the source's position that the log holds through
    next_seq: int = 1
    events: int = 0  # events written, all time
    pending: dict | None = None  # {"checkpoint", "next_seq", "events", "files": [[tmp, final], ...]}

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "next_seq": self.next_seq, "events": self.events,
                "pending": self.pending}


class Segments:
    """The log directory: writes segments durably, and lists what was written after a seq."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state

    def _state_path(self) -> Path:
        return self.root / STATE

    def load_state(self) -> IngestState:
        path = self._state_path()
        if not path.exists():
            return IngestState()
        data = json.loads(path.read_text())
        return IngestState(data.get("checkpoint"), int(data.get("next_seq", 1)), int(data.get("events", 0)),
                           data.get("pending"))

    def _save_state(self, state: IngestState) -> None:
        self._state_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._state_path(), json.dumps(state.to_json(), indent=1).encode())

    def recover(self) -> IngestState:
        """Finish a commit a crash interrupted (its files were fsynced before it was recorded),
        and remove temporary files no state names."""
        state = self.load_state()
        if state.pending is not None:
            for tmp, final in state.pending["files"]:
                tmp_path, final_path = self.root / tmp, self.root / final
                if not final_path.exists():
                    os.replace(tmp_path, final_path)
            _fsync_dirs({(self.root / final).parent for _, final in state.pending["files"]})
            state = IngestState(state.pending["checkpoint"], state.pending["next_seq"], state.pending["events"])
            self._save_state(state)
        for stray in self.root.glob("date=*/hour=*/.*.tmp"):
            stray.unlink()
        return state

    # ------------------------------------------------------------------ writing

    def commit(self, state: IngestState, events: list[LoggedEvent], checkpoint: dict) -> IngestState:
        """Write `events` as segments (one per UTC hour they fall in) and advance the state to
        `checkpoint`, durably, in the two phases of the module's docstring."""
        frame = frame_of(events)
        files = []
        seq = state.next_seq
        if len(frame):
            hours = np.floor(frame["timestamp"].to_numpy() / 3600).astype(np.int64)
            for hour, rows in frame.groupby(hours, sort=True).groups.items():
                final = Path(_partition(3600.0 * hour)) / f"part-{seq:012d}.parquet"
                tmp = final.parent / f".{final.name}.tmp"
                (self.root / final.parent).mkdir(parents=True, exist_ok=True)
                _write_parquet(frame.loc[rows], self.root / tmp)
                files.append([str(tmp), str(final)])
                seq += 1
        done = IngestState(checkpoint, seq, state.events + len(frame))
        if files:
            self._save_state(IngestState(state.checkpoint, state.next_seq, state.events,
                                         {**done.to_json(), "pending": None, "files": files}))
            for tmp, final in files:
                os.replace(self.root / tmp, self.root / final)
            _fsync_dirs({(self.root / final).parent for _, final in files})
        self._save_state(done)
        return done

    # ------------------------------------------------------------------ reading

    def segments(self, after: int = 0) -> list[Path]:
        """Segment files with seq > `after`, in ingestion order."""
        found = [(segment_seq(p), p) for p in self.root.glob("date=*/hour=*/part-*.parquet")]
        return [p for seq, p in sorted((s, p) for s, p in found if s is not None and s > after)]

    def read(self, after: int = 0, through: int | None = None, since: float | None = None) -> pd.DataFrame:
        """The events of segments after seq `after` (through `through`), in ingestion order;
        with `since` (epoch seconds), only the partitions of that hour and later are read."""
        first = None if since is None else _partition(since)
        paths = [p for p in self.segments(after) if (through is None or segment_seq(p) <= through)
                 and (first is None or f"{p.parent.parent.name}/{p.parent.name}" >= first)]
        if not paths:
            return frame_of([])
        return pd.concat([pd.read_parquet(p, columns=list(COLUMNS)) for p in paths], ignore_index=True)

    def last_seq(self) -> int:
        return self.load_state().next_seq - 1


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    with open(path, "wb") as fh:
        pq.write_table(table, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dirs(directories: Iterable[Path]) -> None:
    for directory in directories:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
