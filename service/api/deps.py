"""Typed access to what the app holds, for routes (`service/main.py` sets it up).

Starlette's `app.state` is untyped; these FastAPI dependencies give each route the objects it
needs under their real types, read once per request. They are `async` so that FastAPI calls
them on the event loop: a plain `def` dependency is run in the thread pool, a thread hop per
dependency on every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.recommend import ServingContext
from service.telemetry import Metrics


async def _context(request: Request) -> ServingContext:
    return request.app.state.context


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ContextDep = Annotated[ServingContext, Depends(_context)]  # set by the lifespan: models, settings, metrics, store
MetricsDep = Annotated[Metrics, Depends(_metrics)]  # set when the app is created: /metrics answers before it starts


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
