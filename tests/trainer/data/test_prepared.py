"""`trainer prepare`: a log indexed once into memory-mapped arrays loads back exactly (same
fingerprint, same arrays), refuses other filtering settings, and names a broken file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.cli import main as trainer_main
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_samples, split_users
from trainer.data.synth import SynthConfig, generate, write
from trainer.errors import DataError

ARRAYS = ("user", "item", "timestamp", "user_offsets", "item_category", "user_ids", "item_ids", "category_ids")


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    frame = generate(SynthConfig(n_items=400, n_users=120, seed=5))
    frame["user_id"] = "u" + frame["user_id"].astype(str)  # string ids are stored too, never pickled
    write(frame, path)
    return path


def test_prepared_data_equals_the_log(log: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    assert trainer_main(["prepare", "--data", str(log), "--out", str(out)]) == 0
    assert f"use --data {out}" in capsys.readouterr().out
    direct, mapped = load_interactions(DataConfig(str(log))), load_interactions(DataConfig(str(out)))
    assert isinstance(mapped.item, np.memmap)
    for name in ARRAYS:
        assert np.array_equal(getattr(direct, name), getattr(mapped, name)), name
    assert direct.fingerprint() == mapped.fingerprint()
    split = split_users(direct.n_users, 0)
    a, b = make_samples(direct, split.train), make_samples(mapped, split.train)
    assert a.rows.dtype == np.int32 and np.array_equal(a.histories(np.arange(50)), b.histories(np.arange(50)))


def test_prepared_data_refuses_other_settings_and_names_broken_files(log: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    assert trainer_main(["prepare", "--data", str(log), "--out", str(out)]) == 0
    with pytest.raises(DataError, match="prepared with --min-interactions 10, asked for 5"):
        load_interactions(DataConfig(str(out), min_interactions=5))
    with pytest.raises(DataError, match="--exclude-items applies to a log"):  # it used to be ignored silently
        load_interactions(DataConfig(str(out), exclude_items=str(tmp_path / "retired.csv")))
    (out / "item.npy").write_bytes(b"not an array")
    assert trainer_main(["train", "--data", str(out), "--method", "tdm", "--out", str(tmp_path / "run")]) == 2
    assert "item.npy" in capsys.readouterr().err
