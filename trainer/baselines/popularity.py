"""Most popular items among the training users: the floor every learnt method must clear."""

from __future__ import annotations

import numpy as np

from trainer.baselines.ranking import rank_by_scores
from trainer.data.split import EvalSet
from trainer.fit.context import FitContext


class Popularity:
    name = "pop"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, ctx: FitContext) -> None:
        # Ties broken by item id through a tiny decreasing offset, so rankings are reproducible.
        counts = ctx.data.item_counts(ctx.split.train).astype(np.float64)
        self.counts = counts - np.arange(len(counts)) * 1e-9

    def recommend(self, eval_set: EvalSet, m: int, exclude_seen: bool) -> np.ndarray:
        assert self.counts is not None, "fit first"
        counts = self.counts
        return rank_by_scores(
            lambda users: np.broadcast_to(counts, (users.stop - users.start, len(counts))),
            eval_set, m, exclude_seen,
        )
