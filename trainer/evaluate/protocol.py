"""The paper's protocol on held-out users: the one path that training's validation, the joint
loop's records, `train`'s test metrics, `evaluate` and `compare` all go through.

Retrieval is `trainer.evaluate.recommend`, i.e. the service's index (beam search, or a brute-force
scan for DNN and for the fidelity reference), so what is measured here is what production serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.core.tree import Tree
from trainer.config import MAX_HISTORY, option
from trainer.data.interactions import Interactions
from trainer.data.split import (
    HISTORIES,
    TEST_FRACTION,
    VALID_FRACTION,
    EvalSet,
    UserSplit,
    make_eval_set,
    make_samples,
    split_users,
)
from trainer.evaluate.metrics import UserMetrics, user_metrics
from trainer.evaluate.recommend import recommend
from trainer.fit.context import FitContext, Recommender
from trainer.model.scorer import TreeScorer


@dataclass(frozen=True)
class EvalProtocol:
    """The paper's protocol (section 3.1): users split disjointly into train / validation / test;
    a held-out user's first half of behaviours are the features, the distinct items of the second
    half the truth; P/R/F@M averaged over users. Epochs and iterations are chosen on validation
    users, never on test users."""

    m: int = option(200, "M in P/R/F@M, for validation and test (paper: 200)", at_least=1)
    exclude_seen: bool = option(False, "never recommend an item of the user's feature half (not in the paper)")
    valid_fraction: float = option(VALID_FRACTION, "share of users held out for validation")
    test_fraction: float = option(TEST_FRACTION, "share of users held out for test")
    max_history: int = option(MAX_HISTORY, "behaviours used as features")
    # trainer.data.split.HISTORIES: which behaviours a training sample sees.
    sample_history: str = option("before", "a training sample's features: the user's behaviours before it "
                                 "(the paper's); all the user's others; or those before it in an order drawn "
                                 "afresh each epoch (the last two: logs without time order)", choices=HISTORIES)

    def split(self, data: Interactions, seed: int) -> UserSplit:
        return split_users(data.n_users, seed, self.valid_fraction, self.test_fraction)

    def fit_context(self, data: Interactions, split: UserSplit, seed: int, device: str) -> FitContext:
        """What a method may learn from under this protocol: every interaction of the training
        users as a sample, the validation users for choosing epochs. Test users stay out."""
        return FitContext(data=data, split=split, samples=make_samples(data, split.train, self.max_history,
                                                                       history=self.sample_history),
                          valid=make_eval_set(data, split.valid), m=self.m, exclude_seen=self.exclude_seen,
                          seed=seed, device=device)


def validation_metrics(model: TreeScorer, tree: Tree | None, ctx: FitContext, beam: int | None) -> dict[str, float]:
    """Mean P/R/F@M of the validation users (what chooses epochs and joint iterations)."""
    recommended = recommend(model, tree, ctx.valid, ctx.m, ctx.exclude_seen, beam)
    return user_metrics(recommended, ctx.valid, ctx.m).means()


@dataclass
class Evaluation:
    """One method on one set of users: per-user metrics, and for approximate methods (beam
    search, ANN index) how much of the same model's brute-force top-m they found."""

    recommended: np.ndarray
    metrics: UserMetrics
    seconds: float  # retrieval only
    beam: int | None = None  # tree methods: the beam searched with
    fidelity: float | None = None
    brute_force_recall: float | None = None


def evaluate(method: Recommender, users: EvalSet, m: int, exclude_seen: bool, fidelity: bool,
             beam: int | None = None) -> Evaluation:
    """Recommend for `users` and score the recommendations; `fidelity` also scans every item
    with the same model, for methods that retrieve approximately (`approximate`: a tree's beam
    search, an ANN index; slow at scale). `beam` overrides a tree method's beam."""
    started = time.perf_counter()
    if beam is None:
        recommended = method.recommend(users, m, exclude_seen)
    else:
        recommended = method.recommend(users, m, exclude_seen, beam=beam)  # type: ignore[call-arg]
    result = Evaluation(recommended, user_metrics(recommended, users, m), time.perf_counter() - started)
    if getattr(method, "tree", None) is not None:
        result.beam = beam or method.config.search_beam(m)  # type: ignore[attr-defined]
    if fidelity and getattr(method, "approximate", False):
        exact = method.brute_force(users, m, exclude_seen)  # type: ignore[attr-defined]
        result.fidelity = beam_fidelity(recommended, exact)
        result.brute_force_recall = user_metrics(exact, users, m).means()["recall"]
    return result


def beam_fidelity(beam_items: np.ndarray, exact_items: np.ndarray) -> float:
    """Mean over users of |beam top-k ∩ brute-force top-k| / |brute-force top-k|."""
    overlaps = []
    for got, want in zip(beam_items, exact_items, strict=True):
        want = want[want >= 0]
        if len(want):
            overlaps.append(len(np.intersect1d(got[got >= 0], want)) / len(want))
    return float(np.mean(overlaps)) if overlaps else 1.0
