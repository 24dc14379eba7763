"""Routes: each a few lines over `service.recommend`, the behaviour store and the model store."""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import ContextDep, JsonBody, MetricsDep
from service.api.schemas import (
    Event,
    EventBatch,
    EventsAccepted,
    RecommendRequest,
    RecommendResponse,
    error_responses,
)
from service.behavior_store import LogFull, StoreUnavailable
from service.recommend import Rejected, ServingContext, request_defaults
from service.recommend import recommend as recommend_request

log = logging.getLogger("service.api")
router = APIRouter()
RECOMMEND_PATH = "/v1/recommend"  # also matched by the request middleware and the fast path (service.main)
RETRY_AFTER = {"Retry-After": "1"}


def unavailable(message: str) -> HTTPException:
    return HTTPException(status_code=503, detail=message, headers=RETRY_AFTER)


@router.post(RECOMMEND_PATH, response_model=RecommendResponse, response_model_exclude_none=False,
             dependencies=[JsonBody], responses=error_responses(409, 413, 415, 422, 503))
def recommend(body: RecommendRequest, request: Request, context: ContextDep) -> Response:
    """The request is served by one bundle from start to end, even if a new one is swapped in.

    A well-formed request seldom gets here: `service.api.fast_path` answers it first, through
    the same `serve_recommend`. This route documents the endpoint and answers every request the
    fast path hands over (a body that is not valid, not JSON, over the size limit)."""
    return serve_recommend(body, context, request.scope.get("jtm_arrival"))


def serve_recommend(body: RecommendRequest, context: ServingContext, arrived: float | None) -> Response:
    """One validated recommend request, on one bundle held (`models.use`) until it is answered;
    a refusal is raised as the HTTPException the client gets. Blocking: runs on a worker thread."""
    query = body.to_query()
    with context.models.use(query.user_id) as bundle:
        if bundle is None:
            raise unavailable("no model loaded yet")
        try:
            answer = recommend_request(query, bundle, context, arrived)
        except Rejected as exc:
            raise (unavailable(exc.detail) if exc.retry else HTTPException(exc.status, exc.detail)) from exc
    # Serialised directly (orjson) rather than through the response model, which would build
    # and validate a pydantic object per item of every answer; the decorator's schema still
    # documents the body.
    return Response(orjson.dumps(answer), media_type="application/json",
                    headers={"X-Model-Version": answer["model_version"]})


@router.post("/v1/events", status_code=202, response_model=EventsAccepted, dependencies=[JsonBody],
             responses=error_responses(413, 415, 422, 503))
def events(body: Event | EventBatch, context: ContextDep) -> EventsAccepted:
    settings, metrics, store = context.settings, context.metrics, context.store
    batch = body.events if isinstance(body, EventBatch) else [body]
    if len(batch) > settings.max_events:
        raise HTTPException(413, f"events: {len(batch)} in one call, at most {settings.max_events}")
    try:
        stored = store.append([e.stored() for e in batch])
    except StoreUnavailable as exc:
        metrics.store_errors.labels("write").inc()
        raise unavailable("behaviour store unavailable; no event of this call was stored, retry") from exc
    except LogFull as exc:
        metrics.rejected.labels("event_log_full").inc()
        raise unavailable(f"event log full ({exc}); no event of this call was stored, retry") from exc
    metrics.events.inc(stored)
    log_length = getattr(store, "log_length", None)
    if log_length is not None:
        metrics.event_log_pending.set(log_length)
    evicted = getattr(store, "evicted", None)
    if evicted is not None:
        metrics.store_evicted.set(evicted)
    return EventsAccepted(accepted=len(batch), stored=stored, duplicates=len(batch) - stored, store=store.kind)


@router.get("/v1/model")
def model(request: Request, context: ContextDep) -> dict:
    """The bundle served (with the k and beam a request that names neither gets), the model
    store's state, which behaviour store is used, and the refresh loop: the event-log
    watermark the served version was refreshed through, and the quality gate's last decision
    (when following a registry)."""
    models = context.models
    bundle = models.current
    follower = getattr(request.app.state, "follower", None)
    return {
        "serving": None if bundle is None else {**bundle.summary(), "defaults": request_defaults(bundle)},
        "last_error": models.last_error,
        "behavior_store": context.store.kind,
        "refresh": {"log": None if bundle is None else bundle.manifest.get("log"),
                    "last_decision": None if follower is None else follower.registry.last_decision()},
        **(models.describe() if hasattr(models, "describe") else {}),
    }


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: no warmed model yet"}})
def readyz(request: Request, response: Response, context: ContextDep) -> dict:
    """Ready = a warmed model is served. A behaviour store outage does not make the replica
    unready (recommendations still work: request histories, popular fallback); it is reported
    as `degraded` and in the jtm_behavior_store_up metric."""
    bundle = context.models.current
    if bundle is None or not request.app.state.ready:
        response.status_code = 503
        return {"status": "loading", "last_error": context.models.last_error}
    store_up = context.store.ping()
    context.metrics.store_up.set(1 if store_up else 0)
    return {"status": "ready", "version": bundle.version, "degraded": [] if store_up else ["behavior_store"]}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(metrics: MetricsDep) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
