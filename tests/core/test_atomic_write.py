"""Atomic writes (results, manifests, the registry's CURRENT pointer) keep a normal file's
permissions: a service running as another user must be able to read what was published."""

from __future__ import annotations

import stat
from pathlib import Path

from service.core.artifact import atomic_write_bytes


def test_atomic_write_gives_a_normal_files_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic = tmp_path / "atomic"
    atomic_write_bytes(atomic, b"new")
    atomic_write_bytes(atomic, b"newer")  # replacing keeps them too
    assert atomic.read_bytes() == b"newer"
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert list(tmp_path.glob(".atomic.*")) == []  # no temporary file left behind
