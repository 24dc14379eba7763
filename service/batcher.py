"""Cross-request micro-batching of scorer rows.

Concurrent requests each need one scorer call per beam-search level. Rows from different
requests (and levels) are independent, so one background thread gathers them into a single
ONNX call: it takes what is queued, waits at most `max_wait_s` for more while under
`max_rows`, pads the candidate axis to the widest job, runs the scorer once, and hands every
job its own slice. An error is delivered to every job of the failed call.

The wait is adaptive: searches register while they run (`active()`), and the batcher stops
waiting as soon as every running search has a job queued, since nobody else can add rows. A
search running alone skips the queue and scores in its own thread; concurrent ones batch
without a fixed delay.

Bounded: when more than `max_queue_rows` rows wait, `submit` raises `Overloaded` at once
(the API turns it into 503 with Retry-After) instead of letting latency grow without bound.
Deadlines use time.monotonic(). Settings are checked at construction.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

StateScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (states, node rows) -> logits


class Overloaded(Exception):
    """The batch queue is full: retry later."""


@dataclass
class _Job:
    states: np.ndarray  # (B, ...) the rows' user states (`OnnxScorer.user_state`), any dtype
    nodes: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    calls: int = 0
    rows: int = 0
    jobs: int = 0


class MicroBatcher:
    def __init__(
        self,
        score_state: StateScorer,
        max_rows: int = 64,
        max_wait_s: float = 0.001,
        max_queue_rows: int = 2048,
        timeout_s: float = 5.0,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        if max_rows < 1 or max_queue_rows < max_rows or max_wait_s < 0 or timeout_s <= 0:
            raise ValueError("batcher needs max_rows >= 1, max_queue_rows >= max_rows, max_wait_s >= 0, "
                             "timeout_s > 0")
        self.score_state = score_state
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._active = 0  # searches in progress that may still submit rows
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="scorer-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def score(self, states: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Same contract as the scorer's `score_state`: (B, ...), (B, C) -> (B, C); blocks until
        scored."""
        job = _Job(np.ascontiguousarray(states), np.ascontiguousarray(nodes, dtype=np.int64))
        rows = len(job.states)
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            alone = self._active <= 1 and not self._queue
        if alone:
            # Nobody to batch with: score in this thread, sparing two thread hand-offs per level.
            return self.score_state(job.states, job.nodes)
        with self._cond:
            if self._queued_rows + rows > self.max_queue_rows:
                raise Overloaded(f"{self._queued_rows} scorer rows already queued")
            self._queue.append(job)
            self._queued_rows += rows
            self._cond.notify()
        if not job.done.wait(self.timeout_s):
            raise TimeoutError(f"scorer batch did not finish within {self.timeout_s}s")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    @contextmanager
    def active(self) -> Iterator[None]:
        """Mark a search as running for the duration of the block (see the adaptive wait)."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread after the queued jobs are served."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=self.timeout_s)

    # ----------------------------------------------------------------- the batching thread

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            deadline = time.monotonic() + self.max_wait_s
            while self._queued_rows < self.max_rows and not self._closed and len(self._queue) < self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, rows = [], 0
            while self._queue and (not jobs or rows + len(self._queue[0].states) <= self.max_rows):
                job = self._queue.popleft()
                jobs.append(job)
                rows += len(job.states)
            self._queued_rows -= rows
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            started = time.perf_counter()
            try:
                width = max(job.nodes.shape[1] for job in jobs)
                states = np.concatenate([job.states for job in jobs])
                nodes = np.concatenate([np.pad(job.nodes, ((0, 0), (0, width - job.nodes.shape[1])),
                                               constant_values=-1) for job in jobs])
                logits = self.score_state(states, nodes)
                start = 0
                for job in jobs:
                    rows, cols = job.nodes.shape
                    job.result = logits[start:start + rows, :cols]
                    start += rows
            except BaseException as exc:  # every waiting request gets the error
                for job in jobs:
                    job.error = exc
            finally:
                for job in jobs:
                    job.done.set()
            self.stats.calls += 1
            self.stats.rows += sum(len(job.states) for job in jobs)
            self.stats.jobs += len(jobs)
            if self.on_batch is not None:
                self.on_batch(len(jobs), sum(len(job.states) for job in jobs), time.perf_counter() - started)
