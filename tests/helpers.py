"""Helpers shared by the tests: tiny real artifacts, free ports, Redis, catalog ids."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from trainer.data.synth import SynthConfig, generate, write
from trainer.evaluate.protocol import EvalProtocol
from trainer.run import RunSpec, train_run


def train_and_export(root: Path, method: str, seed: int, tree_init: str) -> tuple[Path, Path]:
    """Train a tiny model on synthetic data and export it through the real path."""
    from trainer.data.interactions import DataConfig
    from trainer.export import export_run

    data = root / "log.parquet"
    if not data.exists():
        write(generate(SynthConfig(n_items=500, n_users=400, seed=seed)), data)
    run = root / f"run-{method}"
    train_run(RunSpec(data=DataConfig(path=str(data)), method=method, seed=seed, protocol=EvalProtocol(m=50)),
              run, {"epochs": 1, "tree_init": tree_init})
    artifact = root / f"artifact-{method}"
    export_run(run, artifact)
    return run, artifact


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_url() -> str:
    return "redis://127.0.0.1:6379/0"


def item_ids(artifact: Path) -> np.ndarray:
    with np.load(artifact / "items.npz") as archive:
        return archive["item_ids"]


def start_service(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m service` on a free port; returns once /readyz answers 200 (logs in a file)."""
    from tests.conftest import ROOT

    port = free_port()
    # Logs go to a file: an unread pipe would fill up and block the server under load.
    log = tempfile.NamedTemporaryFile(prefix="service-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), *args], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    process.log_path = log.name  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited: {Path(log.name).read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("service did not become ready in 60s")


# ----------------------------------------------------------------------------- hostile artifacts


def npy_bytes(descr: str, shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """A .npy member whose header says whatever we like (shape, dtype), followed by `data`:
    how a hostile or corrupted file looks to the loader."""
    import struct

    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def replace_members(npz: Path, members: dict[str, bytes | None], compression: int | None = None) -> None:
    """Rewrite an .npz with some members replaced (raw zip entry name -> bytes; None drops it)."""
    import zipfile

    with zipfile.ZipFile(npz) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    entries.update(members)
    with zipfile.ZipFile(npz, "w", compression=compression or zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            if data is not None:
                archive.writestr(name, data)


def resign(artifact: Path, **sections: dict) -> None:
    """Recompute the manifest's checksums (and update sections): the copy then passes
    verify_artifact, so what refuses it is the loader's own content checks."""
    import json

    from service.core.artifact import file_entries

    path = artifact / "manifest.json"
    manifest = json.loads(path.read_text())
    for name, changes in sections.items():
        manifest[name].update(changes)
    manifest["files"] = file_entries(artifact, list(manifest["files"]))
    path.write_text(json.dumps(manifest))
