"""Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009) of ranked lists.

Used for the items added since training (`trainer add-items`): the model's ranking of them and
their recent popularity are nearly independent signals (the model places a new item by what it
was consumed with, popularity counts its events, and most new items have a single event), and
fused they find more of a user's next new items than either (docs/RESULTS.md, "New items
without retraining"). The service and the offline evaluation share this one function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60  # the published constant; not tuned here


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], m: int, k: int = RRF_K) -> np.ndarray:
    """Top-m ids by the sum over `rankings` (ids, best first) of 1 / (k + rank), rank from 1;
    an id absent from a ranking gets nothing from it. Ties keep first-seen order."""
    score: dict = {}
    for ranking in rankings:
        for rank, item in enumerate(np.asarray(ranking).tolist(), start=1):
            score[item] = score.get(item, 0.0) + 1.0 / (k + rank)
    ordered = sorted(score, key=lambda item: -score[item])  # sorted() is stable
    return np.asarray(ordered[:m])
