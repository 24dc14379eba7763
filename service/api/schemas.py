"""Request and response bodies. Unknown fields and wrong types are rejected (422)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from service.behavior_store import StoredEvent
from service.recommend import DEFAULT_K, RecommendQuery


def _number_not_text(value: object) -> object:
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number, not a string or boolean")
    return value


# JSON Schema "integers": 393 and 393.0 are both integers there, so both are accepted; 393.5,
# "393" and true are not. The bounds sit before the validator so the published schema shows them.
Count = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_number_not_text)]
BeamWidth = Annotated[int, Field(ge=1, le=100_000), BeforeValidator(_number_not_text)]
Fraction = Annotated[float, Field(ge=0, le=1), BeforeValidator(_number_not_text)]


def _encodable(value: int | str) -> int | str:
    # JSON may escape a lone surrogate ("\\ud800"); Python decodes it to a str that UTF-8 cannot
    # encode, so the behaviour store's keys and every log line would fail on it later (a 500
    # from Redis). No training log can hold such an id: refuse it here.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("ids must be valid Unicode text (a lone surrogate such as \\ud800 is not)") from None
    return value


Id = Annotated[StrictInt | StrictStr, Field(description="an original id, as in the training log"),
               AfterValidator(_encodable)]
HARD_MAX_LIST = 100_000  # schema-level cap; settings apply tighter limits per deployment


def _not_empty(value: object) -> object:
    if isinstance(value, list) and not value:
        raise ValueError("an empty allow-list would allow no item; leave categories out for no category filter")
    return value


# An empty allow-list is refused (422) rather than read as "no filter" or answered with no items:
# either reading would hide a client's bug (an empty selection sent as the filter).
Categories = Annotated[list[Id], Field(min_length=1, max_length=HARD_MAX_LIST), BeforeValidator(_not_empty)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Strict):
    user_id: Id | None = Field(None, description="read history from the behaviour store when none is given")
    history: list[Id] | None = Field(None, max_length=HARD_MAX_LIST,
                                     description="behaviours, most recent LAST (time order)")
    k: Count = DEFAULT_K
    beam: BeamWidth | None = Field(None, description="default: the artifact's beam")
    exclude_seen: StrictBool = False
    categories: Categories | None = Field(
        None, description="allow-list of category ids (at least one; leave out for no category filter)")
    fresh: StrictBool = Field(
        False, description="rank only the items added since training (`trainer add-items`): the model's ranking "
        "of them fused with their recent popularity by reciprocal rank; scores are null")

    def to_query(self) -> RecommendQuery:
        """The request as `service.recommend` serves it."""
        return RecommendQuery(user_id=self.user_id, history=self.history, k=self.k, beam=self.beam,
                              exclude_seen=self.exclude_seen, categories=self.categories, fresh=self.fresh)


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
    fallback_reason: Literal["no_history", "unknown_history", "store_unavailable"] | None = Field(
        None, description="why the popular items were served: no history (none sent, none stored), "
        "unknown_history (every history id unknown to the model: `unknown_items` says how many), "
        "store_unavailable (the behaviour store could not be read)")


class Event(Strict):
    user_id: Id
    item_id: Id
    timestamp: StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | None = Field(
        None, description="seconds since the epoch (default: when the service accepts it)")
    event_id: StrictStr | None = Field(
        None, min_length=1, max_length=128,
        description="idempotency key: a repeat of (user_id, event_id) is not stored again")
    category_id: Id | None = Field(None, description="the item's category, logged for training new items")

    def stored(self) -> StoredEvent:
        return StoredEvent(str(self.user_id), str(self.item_id), self.event_id,
                           "" if self.category_id is None else str(self.category_id),
                           None if self.timestamp is None else float(self.timestamp))


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


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for the error statuses a route can answer (all share ErrorBody)."""
    meaning = {400: "malformed request", 401: "missing bearer token", 403: "admin API disabled or wrong token",
               404: "no such version", 409: "conflicts with the serving state", 413: "request too large",
               415: "the body is not sent as application/json",
               422: "invalid request: the message names the field", 503: "overloaded or a dependency is down; "
               "retry after the Retry-After header"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}
