"""The artifact registry: immutable versions plus a "current" pointer (and an A/B setting).

Layout::

    REGISTRY/versions/<version>/   one verified artifact per version, never modified
    REGISTRY/CURRENT               the version to serve (one line), written atomically
    REGISTRY/AB.json               optional {"candidate": version, "share": 0.1}
    REGISTRY/history.jsonl         append-only log of pointer moves
    REGISTRY/decisions/            `trainer refresh`'s quality-gate decisions, one JSON per candidate,
                                   and latest.json

Publishing copies an artifact in (into a temporary directory, verified, then renamed), then
moves the pointer. Publishing a version that is already there only moves the pointer. When a
Redis client is given, the pointer and the A/B setting are mirrored to keys and announced on a
pub/sub channel; replicas treat the message as a hint and poll the key (or file) as the source
of truth, because pub/sub drops messages while a subscriber is disconnected.

Numpy/stdlib only: the trainer (publish) and the service (follow) share it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.artifact import ArtifactError, atomic_write_bytes, staging_dir, verify_artifact

CURRENT = "CURRENT"
AB_FILE = "AB.json"


def _keys(prefix: str) -> dict[str, str]:
    return {"current": f"{prefix}:model:current", "ab": f"{prefix}:model:ab", "channel": f"{prefix}:model:changes"}


_VERSION_MAX = 128
_VERSION_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{_VERSION_MAX - 1}}}")


@dataclass(frozen=True)
class ABSetting:
    candidate: str
    share: float

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "share": self.share}


class Registry:
    def __init__(self, root: str | Path, redis_client: Any | None = None, prefix: str = "jtm") -> None:
        self.root = Path(root)
        self.redis = redis_client
        self.keys = _keys(prefix)

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def path(self, version: str) -> Path:
        """The directory of `version`, refusing anything but a plain short name: version ids
        arrive from admin requests and manifests, and a path separator, a dot prefix, a NUL or a
        name over the file system's limit must be a clear refusal, never a path or an OSError."""
        if not isinstance(version, str) or not _VERSION_ID.fullmatch(version):
            shown = version if len(str(version)) <= 80 else f"{str(version)[:80]}..."
            raise ArtifactError(f"{shown!r} is not a version id (letters, digits, '.', '_', '-', "
                                f"at most {_VERSION_MAX} characters, not starting with '.')")
        return self.versions_dir / version

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    # ------------------------------------------------------------------ pointer

    def current(self) -> str | None:
        """The version to serve: the Redis key when Redis is configured and set, else the file."""
        if self.redis is not None:
            try:
                value = self.redis.get(self.keys["current"])
                if value:
                    return value.decode() if isinstance(value, bytes) else str(value)
            except Exception:  # Redis down: the file is the fallback source of truth
                pass
        return self.current_from_file()

    def current_from_file(self) -> str | None:
        path = self.root / CURRENT
        if not path.is_file():
            return None
        value = path.read_text().strip()
        return value or None

    def set_current(self, version: str, reason: str = "publish") -> None:
        """Move the pointer (file, then Redis key), log it and announce it."""
        if not (self.path(version) / "manifest.json").is_file():
            raise ArtifactError(f"{self.path(version)}: version {version} is not in the registry")
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.current_from_file()
        atomic_write_bytes(self.root / CURRENT, (version + "\n").encode())
        with open(self.root / "history.jsonl", "a") as log:
            log.write(json.dumps({"ts": time.time(), "version": version, "previous": previous,
                                  "reason": reason}) + "\n")
        if self.redis is not None:
            self.redis.set(self.keys["current"], version)
            self.redis.publish(self.keys["channel"], json.dumps({"current": version}))

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def previous(self) -> str | None:
        """The version served before the current one (for rollback)."""
        current = self.current()
        for entry in reversed(self.history()):
            if entry["version"] == current and entry.get("previous") and entry["previous"] != current:
                return entry["previous"]
        return None

    # ------------------------------------------------------------------ refresh decisions

    @property
    def decisions_dir(self) -> Path:
        return self.root / "decisions"

    def record_decision(self, decision: dict[str, Any]) -> Path:
        """Keep a quality-gate decision (`trainer refresh`): decisions/<time>-<candidate>.json,
        and decisions/latest.json, each written in one step."""
        self.decisions_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(decision, indent=1).encode()
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{decision.get('candidate') or 'none'}.json"
        path = self.decisions_dir / name
        atomic_write_bytes(path, data)
        atomic_write_bytes(self.decisions_dir / "latest.json", data)
        return path

    def last_decision(self) -> dict[str, Any] | None:
        path = self.decisions_dir / "latest.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ A/B

    def ab(self) -> ABSetting | None:
        raw = None
        if self.redis is not None:
            try:
                raw = self.redis.get(self.keys["ab"])
            except Exception:
                raw = None
        if raw is None:
            path = self.root / AB_FILE
            raw = path.read_text() if path.is_file() else None
        if not raw:
            return None
        data = json.loads(raw)
        return ABSetting(candidate=data["candidate"], share=float(data["share"])) if data else None

    def set_ab(self, setting: ABSetting | None) -> None:
        if setting is not None:
            if not 0.0 <= setting.share <= 1.0:
                raise ValueError(f"share must be in [0, 1], got {setting.share}")
            if not (self.path(setting.candidate) / "manifest.json").is_file():
                raise ArtifactError(f"version {setting.candidate} is not in the registry")
        payload = json.dumps(setting.to_json() if setting else {})
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / AB_FILE, payload.encode())
        if self.redis is not None:
            self.redis.set(self.keys["ab"], payload)
            self.redis.publish(self.keys["channel"], json.dumps({"ab": setting.to_json() if setting else None}))

    # ------------------------------------------------------------------ publish

    def add(self, artifact: str | Path) -> str:
        """Copy a verified artifact in (idempotent for an identical version); return its version."""
        artifact = Path(artifact)
        manifest = verify_artifact(artifact)
        version = str(manifest["version"])
        target = self.path(version)
        if target.exists():
            existing = verify_artifact(target)
            if existing["files"] != manifest["files"]:
                raise ArtifactError(f"{target}: version {version} exists with different files")
            return version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(self.versions_dir, f".{version}.")
        try:
            for name in ["manifest.json", *manifest["files"]]:
                shutil.copyfile(artifact / name, staging / name)
            verify_artifact(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def publish(self, artifact: str | Path) -> str:
        version = self.add(artifact)
        self.set_current(version, reason="publish")
        return version
