"""Synthetic interaction logs with a planted hierarchy, for scale tests and for checking that tree
learning recovers structure.

The generative story (all vectorized, deterministic for a seed):

- Items belong to leaf clusters of a 3-level latent hierarchy (top -> mid -> leaf clusters, each
  with `branching` children). Item ids are shuffled, so ids say nothing about clusters.
- Categories are correlated with the hierarchy: an item's category is its mid-level cluster,
  except for a `category_noise` fraction that gets a random category.
- Popularity is a power law at two scales: clusters have Zipf weights and items within a cluster
  are Zipf by a random rank.
- Each user has 1-4 interests (leaf clusters). Further interests are near the first one in the
  hierarchy (a sibling under the same mid cluster, or a cousin under the same top cluster).
- A user's timeline is a run of segments; each segment draws items from one of the user's
  interests. Interests drift: after a random point in the timeline, the first interest moves to a
  sibling cluster. A small `noise` fraction of behaviours is drawn from global popularity.
- Timestamps: each user starts in a 30-day window, with exponential gaps (mean one hour).

The output has the generic format's columns plus ``cluster`` (the planted leaf cluster of the
item), which loaders ignore and tests use as ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.config import option
from trainer.errors import DataError


@dataclass(frozen=True)
class SynthConfig:
    n_items: int = option(10_000, "catalogue size", flag="--items")
    n_users: int = option(2_000, "number of users", flag="--users")
    n_interactions: int | None = option(None, "number of interactions", flag="--interactions", kind=int,
                                        show=lambda v: "30 per user")
    seed: int = 0
    items_per_cluster: int = 40  # sets the size of the hierarchy
    category_noise: float = 0.1
    switch_probability: float = 0.25  # chance that the next behaviour starts a new segment
    drift_probability: float = 0.5  # chance that a user's first interest drifts once
    noise: float = 0.05  # behaviours drawn from global popularity
    zipf_items: float = 1.0
    zipf_clusters: float = 0.7
    min_user_length: int = 5  # some users fall under the >= 10 filter, as in real logs

    @property
    def interactions(self) -> int:
        return self.n_interactions if self.n_interactions is not None else 30 * self.n_users

    @property
    def branching(self) -> int:
        leaf_clusters = max(8, self.n_items // self.items_per_cluster)
        return max(2, int(round(leaf_clusters ** (1 / 3))))


def _check(config: SynthConfig) -> None:
    if config.n_items < 8 or config.n_users < 1 or config.interactions < config.n_users * config.min_user_length:
        raise DataError(
            f"synthetic data needs >= 8 items, >= 1 user and >= {config.min_user_length} interactions "
            f"per user (got {config.n_items} items, {config.n_users} users, {config.interactions} interactions)"
        )


@dataclass(frozen=True)
class _Items:
    """The item side of the story: clusters, categories and popularity."""

    cluster: np.ndarray  # (n_items,) leaf cluster
    category: np.ndarray  # (n_items,)
    n_clusters: int
    cluster_weight: np.ndarray
    by_cluster: np.ndarray  # item ids ordered by cluster, random rank inside
    sorted_cluster: np.ndarray
    cluster_start: np.ndarray
    within_cdf: np.ndarray
    global_cdf: np.ndarray


def _item_side(config: SynthConfig, rng: np.random.Generator) -> _Items:
    b = config.branching
    n_clusters = b**3
    # Items -> leaf clusters: every cluster gets at least one item, the rest at random.
    item_cluster = np.concatenate([
        np.arange(min(n_clusters, config.n_items)),
        rng.integers(0, n_clusters, size=max(0, config.n_items - n_clusters)),
    ])
    rng.shuffle(item_cluster)
    n_clusters = int(item_cluster.max()) + 1

    # Categories: the mid-level cluster, with some noise.
    category = item_cluster // b
    noisy = rng.random(config.n_items) < config.category_noise
    category[noisy] = rng.integers(0, b * b, size=int(noisy.sum()))

    # Popularity: Zipf over clusters (random order) and over items within each cluster.
    cluster_weight = 1.0 / (rng.permutation(n_clusters) + 1.0) ** config.zipf_clusters
    items_by_cluster = np.lexsort((rng.random(config.n_items), item_cluster))  # random rank inside
    sorted_cluster = item_cluster[items_by_cluster]
    cluster_start = np.searchsorted(sorted_cluster, np.arange(n_clusters + 1))
    rank = np.arange(config.n_items) - cluster_start[sorted_cluster]
    within = 1.0 / (rank + 1.0) ** config.zipf_items
    within_cdf = _segment_cdf(within, cluster_start)
    global_weight = within / _segment_sums(within, cluster_start)[sorted_cluster] * cluster_weight[sorted_cluster]
    global_cdf = np.cumsum(global_weight)
    global_cdf /= global_cdf[-1]
    return _Items(item_cluster, category, n_clusters, cluster_weight, items_by_cluster, sorted_cluster,
                  cluster_start, within_cdf, global_cdf)


def _user_events(config: SynthConfig, items: _Items, lengths: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, timestamp) per event for users with these timeline lengths."""
    b = config.branching
    n_clusters = items.n_clusters
    n_users = len(lengths)
    n = int(lengths.sum())
    user_start = np.r_[0, np.cumsum(lengths)[:-1]]
    user_of = np.repeat(np.arange(n_users), lengths)
    position = np.arange(n) - user_start[user_of]

    n_interests = np.minimum(1 + rng.poisson(0.8, size=n_users), 4)
    first = np.searchsorted(np.cumsum(items.cluster_weight) / items.cluster_weight.sum(), rng.random(n_users))
    first = np.minimum(first, n_clusters - 1)
    interests = np.empty((n_users, 4), dtype=np.int64)
    interests[:, 0] = first
    for slot in range(1, 4):
        near = rng.random(n_users)
        sibling = (first // b) * b + rng.integers(0, b, size=n_users)
        cousin = (first // (b * b)) * b * b + rng.integers(0, b * b, size=n_users)
        anywhere = rng.integers(0, n_clusters, size=n_users)
        interests[:, slot] = np.where(near < 0.5, sibling, np.where(near < 0.85, cousin, anywhere))
    interests = np.minimum(interests, n_clusters - 1)
    drifts = rng.random(n_users) < config.drift_probability
    drift_at = np.where(drifts, (rng.random(n_users) * lengths).astype(np.int64), np.iinfo(np.int64).max)
    drifted = np.minimum((first // b) * b + rng.integers(0, b, size=n_users), n_clusters - 1)

    # Segments: a new one starts at each user's first behaviour and with switch_probability after.
    starts = (position == 0) | (rng.random(n) < config.switch_probability)
    segment = np.cumsum(starts) - 1
    segment_interest = (rng.random(int(segment[-1]) + 1) * n_interests[user_of[starts]]).astype(np.int64)
    slot = segment_interest[segment]
    cluster = interests[user_of, slot]
    moved = (slot == 0) & (position >= drift_at[user_of])
    cluster[moved] = drifted[user_of[moved]]

    # Items: inside the chosen cluster by popularity, or (noise) from the whole corpus.
    u = rng.random(n)
    inside = np.searchsorted(items.within_cdf + items.sorted_cluster, cluster + u, side="right")
    inside = np.clip(inside, items.cluster_start[cluster], items.cluster_start[cluster + 1] - 1)
    item = items.by_cluster[inside]
    is_noise = rng.random(n) < config.noise
    item[is_noise] = items.by_cluster[np.minimum(np.searchsorted(items.global_cdf, rng.random(int(is_noise.sum()))),
                                                 config.n_items - 1)]

    # Timestamps: a start in a 30-day window plus exponential gaps.
    t0 = 1_600_000_000
    first_time = t0 + rng.integers(0, 30 * 86_400, size=n_users)
    gaps = rng.exponential(3600.0, size=n).astype(np.int64) + 1
    gaps[user_start] = 0
    cumulative = np.cumsum(gaps)
    timestamp = first_time[user_of] + cumulative - cumulative[user_start][user_of]
    return user_of, item, timestamp


def _frame(items: _Items, user_ids: np.ndarray, item_ids: np.ndarray, user_of: np.ndarray, item: np.ndarray,
           timestamp: np.ndarray) -> pd.DataFrame:
    """The log's columns (original-looking ids), sorted by timestamp."""
    frame = pd.DataFrame({
        "user_id": user_ids[user_of],
        "item_id": item_ids[item],
        "category_id": items.category[item] + 1,
        "timestamp": timestamp,
        "cluster": items.cluster[item],
    })
    order = np.argsort(timestamp, kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def generate(config: SynthConfig) -> pd.DataFrame:
    """Return the log as a DataFrame sorted by timestamp (see module docstring)."""
    _check(config)
    rng = np.random.default_rng(config.seed)
    items = _item_side(config, rng)
    lengths = _user_lengths(rng, config)
    user_of, item, timestamp = _user_events(config, items, lengths, rng)
    # Original-looking, non-contiguous ids.
    user_ids = 100_000 + rng.permutation(config.n_users) * 3
    item_ids = 5_000_000 + rng.permutation(config.n_items) * 7
    return _frame(items, user_ids, item_ids, user_of, item, timestamp)


def generate_chunks(config: SynthConfig, chunk_users: int = 100_000) -> Iterator[pd.DataFrame]:
    """The log `chunk_users` users at a time, for logs too large to hold at once (the paper's
    UserBehavior is 100M events: about 1.2 GB per 10M-event chunk here instead of ~15 GB).

    Same story and item side as `generate`, but each chunk's users draw from their own seeded
    stream, so the events differ from `generate`'s for the same seed; rows are sorted by time
    within each chunk (loaders sort every user's behaviours anyway)."""
    _check(config)
    rng = np.random.default_rng(config.seed)
    items = _item_side(config, rng)
    lengths = _user_lengths(rng, config)
    user_ids = 100_000 + rng.permutation(config.n_users) * 3
    item_ids = 5_000_000 + rng.permutation(config.n_items) * 7
    for chunk, first in enumerate(range(0, config.n_users, chunk_users)):
        last = min(first + chunk_users, config.n_users)
        chunk_rng = np.random.default_rng([config.seed, chunk])
        user_of, item, timestamp = _user_events(config, items, lengths[first:last], chunk_rng)
        yield _frame(items, user_ids[first:last], item_ids, user_of, item, timestamp)


def write_chunks(chunks: Iterable[pd.DataFrame], path: Path) -> int:
    """Stream chunks into one .parquet (a row group each) or .csv/.tsv (optionally .gz) file;
    returns the number of rows written. Memory stays at one chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    rows = 0
    if name.endswith((".parquet", ".pq")):
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        try:
            for frame in chunks:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                rows += len(frame)
        finally:
            if writer is not None:
                writer.close()
        return rows
    separator = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
    if not name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        raise DataError("unknown output type; use .parquet, .csv, .csv.gz, .tsv or .tsv.gz", path)
    for i, frame in enumerate(chunks):
        frame.to_csv(path, index=False, sep=separator, mode="w" if i == 0 else "a", header=i == 0)
        rows += len(frame)
    return rows


def write(frame: pd.DataFrame, path: Path) -> None:
    """Write by extension: .parquet, .csv, .tsv (optionally .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        frame.to_parquet(path, index=False)
    elif name.endswith((".csv", ".csv.gz")):
        frame.to_csv(path, index=False)
    elif name.endswith((".tsv", ".tsv.gz")):
        frame.to_csv(path, index=False, sep="\t")
    else:
        raise DataError("unknown output type; use .parquet, .csv, .csv.gz, .tsv or .tsv.gz", path)


def _user_lengths(rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Lognormal user activity summing exactly to the requested number of interactions."""
    spare = config.interactions - config.n_users * config.min_user_length
    weights = rng.lognormal(0.0, 1.0, size=config.n_users)
    extra = np.floor(weights / weights.sum() * spare).astype(np.int64)
    remainder = spare - int(extra.sum())
    extra[rng.choice(config.n_users, size=remainder, replace=False)] += 1
    return extra + config.min_user_length


def _segment_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, starts[:-1]) if len(values) else values


def _segment_cdf(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative distribution inside each segment, ending at exactly 1."""
    cumulative = np.cumsum(values)
    before = np.r_[0.0, cumulative][starts[:-1]]
    segment = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    totals = _segment_sums(values, starts)
    return (cumulative - before[segment]) / totals[segment]
