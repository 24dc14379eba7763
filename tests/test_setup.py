"""scripts/setup.sh, run as SETUP_DRY_RUN=1 in a copy of the project (nothing is created): which
interpreter it picks, when it rebuilds .venv, and where torch comes from.

pip is pointed at a local folder only (no configuration file, no index), so the answers do not
depend on this machine's pip setup or network: an empty folder stands for "pip's configuration
does not offer the CPU build", a folder holding a torch-2.13.0+cpu wheel file for one that does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def fake_python(path: Path, version: str | None) -> Path:
    """An executable that answers setup's version question with `version` (None: it fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + (f"echo {version}\n" if version else "exit 1\n"))
    path.chmod(0o755)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "wheels").mkdir()
    return tmp_path


def dry_run(project: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_", "PYTHON", "SETUP_"))}
    base |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(project / "wheels"),
             "PYTHON": sys.executable, "SETUP_DRY_RUN": "1"}
    return subprocess.run(["bash", str(project / "scripts" / "setup.sh")], cwd=project, capture_output=True,
                          text=True, timeout=120, env=base | env)


def pip_commands(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ") and " -m pip " in line]


def torch_command(result: subprocess.CompletedProcess) -> str:
    (command,) = [c for c in pip_commands(result) if " torch==" in c]
    return command


def test_torch_is_the_cpu_build_from_the_cpu_index_by_default(project: Path) -> None:
    command = torch_command(dry_run(project))
    assert command.endswith(f"--no-deps --index-url {CPU_INDEX} torch==2.13.0+cpu"), command
    commands = pip_commands(dry_run(project))
    assert commands.index(command) < len(commands) - 1 and commands[-1].endswith('-e .[train,serve,dev]')
    assert not (project / ".venv").exists()  # a dry run creates nothing


def test_torch_index_url_chooses_another_build(project: Path) -> None:
    cuda = "https://download.pytorch.org/whl/cu126"
    assert torch_command(dry_run(project, TORCH_INDEX_URL=cuda)).endswith(f"--index-url {cuda} torch==2.13.0+cu126")
    # Empty: pip's own configuration decides, no index and no build label.
    command = torch_command(dry_run(project, TORCH_INDEX_URL=""))
    assert command.endswith("install --quiet torch==2.13.0") and "--index-url" not in command


def test_a_wheel_pip_already_offers_is_installed_without_contacting_the_index(project: Path) -> None:
    (project / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    result = dry_run(project)
    command = torch_command(result)
    assert command.endswith("install --quiet torch==2.13.0+cpu") and "download.pytorch.org" not in command
    assert "is not contacted" in result.stderr
    # A CUDA build is still taken from its index: the local wheel is not the build asked for.
    cuda = "https://download.pytorch.org/whl/cu126"
    assert f"--index-url {cuda}" in torch_command(dry_run(project, TORCH_INDEX_URL=cuda))


def test_the_torch_version_is_the_one_the_project_pins() -> None:
    script = (ROOT / "scripts" / "setup.sh").read_text()
    (version,) = re.findall(r"^TORCH_VERSION=([\d.]+)", script, flags=re.M)
    assert f"torch=={version}\n" in (ROOT / "deploy" / "constraints-train.txt").read_text()
    dockerfile = (ROOT / "deploy" / "trainer.Dockerfile").read_text()
    assert re.search(rf'"torch=={re.escape(version)}"[^\n]*--index-url {re.escape(CPU_INDEX)}\b', dockerfile)
    assert f"TORCH_INDEX_URL-{CPU_INDEX}" in script


def test_a_python_older_than_3_11_is_refused_in_one_line(project: Path, tmp_path: Path) -> None:
    old = fake_python(tmp_path / "bin" / "python3.10", "3.10.9")
    result = dry_run(project, PYTHON=str(old))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"setup: PYTHON={old} is Python 3.10.9; this project needs 3.11 or newer"
    result = dry_run(project, PYTHON=str(tmp_path / "no-such-python"))
    assert result.returncode == 2 and "no such interpreter" in result.stderr


def test_without_python_set_the_first_suitable_interpreter_is_used(project: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir / "python3", "3.10.9")  # too old
    fake_python(bin_dir / "python3.11", None)  # does not run
    fake_python(bin_dir / "python3.12", "3.12.1")
    path = f"{bin_dir}:{os.environ['PATH']}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    result = subprocess.run(["bash", str(project / "scripts" / "setup.sh")], cwd=project, capture_output=True,
                            text=True, timeout=120, env=env | {"PATH": path, "SETUP_DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    assert "setup: Python: python3.12 (3.12.1)" in result.stderr
    assert "+ python3.12 -m venv .venv" in result.stdout
    for name in ("python3", "python3.11", "python3.12", "python3.13", "python3.14"):
        fake_python(bin_dir / name, "3.9.2")
    result = subprocess.run(["bash", str(project / "scripts" / "setup.sh")], cwd=project, capture_output=True,
                            text=True, timeout=120, env=env | {"PATH": path, "SETUP_DRY_RUN": "1"})
    assert result.returncode == 2 and "no Python 3.11 or newer found" in result.stderr and "PYTHON=" in result.stderr


@pytest.mark.parametrize(("venv_python", "reason"), [
    ("3.10.9", "it was made by Python 3.10.9, older than 3.11"),
    (None, "its interpreter (.venv/bin/python) is missing or does not run"),
])
def test_a_venv_made_by_an_unsuitable_python_is_rebuilt(project: Path, venv_python: str | None, reason: str) -> None:
    fake_python(project / ".venv" / "bin" / "python", venv_python)
    result = dry_run(project)
    assert f"setup: rebuilding .venv: {reason}" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["+ rm -rf .venv", f"+ {sys.executable} -m venv .venv"], result.stdout
    assert (project / ".venv" / "bin" / "python").exists()  # still a dry run


def test_a_venv_of_another_minor_version_than_python_asks_is_rebuilt(project: Path) -> None:
    fake_python(project / ".venv" / "bin" / "python", "3.13.0")
    result = dry_run(project)  # PYTHON is this interpreter, 3.11 or 3.12
    assert "rebuilding .venv: it was made by Python 3.13.0 and PYTHON=" in result.stderr
    fake_python(project / ".venv" / "bin" / "python", ".".join(map(str, sys.version_info[:3])))
    result = dry_run(project)
    assert "rebuilding" not in result.stderr and "venv .venv" not in result.stdout
