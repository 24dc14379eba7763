"""`trainer ingest`: the service's event log into the Parquet log, durably, exactly once.

Loop: read a batch from the source, drop repeats of a (user_id, event_id) already logged,
commit the rest as segments (`Segments.commit`: durable before anything is released), then
release the batch from the source. At-least-once delivery plus the committed checkpoint makes
it exactly once across a `kill -9` anywhere: what was committed is skipped on restart, what was
not is read again.

Repeats: the service refuses a repeated event id within its dedupe window, so a repeat reaches
the log only from a retry after that window, or from service replicas with separate in-process
stores; ingest remembers the last `dedupe_keys` (user, event id) pairs, reloaded from the newest
segments on start.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from service.core.event_log import LoggedEvent
from trainer.config import option
from trainer.online.event_log import IngestState, Segments
from trainer.online.sources import EventSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    # Events per commit at most: each commit is a few fsyncs, so batches amortise them under
    # load; a quiet stream commits whatever arrived within block_ms.
    batch: int = option(10_000, "events per segment commit, at most", at_least=1)
    block_ms: int = option(1_000, "how long a read waits for the first event (ms)", at_least=0)
    # Once a batch has its first event, how long it may fill before it is committed: segments of
    # a few thousand events, not one tiny file per read, at the cost of this much delay.
    linger_ms: int = option(1_000, "how long a started batch may fill before it is committed (ms)", at_least=0)
    dedupe_keys: int = option(2_000_000, "(user_id, event_id) pairs remembered to drop repeats", at_least=0)


class IngestMetrics:
    """Prometheus metrics of one ingest process (served with --metrics-port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.events = Counter("jtm_ingest_events_total", "Events written to the Parquet log", registry=r)
        self.duplicates = Counter("jtm_ingest_duplicates_total", "Repeated (user_id, event_id) events dropped",
                                  registry=r)
        self.segments = Counter("jtm_ingest_segments_total", "Parquet segments committed", registry=r)
        self.lag = Gauge("jtm_ingest_lag_events", "Events accepted by the service and not yet in the log",
                         registry=r)
        self.last_commit = Gauge("jtm_ingest_last_commit_timestamp_seconds", "When the last batch was committed",
                                 registry=r)
        self.commit_seconds = Histogram("jtm_ingest_commit_seconds", "Time to write and commit one batch",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.errors = Counter("jtm_ingest_errors_total", "Batches that failed (source or disk); retried", registry=r)


class RecentKeys:
    """The last `capacity` (user_id, event_id) pairs, oldest dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, key: tuple[str, str]) -> bool:
        """Remember `key`; False when it was already there (a repeat)."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._keys

    def load(self, frame: pd.DataFrame) -> None:
        for key in zip(frame["user_id"].astype(str), frame["event_id"].astype(str), strict=True):
            self.add(key)

    def __len__(self) -> int:
        return len(self._keys)


class Ingest:
    def __init__(self, source: EventSource, log_dir: Path, config: IngestConfig | None = None,
                 metrics: IngestMetrics | None = None) -> None:
        self.source = source
        self.segments = Segments(log_dir)
        self.config = config or IngestConfig()
        self.metrics = metrics or IngestMetrics()
        self.state: IngestState = self.segments.recover()
        self.recent = RecentKeys(self.config.dedupe_keys)
        self._remember_newest()
        self.source.restore(self.state.checkpoint)
        self.source.release(self.state.checkpoint or {})  # a crash may have come between commit and release
        self._stop = False

    def _remember_newest(self) -> None:
        """Reload the dedupe keys from the newest segments, up to their capacity."""
        paths = self.segments.segments()
        taken: list[pd.DataFrame] = []
        count = 0
        for path in reversed(paths):
            if count >= self.config.dedupe_keys:
                break
            frame = pd.read_parquet(path, columns=["user_id", "event_id"])
            taken.append(frame)
            count += len(frame)
        for frame in reversed(taken):
            self.recent.load(frame)

    def step(self, block_ms: int | None = None, linger_ms: int | None = None) -> int:
        """Read, commit and release one batch; the number of events read (repeats included).
        The batch is committed when it is full or `linger_ms` after its first event."""
        events = self.source.read(self.config.batch, self.config.block_ms if block_ms is None else block_ms)
        if not events:
            self.metrics.lag.set(self.source.lag())
            return 0
        deadline = time.monotonic() + (self.config.linger_ms if linger_ms is None else linger_ms) / 1000
        while len(events) < self.config.batch and (left := deadline - time.monotonic()) > 0:
            events += self.source.read(self.config.batch - len(events), max(1, int(1000 * left)))
        started = time.perf_counter()
        fresh: list[LoggedEvent] = []
        batch_keys: set[tuple[str, str]] = set()
        for event in events:
            key = (event.user_id, event.event_id)
            if key not in self.recent and key not in batch_keys:
                batch_keys.add(key)
                fresh.append(event)
        checkpoint = self.source.checkpoint()
        before = self.state.next_seq
        self.state = self.segments.commit(self.state, fresh, checkpoint)
        for event in fresh:  # remembered once logged: a failed commit's batch is read again, not a repeat
            self.recent.add((event.user_id, event.event_id))
        self.source.release(checkpoint)
        self.metrics.events.inc(len(fresh))
        self.metrics.duplicates.inc(len(events) - len(fresh))
        self.metrics.segments.inc(self.state.next_seq - before)
        self.metrics.last_commit.set(time.time())
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.lag.set(self.source.lag())
        log.debug("ingest: %d events (%d repeats dropped) through %s", len(fresh), len(events) - len(fresh),
                  checkpoint)
        return len(events)

    def drain(self) -> int:
        """Everything the source holds now (`ingest --once`): the number of events read."""
        total = 0
        while read := self.step(block_ms=0, linger_ms=0):
            total += read
        return total

    def stop(self) -> None:
        """End `run` after the batch in progress (the CLI calls it on SIGTERM)."""
        self._stop = True

    def run(self, report_every_s: float = 60.0) -> None:
        """Until `stop`: a batch at a time; logs a rate line every `report_every_s`. A failed
        batch (Redis unreachable, a full disk) is logged and retried after a pause that doubles
        up to a minute: nothing was released, so nothing is lost."""
        read, since, pause = 0, time.monotonic(), 1.0
        while not self._stop:
            try:
                read += self.step()
                pause = 1.0
            except Exception as exc:  # noqa: BLE001 - whatever failed, the source still holds the batch
                self.metrics.errors.inc()
                log.error("ingest: batch failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, pause)
                time.sleep(pause)
                pause = min(60.0, 2 * pause)
                self._resume()
                continue
            if time.monotonic() - since >= report_every_s:
                elapsed = time.monotonic() - since
                log.info("ingest: %d events in %.0f s (%.0f/s), %d waiting, log at seq %d", read, elapsed,
                         read / elapsed, self.source.lag(), self.state.next_seq - 1)
                read, since = 0, time.monotonic()

    def _resume(self) -> None:
        """After a failed batch: back to the last commit (the batch is read again)."""
        try:
            self.state = self.segments.recover()
            self.source.restore(self.state.checkpoint)
        except Exception as exc:  # noqa: BLE001 - still failing: the next step will say so
            log.error("ingest: cannot resume yet (%s: %s)", type(exc).__name__, exc)

    def close(self) -> None:
        self.source.close()
