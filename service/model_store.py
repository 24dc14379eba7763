"""Loading, validating and warming a model bundle; holding the one being served.

A bundle (`service.bundle.ModelBundle`) is everything one artifact version needs to answer a
request. Tree and scorer are learnt together and are only ever swapped together, as one bundle
reference: a request reads the reference once and finishes on that bundle even if a newer one
is swapped in meanwhile.

`load_bundle` refuses an artifact that fails its checksums, does not match its manifest, or
whose tree does not match its scorer (the largest embedding row the tree uses is probed), and
runs a warm-up search before the bundle is handed out.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from service.batcher import MicroBatcher
from service.bundle import ModelBundle
from service.config import Settings
from service.core.artifact import read_artifact
from service.retrieval import search
from service.scorer import OnnxScorer
from service.telemetry import Metrics

__all__ = ["ModelBundle", "ModelStore", "load_bundle"]

log = logging.getLogger("service.model")


def load_bundle(path: str | Path, settings: Settings, metrics: Metrics | None = None) -> ModelBundle:
    """Read (`service.core.artifact.read_artifact`: checksums, tree, catalog, manifest), open
    the scorer and check it belongs to the tree (`Artifact.check_scorer`), then warm up.
    Raises ArtifactError with one line."""
    artifact = read_artifact(path, settings.max_k, settings.max_beam)
    scorer = OnnxScorer(artifact.scorer_file, threads=settings.ort_threads, device=settings.device)
    artifact.check_scorer(scorer.score, scorer.tree_sha256, scorer.history_length)
    artifact.tree.warm()
    batcher = None
    if settings.batching:
        batcher = MicroBatcher(
            scorer.score_state, max_rows=settings.batch_max_rows, max_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue_rows=settings.batch_queue_rows, timeout_s=settings.batch_timeout_s,
            on_batch=metrics.observe_batch if metrics is not None else None,
        )
    bundle = ModelBundle(artifact, scorer, batcher)
    _warm_up(bundle)
    return bundle


def _warm_up(bundle: ModelBundle, searches: int = 20) -> None:
    """Real searches (histories from the popular items) before serving, so the first requests
    pay none of the lazy set-up (onnxruntime's first runs, numpy's and the tree's caches)."""
    popular = bundle.catalog.popular.astype(np.int64)
    k = min(bundle.default_k, bundle.tree.n_items)
    started = time.perf_counter()
    for i in range(searches):
        history = np.roll(popular, -7 * i)[: max(1, bundle.history_length - i)]
        search(bundle, history, k=k, beam=bundle.default_beam)
    log.info("warm-up: %d searches for %s took %.1f ms", searches, bundle.version,
             1000 * (time.perf_counter() - started))


class ModelStore:
    """The bundles being served: the current one and, during an A/B test, a candidate.

    Requests take a bundle with `use(user_id)`, which counts them in flight; a swapped-out
    bundle is closed only when its last request has finished, so requests always complete on
    the bundle they started with. The A/B split is a stable hash of user_id.
    """

    def __init__(self) -> None:
        self._current: ModelBundle | None = None
        self._candidate: ModelBundle | None = None
        self.share = 0.0
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}
        self._retired: dict[int, ModelBundle] = {}
        self.last_error: str | None = None
        self.loaded: list[dict] = []  # recent load events, newest last

    @property
    def current(self) -> ModelBundle | None:
        return self._current

    @property
    def candidate(self) -> ModelBundle | None:
        return self._candidate

    def bundle_for(self, user_id: object) -> ModelBundle | None:
        candidate, current = self._candidate, self._current
        if candidate is not None and user_id is not None and ab_bucket(user_id) < self.share:
            return candidate
        return current

    @contextmanager
    def use(self, user_id: object) -> Iterator[ModelBundle | None]:
        with self._lock:
            bundle = self.bundle_for(user_id)
            if bundle is not None:
                self._inflight[id(bundle)] = self._inflight.get(id(bundle), 0) + 1
        try:
            yield bundle
        finally:
            if bundle is not None:
                self._release(bundle)

    def _release(self, bundle: ModelBundle) -> None:
        to_close = None
        with self._lock:
            left = self._inflight.get(id(bundle), 1) - 1
            if left:
                self._inflight[id(bundle)] = left
            else:
                self._inflight.pop(id(bundle), None)
                to_close = self._retired.pop(id(bundle), None)
        if to_close is not None:
            to_close.close()

    def _retire(self, bundle: ModelBundle | None) -> None:
        """Close `bundle` now if idle, else when its last request finishes (caller holds the lock)."""
        if bundle is None or bundle is self._current or bundle is self._candidate:
            return
        if self._inflight.get(id(bundle)):
            self._retired[id(bundle)] = bundle
        else:
            threading.Thread(target=bundle.close, daemon=True).start()

    def swap(self, bundle: ModelBundle) -> ModelBundle | None:
        """Serve `bundle` as the current version; returns the one it replaced."""
        with self._lock:
            previous, self._current = self._current, bundle
            if self._candidate is not None and self._candidate.version == bundle.version:
                self._candidate, self.share = None, 0.0  # the candidate was promoted
            self._retire(previous)
        self.loaded.append({"version": bundle.version, "role": "current", "at": time.time()})
        del self.loaded[:-20]
        return previous

    def set_candidate(self, bundle: ModelBundle | None, share: float) -> None:
        with self._lock:
            previous, self._candidate = self._candidate, bundle
            self.share = share if bundle is not None else 0.0
            self._retire(previous)
        if bundle is not None:
            self.loaded.append({"version": bundle.version, "role": "candidate", "at": time.time()})

    def describe(self) -> dict:
        candidate = self._candidate
        return {
            "ab": None if candidate is None else {"candidate": candidate.version, "share": self.share},
            "recent_loads": list(self.loaded),
        }

    def close(self) -> None:
        with self._lock:
            bundles = [b for b in (self._current, self._candidate) if b is not None]
            self._current = self._candidate = None
        for bundle in bundles:
            bundle.close()


def ab_bucket(user_id: object) -> float:
    """A stable, uniform number in [0, 1) per user id (same on every replica and restart)."""
    digest = hashlib.blake2b(str(user_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
