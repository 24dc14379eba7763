"""One `POST /v1/recommend` request, start to end, on one bundle.

In order: shed the request if it waited past the queue budget; check it against the
deployment's limits; resolve the history (from the request, else the behaviour store, else
none); map original ids to the bundle's items (unknown ones are counted and dropped); build
the filters (exclude seen items, category allow-list); beam search, or the popularity list
when there is no usable history (`fallback_reason`: none at all, only unknown items, or the
store could not be read), and for a `fresh` request the added items' fused ranking (`_fresh`);
and the response body. The route only adapts HTTP to this:
`Rejected` carries the status and message a client gets.
"""

from __future__ import annotations

import time

import numpy as np

from service.api.schemas import RecommendRequest
from service.batcher import Overloaded
from service.behavior_store import BehaviorStore, StoreUnavailable
from service.bundle import ModelBundle
from service.config import Settings
from service.core.filters import ItemFilter, combine
from service.core.fusion import reciprocal_rank_fusion
from service.retrieval import Retrieved, item_filter, popular, search
from service.telemetry import Metrics

FRESH_DEPTH = 1000  # how deep the model's ranking of the fresh items is read before fusing


class Rejected(Exception):
    """A request the service refuses. `retry`: the refusal is load or availability (503 with
    Retry-After), not the request's fault."""

    def __init__(self, status: int, detail: str, retry: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry = retry


def recommend(body: RecommendRequest, bundle: ModelBundle, settings: Settings, metrics: Metrics,
              store: BehaviorStore, arrived: float | None = None) -> dict:
    """The response body (see `service.api.schemas.RecommendResponse`) for one request.
    arrived: `time.monotonic()` when the request reached the server (None: just now)."""
    _admit(body, settings, metrics, arrived)
    ids, source, reason = _history(body, settings, metrics, store)
    internal = bundle.catalog.items.lookup(ids)
    unknown = int((internal < 0).sum())
    internal = internal[internal >= 0]
    if unknown:
        metrics.unknown_items.inc(unknown)

    categories = None
    if body.categories is not None:
        categories = bundle.catalog.categories.lookup(body.categories)
        categories = categories[categories >= 0]
    allowed = item_filter(bundle, internal if body.exclude_seen else None, categories)
    k = min(body.k, bundle.catalog.n_served)
    beam = body.beam or bundle.default_beam
    try:
        if body.fresh:
            result = _fresh(bundle, internal, k, beam, allowed)
            if result.fallback:  # no usable history: their popularity alone
                reason = "unknown_history" if unknown else reason
                metrics.fallbacks.labels(reason).inc()
        elif len(internal) == 0:
            if unknown:  # a history was there, but the model knows none of its items
                reason = "unknown_history"
            result: Retrieved = popular(bundle, k, allowed)
            metrics.fallbacks.labels(reason).inc()
        else:
            with metrics.search_seconds.labels(bundle.version).time():
                result = search(bundle, internal, k, beam, allowed, on_level=metrics.level_timer())
    except Overloaded as exc:
        metrics.rejected.labels("overloaded").inc()
        raise Rejected(503, f"overloaded: {exc}", retry=True) from exc
    metrics.version_requests.labels(bundle.version).inc()
    originals = bundle.catalog.items.original(result.items)
    scores = [None] * len(originals) if result.scores is None else np.asarray(result.scores, dtype=float).tolist()
    return {
        "items": [{"item_id": i, "score": s} for i, s in zip(originals, scores, strict=True)],
        "model_version": bundle.version, "fallback": result.fallback,
        "history_used": int(min(len(internal), bundle.history_length)), "unknown_items": unknown,
        "history_source": source, "fallback_reason": reason if result.fallback else None,
    }


def _fresh(bundle: ModelBundle, internal: np.ndarray, k: int, beam: int, allowed: ItemFilter | None) -> Retrieved:
    """A `fresh` request: the items added since training that pass the filters, ranked by the
    model (searched with them as an allow-list, to depth FRESH_DEPTH) fused with their recent
    popularity (`service.core.fusion`); without a usable history, their popularity alone."""
    fresh_only = bundle.catalog.fresh_filter
    if fresh_only is None:
        # 409, not 422: the request is valid, the model serving it has nothing to rank for it.
        raise Rejected(409, "fresh: this model has no items added since training (trainer add-items adds them)")
    allowed = combine(allowed, fresh_only)
    fresh = bundle.catalog.fresh.astype(np.int64)
    by_popularity = fresh[allowed(fresh[None, :])[0]]
    if len(internal) == 0:
        return Retrieved(items=by_popularity[:k], scores=None, fallback="popular")
    if not len(by_popularity):  # the filters leave no fresh item
        return Retrieved(items=by_popularity, scores=None, fallback=None)
    model = search(bundle, internal, min(FRESH_DEPTH, len(by_popularity)), beam, allowed)
    fused = reciprocal_rank_fusion([model.items, by_popularity], k)
    return Retrieved(items=fused.astype(np.int64), scores=None, fallback=None)


def _admit(body: RecommendRequest, settings: Settings, metrics: Metrics, arrived: float | None) -> None:
    """Load shedding first (a request that would be served late is refused quickly), then the
    deployment's limits, which are tighter than the schema's hard ones."""
    waited = time.monotonic() - arrived if arrived is not None else 0.0
    if waited * 1000 > settings.queue_budget_ms:
        metrics.rejected.labels("queue_budget").inc()
        raise Rejected(503, f"overloaded: waited {1000 * waited:.0f} ms for a worker", retry=True)
    if body.k > settings.max_k:
        raise Rejected(422, f"k: at most {settings.max_k}")
    if body.history is not None and len(body.history) > settings.max_history:
        raise Rejected(422, f"history: {len(body.history)} items, at most {settings.max_history}")
    if body.beam is not None and body.beam > settings.max_beam:
        raise Rejected(422, f"beam: at most {settings.max_beam}")
    if body.categories is not None and len(body.categories) > settings.max_history:
        raise Rejected(422, f"categories: at most {settings.max_history}")


def _history(body: RecommendRequest, settings: Settings, metrics: Metrics,
             store: BehaviorStore) -> tuple[list, str, str]:
    """(ids most recent first, where they came from, why a fallback would be needed). A store
    outage degrades to the popularity answer instead of failing the request."""
    if body.history is not None:
        return body.history[::-1], "request", "no_history"  # requests list behaviours oldest first
    if body.user_id is not None:
        try:
            return store.recent(str(body.user_id), settings.stored_history), "store", "no_history"
        except StoreUnavailable:
            metrics.store_errors.labels("read").inc()
            return [], "none", "store_unavailable"
    return [], "none", "no_history"
