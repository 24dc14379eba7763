"""Versioned artifacts: the one directory the trainer hands to the service.

An artifact is an immutable directory::

    manifest.json   format version, version id, creation time, method, data fingerprint, tree
                    shape, scorer I/O spec, offline metrics, parity checks, sha256 of every file
    scorer.onnx     the user-node scorer: (history rows (B, L), node rows (B, C)) -> logits (B, C)
    tree.npz        the tree (service.core.tree format)
    items.npz       original item ids, item categories, popularity order (cold start)

Nothing is pickled. Every file named in the manifest is checked (plain name inside the
directory, a regular file and not a symbolic link, size, sha256) before anything is loaded, and
the tree/scorer/items sections may only name such files; a failure names the file and the problem.
Writes are atomic: a file is written to a temporary name, fsynced, then renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

ARTIFACT_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_FILES = ("scorer.onnx", "tree.npz", "items.npz")
SECTION_FILES = {"tree": "tree.npz", "scorer": "scorer.onnx", "items": "items.npz"}  # section -> default file
MAX_MANIFEST_BYTES = 1 << 20
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message is one line naming the file and the problem."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename: readers see the old file or the new one, never half of one.

    The file gets the permissions a plain `open(path, "w")` would give (0666 less the umask),
    not mkstemp's private 0600: a service running as another user (a container) must be able
    to read what the trainer published."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    """The process umask (read by setting it and putting it back: there is no getter). Read
    once at import, so no later thread ever sees the temporary value."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_entries(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of each named file, for the manifest's "files" section."""
    return {name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
            for name in names}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(Path(directory) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Parse and structurally check manifest.json (no file contents read yet)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: artifact directory does not exist")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (not an artifact directory)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    version = manifest.get("format_version")
    if version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {version!r}, this service reads {ARTIFACT_FORMAT_VERSION}")
    for key in ("version", "files", "tree", "scorer", "items"):
        if key not in manifest:
            raise ArtifactError(f"{path}: no {key!r} entry")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: 'files' must be an object")
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"{path}: 'files' does not list {name}")
    for name, entry in files.items():
        if not isinstance(name, str) or not _PLAIN_NAME.match(name) or name == MANIFEST:
            raise ArtifactError(f"{path}: file name {name!r} is not a plain name inside the artifact")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes"), int):
            raise ArtifactError(f"{path}: entry for {name} needs sha256 and bytes")
    for section, default in SECTION_FILES.items():
        spec = manifest[section]
        if not isinstance(spec, dict):
            raise ArtifactError(f"{path}: {section!r} must be an object")
        # The loader opens the file a section names: it must be one of the checked files, or a
        # manifest could point the loader at "../elsewhere" or "/abs/path" past the checksums.
        if spec.get("file", default) not in files:
            raise ArtifactError(f"{path}: {section}.file {spec.get('file')!r} is not a file listed in 'files'")
    return manifest


def verify_artifact(directory: str | Path) -> dict[str, Any]:
    """read_manifest, then check every listed file's presence, size and sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    _refuse_links(directory / MANIFEST)
    for name, entry in manifest["files"].items():
        path = directory / name
        _refuse_links(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: sha256 does not match the manifest (corrupted or replaced)")
    return manifest


def _refuse_links(path: Path) -> None:
    """Artifact files are regular files inside the directory: a symbolic link could point
    anywhere (another version, /etc/...), and hard-to-audit indirection has no use here."""
    if path.is_symlink():
        raise ArtifactError(f"{path}: is a symbolic link (to {os.readlink(path)}); artifact files must be regular "
                            "files inside the artifact directory")


def version_id(created: str, files: dict[str, dict[str, Any]]) -> str:
    """A sortable, content-derived version id: UTC time plus a short hash of the file hashes."""
    digest = hashlib.sha256("".join(f"{n}:{e['sha256']}" for n, e in sorted(files.items())).encode())
    stamp = re.sub(r"[^0-9T]", "", created.split("+")[0])[:15]
    return f"{stamp}-{digest.hexdigest()[:10]}"
