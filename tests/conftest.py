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


@pytest.fixture
def movielens_path() -> Path:
    return real_file("movielens-100k/u.data")


@pytest.fixture
def ciao_path() -> Path:
    return real_file("ciao/ciao_ratings.csv.gz")
