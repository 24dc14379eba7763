"""Shared fixtures: where the real data sets live, and tiny seeded logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("JTM_DATA_DIR", ROOT.parent / "shared" / "data"))


def real_file(relative: str) -> Path:
    """A file of the shared real data sets, or skip the test saying where it was looked for."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (set JTM_DATA_DIR to the shared data folder)")
    return path


@pytest.fixture(autouse=True)
def generous_queue_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service started by a test waits up to 60 s for a worker before shedding a request.

    The default budget (250 ms) is a production setting: on a loaded CI machine one sequential
    request can wait that long for a thread and get the 503 the budget promises, which failed
    correctness tests (A/B routing, batching) that have nothing to do with load shedding. The
    tests of shedding set their own budget (`tests/reliability/test_backpressure.py`), which
    overrides this."""
    monkeypatch.setenv("JTM_QUEUE_BUDGET_MS", "60000")


@pytest.fixture
def movielens_path() -> Path:
    return real_file("movielens-100k/u.data")


@pytest.fixture
def ciao_path() -> Path:
    return real_file("ciao/ciao_ratings.csv.gz")


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{method: (run dir, artifact dir)}: a plain model on the category tree (tdm) and a
    hierarchical one on a random tree (jtm-h), so the two artifacts have different trees."""
    from tests.helpers import train_and_export

    root = tmp_path_factory.mktemp("artifacts")
    return {method: train_and_export(root, method, seed=0, tree_init=init)
            for method, init in (("tdm", "category"), ("jtm-h", "random"))}


@pytest.fixture(scope="session")
def artifact(trained) -> Path:
    return trained["jtm-h"][1]


@pytest.fixture(scope="session")
def big_artifact(tmp_path_factory) -> Path:
    """20K items, random weights (~4 s to build): requests heavy enough (tens of ms) to be in
    flight when a signal lands, or to pile up under a flood."""
    from bench.synthetic_artifact import build

    path = tmp_path_factory.mktemp("big") / "artifact"
    build(20_000, path, parity_users=4)
    return path


@pytest.fixture
def redis_prefix() -> str:
    """A unique Redis key prefix per test (real Redis at 127.0.0.1:6379); keys deleted after."""
    import uuid

    import redis

    from tests.helpers import redis_url

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
