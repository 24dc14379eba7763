"""POST /v1/recommend without FastAPI's routing, dependency injection and request objects.

A well-formed request (a body sent as `application/json` that parses to an object and
validates as `RecommendRequest`) is answered here, inside `service.main.RequestContext` (which
keeps doing request ids, admission, metrics and the access log for it): the body is read
straight from ASGI `receive`, parsed and validated on the event loop as FastAPI would
(`json.loads`, then `RecommendRequest.model_validate`), and `service.api.routes.serve_recommend`
- the route's own step, the bundle held for the whole request - runs with one hand-off to
the worker threads (`anyio.to_thread.run_sync`, under the same thread limiter as FastAPI's).

Every other request is handed, unchanged, to the FastAPI app behind it: what was read of the
body is replayed to it, then the rest (or the error that reading raised: a body over the limit
in `BodyLimit`). So the answers the fast path does not give - 415, 422, 413, a client that went
away - come from the route, its dependencies and the app's exception handlers, as they would
without the fast path, and /openapi.json documents the route. The answers it does give are
built by the same code as the route's (`serve_recommend`'s response, `http_error_response` for
refusals), with the same `ServingContext`.
"""

from __future__ import annotations

import json

import anyio.to_thread
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import http_error_response
from service.api.routes import RECOMMEND_PATH, router, serve_recommend
from service.api.schemas import RecommendRequest


class RecommendFastPath:
    """Serves `POST /v1/recommend` (see the module's docstring) for the app whose `state` it is
    given: the request is served with `state.context`, the `ServingContext` the lifespan sets
    there (the route's `ContextDep` reads the same one)."""

    def __init__(self, state: State) -> None:
        self.state = state
        # the route it stands in for, put in the scope as the router would (the metrics' label)
        self.route = next(r for r in router.routes
                          if getattr(r, "path", None) == RECOMMEND_PATH and "POST" in r.methods)

    @staticmethod
    def handles(scope: Scope) -> bool:
        return scope["method"] == "POST" and not scope.get("root_path") and _sent_as_json(scope["headers"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Answer the request, or hand it to `app` (the FastAPI app) as if it had not been touched."""
        received: list[Message] = []
        chunks: list[bytes] = []
        while True:
            try:
                message = await receive()
            except Exception as exc:  # BodyLimit's 413 for a chunked body, raised from receive()
                await app(scope, _replay(received, receive, exc), send)
                return
            received.append(message)
            if message["type"] != "http.request":  # the client went away
                await app(scope, _replay(received, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = _parse(body)
        if request is None:  # the route answers it (422, with the message naming the problem)
            await app(scope, _replay(received, receive), send)
            return
        scope["route"] = self.route
        context, arrived = self.state.context, scope.get("jtm_arrival")
        try:
            response = await anyio.to_thread.run_sync(lambda: serve_recommend(request, context, arrived))
        except HTTPException as exc:  # a refusal: no model yet, over the queue budget, over a limit
            response = http_error_response(exc)
        await response(scope, receive, send)


def _sent_as_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """Content-type is exactly application/json (parameters aside), which is JSON to both
    FastAPI's body reader and `service.api.deps.require_json`. Anything else (`+json` types, no
    content-type, other types) goes through the route, whose answer (415 or not) stays its own."""
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _parse(body: bytes) -> RecommendRequest | None:
    """The request FastAPI would pass the route (its body reader is `json.loads`; a JSON object
    is validated in Python mode), or None where FastAPI would answer an error (or would read the
    body differently: an empty one, JSON that is not an object)."""
    if not body:
        return None
    try:
        data = json.loads(body)  # JSONDecodeError, bytes that are not text, RecursionError...
        return RecommendRequest.model_validate(data) if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - whatever it is, the route meets it again and answers it
        return None


def _replay(received: list[Message], receive: Receive, error: Exception | None = None) -> Receive:
    """A receive() that gives the messages already read again, then raises `error` if reading
    had raised it, then reads on."""
    pending = list(received)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        if error is not None:
            raise error
        return await receive()

    return replayed
