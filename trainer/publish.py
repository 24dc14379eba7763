"""`publish`: put an artifact into a registry and make it current.

Steps: read the artifact as the service will (`service.core.artifact.read_artifact`:
manifest, sizes, checksums, tree, item catalog; then the onnxruntime session and
`Artifact.check_scorer`, the tree/scorer cross-check and probe), so a broken artifact is
refused here rather than by every replica, copy it into the registry, then move the pointer
and announce it on Redis when a URL is given. Publishing a version that is already in the
registry makes it current again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.core.artifact import ArtifactError, read_artifact
from service.core.registry import Registry
from trainer.errors import DataError

log = logging.getLogger(__name__)


def publish(artifact: Path, registry_dir: Path, redis_url: str | None = None, prefix: str = "jtm") -> str:
    from service.scorer import OnnxScorer

    try:
        loaded = read_artifact(artifact)  # checksums, tree, item catalog, manifest
        scorer = OnnxScorer(loaded.scorer_file, threads=1)
        loaded.check_scorer(scorer.score, scorer.tree_sha256, scorer.history_length)  # the service's own checks
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
