"""One `POST /v1/recommend` request, start to end, on one bundle.

In order: shed the request if it waited past the queue budget; check it against the
deployment's limits; resolve the history (from the request, else the behaviour store, else
none); map original ids to the bundle's items (unknown ones are counted and dropped); build
the filters (exclude seen items, category allow-list); beam search, or the popularity list
when there is no usable history (`fallback_reason`: none at all, only unknown items, or the
store could not be read), and for a `fresh` request the added items' fused ranking (`_fresh`);
and the response body. The request is a `RecommendQuery` (the HTTP schema maps onto it in
`service.api`), served with a `ServingContext`; `Rejected` carries the status and message a
client gets, which the route only adapts to HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.batcher import Overloaded
from service.behavior_store import BehaviorStore, StoreUnavailable
from service.bundle import ModelBundle
from service.config import Settings
from service.core.filters import ItemFilter, combine
from service.core.fusion import reciprocal_rank_fusion
from service.model_store import ModelStore
from service.retrieval import Retrieved, item_filter, popular, search
from service.telemetry import Metrics

DEFAULT_K = 200  # items a request gets when it names no k (the HTTP schema publishes this default)
FRESH_DEPTH = 1000  # how deep the model's ranking of the fresh items is read before fusing


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    """One recommend request, as the service reads it (the HTTP body is validated and mapped
    onto this in `service.api`). history: original item ids, oldest first; beam None: the
    bundle's default; categories: original category ids allowed (None: no category filter);
    fresh: rank only the items added since training."""

    user_id: int | str | None = None
    history: Sequence[int | str] | None = None
    k: int = DEFAULT_K
    beam: int | None = None
    exclude_seen: bool = False
    categories: Sequence[int | str] | None = None
    fresh: bool = False


@dataclass(frozen=True, slots=True)
class ServingContext:
    """What every request is served with, built once when the app starts: the model store
    (which bundle serves a request), the settings (limits, budgets), the metrics and the
    behaviour store."""

    models: ModelStore
    settings: Settings
    metrics: Metrics
    store: BehaviorStore


def request_defaults(bundle: ModelBundle) -> dict[str, int]:
    """The k and beam a request that names neither is served with on `bundle`."""
    return {"k": DEFAULT_K, "beam": bundle.default_beam}


class Rejected(Exception):
    """A request the service refuses. `retry`: the refusal is load or availability (503 with
    Retry-After), not the request's fault."""

    def __init__(self, status: int, detail: str, retry: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry = retry


def recommend(query: RecommendQuery, bundle: ModelBundle, context: ServingContext,
              arrived: float | None = None) -> dict:
    """The response body (see `service.api.schemas.RecommendResponse`) for one request.
    arrived: `time.monotonic()` when the request reached the server (None: just now)."""
    metrics = context.metrics
    _admit(query, context.settings, metrics, arrived)
    ids, source, reason = _history(query, context)
    internal = bundle.catalog.items.lookup(ids)
    unknown = int((internal < 0).sum())
    internal = internal[internal >= 0]
    if unknown:
        metrics.unknown_items.inc(unknown)

    categories = None
    if query.categories is not None:
        categories = bundle.catalog.categories.lookup(query.categories)
        categories = categories[categories >= 0]
    allowed = item_filter(bundle, internal if query.exclude_seen else None, categories)
    k = min(query.k, bundle.catalog.n_served)
    beam = query.beam or bundle.default_beam
    try:
        if query.fresh:
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


def _admit(query: RecommendQuery, settings: Settings, metrics: Metrics, arrived: float | None) -> None:
    """Load shedding first (a request that would be served late is refused quickly), then the
    deployment's limits, which are tighter than the schema's hard ones."""
    waited = time.monotonic() - arrived if arrived is not None else 0.0
    if waited * 1000 > settings.queue_budget_ms:
        metrics.rejected.labels("queue_budget").inc()
        raise Rejected(503, f"overloaded: waited {1000 * waited:.0f} ms for a worker", retry=True)
    if query.k > settings.max_k:
        raise Rejected(422, f"k: at most {settings.max_k}")
    if query.history is not None and len(query.history) > settings.max_history:
        raise Rejected(422, f"history: {len(query.history)} items, at most {settings.max_history}")
    if query.beam is not None and query.beam > settings.max_beam:
        raise Rejected(422, f"beam: at most {settings.max_beam}")
    if query.categories is not None and len(query.categories) > settings.max_history:
        raise Rejected(422, f"categories: at most {settings.max_history}")


def _history(query: RecommendQuery, context: ServingContext) -> tuple[Sequence, str, str]:
    """(ids most recent first, where they came from, why a fallback would be needed). A store
    outage degrades to the popularity answer instead of failing the request."""
    if query.history is not None:
        return query.history[::-1], "request", "no_history"  # requests list behaviours oldest first
    if query.user_id is not None:
        try:
            return context.store.recent(str(query.user_id), context.settings.stored_history), "store", "no_history"
        except StoreUnavailable:
            context.metrics.store_errors.labels("read").inc()
            return [], "none", "store_unavailable"
    return [], "none", "no_history"
