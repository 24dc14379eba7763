"""Loaders: the real files in ../shared/data, every generic variant, and auto-detection."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import real_file
from trainer.data.formats import detect_format, read_log
from trainer.data.interactions import DataConfig, build_interactions, load_interactions
from trainer.errors import DataError


def test_movielens_100k_real(movielens_path: Path) -> None:
    raw = read_log(movielens_path)
    assert raw.format == "movielens"
    assert len(raw.frame) == 100_000
    assert raw.has_timestamp and raw.has_category
    data = build_interactions(raw, min_interactions=10)
    assert (data.n_users, data.n_items) == (943, 1682)  # every ML-100K user has >= 20 ratings
    assert 10 <= data.n_categories <= 19
    # Toy Story (id 1) is flagged Animation|Children's|Comedy: its first genre is Animation (index 3).
    toy_story = int(np.flatnonzero(data.item_ids == 1)[0])
    assert data.category_ids[data.item_category[toy_story]] == 3


def test_ciao_real(ciao_path: Path) -> None:
    raw = read_log(ciao_path)
    assert raw.format == "ciao"
    assert len(raw.frame) == 284_086
    data = build_interactions(raw, min_interactions=1)
    assert data.n_items == 105_114 and data.n_users == 7_375
    assert data.n_categories == 28
    # 101 items appear with more than one category: each still gets exactly one.
    assert data.item_category.shape == (data.n_items,)


@pytest.mark.parametrize("name, rows", [("userbehavior_head.csv", 4_321), ("userbehavior_2h.csv.gz", 110_300)])
def test_userbehavior_real(name: str, rows: int) -> None:
    raw = read_log(real_file(f"userbehavior-samples/{name}"))
    assert raw.format == "userbehavior"
    assert len(raw.frame) == rows
    assert list(raw.frame.columns) == ["user", "item", "category", "timestamp"]


def test_userbehavior_behavior_filter(tmp_path: Path) -> None:
    path = tmp_path / "ub.csv"
    path.write_text("1,10,100,pv,5\n1,11,100,buy,6\n2,10,100,fav,7\n")
    assert len(read_log(path).frame) == 3
    assert len(read_log(path, behaviors=("buy",)).frame) == 1


def _write_generic(path: Path, frame: pd.DataFrame, sep: str = ",") -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep=sep)
    return path


GENERIC = pd.DataFrame({
    "UserID": ["a", "a", "b", "a", "b", "b"],
    "product_id": ["x", "y", "x", "z", "z", "y"],
    "category": [1, 1, 1, 2, 2, 1],
    "ts": [30, 10, 5, 20, 6, 7],
    "rating": [5, 4, 3, 2, 1, 5],  # extra column: ignored
})


@pytest.mark.parametrize("name, sep", [("log.csv", ","), ("log.tsv", "\t"), ("log.parquet", ",")])
def test_generic_variants(tmp_path: Path, name: str, sep: str) -> None:
    path = _write_generic(tmp_path / name, GENERIC, sep)
    raw = read_log(path)
    assert raw.format == "generic"
    assert list(raw.frame.columns) == ["user", "item", "category", "timestamp"]
    data = build_interactions(raw, min_interactions=1)
    # User "a" sorted by time: y (10), z (20), x (30).
    a = int(np.flatnonzero(data.user_ids == "a")[0])
    rows = slice(data.user_offsets[a], data.user_offsets[a + 1])
    assert list(data.item_ids[data.item[rows]]) == ["y", "z", "x"]
    assert list(data.timestamp[rows]) == [10, 20, 30]


def test_gzip_transparent(tmp_path: Path) -> None:
    plain = _write_generic(tmp_path / "log.csv", GENERIC)
    packed = tmp_path / "log.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = build_interactions(read_log(plain), 1)
    b = build_interactions(read_log(packed), 1)
    assert a.fingerprint() == b.fingerprint()


def test_missing_timestamp_uses_file_order(tmp_path: Path) -> None:
    path = _write_generic(tmp_path / "log.csv", GENERIC[["UserID", "product_id"]])
    data = build_interactions(read_log(path), 1)
    assert not data.has_timestamp
    a = int(np.flatnonzero(data.user_ids == "a")[0])
    rows = slice(data.user_offsets[a], data.user_offsets[a + 1])
    assert list(data.item_ids[data.item[rows]]) == ["x", "y", "z"]  # as written


def test_missing_category_is_one_category(tmp_path: Path) -> None:
    path = _write_generic(tmp_path / "log.csv", GENERIC[["UserID", "product_id", "ts"]])
    data = build_interactions(read_log(path), 1)
    assert not data.has_category and data.n_categories == 1
    assert (data.item_category == 0).all()


def test_date_strings_become_seconds(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [2, 3], "timestamp": ["2020-01-02", "2020-01-01 00:00:10"]})
    data = build_interactions(read_log(_write_generic(tmp_path / "log.csv", frame)), 1)
    assert list(data.item_ids[data.item]) == [3, 2]
    assert data.timestamp[0] == 1577836810


def test_majority_category_per_item(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": [1, 2, 3, 4], "item_id": [7, 7, 7, 8], "category_id": [5, 6, 6, 5]})
    data = build_interactions(read_log(_write_generic(tmp_path / "log.csv", frame)), 1)
    item7 = int(np.flatnonzero(data.item_ids == 7)[0])
    assert data.category_ids[data.item_category[item7]] == 6


def test_movielens_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::5::100\n1::11::3::90\n2::10::4::50\n")
    (tmp_path / "movies.dat").write_text("10::Heat: A Story (1995)::Action|Crime\n11::Up (2009)::Animation\n")
    raw = read_log(tmp_path / "ratings.dat")
    assert raw.format == "movielens-dat"
    data = build_interactions(raw, 1)
    assert sorted(data.category_ids.tolist()) == ["Action", "Animation"]
    user1 = slice(data.user_offsets[0], data.user_offsets[1])
    assert list(data.item_ids[data.item[user1]]) == [11, 10]


def test_detect_format_headerless_movielens(tmp_path: Path) -> None:
    path = tmp_path / "ratings.tsv"
    path.write_text("1\t2\t3\t4\n")
    assert detect_format(path) == "movielens"


def test_load_interactions_filters_users(tmp_path: Path) -> None:
    rows = [(1, i, i) for i in range(12)] + [(2, i, i) for i in range(5)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    path = _write_generic(tmp_path / "log.csv", frame)
    data = load_interactions(DataConfig(path=str(path), min_interactions=10))
    assert data.n_users == 1 and len(data) == 12


def test_unknown_format_name(tmp_path: Path) -> None:
    path = _write_generic(tmp_path / "log.csv", GENERIC)
    with pytest.raises(DataError, match="unknown format"):
        read_log(path, "excel")
