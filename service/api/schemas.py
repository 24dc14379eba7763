"""Request and response bodies. Unknown fields and wrong types are rejected (422)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Id = Annotated[StrictInt | StrictStr, Field(description="an original id, as in the training log")]
HARD_MAX_LIST = 100_000  # schema-level cap; settings apply tighter limits per deployment


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Strict):
    user_id: Id | None = Field(None, description="read history from the behaviour store when none is given")
    history: list[Id] | None = Field(None, max_length=HARD_MAX_LIST,
                                     description="behaviours, most recent LAST (time order)")
    k: StrictInt = Field(200, ge=1, le=1000)
    beam: StrictInt | None = Field(None, ge=1, le=100_000, description="default: the artifact's beam")
    exclude_seen: StrictBool = False
    categories: list[Id] | None = Field(None, max_length=HARD_MAX_LIST, description="allow-list of category ids")


class ScoredItem(BaseModel):
    item_id: Id
    score: float | None = Field(None, description="leaf-level logit; null for the popularity fallback")


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popular"] | None = None
    history_used: int = Field(description="behaviours the model saw")
    unknown_items: int = Field(description="history ids the model does not know (ignored)")
    history_source: Literal["request", "store", "none"]
    fallback_reason: Literal["no_history", "store_unavailable"] | None = None


class Event(Strict):
    user_id: Id
    item_id: Id
    timestamp: StrictInt | StrictFloat | None = None
    event_id: StrictStr | None = Field(
        None, min_length=1, max_length=128,
        description="idempotency key: a repeat of (user_id, event_id) is not stored again")


class EventBatch(Strict):
    events: list[Event] = Field(min_length=1, max_length=HARD_MAX_LIST)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events processed (stored + duplicates)")
    stored: int = Field(description="events appended to histories")
    duplicates: int = Field(description="events whose (user_id, event_id) was already stored")
    store: str


class ErrorBody(BaseModel):
    error: str
    message: str
