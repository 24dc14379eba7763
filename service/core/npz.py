"""Reading .npz files defensively: shapes and dtypes are checked from each member's header
before any array is allocated, so a hostile or corrupted file cannot make the process
allocate gigabytes (or read pickles: allow_pickle is always off)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


class NpzError(ValueError):
    pass


def member_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every array in the archive, read from headers only."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise NpzError(f"{path}: {info.filename}: unsupported .npy version {version}")
                headers[info.filename[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, NpzError):
            raise
        raise NpzError(f"{path}: not a readable .npz archive ({exc.__class__.__name__}: {exc})") from exc
    return headers


def check_members(path: Path, expected: dict[str, tuple[str, tuple[int | None, ...]]]) -> None:
    """expected: {name: (dtype kinds e.g. "iu", shape with None for any length)}."""
    headers = member_headers(path)
    for name, (kinds, shape) in expected.items():
        if name not in headers:
            raise NpzError(f"{path}: no array {name!r}")
        got_shape, dtype = headers[name]
        if dtype.hasobject or dtype.kind not in kinds:
            raise NpzError(f"{path}: {name} has dtype {dtype}, expected kind {kinds}")
        if len(got_shape) != len(shape) or any(w is not None and w != g for w, g in zip(shape, got_shape,
                                                                                         strict=True)):
            raise NpzError(f"{path}: {name} has shape {got_shape}, expected {shape}")
