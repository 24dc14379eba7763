"""Interactions with contiguous ids: what every method learns from.

Pipeline (paper section 3.1): read log -> keep users with >= `min_interactions` -> contiguous
ids -> sort each user's behaviours by time. Everything is stored as flat numpy arrays with
CSR-style offsets (`user_offsets`), so 10M interactions take a few hundred MB.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.config import option
from trainer.data.formats import FORMATS, RawLog, read_log
from trainer.data.prepared import is_prepared, load_prepared
from trainer.errors import DataError

PAD = -1  # history padding value: "no behaviour here"


@dataclass(frozen=True)
class DataConfig:
    """How a log becomes a data set. Stored with every run so evaluation can rebuild it."""

    path: str
    format: str = option("auto", "log format (auto: detect it from the file name and first line)", choices=FORMATS)
    min_interactions: int = option(10, "keep users with at least this many")  # the paper's filter
    behaviors: tuple[str, ...] | None = option(
        None, "UserBehavior only: comma list of pv,buy,cart,fav to keep", kind=str, show=lambda v: "all",
        parse=lambda text: tuple(b.strip() for b in text.split(",")))
    # Items whose events are dropped before anything else (retired items: `trainer.catalogue`).
    exclude_items: str | None = option(
        None, "drop these items' events first: an item list (item_id column), or an artifact directory whose "
        "retired items they are (retire-items)", flag="--exclude-items", kind=str, show=lambda v: "keep every item")

    def to_json(self) -> dict:
        data = asdict(self)
        if data["exclude_items"] is None:
            del data["exclude_items"]  # runs written before the option existed compare equal
        return data

    @classmethod
    def from_json(cls, data: dict) -> DataConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("behaviors") is not None:
            values["behaviors"] = tuple(values["behaviors"])
        return cls(**values)


@dataclass(frozen=True)
class Interactions:
    """All kept interactions, grouped by user and time-ordered within each user.

    user, item: (n,) int32 contiguous ids; timestamp: (n,) int64.
    user_offsets: (n_users + 1,) int64; user u's behaviours are rows
        ``user_offsets[u]:user_offsets[u + 1]``, oldest first.
    item_category: (n_items,) int32 contiguous category of each item (0 when the log has none).
    user_ids / item_ids / category_ids: original ids, indexed by contiguous id.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    user_offsets: np.ndarray
    item_category: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    category_ids: np.ndarray
    format: str
    source: str
    has_timestamp: bool
    has_category: bool

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_categories(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.item)

    def user_lengths(self) -> np.ndarray:
        return np.diff(self.user_offsets)

    def item_counts(self, users: np.ndarray | None = None) -> np.ndarray:
        """Interactions per item, over all users or the given ones: (n_items,) int64."""
        if users is None:
            return np.bincount(self.item, minlength=self.n_items)
        rows = rows_of_users(self.user_offsets, users)
        return np.bincount(self.item[rows], minlength=self.n_items)

    def fingerprint(self) -> str:
        """sha256 of the processed data: two runs agree on it iff they saw the same interactions."""
        digest = hashlib.sha256()
        for array in (self.user, self.item, self.timestamp, self.item_category):
            digest.update(np.ascontiguousarray(array).tobytes())
        for ids in (self.user_ids, self.item_ids):
            digest.update(np.asarray(ids).astype(str).astype("U").tobytes())
        return digest.hexdigest()

    def summary(self) -> dict:
        lengths = self.user_lengths()
        return {
            "source": self.source,
            "format": self.format,
            "interactions": len(self),
            "users": self.n_users,
            "items": self.n_items,
            "categories": self.n_categories,
            "has_timestamp": self.has_timestamp,
            "has_category": self.has_category,
            "median_user_length": float(np.median(lengths)) if len(lengths) else 0.0,
            "fingerprint": self.fingerprint(),
        }


def load_interactions(config: DataConfig) -> Interactions:
    """Read, filter and index a log as `config` says, or memory-map a directory written by
    `trainer prepare` (`trainer.data.prepared`). Raises DataError on bad input."""
    if is_prepared(Path(config.path)):
        if config.exclude_items:  # the events are indexed already: dropping some would renumber them
            raise DataError("--exclude-items applies to a log, not to a directory written by `trainer prepare`: "
                            "train from the log, or prepare it again without those items", config.path)
        stored = load_prepared(Path(config.path), config.min_interactions, config.behaviors)
        return Interactions(**{f.name: stored[f.name] for f in fields(Interactions) if f.name in stored})
    raw = read_log(config.path, config.format, config.behaviors)
    if config.exclude_items:
        from trainer.data.item_lists import drop_items

        raw = drop_items(raw, Path(config.exclude_items))
    return build_interactions(raw, config.min_interactions)


def build_interactions(raw: RawLog, min_interactions: int = DataConfig.min_interactions) -> Interactions:
    """Filter users, map ids to contiguous integers and sort each user's behaviours by time.

    Without a timestamp column, file order stands in for time. Without a category column all
    items share one category. An item seen with several categories gets its most frequent one
    (ties: the first seen), because the tree needs exactly one per item.

    Memory: a 100M-row log (the paper's UserBehavior) is indexed column by column in int32
    codes, filtered once, and sorted by one packed (user, time) key, so the peak stays near
    twice the raw columns (a frame-level pipeline copies the frame at every step).
    """
    if min_interactions < 1:
        raise DataError(f"min_interactions must be >= 1, got {min_interactions}")
    frame = raw.frame
    n_read = len(frame)
    user_codes, user_ids = pd.factorize(frame["user"], sort=True)
    user_codes = user_codes.astype(np.int32)
    counts = np.bincount(user_codes, minlength=len(user_ids))
    keep_users = counts >= min_interactions
    if not keep_users.any():
        raise DataError(
            f"no user has >= {min_interactions} interactions ({len(user_ids)} users, "
            f"{n_read} rows read); lower --min-interactions",
            raw.path,
        )
    keep_rows = None
    if not keep_users.all():
        keep_rows = keep_users[user_codes]
        # The kept users' sorted ids are exactly a re-factorisation of the kept rows.
        user_codes = (np.cumsum(keep_users, dtype=np.int64) - 1).astype(np.int32)[user_codes[keep_rows]]
        user_ids = np.asarray(user_ids)[keep_users]

    def kept(name: str) -> np.ndarray:
        values = frame[name].to_numpy()
        return values if keep_rows is None else values[keep_rows]

    item_codes, item_ids = pd.factorize(kept("item"), sort=True)
    item_codes = item_codes.astype(np.int32)
    if raw.has_timestamp:
        timestamp = kept("timestamp").astype(np.int64, copy=False)
    else:
        timestamp = np.arange(n_read, dtype=np.int64) if keep_rows is None else np.flatnonzero(keep_rows)
    n_items = len(item_ids)
    if raw.has_category:
        category_codes, category_ids = pd.factorize(kept("category"), sort=True)
        item_category = _majority_category(item_codes, category_codes.astype(np.int32), n_items,
                                           len(category_ids))
        del category_codes
    else:
        category_ids = np.array([0])
        item_category = np.zeros(n_items, dtype=np.int32)
    order = _user_time_order(user_codes, timestamp)
    user = user_codes[order]
    del user_codes
    item = item_codes[order]
    del item_codes
    timestamp = timestamp[order]
    del order
    n_users = len(user_ids)
    user_offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=n_users), out=user_offsets[1:])
    # Categories no item kept: drop them so ids stay contiguous.
    used, item_category = np.unique(item_category, return_inverse=True)
    category_ids = np.asarray(category_ids)[used]

    return Interactions(
        user=user,
        item=item,
        timestamp=timestamp,
        user_offsets=user_offsets,
        item_category=item_category.astype(np.int32),
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        category_ids=np.asarray(category_ids),
        format=raw.format,
        source=str(raw.path),
        has_timestamp=raw.has_timestamp,
        has_category=raw.has_category,
    )


def _user_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Stable order by user, then time (file order among equal times): one argsort of a packed
    int64 key when user and time span fit in 63 bits, else a two-key lexsort."""
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    low = int(timestamp.min())
    time_bits = max(1, (int(timestamp.max()) - low).bit_length())
    user_bits = max(1, int(user.max()).bit_length())
    if time_bits + user_bits <= 63:
        key = user.astype(np.int64) << time_bits
        key |= timestamp - low
        return np.argsort(key, kind="stable")
    return np.lexsort((timestamp, user))


def _majority_category(items: np.ndarray, categories: np.ndarray, n_items: int, n_cats: int) -> np.ndarray:
    """Most frequent category per item; ties go to the category seen first. Items seen with a
    single category (nearly all of them in real logs) are settled in one pass; only the rows of
    the others go through the sort."""
    last = np.zeros(n_items, dtype=np.int32)
    last[items] = categories  # some category of each item
    conflicted = np.zeros(n_items, dtype=bool)
    conflicted[items[last[items] != categories]] = True
    if not conflicted.any():
        return last
    rows = np.flatnonzero(conflicted[items])  # file order kept: "first seen" stays first
    pair = items[rows].astype(np.int64) * n_cats + categories[rows]
    uniq, first_index, pair_counts = np.unique(pair, return_index=True, return_counts=True)
    pair_items, pair_cats = uniq // n_cats, uniq % n_cats
    # Sort by item, then count descending, then first appearance: the first row per item wins.
    order = np.lexsort((first_index, -pair_counts, pair_items))
    pair_items, pair_cats = pair_items[order], pair_cats[order]
    is_first = np.r_[True, pair_items[1:] != pair_items[:-1]]
    result = last
    result[pair_items[is_first]] = pair_cats[is_first]
    return result


# --------------------------------------------------------------------------- user split




def rows_of_users(user_offsets: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Row indices of all interactions of `users`, user by user, in time order (vectorized)."""
    users = np.asarray(users, dtype=np.int64)
    starts = user_offsets[users]
    lengths = user_offsets[users + 1] - starts
    return concat_ranges(starts, lengths)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    segment_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + (np.arange(total) - segment_start)


# --------------------------------------------------------------------------- training samples
