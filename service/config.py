"""Service settings: environment variables (JTM_*) or CLI flags, typed and validated at start.

A wrong type or value fails at start-up, not at the first request. Unknown JTM_* variables are
ignored (the trainer image sets its own JTM_ names), so tests/test_deploy.py checks that every
JTM_ name in the deployment files is a real setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JTM_", extra="forbid", frozen=True)

    # What to serve: one fixed artifact, or the current version of a registry (followed).
    artifact: Path | None = None
    registry: Path | None = None

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Behaviour store: Redis when a URL is given, else in-process (the embedded default).
    redis_url: str | None = None
    redis_prefix: str = "jtm"
    redis_timeout_s: float = Field(0.5, gt=0)
    stored_history: int = Field(200, ge=1, le=100_000, description="behaviours kept per user")
    memory_store_max_users: int = Field(1_000_000, ge=1, description="in-process store only: histories kept "
                                        "(least recently updated dropped first)")
    dedupe_ttl_s: float = Field(86_400, gt=0, description="how long an event_id is remembered")
    # The event log (`trainer ingest` reads it): every stored event is also logged. With Redis, a
    # Stream holding at most this many events not yet ingested: a /v1/events call that would
    # exceed it is refused with 503 (nothing stored) rather than dropping events nobody has read.
    event_log_max: int = Field(1_000_000, ge=0, description="Redis: events logged and not yet ingested "
                               "(0: no event log)")
    spool_dir: Path | None = Field(None, description="in-process store: log events to this directory (none: "
                                   "events are not logged)")

    # Request limits.
    max_k: int = Field(1000, ge=1)
    max_history: int = Field(1000, ge=1, description="items accepted in a request's history")
    max_beam: int = Field(4000, ge=1)
    max_events: int = Field(1000, ge=1, description="events per /v1/events call")
    max_body_bytes: int = Field(1_048_576, ge=1024)

    # Backpressure: at most `max_inflight` recommend requests admitted at once (more get 503 at
    # once); an admitted request that waited longer than `queue_budget_ms` for a worker is
    # answered 503 instead of being served late.
    max_inflight: int = Field(64, ge=1)
    queue_budget_ms: float = Field(250.0, gt=0)
    worker_threads: int = Field(64, ge=1, description="threads serving requests")

    # Server processes, each with its own copy of the model. None: one per usable CPU (the CPU
    # affinity mask and the cgroup quota, at most 8) on CPU, 1 with cuda. Processes sidestep
    # the GIL, which the search's numpy work and the HTTP layer of one process share, so
    # throughput grows with the cores a replica has.
    workers: int | None = Field(None, ge=1, le=64)

    # Scoring.
    device: Literal["cpu", "cuda"] = "cpu"
    # onnxruntime intra-op threads per scoring call. 1, because one request's calls are small
    # (a few hundred rows): handing them to more threads costs more than it saves, and
    # concurrent requests already run their calls in parallel.
    ort_threads: int = Field(1, ge=1)
    # Cross-request micro-batching of scorer calls. Unset: on with the CUDA provider, off on CPU,
    # where a call for many rows costs more per row than one-row calls (its intermediates leave
    # the L2 cache beyond a few rows) and the one batching thread would put all scoring on one
    # core, so requests queue behind it under load.
    batching: bool | None = None
    batch_max_rows: int = Field(64, ge=1, description="scorer rows (user x level) per call")
    batch_max_wait_ms: float = Field(1.0, ge=0)
    batch_queue_rows: int = Field(2048, ge=1, description="pending rows before 503")
    batch_timeout_s: float = Field(5.0, gt=0)

    # Registry following (with --registry): poll the pointer this often; pub/sub wakes it sooner.
    registry_poll_s: float = Field(1.0, gt=0)

    # Admin API (reload, rollback, A/B): bearer token; admin routes are off without one.
    admin_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_batching(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("batching") is None:
            data = {**data, "batching": data.get("device", "cpu") == "cuda"}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Settings:
        if self.artifact is not None and self.registry is not None:
            raise ValueError("give either artifact or registry, not both")
        return self
