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

from trainer.data.interactions import Interactions
from trainer.data.split import EvalSet, SampleSet, UserSplit


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
