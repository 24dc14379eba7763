"""Reading .npz files defensively: shapes and dtypes are checked from each member's header
before any array is allocated, so a hostile or corrupted file cannot make the process
allocate gigabytes (or read pickles: allow_pickle is always off).

`np.load` allocates ``prod(shape) * itemsize`` bytes from a member's header *before* reading
its data, so a 100-byte file claiming shape (10**12,) would ask for 8 TB. The rule enforced
here makes every allocation bounded by bytes that are really on disk:

- every member is ``<name>.npy``, stored uncompressed (what ``np.savez`` writes), once: a
  compressed member's size cannot be checked without inflating it (a zip bomb), and a member
  without the suffix (or a duplicate name) is one ``np.load`` could read in place of the
  checked one;
- the header is a plain .npy header (version 1 or 2, at most numpy's 10,000 bytes) with a
  non-object dtype of non-zero item size and a non-negative shape;
- header plus ``prod(shape) * itemsize`` equals the member's size, and the member's stored
  bytes fit in the file.
"""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path

import numpy as np


class NpzError(ValueError):
    pass


_READ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, struct.error)


def member_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every array in the archive, read from headers only; raises
    NpzError (naming the file and the member) if any member breaks the rule above."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        on_disk = Path(path).stat().st_size
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = _member_name(path, info, on_disk)
                if name in headers:
                    raise NpzError(f"{path}: member {info.filename} appears twice")
                headers[name] = _read_header(path, archive, info)
    except NpzError:
        raise
    except _READ_ERRORS as exc:
        raise NpzError(f"{path}: not a readable .npz archive ({exc.__class__.__name__}: {exc})") from exc
    return headers


def _member_name(path: Path, info: zipfile.ZipInfo, on_disk: int) -> str:
    """The array name of a member that is stored plainly, or NpzError."""
    if not info.filename.endswith(".npy") or info.is_dir():
        raise NpzError(f"{path}: member {info.filename!r} is not a .npy array")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise NpzError(f"{path}: member {info.filename} is compressed or encrypted; only stored (np.savez) "
                       "members are read")
    if info.compress_size != info.file_size or info.file_size > on_disk:
        raise NpzError(f"{path}: member {info.filename} claims {info.file_size} bytes, the file has {on_disk}")
    return info.filename[:-4]


def _read_header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a member's .npy header, checked against the member's size."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise NpzError(f"{path}: {info.filename}: unsupported .npy version {version}")
        header_bytes = member.tell()
    shape = tuple(shape)
    if dtype.hasobject:
        raise NpzError(f"{path}: {info.filename} has dtype {dtype} (Python objects, i.e. a pickle): refused")
    if dtype.itemsize == 0 or any(n < 0 for n in shape):
        raise NpzError(f"{path}: {info.filename} has dtype {dtype} and shape {shape}: refused")
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != info.file_size:
        raise NpzError(f"{path}: {info.filename} claims shape {shape} of {dtype} ({data_bytes} bytes) but holds "
                       f"{info.file_size - header_bytes} bytes of data (hostile or truncated header)")
    return shape, dtype


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
