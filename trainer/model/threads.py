"""Worker threads for torch work on the CPU: each runs torch ops on one intra-op thread.

torch releases the GIL inside every op, so N Python threads keep N cores busy on independent
pieces of work (chunks of a training batch, batches of tree-learning scores) without OpenMP's
fork and join around every small op, which cost more than the op itself at these sizes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of `threads` workers whose torch ops run single-threaded."""
    with _LOCK:
        executor = _POOLS.get(threads)
        if executor is None:
            executor = ThreadPoolExecutor(threads, thread_name_prefix="torch-worker",
                                          initializer=torch.set_num_threads, initargs=(1,))
            _POOLS[threads] = executor
        return executor


def run_parallel(work: Callable[[int], T], workers: int) -> list[T]:
    """[work(0), ..., work(workers - 1)], on worker threads when workers > 1."""
    if workers <= 1:
        return [work(0)]
    return list(pool(workers).map(work, range(workers)))


def default_threads() -> int:
    return max(1, torch.get_num_threads())
