"""How many server processes `python -m service` starts by default, and that it says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service import cli


def test_default_is_one_worker_per_usable_cpu_and_one_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: 3)
    assert cli.default_workers("cpu") == 3
    assert cli.default_workers("cuda") == 1
    monkeypatch.setattr(cli, "usable_cpus", lambda: 64)
    assert cli.default_workers("cpu") == cli.MAX_DEFAULT_WORKERS  # each worker holds a model copy


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000\n", 6), ("200000 100000\n", 2),
                                                  ("50000 100000\n", 1), ("garbage\n", 6)])
def test_usable_cpus_honours_the_cgroup_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              cpu_max: str, expected: int) -> None:
    """A container limited to 2 CPUs on a bigger node must not start one process per node CPU."""
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max)
    real_open = open

    def fake_open(path, *args, **kwargs):  # noqa: ANN001, ANN202 - the builtin's signature
        return real_open(quota if str(path) == "/sys/fs/cgroup/cpu.max" else path, *args, **kwargs)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr("builtins.open", fake_open)
    assert cli.usable_cpus() == expected


def test_usable_cpus_matches_this_machine() -> None:
    assert 1 <= cli.usable_cpus() <= len(os.sched_getaffinity(0))


def test_workers_setting_is_validated() -> None:
    from pydantic import ValidationError

    from service.config import Settings

    assert Settings(workers=2).workers == 2
    assert Settings().workers is None
    with pytest.raises(ValidationError):
        Settings(workers=0)

