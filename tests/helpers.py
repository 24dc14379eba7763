"""Helpers shared by the tests: tiny real artifacts, free ports, Redis, catalog ids."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from trainer.methods import MethodOptions
from trainer.run import RunSpec, train_run
from trainer.synth import SynthConfig, generate, write


def train_and_export(root: Path, method: str, seed: int, tree_init: str) -> tuple[Path, Path]:
    """Train a tiny model on synthetic data and export it through the real path."""
    from trainer.data import DataConfig
    from trainer.export import export_run

    data = root / "log.parquet"
    if not data.exists():
        write(generate(SynthConfig(n_items=500, n_users=400, seed=seed)), data)
    run = root / f"run-{method}"
    train_run(RunSpec(data=DataConfig(path=str(data)), method=method, seed=seed, m=50), run,
              MethodOptions(epochs=1, tree_init=tree_init))
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
