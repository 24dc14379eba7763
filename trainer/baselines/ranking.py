"""Top-m items from dense scores: how the baselines that score every item rank them."""

from __future__ import annotations

import numpy as np

from service.core.topk import top_k
from trainer.data.split import EvalSet


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
