"""Typed access to what the app holds, for routes (`service/main.py` sets it up).

Starlette's `app.state` is untyped; these FastAPI dependencies give each route the objects it
needs under their real types, read once per request. They are `async` only so that FastAPI
calls them on the event loop: a plain `def` dependency is run in the thread pool, one thread
hop each, which added ~0.5 ms to a recommend request (bench_service, side by side).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.behavior_store import BehaviorStore
from service.config import Settings
from service.model_store import ModelStore
from service.telemetry import Metrics


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _models(request: Request) -> ModelStore:
    return request.app.state.models


async def _store(request: Request) -> BehaviorStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
ModelsDep = Annotated[ModelStore, Depends(_models)]
StoreDep = Annotated[BehaviorStore, Depends(_store)]


async def require_json(request: Request) -> None:
    """415 for a body that is not sent as JSON. FastAPI would read such a body as a string and
    answer 422 `body: Input should be a valid dictionary`, which hides the actual mistake (curl
    -d without `-H 'content-type: application/json'` sends application/x-www-form-urlencoded).
    Runs before the body is validated; the body itself is already read (and cached) by then."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    if not await request.body():
        return  # no body: the validation error names the missing fields
    sent = f"content-type {media!r}" if media else "no content-type header"
    raise HTTPException(415, f"the body must be JSON sent with content-type: application/json ({sent} was given)")


JsonBody = Depends(require_json)
