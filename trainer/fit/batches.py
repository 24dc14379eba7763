"""Training batches, built in numpy and ahead of time, so the model never waits for them.

A batch of B samples needs: each sample's sampled nodes (the positive and negatives per
level, `trainer.fit.sampler`), its behaviour history (mapped to each level's ancestors with the
hierarchical representation, JTM 2.3), and, for the model, the embedding rows all of those
touch. `build_batch` turns sample indices into a `Batch` whose ids are *local*: positions in
`rows`, the sorted distinct embedding rows of the batch. The step then gathers only those rows,
computes their gradients densely (a few thousand rows instead of a table of millions) and
updates them with lazy Adam (`trainer.model.row_adam`).

The history is handed over as bags for `F.embedding_bag`: bag (v, b, w) holds the local rows
of sample b's behaviours inside time window w under mapping v, with weight 1 / (behaviours in
the window), so the bag sum is the window mean of `WindowPooling`, without materialising the
(V, B, L, d) gathered embeddings. The backward pass is the transposed bag structure (row u
sums the gradients of every bag entry and every node column that reads u): built here, in
the background, by one radix sort, it turns the embedding backward into one more
`embedding_bag` call instead of autograd's scatter over every entry.

`prefetch` runs the builder in a background thread (numpy's sorting and gathering release the
GIL), one batch ahead of the step that consumes it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from service.core.tree import Tree
from trainer.data.split import SampleSet
from trainer.fit.sampler import LayerwiseSampler, UniformItemSampler


@dataclass(frozen=True)
class Batch:
    """One training batch with local row ids.

    rows: (U,) int64 sorted distinct embedding rows.
    groups: per behaviour mapping v, (B, w_v) int64 local ids of the nodes it scores.
    labels: per group, (w_v,) float32, 1 for a positive column.
    bag_ids, bag_offsets, bag_weights: `embedding_bag` input for the (V, B, W) window bags.
    grad_sources, grad_offsets, grad_weights: the transposed structure: row u's gradient is the
        weighted sum of rows grad_sources[grad_offsets[u]:grad_offsets[u + 1]] of the stacked
        (bag gradients (V B W, d), node-column gradients (pairs, d)), columns in group order.
    size: B; n_groups: V; n_windows: W.
    history: (V, B, L) local ids, -1 padded, only when the builder keeps it (target attention
    needs every behaviour, not window means).
    """

    rows: np.ndarray
    groups: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    bag_ids: np.ndarray
    bag_offsets: np.ndarray
    bag_weights: np.ndarray
    grad_sources: np.ndarray
    grad_offsets: np.ndarray
    grad_weights: np.ndarray
    size: int
    n_windows: int
    history: np.ndarray | None = None

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def pairs(self) -> int:
        return sum(g.size for g in self.groups)


def window_mask(windows: tuple[tuple[int, int], ...], length: int) -> np.ndarray:
    """(W, L) bool: position l (0 = most recent) lies in window w."""
    mask = np.zeros((len(windows), length), dtype=bool)
    for w, (start, end) in enumerate(windows):
        mask[w, start:min(end, length)] = True
    return mask


@dataclass(frozen=True)
class WindowBags:
    """`F.embedding_bag` input for the (V, B, W) window bags of V behaviour mappings:
    ids (E,) the rows in each bag, offsets (V B W,) where each bag starts, weights (E,)
    1 / (behaviours in the window), sizes (V B W,) entries per bag."""

    ids: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    sizes: np.ndarray


def window_bags(mapped: np.ndarray, valid: np.ndarray, mask: np.ndarray) -> WindowBags:
    """Bags over `mapped` (V, B, L) rows (behaviours under each mapping, most recent first),
    `valid` (B, L) which positions hold a behaviour, `mask` (W, L) window membership. A bag
    with no behaviour is empty (it pools to zeros, like `WindowPooling`)."""
    in_bag = valid[:, None, :] & mask[None]  # (B, W, L)
    counts = in_bag.sum(-1)  # (B, W)
    sample_of, window_of, position_of = np.nonzero(in_bag)  # ordered by sample, window, position
    n_groups = len(mapped)
    ids = mapped[:, sample_of, position_of].ravel()  # (V E): the same entries under every mapping
    weights = np.tile(1.0 / counts[sample_of, window_of], n_groups)  # float64: exact for float64 models
    sizes = np.tile(counts.ravel(), n_groups)
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    return WindowBags(ids.astype(np.int64, copy=False), offsets, weights, sizes)


class BatchBuilder:
    """Sample indices -> `Batch`, for one sampler, tree and feature setting."""

    def __init__(self, samples: SampleSet, sampler: LayerwiseSampler | UniformItemSampler, tree: Tree | None,
                 hierarchical: bool, windows: tuple[tuple[int, int], ...], n_rows: int,
                 keep_history: bool = False, times=None) -> None:
        if hierarchical and (tree is None or not isinstance(sampler, LayerwiseSampler)):
            raise ValueError("the hierarchical representation needs a tree and a layer-wise sampler")
        self.samples = samples
        self.sampler = sampler
        self.tree = tree
        self.hierarchical = hierarchical
        self.n_rows = n_rows
        self.keep_history = keep_history
        self.times = times  # a trainer.fit.step.StepTimes when profiling: seconds per building phase
        self.targets = samples.targets
        self.mask = window_mask(windows, samples.max_history)
        label = sampler.label
        if hierarchical:
            assert isinstance(sampler, LayerwiseSampler)
            self.levels = tuple(sampler.level_slices())
            self.spans = tuple(sampler.level_slices().values())
        else:
            self.levels = ()
            self.spans = (slice(0, len(label)),)
        self.labels = tuple(np.ascontiguousarray(label[span]) for span in self.spans)
        # Reused scratch for the row dedup of small tables (see `_local_ids`).
        self._position = np.full(n_rows + 1, -1, dtype=np.int64) if n_rows <= 4_000_000 else None

    def _mark(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        if self.times is not None:
            self.times.add(phase, now - started)
        return now

    def __call__(self, index: np.ndarray, rng: np.random.Generator) -> Batch:
        started = time.perf_counter()
        nodes = self.sampler.sample(self.targets[index], rng, index=index)  # (B, C) rows
        started = self._mark("sampling (builder thread)", started)
        history = self.samples.histories(index)  # (B, L) item ids, -1 padded, most recent first
        if self.hierarchical:
            assert self.tree is not None
            ids_at = self.tree.ancestor_ids_by_level(history)
            mapped = np.stack([ids_at(level) for level in self.levels])  # (V, B, L)
        else:
            mapped = history[None].astype(np.int64)
        started = self._mark("history mapping (builder thread)", started)
        bags = window_bags(mapped, history >= 0, self.mask)
        node_ids = np.where(nodes >= 0, nodes, self.n_rows)
        rows, local = self._local_ids(np.concatenate([bags.ids, node_ids.ravel()]))
        entries_local = local[:len(bags.ids)]
        nodes_local = local[len(bags.ids):].reshape(node_ids.shape)
        groups = tuple(np.ascontiguousarray(nodes_local[:, span]) for span in self.spans)
        n_bags = len(bags.offsets)
        # Transposed bags: every bag entry and every node column, grouped by the row it reads.
        readers = np.concatenate([entries_local, *(g.ravel() for g in groups)])
        sources = np.concatenate([np.repeat(np.arange(n_bags), bags.sizes), n_bags + np.arange(nodes_local.size)])
        weights = np.concatenate([bags.weights, np.ones(nodes_local.size)])
        key = readers.astype(np.uint16 if len(rows) <= 1 << 16 else np.int32)  # uint16 sorts by radix
        order = np.argsort(key, kind="stable")
        grad_offsets = np.r_[0, np.cumsum(np.bincount(readers, minlength=len(rows)))][:-1]
        history_local = None
        if self.keep_history:
            history_local = np.where(mapped >= 0, np.searchsorted(rows, np.maximum(mapped, 0)), -1)
        self._mark("bags and row ids (builder thread)", started)
        return Batch(rows=rows, groups=groups, labels=self.labels, bag_ids=entries_local,
                     bag_offsets=bags.offsets, bag_weights=bags.weights,
                     grad_sources=sources[order], grad_offsets=grad_offsets.astype(np.int64),
                     grad_weights=weights[order], size=len(index), n_windows=self.mask.shape[0],
                     history=history_local)

    def _local_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct ids, each id's position among them). For tables up to a few million
        rows a scatter into a reused position array beats np.unique's sort (O(ids) instead of
        O(ids log ids)); beyond that the per-batch O(rows) scan would cost more than the sort."""
        if self._position is None:
            rows, local = np.unique(ids, return_inverse=True)
            return rows, local.astype(np.int64)
        position = self._position
        position[ids] = 0
        rows = np.flatnonzero(position >= 0)
        position[rows] = np.arange(len(rows))
        local = position[ids]
        position[rows] = -1
        return rows, local


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """How many batches (optimizer steps) `batch_indices` makes of an epoch."""
    return -(-n_samples // batch_size)


def batch_indices(n_samples: int, batch_size: int, order: np.ndarray, rank: int = 0,
                  world_size: int = 1) -> Iterator[np.ndarray]:
    """The sample indices of every batch of one epoch; under torch.distributed each rank's
    1/world share of each global batch (a last batch too small to share is dropped)."""
    for start in range(0, n_samples, batch_size):
        batch = order[start:start + batch_size]
        if world_size > 1:
            if len(batch) < world_size:
                return
            batch = batch[rank::world_size]
        yield batch


def prefetch(make: Callable[[np.ndarray], Batch], indices: Iterable[np.ndarray], depth: int = 2) -> Iterator[Batch]:
    """Build batches in a background thread, `depth` ahead; exceptions surface in the consumer.

    The builder consumes its random generator in batch order on one thread, so a run is
    reproducible whatever the timing."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for index in indices:
                if stop.is_set():
                    return
                slots.put(make(index))
            slots.put(done)
        except BaseException as exc:  # delivered to the consumer, re-raised there
            slots.put(exc)

    worker = threading.Thread(target=produce, name="batch-builder", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.01)
