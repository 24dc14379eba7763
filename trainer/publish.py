"""`publish`: put an artifact into a registry and make it current.

Steps: verify the artifact (manifest, sizes, checksums), load it the way the service will
(onnxruntime session, tree/scorer cross-check, a warm-up search) so a broken artifact is
refused here rather than by every replica, copy it into the registry, then move the pointer
and announce it on Redis when a URL is given. Publishing a version that is already in the
registry makes it current again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.core.artifact import ArtifactError
from service.core.registry import Registry
from trainer.errors import DataError

log = logging.getLogger(__name__)


def publish(artifact: Path, registry_dir: Path, redis_url: str | None = None, prefix: str = "jtm") -> str:
    from service.config import Settings
    from service.model_store import load_bundle

    try:
        bundle = load_bundle(artifact, Settings(batching=False))  # the service's own checks
        bundle.close()
    except ArtifactError as exc:
        raise DataError(f"refused: {exc}") from exc
    redis_client = None
    if redis_url:
        import redis

        redis_client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    registry = Registry(registry_dir, redis_client, prefix)
    try:
        version = registry.publish(artifact)
    except ArtifactError as exc:
        raise DataError(f"refused: {exc}") from exc
    finally:
        if redis_client is not None:
            redis_client.close()
    log.info("published %s to %s", version, registry_dir)
    return version
