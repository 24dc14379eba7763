"""The user split, training samples and evaluation sets (paper section 3.1).

Users are split disjointly into train / validation / test. Training samples: every interaction
of a training user, the behaviours before it as features. Evaluation sets: the first half of a
held-out user's timeline as features, the distinct items of the second half as ground truth.
Nothing is materialised per sample: histories are gathered per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.config import MAX_HISTORY
from trainer.data.interactions import Interactions, concat_ranges
from trainer.errors import DataError

PAD = -1  # history padding value: "no behaviour here"
# The paper's split of the users: 80% train, 10% validation, 10% test (`EvalProtocol` holds the flags).
VALID_FRACTION = TEST_FRACTION = 0.1


@dataclass(frozen=True)
class UserSplit:
    """Disjoint user sets (contiguous user ids, sorted)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    seed: int
    valid_fraction: float
    test_fraction: float

    def save(self, path: Path, data: Interactions) -> None:
        """Store the split with original user ids, so it survives a re-read of the log."""
        np.savez(
            path,
            train=data.user_ids[self.train].astype(str),
            valid=data.user_ids[self.valid].astype(str),
            test=data.user_ids[self.test].astype(str),
            meta=np.array(json.dumps({
                "seed": self.seed,
                "valid_fraction": self.valid_fraction,
                "test_fraction": self.test_fraction,
                "fingerprint": data.fingerprint(),
            })),
        )

    @classmethod
    def load(cls, path: Path, data: Interactions) -> UserSplit:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta["fingerprint"] != data.fingerprint():
                raise DataError(
                    "the data no longer matches the run's split (fingerprint differs): the log "
                    "changed since training", path,
                )
            index = pd.Index(np.asarray(data.user_ids).astype(str))
            sets = {}
            for name in ("train", "valid", "test"):
                positions = index.get_indexer(archive[name])
                if (positions < 0).any():
                    raise DataError(f"split names users that are not in the data ({name})", path)
                sets[name] = np.sort(positions).astype(np.int64)
        return cls(seed=meta["seed"], valid_fraction=meta["valid_fraction"],
                   test_fraction=meta["test_fraction"], **sets)


def split_users(n_users: int, seed: int, valid_fraction: float = VALID_FRACTION,
                test_fraction: float = TEST_FRACTION) -> UserSplit:
    """Shuffle users with `seed` and cut them into train / validation / test.

    Validation and test get at least one user each when the fraction is positive.
    """
    if not 0 <= valid_fraction < 1 or not 0 < test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise DataError(
            f"bad split fractions: validation {valid_fraction}, test {test_fraction} "
            "(need 0 <= validation, 0 < test, validation + test < 1)"
        )
    permutation = np.random.default_rng(seed).permutation(n_users)
    n_test = max(1, int(round(n_users * test_fraction)))
    n_valid = max(1, int(round(n_users * valid_fraction))) if valid_fraction > 0 else 0
    if n_test + n_valid >= n_users:
        raise DataError(f"{n_users} users are too few to split into train, validation and test")
    test = np.sort(permutation[:n_test])
    valid = np.sort(permutation[n_test:n_test + n_valid])
    train = np.sort(permutation[n_test + n_valid:])
    return UserSplit(train=train, valid=valid, test=test, seed=seed,
                     valid_fraction=valid_fraction, test_fraction=test_fraction)


@dataclass(frozen=True)
class SampleSet:
    """Training samples: (behaviours before t, item at t) for every interaction of the users.

    Stored as row indices into `Interactions.item`; `histories` gathers the feature matrix for a
    batch, so memory is O(samples), not O(samples x history length).

    rows: (S,) row of the target interaction; first: (S,) the user's first row (int32 while
    the log has under 2**31 rows: 800 MB instead of 1.6 GB at the paper's 100M samples).
    """

    items: np.ndarray  # the Interactions.item array (shared, not copied)
    rows: np.ndarray
    first: np.ndarray
    max_history: int
    # None: a sample's features are the behaviours before it (the paper's). Otherwise (S,) the
    # row after the user's last one: the features are all the user's other behaviours, most
    # recent first (`HISTORIES`, "others").
    end: np.ndarray | None = None
    # "shuffled": the user of each row of `items`, and `items` with every user's behaviours in
    # the order the last `reshuffle` drew (samples and features are positions in that order).
    owner: np.ndarray | None = None
    shuffled: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ordered_items(self) -> np.ndarray:
        """The items in the order the samples' positions refer to."""
        return self.items if self.shuffled is None else self.shuffled

    @property
    def targets(self) -> np.ndarray:
        return self.ordered_items[self.rows]

    def histories(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """(B, max_history) int32 item ids, most recent first, padded with PAD (-1)."""
        rows = self.rows if index is None else self.rows[index]
        first = self.first if index is None else self.first[index]
        if self.end is None:
            return gather_history(self.ordered_items, rows, first, self.max_history)
        end = self.end if index is None else self.end[index]
        return gather_history(self.items, end, first, self.max_history, skip=rows)

    def reshuffle(self, rng: np.random.Generator) -> None:
        """Draw a new order of every user's behaviours ("shuffled" samples; others: nothing to do).
        Each epoch then asks other questions of the same log: each item is predicted from another
        random subset of the user's other items."""
        if self.shuffled is None or self.owner is None:
            return
        order = np.lexsort((rng.random(len(self.items)), self.owner))
        self.shuffled[:] = self.items[order]


def gather_history(items: np.ndarray, end_rows: np.ndarray, first_rows: np.ndarray, length: int,
                   skip: np.ndarray | None = None) -> np.ndarray:
    """For each (end, first): items[end-1], items[end-2], ... down to `first`, padded to
    `length`; with `skip`, stepping over each one's row `skip` (a sample's own target)."""
    positions = end_rows[:, None] - 1 - np.arange(length)[None, :]
    if skip is not None:
        positions = positions - (positions <= skip[:, None])
    valid = positions >= first_rows[:, None]
    history = items[np.where(valid, positions, 0)].astype(np.int32)
    history[~valid] = PAD
    return history


# What a training sample sees as its user's behaviours: those before it (the paper's, and the
# question a time-ordered log asks); all the user's others; or those before it in an order drawn
# afresh every epoch (the last two for a log with no order at all: KGAT's amazon-book lines, which
# looked orderless, turned out time-like, and both lose there; docs/experiments/amazon-book-probes.md).
HISTORIES = ("before", "others", "shuffled")


def make_samples(data: Interactions, users: np.ndarray, max_history: int = MAX_HISTORY,
                 min_history: int = 1, history: str = "before") -> SampleSet:
    """Every interaction of `users` with at least `min_history` other behaviours as features
    (earlier ones with `history` "before", any other of the user's with "others") is a sample."""
    if max_history < 1:
        raise DataError(f"max_history must be >= 1, got {max_history}")
    if history not in HISTORIES:
        raise DataError(f"sample history must be one of {', '.join(HISTORIES)}, got {history!r}")
    users = np.asarray(users, dtype=np.int64)
    lengths = data.user_offsets[users + 1] - data.user_offsets[users]
    index_type = np.int32 if len(data.item) < 2**31 else np.int64
    if history == "others":  # every row of a user with more than min_history rows
        counts = np.where(lengths > min_history, lengths, 0)
        rows = concat_ranges(data.user_offsets[users], counts)
        first = np.repeat(data.user_offsets[users], counts)
        end = np.repeat(data.user_offsets[users + 1], counts)
        return SampleSet(items=data.item, rows=rows.astype(index_type, copy=False),
                         first=first.astype(index_type, copy=False), max_history=max_history,
                         end=end.astype(index_type, copy=False))
    # Per user, the rows from its first + min_history to its end: no (S,) mask or temporary.
    skip = np.minimum(lengths, min_history)
    rows = concat_ranges(data.user_offsets[users] + skip, lengths - skip)
    first = np.repeat(data.user_offsets[users], lengths - skip)
    shuffled = {}
    if history == "shuffled":  # the log's order until the first `reshuffle`
        owner = np.repeat(np.arange(data.n_users, dtype=np.int32), np.diff(data.user_offsets))
        shuffled = {"owner": owner, "shuffled": data.item.copy()}
    return SampleSet(items=data.item, rows=rows.astype(index_type, copy=False),
                     first=first.astype(index_type, copy=False), max_history=max_history, **shuffled)


# --------------------------------------------------------------------------- evaluation sets


@dataclass(frozen=True)
class EvalSet:
    """Held-out users under the paper's protocol.

    The first half (``n // 2`` behaviours) of each user's timeline are the features, the distinct
    items of the second half the ground truth. CSR arrays: user i's features are
    ``feature_items[feature_offsets[i]:feature_offsets[i + 1]]`` (oldest first).
    """

    users: np.ndarray
    feature_items: np.ndarray
    feature_offsets: np.ndarray
    truth_items: np.ndarray
    truth_offsets: np.ndarray
    n_items: int
    # Per user, truth items no method can return (absent from the training data, as a published
    # split's test file may name): counted in |truth|, so recall is not flattered. None: no such item.
    unreachable: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def histories(self, length: int) -> np.ndarray:
        """The last `length` feature behaviours per user, most recent first, PAD-padded."""
        return gather_history(self.feature_items, self.feature_offsets[1:], self.feature_offsets[:-1], length)

    def truth_sizes(self) -> np.ndarray:
        """|truth| per user, the unreachable items included."""
        sizes = np.diff(self.truth_offsets)
        return sizes if self.unreachable is None else sizes + self.unreachable

    def feature_matrix(self, dtype: type = np.float32):
        """Sparse (users x items) indicator of the feature behaviours (scipy CSR)."""
        import scipy.sparse as sp

        n = len(self.users)
        rows = np.repeat(np.arange(n), np.diff(self.feature_offsets))
        matrix = sp.csr_matrix(
            (np.ones(len(rows), dtype=dtype), (rows, self.feature_items)), shape=(n, self.n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1
        return matrix

    def subset(self, index: np.ndarray) -> EvalSet:
        index = np.asarray(index, dtype=np.int64)
        f_rows = concat_ranges(self.feature_offsets[index], np.diff(self.feature_offsets)[index])
        t_rows = concat_ranges(self.truth_offsets[index], np.diff(self.truth_offsets)[index])
        return EvalSet(
            users=self.users[index],
            feature_items=self.feature_items[f_rows],
            feature_offsets=np.r_[0, np.cumsum(np.diff(self.feature_offsets)[index])],
            truth_items=self.truth_items[t_rows],
            truth_offsets=np.r_[0, np.cumsum(np.diff(self.truth_offsets)[index])],
            n_items=self.n_items,
            unreachable=None if self.unreachable is None else self.unreachable[index],
        )


def make_eval_set(data: Interactions, users: np.ndarray) -> EvalSet:
    """Split each user's time-ordered behaviours in half: features, then distinct ground truth."""
    users = np.asarray(users, dtype=np.int64)
    starts = data.user_offsets[users]
    lengths = data.user_offsets[users + 1] - starts
    n_features = lengths // 2
    feature_rows = concat_ranges(starts, n_features)
    truth_rows = concat_ranges(starts + n_features, lengths - n_features)
    owner = np.repeat(np.arange(len(users), dtype=np.int64), lengths - n_features)
    truth_items, truth_offsets = distinct_truth(owner, data.item[truth_rows], len(users), data.n_items)
    return EvalSet(
        users=users,
        feature_items=data.item[feature_rows].astype(np.int32),
        feature_offsets=np.r_[0, np.cumsum(n_features)].astype(np.int64),
        truth_items=truth_items,
        truth_offsets=truth_offsets,
        n_items=data.n_items,
    )


def distinct_truth(owner: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct items in `EvalSet`'s CSR layout (truth_items int32, truth_offsets
    int64): unique (user, item) pairs, kept grouped by user. owner: (n,) the user's position
    (0 .. n_users - 1) of each item."""
    pairs = np.unique(np.asarray(owner, dtype=np.int64) * n_items + items)
    offsets = np.searchsorted(pairs // n_items, np.arange(n_users + 1)).astype(np.int64)
    return (pairs % n_items).astype(np.int32), offsets


def sampled_histories(n_items: int, length: int, count: int, seed: int = 0) -> np.ndarray:
    """Random item sequences of random lengths, PAD-filled and laid out as `EvalSet.histories`:
    parity checks of a scorer without its data."""
    rng = np.random.default_rng(seed)
    histories = rng.integers(0, n_items, size=(count, length))
    lengths = rng.integers(1, length + 1, size=count)
    histories[np.arange(length)[None, :] >= lengths[:, None]] = PAD
    return histories
