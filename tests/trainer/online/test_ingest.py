"""`trainer ingest`: the service's event log (Redis Stream or spool) into the Parquet log, exactly
once: every accepted event once, across `kill -9` of ingest at any point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from service.behavior_store import MemoryStore, RedisStore, StoredEvent
from service.core.event_log import SpoolWriter, stream_key
from tests.conftest import ROOT
from tests.helpers import redis_url
from trainer.online.event_log import Segments
from trainer.online.ingest import Ingest, IngestConfig
from trainer.online.sources import RedisStreamSource, SpoolSource


def events(n: int, start: int = 0, with_ids: bool = True) -> list[StoredEvent]:
    return [StoredEvent(f"u{i % 37}", f"i{i % 101}", f"e{i}" if with_ids else None, f"c{i % 5}",
                        1_700_000_000 + 97.0 * i) for i in range(start, start + n)]


def test_spool_events_reach_the_log_once_partitioned_by_hour(tmp_path: Path) -> None:
    store = MemoryStore(10, spool=SpoolWriter(tmp_path / "spool"))
    for batch in range(10):
        store.append(events(100, 100 * batch))
    store.append(events(20))  # retries of known ids: not stored, not logged
    ingest = Ingest(SpoolSource(tmp_path / "spool"), tmp_path / "log", IngestConfig(batch=128))
    assert ingest.drain() == 1000
    frame = pd.read_parquet(tmp_path / "log")  # the layout pandas reads as one data set
    assert sorted(frame["event_id"]) == sorted(f"e{i}" for i in range(1000))
    assert set(frame.columns) >= {"user_id", "item_id", "category_id", "timestamp", "event_id", "date", "hour"}
    moments = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    assert (moments.dt.strftime("%Y-%m-%d") == frame["date"].astype(str)).all()
    assert (moments.dt.hour == frame["hour"].astype(int)).all()
    assert ingest.drain() == 0 and Segments(tmp_path / "log").load_state().events == 1000


def test_redis_events_without_ids_get_their_position_and_the_stream_is_released(redis_prefix: str,
                                                                               tmp_path: Path) -> None:
    store = RedisStore(redis_url(), 10, prefix=redis_prefix)
    store.append(events(300, with_ids=False))
    ingest = Ingest(RedisStreamSource(redis_url(), redis_prefix), tmp_path / "log", IngestConfig(batch=64))
    assert ingest.drain() == 300
    frame = Segments(tmp_path / "log").read()
    assert frame["event_id"].is_unique and frame["event_id"].str.match(r"^\d+-\d+$").all()
    client = redis.Redis.from_url(redis_url())
    assert client.xlen(stream_key(redis_prefix)) == 0  # released: acknowledged and trimmed
    client.close()
    ingest.close()


def test_repeats_of_an_event_id_are_dropped_even_after_a_restart(tmp_path: Path) -> None:
    spool = SpoolWriter(tmp_path / "spool")
    spool.append([e.logged(0.0) for e in events(50)])
    Ingest(SpoolSource(tmp_path / "spool"), tmp_path / "log").drain()
    spool.append([e.logged(0.0) for e in events(60)])  # 50 repeats (a second replica, say), 10 new
    again = Ingest(SpoolSource(tmp_path / "spool"), tmp_path / "log")
    again.drain()
    frame = Segments(tmp_path / "log").read()
    assert len(frame) == 60 and frame["event_id"].is_unique


def test_a_commit_interrupted_after_its_files_were_written_is_completed(tmp_path: Path) -> None:
    """The crash between 'pending' and 'done': recover renames the fsynced files and advances."""
    segments = Segments(tmp_path)
    state = segments.recover()
    batch = [e.logged(0.0) for e in events(10)]
    original_replace = os.replace
    calls = []

    def crash_after_first(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt("kill")
        original_replace(src, dst)

    os.replace = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            segments.commit(state, batch, {"offsets": {"f": 1}})
    finally:
        os.replace = original_replace
    assert segments.load_state().pending is not None
    recovered = Segments(tmp_path).recover()
    assert recovered.checkpoint == {"offsets": {"f": 1}} and recovered.pending is None
    assert sorted(Segments(tmp_path).read()["event_id"]) == sorted(e.event_id for e in batch)


def test_a_failing_source_is_retried_without_losing_a_batch(tmp_path: Path) -> None:
    """The daemon's loop: a read that fails (Redis unreachable) is logged and retried; a
    commit that fails (disk full) leaves the batch in the source, read again after resuming."""
    spool = SpoolWriter(tmp_path / "spool")
    spool.append([e.logged(0.0) for e in events(300)])
    source = SpoolSource(tmp_path / "spool")
    ingest = Ingest(source, tmp_path / "log", IngestConfig(batch=100, block_ms=10))
    real_read, real_commit = source.read, ingest.segments.commit
    failures = {"read": 1, "commit": 1}

    def flaky_read(*args):
        if failures["read"]:
            failures["read"] -= 1
            raise ConnectionError("redis down")
        return real_read(*args)

    def flaky_commit(*args):
        if failures["commit"]:
            failures["commit"] -= 1
            raise OSError(28, "No space left on device")
        return real_commit(*args)

    source.read, ingest.segments.commit = flaky_read, flaky_commit
    sleeps = []
    original_sleep = time.sleep
    time.sleep = lambda seconds: sleeps.append(seconds)
    try:
        worker = threading.Thread(target=ingest.run, kwargs={"report_every_s": 3600})
        worker.start()
        deadline = time.monotonic() + 30
        while Segments(tmp_path / "log").load_state().events < 300 and time.monotonic() < deadline:
            original_sleep(0.05)
        ingest.stop()
        worker.join(timeout=30)
    finally:
        time.sleep = original_sleep
    frame = Segments(tmp_path / "log").read()
    assert sorted(frame["event_id"]) == sorted(f"e{i}" for i in range(300))
    assert ingest.metrics.errors._value.get() == 2 and sleeps[:2] == [1.0, 2.0]  # backing off


def _ingest_process(log: Path, prefix: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", "ingest", "--redis-url", redis_url(), "--redis-prefix",
                             prefix, "--log", str(log), "--batch", "37", "--block-ms", "20"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill_9_anywhere_loses_and_repeats_nothing(redis_prefix: str, tmp_path: Path) -> None:
    """Events are accepted while ingest is killed with SIGKILL again and again (mid-read,
    mid-segment, mid-commit: wherever the signal lands) and restarted; at the end the log holds
    every accepted event exactly once."""
    store = RedisStore(redis_url(), 100, prefix=redis_prefix)
    accepted: list[str] = []
    done = threading.Event()

    def produce() -> None:  # about 2,500 events/s until the last kill
        i = 0
        while not done.is_set():
            batch = events(25, i)
            store.append(batch)
            accepted.extend(e.event_id for e in batch)
            i += 25
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    log = tmp_path / "log"
    rng = np.random.default_rng(0)

    def logged() -> int:
        return Segments(log).load_state().events if (log / "_ingest").exists() else 0

    for _ in range(8):
        start = logged()
        process = _ingest_process(log, redis_prefix)
        deadline = time.monotonic() + 60
        while logged() == start and time.monotonic() < deadline:  # it is working: batches are committing
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # then anywhere: mid-read, mid-segment, mid-commit
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert logged() > start
    done.set()
    producer.join()
    final = subprocess.run([sys.executable, "-m", "trainer", "ingest", "--redis-url", redis_url(), "--redis-prefix",
                            redis_prefix, "--log", str(log), "--once"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert final.returncode == 0, final.stderr
    frame = Segments(log).read()
    assert frame["event_id"].is_unique
    assert sorted(frame["event_id"]) == sorted(accepted)
    assert Segments(log).load_state().events == len(accepted)
