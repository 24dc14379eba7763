"""Admin API: reload, rollback and the A/B split. Bearer token from settings.

No token configured: the admin API is off (403). Missing token: 401. Wrong token: 403. Tokens
are compared in constant time. Every action goes through the registry (pointer or A/B file +
Redis announcement), so all replicas follow, not just the one that received the call.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field, StrictStr
from starlette.concurrency import run_in_threadpool

from service.api.deps import JsonBody
from service.api.schemas import Fraction, Strict, error_responses
from service.core.artifact import ArtifactError
from service.core.registry import ABSetting

router = APIRouter(prefix="/v1/admin", responses=error_responses(401, 403, 404, 409, 413, 415, 422))


def require_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    header = request.headers.get("authorization", "")
    if token is None:
        raise HTTPException(403, "admin API disabled: set JTM_ADMIN_TOKEN")
    if not header.lower().startswith("bearer "):
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(header[7:].strip().encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "wrong token")


def follower(request: Request):
    follower_ = getattr(request.app.state, "follower", None)
    if follower_ is None:
        raise HTTPException(409, "serving a fixed artifact; start the service with --registry to reload")
    return follower_


class ReloadRequest(Strict):
    version: StrictStr | None = Field(None, description="make this registry version current; default: the latest")


class ABRequest(Strict):
    candidate: StrictStr
    share: Fraction = Field(description="share of users (by a stable hash of user_id) served the candidate")


def _state(request: Request) -> dict:
    models = request.app.state.context.models
    current = models.current
    return {"serving": None if current is None else current.version, **models.describe(),
            "last_error": models.last_error}


@router.post("/reload", dependencies=[Depends(require_admin), JsonBody])
async def reload(body: ReloadRequest, request: Request) -> dict:
    follow = follower(request)
    target = body.version or follow.registry.current()
    if target is None:
        raise HTTPException(409, "the registry has no current version")
    try:
        if body.version is not None and body.version != follow.registry.current():
            await run_in_threadpool(follow.registry.set_current, body.version, "admin reload")
    except ArtifactError as exc:
        raise HTTPException(404, str(exc)) from exc
    await run_in_threadpool(follow.sync, True)
    return _checked(request, target)


@router.post("/rollback", dependencies=[Depends(require_admin)])
async def rollback(request: Request) -> dict:
    follow = follower(request)
    previous = follow.registry.previous()
    if previous is None:
        raise HTTPException(409, "no previous version to roll back to")
    await run_in_threadpool(follow.registry.set_current, previous, "rollback")
    await run_in_threadpool(follow.sync, True)
    return _checked(request, previous)


@router.put("/ab", dependencies=[Depends(require_admin), JsonBody])
async def start_ab(body: ABRequest, request: Request) -> dict:
    follow = follower(request)
    try:
        await run_in_threadpool(follow.registry.set_ab, ABSetting(body.candidate, float(body.share)))
    except ArtifactError as exc:
        raise HTTPException(404, str(exc)) from exc
    await run_in_threadpool(follow.sync, True)
    state = _state(request)
    serving = state["ab"] is not None and state["ab"]["candidate"] == body.candidate
    if body.share > 0 and not serving and state["serving"] != body.candidate:
        error = request.app.state.context.models.last_error
        raise HTTPException(409, f"candidate {body.candidate} is not serving: {error}")
    return state


@router.delete("/ab", dependencies=[Depends(require_admin)])
async def stop_ab(request: Request) -> dict:
    follow = follower(request)
    await run_in_threadpool(follow.registry.set_ab, None)
    await run_in_threadpool(follow.sync, True)
    return _state(request)


def _checked(request: Request, target: str) -> dict:
    state = _state(request)
    if state["serving"] != target:
        raise HTTPException(409, f"{target} did not load ({request.app.state.context.models.last_error}); "
                                 f"still serving {state['serving']}")
    return state
