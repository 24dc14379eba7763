"""Tiny real artifacts (trained on synthetic data, exported through the real path), shared by
the service tests; Redis at 127.0.0.1:6379 for the store tests."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

from trainer.methods import MethodOptions
from trainer.run import RunSpec, train_run
from trainer.synth import SynthConfig, generate, write


def _train_and_export(root: Path, method: str, seed: int, tree_init: str) -> tuple[Path, Path]:
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


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{method: (run dir, artifact dir)}: a plain model on the category tree (tdm) and a
    hierarchical one on a random tree (jtm-h), so the two artifacts have different trees."""
    root = tmp_path_factory.mktemp("artifacts")
    return {method: _train_and_export(root, method, seed=0, tree_init=init)
            for method, init in (("tdm", "category"), ("jtm-h", "random"))}


@pytest.fixture(scope="session")
def artifact(trained) -> Path:
    return trained["jtm-h"][1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_url() -> str:
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix() -> str:
    """A unique key prefix per test; keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(redis_url())
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (make test starts one)")
    prefix = f"jtmtest-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def item_ids(artifact: Path) -> np.ndarray:
    with np.load(artifact / "items.npz") as archive:
        return archive["item_ids"]
