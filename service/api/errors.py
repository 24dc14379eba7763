"""Error bodies, one definition for every path that answers an error: FastAPI's exception
handlers (`service.main`), the middleware (`service.main.RequestContext`, `BodyLimit`) and the
recommend fast path (`service.api.fast_path`). Every error is `{"error": kind, "message": text}`."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Send

ERROR_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized",
               403: "forbidden", 415: "unsupported_media_type", 422: "validation", 503: "unavailable"}


def http_error_response(exc: HTTPException) -> JSONResponse:
    """The answer to an HTTPException, raised by a route or a dependency, or by the fast path's
    shared recommend step (`service.api.routes.serve_recommend`)."""
    if exc.status_code == 400:  # the framework could not parse the body (e.g. not UTF-8): invalid JSON
        return JSONResponse(status_code=422, content={"error": "validation",
                                                      "message": f"malformed request body: {exc.detail}"})
    return JSONResponse(status_code=exc.status_code,
                        content={"error": ERROR_KINDS.get(exc.status_code, "error"), "message": str(exc.detail)},
                        headers=getattr(exc, "headers", None))


async def send_json(send: Send, status: int, content: dict, headers: list | None = None) -> None:
    """An error answered by a middleware, straight onto the ASGI `send` (no response object)."""
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
