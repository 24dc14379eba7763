"""Micro-batching: each caller gets exactly its own rows back under concurrency."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.batcher import MicroBatcher, Overloaded


def fake_scorer(calls: list):
    def score(history: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        calls.append(len(history))
        # A score that depends on both the row's history and each candidate.
        return (history.sum(axis=1, keepdims=True) * 1000 + nodes).astype(np.float32)
    return score


def test_concurrent_callers_get_their_own_results() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(fake_scorer(calls), max_rows=16, max_wait_s=0.005)
    rng = np.random.default_rng(0)
    jobs = [(rng.integers(0, 50, size=(rng.integers(1, 4), 5)), rng.integers(-1, 100, size=(1, rng.integers(1, 30))))
            for _ in range(60)]
    jobs = [(h, np.repeat(n, len(h), axis=0)) for h, n in jobs]
    results: dict[int, np.ndarray] = {}

    barrier = threading.Barrier(len(jobs))

    def worker(i: int) -> None:
        with batcher.active():  # as a search does: others are running, so rows get batched
            barrier.wait()
            results[i] = batcher.score(*jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i, (history, nodes) in enumerate(jobs):
        np.testing.assert_array_equal(results[i], fake_scorer([])(history, nodes))
    assert len(calls) < len(jobs)  # rows really were batched
    assert max(calls) <= 16 + 3


def test_overload_is_refused_immediately() -> None:
    release, entered = threading.Event(), threading.Event()

    def slow(history: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(5)
        return np.zeros(nodes.shape, dtype=np.float32)

    batcher = MicroBatcher(slow, max_rows=2, max_wait_s=0.0, max_queue_rows=4)

    def search() -> None:
        with batcher.active():
            batcher.score(np.zeros((2, 3)), np.zeros((2, 4)))

    # Step by step rather than by fixed sleeps (which failed on a loaded machine): one search's
    # rows are in the blocked scorer, then two more searches fill the queue to its 4 rows.
    with batcher.active():  # a long-running search keeps the others from going alone
        started = [threading.Thread(target=search) for _ in range(3)]
        started[0].start()
        assert entered.wait(10)
        for t in started[1:]:
            t.start()
        deadline = time.monotonic() + 10
        while batcher.queued_rows < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.queued_rows == 4
        begun = time.perf_counter()
        with pytest.raises(Overloaded):
            batcher.score(np.zeros((2, 3)), np.zeros((2, 4)))
        assert time.perf_counter() - begun < 0.1
        release.set()
        for t in started:
            t.join()
    batcher.close()


def test_errors_reach_every_caller() -> None:
    def broken(history, nodes):
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, max_rows=8, max_wait_s=0.01)
    errors = []

    def worker() -> None:
        try:
            with batcher.active():
                batcher.score(np.zeros((1, 3)), np.zeros((1, 2)))
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert errors == ["model exploded"] * 5


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda h, n: n, max_rows=10, max_queue_rows=5)


def test_a_search_running_alone_skips_the_queue() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(fake_scorer(calls), max_rows=16, max_wait_s=1.0)
    started = time.perf_counter()
    with batcher.active():
        for _ in range(13):  # one request's levels
            batcher.score(np.ones((1, 5)), np.ones((1, 400)))
    assert time.perf_counter() - started < 0.5  # never waited max_wait_s
    assert batcher.stats.calls == 0 and len(calls) == 13  # scored in the caller's thread
    batcher.close()
