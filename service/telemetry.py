"""Prometheus metrics and structured (JSON-line) logs carrying the request id.

Each app gets its own registry, so several apps (tests, A/B bundles) never collide.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# One search in LEVEL_SAMPLE has its per-level scorer times observed: observing every level of
# every search is a noticeable share of a request's own time, and the per-level histogram is a
# diagnostic whose shape a sample gives as well.
LEVEL_SAMPLE = 8

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.2, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram("jtm_http_request_seconds", "HTTP request latency", ["route", "method", "status"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.level_seconds = Histogram("jtm_beam_level_seconds", "Scorer time per beam-search level", ["level"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.search_seconds = Histogram("jtm_search_seconds", "Whole retrieval per request", ["version"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("jtm_scorer_batch_rows", "Rows per scorer call (micro-batched)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.batch_jobs = Histogram("jtm_scorer_batch_jobs", "Request-level jobs per scorer call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.rejected = Counter("jtm_rejected_total", "Requests refused with 503", ["reason"], registry=r)
        self.fallbacks = Counter("jtm_fallback_total", "Popular-items fallbacks", ["reason"], registry=r)
        self.unknown_items = Counter("jtm_unknown_history_items_total", "History ids not in the model", registry=r)
        self.events = Counter("jtm_events_accepted_total", "Behaviour events stored", registry=r)
        self.event_log_pending = Gauge("jtm_event_log_pending", "Events in the Redis event log not yet ingested",
                                       registry=r)
        self.store_evicted = Gauge("jtm_behavior_store_evicted_users",
                                   "In-process store: histories dropped to stay within JTM_MEMORY_STORE_MAX_USERS",
                                   registry=r)
        self.store_up = Gauge("jtm_behavior_store_up", "Behaviour store reachable at the last check", registry=r)
        self.store_errors = Counter("jtm_behavior_store_errors_total", "Behaviour store failures", ["op"],
                                    registry=r)
        self.model_info = Gauge("jtm_model_info", "Loaded model versions (1 = serving)", ["version", "role"],
                                registry=r)
        self.version_requests = Counter("jtm_requests_by_version_total", "Recommend requests per model version",
                                        ["version"], registry=r)
        self.reloads = Counter("jtm_model_loads_total", "Model load attempts", ["outcome"], registry=r)

        self._searches = 0
        self._level_children: dict[int, Histogram] = {}

    def level_timer(self) -> Callable[[int, float], None] | None:
        """The per-level observer for this search, or None when it is not one of the sampled
        searches (one in LEVEL_SAMPLE; `jtm_beam_level_seconds` counts only those)."""
        self._searches += 1  # a lost increment between threads only shifts the sample
        return self._observe_level if self._searches % LEVEL_SAMPLE == 0 else None

    def _observe_level(self, level: int, seconds: float) -> None:
        child = self._level_children.get(level)
        if child is None:
            child = self._level_children[level] = self.level_seconds.labels(str(level))
        child.observe(seconds)

    def observe_batch(self, jobs: int, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_jobs.observe(jobs)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id.get()),
            "msg": record.getMessage(),
        }
        for key in ("route", "status", "ms", "version", "method"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("service")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class Timer:
    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
