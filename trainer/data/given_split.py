"""Published train/test splits, read as given (the field's benchmark protocol).

LightGCN, KGAT, KGIN and their successors report recall@20 and NDCG@20 on fixed files, one line
per user: ``user_id item_id item_id ...``. Comparing with them means using those files as they
are, not our own user split: every user of the train file is trained on, a user's train items
are the features (line order standing in for time) and are never recommended back, and the
user's test items are the truth. Validation, which chooses epochs, is carved out of train, never
out of test: for a share of the users, the last part of their train items is held out of
training and becomes their validation truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.config import option
from trainer.data.formats import RawLog, one_line, open_text
from trainer.data.interactions import Interactions, build_interactions, concat_ranges, rows_of_users
from trainer.data.split import EvalSet, distinct_truth
from trainer.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "user-lines"
# Validation defaults: 3% of the users, the last 20% of each one's train items (at least one, and
# at least one left as features). The test files of the published splits hold about a fifth of
# each user's interactions, so validation asks the same kind of question on fewer users.
VALID_FRACTION = 0.03
VALID_HOLDOUT = 0.2


@dataclass(frozen=True)
class GivenSplitConfig:
    """How validation is carved out of a published split's train file."""

    valid_fraction: float = option(VALID_FRACTION, None)  # follows the protocol's --valid-fraction
    valid_holdout: float = option(
        VALID_HOLDOUT, "with --train/--test: the share of a validation user's train items (the last ones) held out "
        "of training as its validation truth", above=0, at_most=0.9)


def read_user_lines(path: Path) -> pd.DataFrame:
    """Rows (user, item, timestamp) of a ``user item item ...`` file (.gz ok), the timestamp
    being the row's position in the file: a user's items keep their line order. Lines with a
    user and no item hold no interaction and are skipped; ids stay integers when they all are."""
    users: list[str] = []
    items: list[str] = []
    try:
        with open_text(path) as lines:
            for line in lines:
                tokens = line.split()
                if len(tokens) > 1:
                    users.extend([tokens[0]] * (len(tokens) - 1))
                    items.extend(tokens[1:])
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read: {one_line(exc)}", path) from exc
    if not items:
        raise DataError("no interactions: expected lines of 'user_id item_id item_id ...'", path)
    frame = pd.DataFrame({"user": _ids(users), "item": _ids(items)})
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    return frame


def _ids(tokens: list[str]) -> np.ndarray:
    values = np.asarray(tokens)
    try:
        return values.astype(np.int64)
    except ValueError:
        return values.astype(str)


@dataclass(frozen=True)
class GivenSplit:
    """A published split, read.

    data: every train interaction (the test users' features come from it).
    test: the users with test items (features: all their train items, oldest first; truth: the
        distinct test items; test items absent from train count in |truth| as `unreachable`).
    """

    data: Interactions
    test: EvalSet
    train_path: str
    test_path: str
    test_users_not_in_train: int
    test_items_not_in_train: int

    def summary(self) -> dict:
        return {"train": self.train_path, "test": self.test_path, **self.data.summary(),
                "test_users": len(self.test), "test_interactions": int(self.test.truth_sizes().sum()),
                "test_users_not_in_train": self.test_users_not_in_train,
                "test_items_not_in_train": self.test_items_not_in_train}

    def for_training(self, seed: int, config: GivenSplitConfig) -> tuple[Interactions, EvalSet]:
        """What methods learn from (`data` less the validation users' held-out items: same users,
        items and ids) and the validation users (features: their kept train items; truth: the
        distinct held-out ones), the validation users drawn with `seed`."""
        return _carve_validation(self.data, seed, config.valid_fraction, config.valid_holdout)


def load_given_split(train: Path, test: Path) -> GivenSplit:
    """Read a published split's two files (see the module doc)."""
    data = build_interactions(RawLog(read_user_lines(train), FORMAT, train), min_interactions=1)
    test_set, users_unknown, items_unknown = _test_set(data, read_user_lines(test))
    if users_unknown or items_unknown:
        log.warning("%s: %d test users are not in train (left out: no features) and %d test interactions name "
                    "items absent from train (counted in the truth, never found)", test, users_unknown,
                    items_unknown)
    return GivenSplit(data=data, test=test_set, train_path=str(train), test_path=str(test),
                      test_users_not_in_train=users_unknown, test_items_not_in_train=items_unknown)


def _test_set(data: Interactions, frame: pd.DataFrame) -> tuple[EvalSet, int, int]:
    """The test users known to train: features all their train items, truth their distinct
    test items (those absent from train kept as a count). Also the numbers left out."""
    user_of = pd.Index(data.user_ids).get_indexer(frame["user"].to_numpy())
    item_of = pd.Index(data.item_ids).get_indexer(frame["item"].to_numpy())
    frame = frame.assign(user_code=user_of, item_code=item_of)
    users_unknown = int(frame.loc[user_of < 0, "user"].nunique())
    frame = frame[user_of >= 0].drop_duplicates(["user_code", "item"])
    users = np.unique(frame["user_code"].to_numpy()).astype(np.int64)
    known = frame[frame["item_code"] >= 0]
    unreachable = np.bincount(np.searchsorted(users, frame.loc[frame["item_code"] < 0, "user_code"].to_numpy()),
                              minlength=len(users))
    truth_items, truth_offsets = distinct_truth(np.searchsorted(users, known["user_code"].to_numpy()),
                                                known["item_code"].to_numpy(), len(users), data.n_items)
    lengths = data.user_offsets[users + 1] - data.user_offsets[users]
    test = EvalSet(users=users, feature_items=data.item[rows_of_users(data.user_offsets, users)].astype(np.int32),
                   feature_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64), truth_items=truth_items,
                   truth_offsets=truth_offsets, n_items=data.n_items,
                   unreachable=unreachable.astype(np.int64) if unreachable.any() else None)
    return test, users_unknown, int(unreachable.sum())


def _carve_validation(data: Interactions, seed: int, fraction: float, holdout: float) -> tuple[Interactions, EvalSet]:
    """Hold out the last `holdout` share (at least one item, at least one kept) of the train items
    of `fraction` of the users with two or more: their validation truth, kept out of training."""
    if not 0 <= fraction < 1:
        raise DataError(f"--valid-fraction must be in [0, 1), got {fraction}")
    if not 0 < holdout < 1:
        raise DataError(f"--valid-holdout must be in (0, 1), got {holdout}")
    lengths = data.user_lengths()
    eligible = np.flatnonzero(lengths >= 2)
    n_valid = min(len(eligible), int(round(fraction * data.n_users)))
    users = np.sort(np.random.default_rng(seed).permutation(eligible)[:n_valid]).astype(np.int64)
    held = np.clip(np.round(holdout * lengths[users]).astype(np.int64), 1, lengths[users] - 1)
    kept = lengths[users] - held
    starts = data.user_offsets[users]
    held_rows = concat_ranges(starts + kept, held)
    owner = np.repeat(np.arange(len(users), dtype=np.int64), held)
    truth_items, truth_offsets = distinct_truth(owner, data.item[held_rows], len(users), data.n_items)
    valid = EvalSet(users=users, feature_items=data.item[concat_ranges(starts, kept)].astype(np.int32),
                    feature_offsets=np.r_[0, np.cumsum(kept)].astype(np.int64), truth_items=truth_items,
                    truth_offsets=truth_offsets, n_items=data.n_items)
    return without_rows(data, held_rows), valid


def without_rows(data: Interactions, rows: np.ndarray) -> Interactions:
    """`data` less the given rows: the same users, items and ids (an item may be left with no
    interaction), each user's remaining behaviours in their order."""
    keep = np.ones(len(data), dtype=bool)
    keep[rows] = False
    user = data.user[keep]
    offsets = np.zeros(data.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=data.n_users), out=offsets[1:])
    return Interactions(user=user, item=data.item[keep], timestamp=data.timestamp[keep], user_offsets=offsets,
                        item_category=data.item_category, user_ids=data.user_ids, item_ids=data.item_ids,
                        category_ids=data.category_ids, format=data.format, source=data.source,
                        has_timestamp=data.has_timestamp, has_category=data.has_category)
