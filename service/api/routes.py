"""Routes: each a few lines over retrieval, the behaviour store and the model store."""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.schemas import (
    Event,
    EventBatch,
    EventsAccepted,
    RecommendRequest,
    RecommendResponse,
    error_responses,
)
from service.batcher import Overloaded
from service.features import StoredEvent, StoreUnavailable
from service.model_store import ModelBundle
from service.retrieval import Retrieved, item_filter, popular, search

log = logging.getLogger("service.api")
router = APIRouter()
RETRY_AFTER = {"Retry-After": "1"}


def unavailable(message: str) -> HTTPException:
    return HTTPException(status_code=503, detail=message, headers=RETRY_AFTER)


@router.post("/v1/recommend", response_model=RecommendResponse, response_model_exclude_none=False,
             responses=error_responses(413, 422, 503))
def recommend(body: RecommendRequest, request: Request, response: Response) -> Response:
    """The request is served by one bundle from start to end, even if a new one is swapped in."""
    with request.app.state.models.use(body.user_id) as bundle:
        if bundle is None:
            raise unavailable("no model loaded yet")
        return _recommend(body, request, response, bundle)


def _recommend(body: RecommendRequest, request: Request, response: Response, bundle: ModelBundle) -> Response:
    state = request.app.state
    settings, metrics = state.settings, state.metrics
    waited = time.monotonic() - request.scope.get("jtm_arrival", time.monotonic())
    if waited * 1000 > settings.queue_budget_ms:  # would be served late: shed it, quickly
        metrics.rejected.labels("queue_budget").inc()
        raise unavailable(f"overloaded: waited {1000 * waited:.0f} ms for a worker")
    if body.k > settings.max_k:
        raise HTTPException(422, f"k: at most {settings.max_k}")
    if body.history is not None and len(body.history) > settings.max_history:
        raise HTTPException(422, f"history: {len(body.history)} items, at most {settings.max_history}")
    if body.beam is not None and body.beam > settings.max_beam:
        raise HTTPException(422, f"beam: at most {settings.max_beam}")
    if body.categories is not None and len(body.categories) > settings.max_history:
        raise HTTPException(422, f"categories: at most {settings.max_history}")

    source, reason = "none", "no_history"
    ids: list = []
    if body.history is not None:
        ids, source = body.history[::-1], "request"  # requests list behaviours oldest first
    elif body.user_id is not None:
        try:
            ids = state.store.recent(str(body.user_id), settings.stored_history)
            source = "store"
        except StoreUnavailable:
            metrics.store_errors.labels("read").inc()
            reason = "store_unavailable"
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
    k = min(body.k, bundle.tree.n_items)
    beam = body.beam or bundle.default_beam
    try:
        if len(internal) == 0:
            result: Retrieved = popular(bundle, k, allowed)
            metrics.fallbacks.labels(reason).inc()
        else:
            with metrics.search_seconds.labels(bundle.version).time():
                result = search(bundle, internal, k, beam, allowed,
                                on_level=lambda level, s: metrics.level_seconds.labels(str(level)).observe(s))
    except Overloaded as exc:
        metrics.rejected.labels("overloaded").inc()
        raise unavailable(f"overloaded: {exc}") from exc
    metrics.version_requests.labels(bundle.version).inc()
    originals = bundle.catalog.items.original(result.items)
    scores = [None] * len(originals) if result.scores is None else np.asarray(result.scores, dtype=float).tolist()
    # Serialised directly (orjson): the schema above documents it; building 200 pydantic
    # objects per response cost more than the last beam-search level.
    body = {
        "items": [{"item_id": i, "score": s} for i, s in zip(originals, scores, strict=True)],
        "model_version": bundle.version, "fallback": result.fallback,
        "history_used": int(min(len(internal), bundle.history_length)), "unknown_items": unknown,
        "history_source": source, "fallback_reason": reason if result.fallback else None,
    }
    return Response(orjson.dumps(body), media_type="application/json", headers={"X-Model-Version": bundle.version})


@router.post("/v1/events", status_code=202, response_model=EventsAccepted, responses=error_responses(413, 422, 503))
def events(body: Event | EventBatch, request: Request) -> EventsAccepted:
    state = request.app.state
    batch = body.events if isinstance(body, EventBatch) else [body]
    if len(batch) > state.settings.max_events:
        raise HTTPException(413, f"events: {len(batch)} in one call, at most {state.settings.max_events}")
    try:
        stored = state.store.append([StoredEvent(str(e.user_id), str(e.item_id), e.event_id) for e in batch])
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("write").inc()
        raise unavailable("behaviour store unavailable; no event of this call was stored, retry") from exc
    state.metrics.events.inc(stored)
    evicted = getattr(state.store, "evicted", None)
    if evicted is not None:
        state.metrics.store_evicted.set(evicted)
    return EventsAccepted(accepted=len(batch), stored=stored, duplicates=len(batch) - stored, store=state.store.kind)


@router.get("/v1/model")
def model(request: Request) -> dict:
    models = request.app.state.models
    bundle = models.current
    return {
        "serving": None if bundle is None else bundle.summary(),
        "last_error": models.last_error,
        "behavior_store": request.app.state.store.kind,
        **(models.describe() if hasattr(models, "describe") else {}),
    }


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: no warmed model yet"}})
def readyz(request: Request, response: Response) -> dict:
    """Ready = a warmed model is served. A behaviour store outage does not make the replica
    unready (recommendations still work: request histories, popular fallback); it is reported
    as `degraded` and in the jtm_behavior_store_up metric."""
    state = request.app.state
    bundle = state.models.current
    if bundle is None or not state.ready:
        response.status_code = 503
        return {"status": "loading", "last_error": state.models.last_error}
    store_up = state.store.ping()
    state.metrics.store_up.set(1 if store_up else 0)
    return {"status": "ready", "version": bundle.version, "degraded": [] if store_up else ["behavior_store"]}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
