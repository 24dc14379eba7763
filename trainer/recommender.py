"""The contract every retrieval method implements, and what `fit` is given.

A method learns from the training users (and may watch validation users to choose its number of
epochs), then returns, for each user of an evaluation set, M item ids best first. Keeping the
contract this small is what lets `compare` put popularity, Item-CF, YouTube-DNN, DNN, TDM and
JTM in one table under one protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.core.topk import top_k
from trainer.data import EvalSet, Interactions, SampleSet, UserSplit


@dataclass(frozen=True)
class FitContext:
    """Everything a method may learn from. Test users are deliberately absent."""

    data: Interactions
    split: UserSplit
    samples: SampleSet  # one per interaction of a training user
    valid: EvalSet  # validation users: for early stopping / model selection only
    m: int
    exclude_seen: bool
    seed: int
    device: str = "cpu"


class Recommender(Protocol):
    name: str

    def fit(self, ctx: FitContext) -> None: ...

    def recommend(self, eval_set: EvalSet, m: int, exclude_seen: bool) -> np.ndarray:
        """(len(eval_set), m) int64 item ids, best first, -1 where fewer than m exist."""
        ...


def exclude_features(scores: np.ndarray, eval_set: EvalSet, users: slice) -> None:
    """Set the scores of each user's feature-half items to -inf, in place.

    scores: (len(range(users)), n_items) rows for eval_set users[users].
    """
    offsets = eval_set.feature_offsets
    start, stop = users.start or 0, users.stop
    rows = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
    scores[rows, eval_set.feature_items[offsets[start]:offsets[stop]]] = -np.inf


def rank_by_scores(score_batch, eval_set: EvalSet, m: int, exclude_seen: bool, batch: int = 512) -> np.ndarray:
    """Top-m items from dense scores computed `batch` users at a time.

    score_batch(users: slice) -> (n, n_items) float scores for eval_set users[users].
    """
    out = np.full((len(eval_set), m), -1, dtype=np.int64)
    for start in range(0, len(eval_set), batch):
        users = slice(start, min(start + batch, len(eval_set)))
        scores = np.array(score_batch(users), dtype=np.float64, copy=True)
        if exclude_seen:
            exclude_features(scores, eval_set, users)
        out[users], _ = top_k(scores, m)
    return out
