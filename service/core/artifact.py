"""Versioned artifacts: the one directory the trainer hands to the service.

An artifact is an immutable directory::

    manifest.json   format version, version id, creation time, method, data fingerprint, tree
                    shape, scorer I/O spec, offline metrics, parity checks, sha256 of every file
    scorer.onnx     the user-node scorer: (history rows (B, L), node rows (B, C)) -> logits (B, C)
    tree.npz        the tree (service.core.tree format)
    items.npz       original item ids, item categories, popularity order (cold start)
    trainer.npz      optional: the configuration and dense weights `trainer refresh` continues from

Three entry points, one per direction: `write_artifact` (the trainer's export: stage, write,
checksum, rename), `verify_artifact` (manifest and checksums only: the registry), and
`read_artifact` (verify, then load and cross-check the tree and item catalog: what the service
and `trainer publish` build on; the scorer runtime is theirs).

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
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.core.errors import ArtifactError
from service.core.items import ItemCatalog
from service.core.tree import Tree, TreeError

__all__ = ["Artifact", "ArtifactError", "read_artifact", "verify_artifact", "write_artifact"]

ARTIFACT_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_FILES = ("scorer.onnx", "tree.npz", "items.npz")
# Checksummed with the rest when present; the service does not read it: the scorer's weights
# other than the embedding table, for `trainer refresh` to continue training the served model.
TRAINER_FILE = "trainer.npz"
OPTIONAL_FILES = (TRAINER_FILE,)
SECTION_FILES = {"tree": "tree.npz", "scorer": "scorer.onnx", "items": "items.npz"}  # section -> default file
MAX_MANIFEST_BYTES = 1 << 20
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new directory in `parent` that is renamed into place once complete, with the permissions
    a plain `mkdir` gives (0777 less the umask: 0755 usually), not mkdtemp's private 0700: a
    published artifact is read by a service that may run as another user, and its files are
    already 0644."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_UMASK)
    return path


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


@dataclass(frozen=True)
class Artifact:
    """A verified artifact, loaded as far as numpy goes: the scorer is left as a file for the
    caller's runtime (onnxruntime in the service), with what it must agree with."""

    path: Path
    manifest: dict[str, Any]
    tree: Tree
    catalog: ItemCatalog
    scorer_file: Path
    tree_sha256: str  # the scorer must have been bound to this tree (`scorer.onnx` metadata)
    history_length: int  # the scorer's history input must be this wide
    hierarchical: bool
    default_k: int
    default_beam: int

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def check_scorer(self, score: Callable[[np.ndarray, np.ndarray], np.ndarray], tree_sha256: str | None,
                     history_length: int) -> None:
        """The scorer loaded from `scorer_file` belongs to this artifact: its metadata names the
        tree it was bound to at export and its history width, and it scores the largest row
        the tree can ask for (a scorer built for another tree fails there)."""
        if tree_sha256 != self.tree_sha256:
            raise ArtifactError(f"{self.scorer_file}: trained with tree {str(tree_sha256)[:12]}, the artifact's "
                                f"tree is {self.tree_sha256[:12]}: tree and scorer do not belong together")
        if history_length != self.history_length:
            raise ArtifactError(f"{self.scorer_file}: history length {history_length}, manifest says "
                                f"{self.history_length}")
        rows = np.array([[0, self.tree.n_rows - 1]], dtype=np.int64)
        history = np.full((1, self.history_length), -1, dtype=np.int64)
        history[0, 0] = self.tree.n_items - 1
        try:
            logits = score(history, rows)
        except Exception as exc:  # onnxruntime raises its own types (e.g. index out of range)
            raise ArtifactError(f"{self.scorer_file}: scoring the tree's rows fails "
                                f"({' '.join(str(exc).split())[:160]}): tree and scorer do not belong "
                                "together") from exc
        if logits.shape != (1, 2) or not np.isfinite(logits).all():
            raise ArtifactError(f"{self.scorer_file}: probe returned {logits.shape} / non-finite scores")


def read_artifact(directory: str | Path, max_k: int = 1 << 20, max_beam: int = 1 << 20) -> Artifact:
    """verify_artifact, then load the tree and the item catalog and check them against the
    manifest and each other. `max_k`, `max_beam`: the deployment's limits, which the manifest's
    defaults must respect. Raises ArtifactError with one line."""
    path = Path(directory)
    manifest = verify_artifact(path)
    tree_spec, scorer_spec = manifest["tree"], manifest["scorer"]
    files = {section: path / manifest[section].get("file", default) for section, default in SECTION_FILES.items()}
    n_items = tree_spec.get("n_items")
    if type(n_items) is not int or n_items < 1:
        raise ArtifactError(f"{path / MANIFEST}: tree.n_items must be a positive integer, got {n_items!r}")
    try:
        tree = Tree.load(files["tree"], n_items=n_items)
    except TreeError as exc:
        raise ArtifactError(str(exc)) from exc
    for key in ("arity", "depth", "n_items", "n_rows"):
        if tree_spec.get(key) != getattr(tree, key):
            raise ArtifactError(f"{files['tree']}: tree {key} is {getattr(tree, key)}, "
                                f"the manifest says {tree_spec.get(key)}")
    if scorer_spec.get("n_rows") != tree.n_rows:
        raise ArtifactError(f"{path}: the scorer has {scorer_spec.get('n_rows')} embedding rows, the tree needs "
                            f"{tree.n_rows}: tree and scorer do not belong together")
    catalog = ItemCatalog.load(files["items"], tree.n_items)
    defaults = manifest.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ArtifactError(f"{path / MANIFEST}: 'defaults' must be an object")
    return Artifact(
        path=path, manifest=manifest, tree=tree, catalog=catalog, scorer_file=files["scorer"],
        tree_sha256=manifest["files"][files["tree"].name]["sha256"],
        history_length=_manifest_int(path, "scorer.max_history", scorer_spec.get("max_history"), 1, 1 << 20),
        hierarchical=bool(scorer_spec.get("hierarchical", False)),
        default_k=_manifest_int(path, "defaults.k", defaults.get("k", 200), 1, max_k),
        default_beam=_manifest_int(path, "defaults.beam", defaults.get("beam", 200), 1, max_beam),
    )


def _manifest_int(path: Path, what: str, value: object, low: int, high: int) -> int:
    """A manifest number the service sizes work by: an int within the deployment's limits (a
    default beam of 10**9 would make every request that names none a denial of service)."""
    if type(value) is not int or not low <= value <= high:
        raise ArtifactError(f"{path / MANIFEST}: {what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def write_artifact(out: str | Path, write_files: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Create the artifact `out` in one step: `write_files(staging)` writes scorer.onnx,
    tree.npz and items.npz into a staging directory beside `out` and returns the manifest's
    other sections; this adds the checksums, creation time, version id and format version,
    writes the manifest and renames the staging directory to `out`, so an artifact directory
    is complete or absent, never half-written. `out` must not exist or be empty (artifacts
    are immutable). Returns the manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ArtifactError(f"{out}: already exists and is not empty; artifacts are immutable, choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out.parent, f".{out.name}.")
    try:
        sections = write_files(staging)
        files = file_entries(staging, [*REQUIRED_FILES, *(n for n in OPTIONAL_FILES if (staging / n).exists())])
        created = datetime.now(UTC).isoformat(timespec="seconds")
        manifest = {"format_version": ARTIFACT_FORMAT_VERSION, "version": version_id(created, files),
                    "created": created, **sections, "files": files}
        write_manifest(staging, manifest)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
