"""The synthetic generator: determinism, exact sizes, and the planted structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainer.data.formats import read_log
from trainer.data.interactions import build_interactions
from trainer.data.synth import SynthConfig, generate, generate_chunks, write, write_chunks


def test_deterministic_for_a_seed() -> None:
    a = generate(SynthConfig(n_items=500, n_users=100, seed=7))
    b = generate(SynthConfig(n_items=500, n_users=100, seed=7))
    c = generate(SynthConfig(n_items=500, n_users=100, seed=8))
    assert a.equals(b)
    assert not a.equals(c)


def test_sizes_and_ranges() -> None:
    cfg = SynthConfig(n_items=1000, n_users=200, n_interactions=9000, seed=1)
    frame = generate(cfg)
    assert len(frame) == 9000
    assert frame.user_id.nunique() == 200
    assert frame.item_id.nunique() <= 1000
    assert (frame.groupby("user_id").size() >= cfg.min_user_length).all()
    assert frame.timestamp.is_monotonic_increasing


def test_planted_structure() -> None:
    cfg = SynthConfig(n_items=2000, n_users=1000, seed=2)
    frame = generate(cfg)
    b = cfg.branching
    # Categories follow the mid-level cluster for most items.
    items = frame.drop_duplicates("item_id")
    agreement = ((items.cluster // b) + 1 == items.category_id).mean()
    assert agreement > 0.85
    # Consecutive behaviours of a user share a leaf cluster far more often than chance.
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    same_user = frame.user_id.to_numpy()[1:] == frame.user_id.to_numpy()[:-1]
    same_cluster = frame.cluster.to_numpy()[1:] == frame.cluster.to_numpy()[:-1]
    rate = same_cluster[same_user].mean()
    shares = frame.cluster.value_counts(normalize=True).to_numpy()
    chance = float((shares ** 2).sum())
    assert rate > 0.5 and rate > 10 * chance
    # Popularity is heavy-tailed: the top 1% of items take a large share of behaviours.
    counts = np.sort(frame.item_id.value_counts().to_numpy())[::-1]
    assert counts[: max(1, len(counts) // 100)].sum() / counts.sum() > 0.1


def test_round_trip_through_loader(tmp_path: Path) -> None:
    frame = generate(SynthConfig(n_items=300, n_users=50, seed=3))
    for name in ("s.parquet", "s.csv.gz"):
        write(frame, tmp_path / name)
        raw = read_log(tmp_path / name)
        assert raw.format == "generic" and len(raw.frame) == len(frame)
        data = build_interactions(raw, 10)
        assert data.n_users == (frame.groupby("user_id").size() >= 10).sum()


def test_chunked_generation_streams_the_same_story(tmp_path: Path) -> None:
    """Chunks of users: exact totals, every user once, the planted structure intact, and the
    streamed Parquet and CSV files read back as one log."""
    cfg = SynthConfig(n_items=2000, n_users=900, n_interactions=30_000, seed=4)
    chunks = list(generate_chunks(cfg, chunk_users=250))
    assert len(chunks) == 4 and sum(len(c) for c in chunks) == 30_000
    frame = pd.concat(chunks, ignore_index=True)
    assert frame.user_id.nunique() == 900
    assert set(chunks[0].user_id).isdisjoint(chunks[1].user_id)
    items = frame.drop_duplicates("item_id")
    assert ((items.cluster // cfg.branching) + 1 == items.category_id).mean() > 0.85
    again = pd.concat(generate_chunks(cfg, chunk_users=250), ignore_index=True)
    assert frame.equals(again)  # deterministic for a seed
    for name in ("c.parquet", "c.csv.gz"):
        rows = write_chunks(generate_chunks(cfg, chunk_users=250), tmp_path / name)
        raw = read_log(tmp_path / name)
        assert rows == 30_000 and len(raw.frame) == 30_000
        assert np.array_equal(np.sort(raw.frame["user"].to_numpy()), np.sort(frame.user_id.to_numpy()))
