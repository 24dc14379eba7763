"""Safe artifacts: what the service loads cannot make it allocate without bound, run code or read
outside the artifact directory.

Every hostile copy below is re-signed (the manifest's sha256 and sizes recomputed), so checksums
pass and what refuses it is the loader's own checks. Each refusal is an ArtifactError naming the
file, raised before the hostile claim is acted on: tracemalloc (which sees numpy's buffers)
shows no allocation of the claimed size.
"""

from __future__ import annotations

import io
import json
import shutil
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.core.artifact import ArtifactError, verify_artifact
from service.core.npz import member_headers
from service.core.tree import Tree, TreeError
from service.model_store import load_bundle
from tests.helpers import npy_bytes, replace_members, resign

ALLOCATION_BOUND = 32 << 20  # bytes traced while refusing; the hostile claims are 1.6 GB to 8 TB
MARKER = "pickle-ran"  # created in the artifact's parent if a pickle in the artifact is ever executed


class _OpensAFile:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _pickled_member(path: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([_OpensAFile(path)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _npy_text(text: str) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(text))
    return buffer.getvalue()


def _edit_tree_header(artifact: Path, **fields: object) -> None:
    """Change fields of tree.npz's JSON header, the rest of the file as exported."""
    with np.load(artifact / "tree.npz") as archive:
        header = json.loads(str(archive["header"]))
    replace_members(artifact / "tree.npz", {"header.npy": _npy_text(json.dumps({**header, **fields}))})


Mutation = Callable[[Path], None]
HOSTILE: dict[str, tuple[str, Mutation, str]] = {
    # The brief's example: item_leaf claims 10**12 items, and so does the manifest (so the shape
    # check against the manifest passes): the header's claim is not backed by bytes in the file.
    "tree-gigantic-shape": ("tree.npz", lambda a: (
        replace_members(a / "tree.npz", {"item_leaf.npy": npy_bytes("<i8", (10**12,))}),
        resign(a, tree={"n_items": 10**12})), "claims shape (1000000000000,)"),
    # 1.6 GB: small enough that malloc would succeed, in an array whose length nothing else bounds.
    "items-large-unbounded-member": ("items.npz", lambda a: replace_members(
        a / "items.npz", {"category_ids.npy": npy_bytes("<i8", (2 * 10**8,), b"\0" * 64)}), "claims shape"),
    "items-zero-itemsize": ("items.npz", lambda a: replace_members(
        a / "items.npz", {"category_ids.npy": npy_bytes("<U0", (10**12,))}), "refused"),
    "items-pickle": ("items.npz", lambda a: replace_members(
        a / "items.npz", {"popular.npy": _pickled_member(a.parent / MARKER)}), "pickle"),
    "tree-object-dtype": ("tree.npz", lambda a: replace_members(
        a / "tree.npz", {"item_leaf.npy": npy_bytes("|O", (500,), b"\0" * 4000)}), "pickle"),
    # np.load would read a member named "popular" (no .npy) in place of the checked popular.npy.
    "items-unchecked-alias": ("items.npz", lambda a: replace_members(
        a / "items.npz", {"popular": npy_bytes("<i8", (10**12,))}), "is not a .npy array"),
    "items-compressed": ("items.npz", lambda a: replace_members(a / "items.npz", {}, zipfile.ZIP_DEFLATED),
                         "compressed"),
    "tree-truncated-member": ("tree.npz", lambda a: replace_members(
        a / "tree.npz", {"item_leaf.npy": npy_bytes("<i8", (500,), b"\0" * 100)}), "holds 100 bytes"),
    # The tree's JSON header sizes per-leaf arrays: 2**62 leaves from a few bytes.
    "tree-header-depth": ("tree.npz", lambda a: _edit_tree_header(a, depth=62), "refused before allocating"),
    "tree-header-not-object": ("tree.npz", lambda a: replace_members(
        a / "tree.npz", {"header.npy": _npy_text("[1, 2]")}), "not a JSON object"),
}


def hostile_copy(artifact: Path, tmp_path: Path, mutate: Mutation) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    mutate(copy)
    resign(copy)
    verify_artifact(copy)  # checksums pass: the content checks must catch it
    return copy


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_npz_refused_before_allocating(artifact: Path, tmp_path: Path, case: str) -> None:
    file, mutate, fragment = HOSTILE[case]
    copy = hostile_copy(artifact, tmp_path, mutate)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError) as refused:
            load_bundle(copy, Settings())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    print(f"\n{case}: peak {peak / 1e6:.1f} MB traced; {message}")
    assert str(copy / file) in message and fragment in message, message
    assert "\n" not in message
    assert peak < ALLOCATION_BOUND
    assert not (tmp_path / MARKER).exists()


def test_tree_load_refuses_hostile_header_without_manifest(tmp_path: Path) -> None:
    """Tree.load on its own (no manifest to compare with, as the trainer uses it) still refuses a
    gigantic claim with a TreeError naming the file."""
    path = tmp_path / "tree.npz"
    Tree.from_leaves(np.arange(4)).save(path)
    replace_members(path, {"item_leaf.npy": npy_bytes("<i8", (10**12,))})
    with pytest.raises(TreeError, match=f"{path}.*claims shape"):
        Tree.load(path)


def test_exported_artifact_holds_no_pickle(artifact: Path) -> None:
    """Every file of a real export is what it claims: .npz members are plain stored arrays of
    non-object dtype, the ONNX file is a self-contained ONNX model (no external data, whose
    path could point anywhere), the manifest is JSON; nothing else is in the directory."""
    import onnx

    manifest = verify_artifact(artifact)
    assert {p.name for p in artifact.iterdir()} == {"manifest.json", *manifest["files"]}
    for name in manifest["files"]:
        path = artifact / name
        assert path.is_file() and not path.is_symlink()
        assert not path.read_bytes().startswith(b"\x80"), f"{name} starts like a pickle"
        if name.endswith(".npz"):
            headers = member_headers(path)  # refuses object dtypes, compression, aliases
            assert headers and all(not dtype.hasobject for _, dtype in headers.values())
        elif name.endswith(".onnx"):
            model = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(model)
            assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
        else:
            pytest.fail(f"unexpected file type in the artifact: {name}")
    assert isinstance(json.loads((artifact / "manifest.json").read_text()), dict)


def test_symlinked_files_are_refused(artifact: Path, tmp_path: Path) -> None:
    """A link to a file outside the directory (even to identical bytes, so the checksum passes)
    is refused; so is a linked manifest."""
    for name in ("items.npz", "manifest.json"):
        copy = tmp_path / name
        shutil.copytree(artifact, copy)
        (copy / name).unlink()
        (copy / name).symlink_to(artifact / name)
        with pytest.raises(ArtifactError, match=f"{copy / name}: is a symbolic link"):
            verify_artifact(copy)


@pytest.mark.parametrize("target", ["../elsewhere/tree.npz", "/etc/hostname", "other.npz"])
def test_section_files_must_be_checked_files(artifact: Path, tmp_path: Path, target: str) -> None:
    """tree/scorer/items name the file the loader opens: only files listed (and so checksummed)
    in 'files' are allowed, never a path out of the directory."""
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    resign(copy, tree={"file": target})
    with pytest.raises(ArtifactError, match="tree.file .* is not a file listed in 'files'"):
        load_bundle(copy, Settings())


def test_every_np_load_in_the_service_is_checked() -> None:
    """Every np.load under service/ (and loadtest/, which reads artifacts too) passes
    allow_pickle=False and sits in a function that checks the archive's headers first
    (check_members): a new, unchecked load fails this test."""
    import ast

    from tests.conftest import ROOT

    loads = 0
    for path in sorted([*(ROOT / "service").rglob("*.py"), *(ROOT / "loadtest").rglob("*.py")]):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef):
                continue
            calls = [node for node in ast.walk(function) if isinstance(node, ast.Call)]
            names = {ast.unparse(call.func) for call in calls}
            for call in calls:
                if ast.unparse(call.func) in ("np.load", "numpy.load"):
                    loads += 1
                    where = f"{path.relative_to(ROOT)}:{call.lineno}"
                    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
                    assert keywords.get("allow_pickle") == "False", where
                    assert "check_members" in names, f"{where}: np.load without check_members"
    assert loads >= 3  # tree, catalog, load generator
