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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import DataError


@dataclass(frozen=True)
class SynthConfig:
    n_items: int = 10_000
    n_users: int = 2_000
    n_interactions: int | None = None  # default: 30 per user
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


def generate(config: SynthConfig) -> pd.DataFrame:
    """Return the log as a DataFrame sorted by timestamp (see module docstring)."""
    if config.n_items < 8 or config.n_users < 1 or config.interactions < config.n_users * config.min_user_length:
        raise DataError(
            f"synthetic data needs >= 8 items, >= 1 user and >= {config.min_user_length} interactions "
            f"per user (got {config.n_items} items, {config.n_users} users, {config.interactions} interactions)"
        )
    rng = np.random.default_rng(config.seed)
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

    # Users: lengths, interests, drift.
    lengths = _user_lengths(rng, config)
    n = int(lengths.sum())
    user_start = np.r_[0, np.cumsum(lengths)[:-1]]
    user_of = np.repeat(np.arange(config.n_users), lengths)
    position = np.arange(n) - user_start[user_of]

    n_interests = np.minimum(1 + rng.poisson(0.8, size=config.n_users), 4)
    first = np.searchsorted(np.cumsum(cluster_weight) / cluster_weight.sum(), rng.random(config.n_users))
    first = np.minimum(first, n_clusters - 1)
    interests = np.empty((config.n_users, 4), dtype=np.int64)
    interests[:, 0] = first
    for slot in range(1, 4):
        near = rng.random(config.n_users)
        sibling = (first // b) * b + rng.integers(0, b, size=config.n_users)
        cousin = (first // (b * b)) * b * b + rng.integers(0, b * b, size=config.n_users)
        anywhere = rng.integers(0, n_clusters, size=config.n_users)
        interests[:, slot] = np.where(near < 0.5, sibling, np.where(near < 0.85, cousin, anywhere))
    interests = np.minimum(interests, n_clusters - 1)
    drifts = rng.random(config.n_users) < config.drift_probability
    drift_at = np.where(drifts, (rng.random(config.n_users) * lengths).astype(np.int64), np.iinfo(np.int64).max)
    drifted = np.minimum((first // b) * b + rng.integers(0, b, size=config.n_users), n_clusters - 1)

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
    inside = np.searchsorted(within_cdf + sorted_cluster, cluster + u, side="right")
    inside = np.clip(inside, cluster_start[cluster], cluster_start[cluster + 1] - 1)
    item = items_by_cluster[inside]
    is_noise = rng.random(n) < config.noise
    item[is_noise] = items_by_cluster[np.minimum(np.searchsorted(global_cdf, rng.random(int(is_noise.sum()))),
                                                 config.n_items - 1)]

    # Timestamps: a start in a 30-day window plus exponential gaps.
    t0 = 1_600_000_000
    first_time = t0 + rng.integers(0, 30 * 86_400, size=config.n_users)
    gaps = rng.exponential(3600.0, size=n).astype(np.int64) + 1
    gaps[user_start] = 0
    cumulative = np.cumsum(gaps)
    timestamp = first_time[user_of] + cumulative - cumulative[user_start][user_of]

    # Original-looking, non-contiguous ids.
    user_ids = 100_000 + rng.permutation(config.n_users) * 3
    item_ids = 5_000_000 + rng.permutation(config.n_items) * 7
    frame = pd.DataFrame({
        "user_id": user_ids[user_of],
        "item_id": item_ids[item],
        "category_id": category[item] + 1,
        "timestamp": timestamp,
        "cluster": item_cluster[item],
    })
    order = np.argsort(timestamp, kind="stable")
    return frame.iloc[order].reset_index(drop=True)


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
