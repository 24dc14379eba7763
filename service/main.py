"""The app factory: settings in, a FastAPI app out; models load in the lifespan, never at import.

Lifecycle: load (verify, cross-check, warm up) -> ready -> serve -> on shutdown close the
batcher and the behaviour store. /healthz answers as soon as the process runs; /readyz only
once a warmed bundle is being served.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.admin import router as admin_router
from service.api.errors import http_error_response, send_json
from service.api.fast_path import RecommendFastPath
from service.api.routes import RECOMMEND_PATH, router
from service.behavior_store import BehaviorStore, make_store
from service.config import Settings
from service.model_store import ModelBundle, ModelStore, load_bundle
from service.recommend import ServingContext
from service.telemetry import Metrics, configure_logging, request_id

log = logging.getLogger("service")


def create_app(settings: Settings, bundle: ModelBundle | None = None, store: BehaviorStore | None = None,
               metrics: Metrics | None = None, fast_path: bool = True) -> FastAPI:
    """Build the app. `bundle` may be preloaded (the CLI validates before binding a port); it
    must then have been loaded with this app's `metrics`. `fast_path=False` serves every
    recommend request through FastAPI's route (tests compare the two: same answers)."""
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        behaviors = store or make_store(settings.redis_url, settings.stored_history, settings.redis_prefix,
                                        settings.redis_timeout_s, settings.dedupe_ttl_s,
                                        settings.memory_store_max_users, settings.event_log_max, settings.spool_dir)
        models = ModelStore()
        # what the recommend route and the fast path serve every request with
        app.state.context = ServingContext(models=models, settings=settings, metrics=metrics, store=behaviors)
        app.state.follower = None
        if settings.registry is not None:
            app.state.follower = _follow_registry(app, settings, models, metrics)
            await run_in_threadpool(app.state.follower.sync)  # serve the current version before going live
            app.state.follower.start()
        else:
            loaded = bundle
            if loaded is None:
                if settings.artifact is None:
                    raise RuntimeError("no artifact configured (JTM_ARTIFACT or --artifact)")
                loaded = await run_in_threadpool(load_bundle, settings.artifact, settings, metrics)
            models.swap(loaded)
            metrics.model_info.labels(loaded.version, "current").set(1)
            metrics.reloads.labels("ok").inc()
            log.info("serving %s (%d items) from %s", loaded.version, loaded.tree.n_items, loaded.path)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            if app.state.follower is not None:
                app.state.follower.stop()
            models.close()
            behaviors.close()

    # /docs (Swagger UI) and /redoc load their JavaScript and CSS from the app itself
    # (/static-offline-docs, shipped by fastapi-offline), not from a CDN: they work offline.
    app = FastAPIOffline(title="JTM retrieval service", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.include_router(router)
    app.include_router(admin_router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    fast = RecommendFastPath(app.state) if fast_path else None
    app.add_middleware(RequestContext, metrics=metrics, max_inflight=settings.max_inflight, fast_path=fast)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _publish_limits(app, settings)
    return app


def _publish_limits(app: FastAPI, settings: Settings) -> None:
    """Make /openapi.json state this deployment's limits (k, beam, history, categories, events),
    which settings may set tighter than the static schema: a request that conforms to the
    published schema is then never rejected for size."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            models = schema["components"]["schemas"]
            request = models["RecommendRequest"]["properties"]
            _set_bound(request["k"], "maximum", settings.max_k)
            _set_bound(request["beam"], "maximum", settings.max_beam)
            _set_bound(request["history"], "maxItems", settings.max_history)
            _set_bound(request["categories"], "maxItems", settings.max_history)
            _set_bound(models["EventBatch"]["properties"]["events"], "maxItems", settings.max_events)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _set_bound(prop: dict, key: str, limit: int) -> None:
    """Tighten `key` wherever it appears in a property (directly or in an anyOf branch)."""
    for branch in [prop, *prop.get("anyOf", [])]:
        if key in branch:
            branch[key] = min(branch[key], limit)


def create_app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory` and multi-worker serving: settings from JTM_* env."""
    return create_app(Settings())


def _follow_registry(app: FastAPI, settings: Settings, models: ModelStore, metrics: Metrics):
    from service.core.registry import Registry
    from service.reloader import RegistryFollower

    redis_client = None
    if settings.redis_url:
        import redis

        redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s,
                                            socket_connect_timeout=settings.redis_timeout_s)
    registry = Registry(settings.registry, redis_client, settings.redis_prefix)
    return RegistryFollower(registry, models, settings, metrics, redis_client)


# ----------------------------------------------------------------------------- errors


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            problems.append(f"malformed JSON body: {error.get('ctx', {}).get('error', error.get('msg'))}")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg"))
        if error.get("type") == "value_error":  # our validators' own messages, without pydantic's prefix
            message = message.removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return JSONResponse(status_code=422, content={"error": "validation", "message": "; ".join(problems[:5])})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return http_error_response(exc)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 naming the request id (body and X-Request-ID), so a client's report finds the log line.
    Starlette calls this from its outermost middleware, outside `RequestContext`, which therefore
    leaves the id set when a request fails."""
    log.exception("unhandled error")
    rid = request_id.get()
    return JSONResponse(status_code=500, content={"error": "internal", "message": f"internal error (request {rid})"},
                        headers={"x-request-id": rid} if rid != "-" else None)


# ----------------------------------------------------------------------------- middleware


class RequestContext:
    """Request id (X-Request-ID in and out), latency histogram per route, one access-log line,
    and admission control: beyond `max_inflight` recommend requests in progress, new ones get
    503 with Retry-After at once (bounded work and memory instead of a growing queue). An
    admitted `POST /v1/recommend` goes to `fast_path` (`service.api.fast_path`), which answers
    it without FastAPI's routing or hands it on to the app unchanged."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_inflight: int,
                 fast_path: RecommendFastPath | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.inflight = 0
        self.fast_path = fast_path  # answers well-formed recommend requests before FastAPI's routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["jtm_arrival"] = time.monotonic()
        if scope["path"] == RECOMMEND_PATH:
            if self.inflight >= self.max_inflight:
                self.metrics.rejected.labels("inflight_limit").inc()
                await send_json(send, 503, {"error": "unavailable",
                                            "message": f"overloaded: {self.inflight} requests in progress"},
                                [(b"retry-after", b"1")])
                return
            self.inflight += 1
            try:
                fast = self.fast_path
                await self._serve(scope, receive, send, fast if fast is not None and fast.handles(scope) else None)
            finally:
                self.inflight -= 1
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send,
                     fast: RecommendFastPath | None = None) -> None:
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")[:64]
        rid = incoming or uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        failed = True
        try:
            if fast is None:
                await self.app(scope, receive, send_with_id)
            else:
                await fast(scope, receive, send_with_id, self.app)
            failed = False
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status)).observe(seconds)
            if path not in ("/metrics", "/healthz", "/readyz"):
                log.info("%s %s", scope["method"], scope["path"], extra={
                    "route": path, "status": status, "ms": round(1000 * seconds, 2), "request_id": rid})
            if not failed:  # an unhandled error's 500 (`_internal_error`, further out) still names the id
                request_id.reset(token)


class BodyLimit:
    """413 for bodies over `max_bytes`, from Content-Length or while reading a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.max_bytes)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from receive() once a body without Content-Length (chunked) passes the limit. An
    HTTPException, because FastAPI's body parser re-raises those but turns any other error into
    a 400, which is answered as a malformed body (422): an oversize body must get 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def _too_large(send: Send, limit: int) -> None:
    await send_json(send, 413, {"error": "too_large", "message": f"request body over {limit} bytes"})
