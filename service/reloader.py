"""Follow a registry: load newly published versions in the background and swap them in.

The registry pointer (Redis key when configured, else the CURRENT file) is the source of
truth and is polled every `poll_s`; a Redis pub/sub message only wakes the poller early. A new
version is loaded, verified, cross-checked and warmed in this background thread while the old
one keeps serving; only then is the bundle reference swapped. A version that fails to load is
remembered and not retried until the pointer moves (or an admin forces it); the old version
keeps serving and the failure shows in the log, the metrics and /v1/model.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from service.config import Settings
from service.core.artifact import ArtifactError
from service.core.registry import Registry
from service.model_store import ModelBundle, ModelStore, load_bundle
from service.telemetry import Metrics

log = logging.getLogger("service.reload")


class RegistryFollower:
    def __init__(self, registry: Registry, models: ModelStore, settings: Settings, metrics: Metrics,
                 redis_client=None) -> None:
        self.registry = registry
        self.models = models
        self.settings = settings
        self.metrics = metrics
        self.redis = redis_client
        self.failed: dict[str, str] = {}
        self._announced: dict[str, str] = {}
        self._sync_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- one reconciliation

    def sync(self, force: bool = False) -> None:
        """Make the served bundles match the registry's pointer and A/B setting."""
        with self._sync_lock:
            desired = self.registry.current()
            current = self.models.current
            if desired and (current is None or current.version != desired) and (force or desired not in self.failed):
                candidate = self.models.candidate
                if candidate is not None and candidate.version == desired:
                    self.models.swap(candidate)  # promote the already-loaded A/B candidate
                    self._announce(candidate, "current")
                else:
                    bundle = self._load(desired)
                    if bundle is not None:
                        self.models.swap(bundle)
                        self._announce(bundle, "current")
            self._sync_ab(force)

    def _sync_ab(self, force: bool) -> None:
        setting = self.registry.ab()
        candidate = self.models.candidate
        current = self.models.current
        if setting is None or setting.share <= 0 or (current is not None and setting.candidate == current.version):
            if candidate is not None:
                self.models.set_candidate(None, 0.0)
                self.metrics.model_info.labels(candidate.version, "candidate").set(0)
                self._announced.pop("candidate", None)
            return
        if candidate is not None and candidate.version == setting.candidate:
            self.models.share = setting.share
            return
        if setting.candidate in self.failed and not force:
            return
        bundle = self._load(setting.candidate)
        if bundle is not None:
            self.models.set_candidate(bundle, setting.share)
            self._announce(bundle, "candidate")

    def _load(self, version: str) -> ModelBundle | None:
        started = time.perf_counter()
        try:
            bundle = load_bundle(self.registry.path(version), self.settings, self.metrics)
        except Exception as exc:  # any failure: keep serving the old version, remember it, report it
            if not isinstance(exc, ArtifactError | OSError | ValueError):
                log.exception("unexpected error loading %s", version)
            message = f"version {version} failed to load: {exc}"
            self.failed[version] = str(exc)
            self.models.last_error = message
            self.metrics.reloads.labels("error").inc()
            log.error(message)
            return None
        self.failed.pop(version, None)
        self.metrics.reloads.labels("ok").inc()
        log.info("loaded %s in %.2fs", version, time.perf_counter() - started)
        return bundle

    def _announce(self, bundle: ModelBundle, role: str) -> None:
        previous = self._announced.get(role)
        if previous is not None and previous != bundle.version:
            self.metrics.model_info.labels(previous, role).set(0)
        self._announced[role] = bundle.version
        self.metrics.model_info.labels(bundle.version, role).set(1)
        log.info("now serving %s as %s", bundle.version, role)

    # ----------------------------------------------------------------- background threads

    def start(self) -> None:
        poller = threading.Thread(target=self._poll, name="registry-poller", daemon=True)
        self._threads.append(poller)
        poller.start()
        if self.redis is not None:
            listener = threading.Thread(target=self._listen, name="registry-listener", daemon=True)
            self._threads.append(listener)
            listener.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # never let the follower die; the next poll retries
                log.exception("registry sync failed")
            self._wake.wait(self.settings.registry_poll_s)
            self._wake.clear()

    def _listen(self) -> None:
        """Pub/sub as a hint: any message on the channel wakes the poller; reconnect on errors."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.registry.keys["channel"])
                backoff = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        log.info("registry announcement: %s", json.loads(message["data"]))
                        self._wake.set()
                pubsub.close()
            except Exception as exc:  # Redis away: polling goes on from the file / on reconnect
                log.warning("registry channel unavailable (%s); retrying in %.1fs", exc.__class__.__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
