"""The index: a tree and the scorer learnt with it, behind one `search(histories, k, params)`.

A tree index is only meaningful with the scorer that was trained on it, so one object holds
both and answers the question both sides ask, the top k items for a batch of users, the same
way for the offline evaluator (PyTorch scores) and for the service (onnxruntime scores). Per
call knobs travel in `SearchParams` (the beam, an allow filter, per-user exclusions), and
results are (U, k) item ids padded with -1 and scores padded with -inf, as faiss does.

A scorer is anything with the two halves of the user-node model (`UserScorer`): the users'
state from their behaviour rows, then logits of candidate nodes against that state. The state
is computed once per user and level, and `level_scores` is the one adapter from such a scorer
to the per-level score function the beam search calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.core.beam import ScoreFn, SearchResult, beam_search, brute_force
from service.core.filters import ItemFilter, combine, exclude_items
from service.core.tree import Tree


class UserScorer(Protocol):
    def user_states(self, rows: Sequence[np.ndarray]) -> list[Any]:
        """The users' states for each (U, L) int64 matrix of behaviour rows (one per level the
        search will visit): given together, so a runtime can compute them in one call."""
        ...

    def score_state(self, state: Any, nodes: np.ndarray) -> np.ndarray:
        """(U, C) logits of the (U, C) int64 node rows against one of `user_states`' states."""
        ...


@dataclass(frozen=True)
class SearchParams:
    """What may change from one search to the next."""

    beam: int | None = None  # None: score every item (exact; DNN, and the fidelity reference)
    allowed: ItemFilter | None = None  # the same for every user: retired items, categories, an allow-list
    exclude: Sequence[np.ndarray] | None = None  # per user: item ids never returned (e.g. the history)
    on_level: Callable[[int, float], None] | None = None  # seconds each scorer call took, by level


def level_scores(scorer: UserScorer, tree: Tree | None, histories: np.ndarray, hierarchical: bool) -> ScoreFn:
    """Bind users' histories (U, L) item ids, most recent first, -1 padded, to the beam search's
    ``score(level, node_ids)``.

    Plain features: every level uses the item rows, so there is one state. Hierarchical (JTM
    section 2.3): level l uses the behaviours' ancestors at l (`Tree.ancestor_ids_by_level`,
    the mapping training used). A search walks every level below the first one it scores, so
    the states of that level and all below it are asked for in one `user_states` call."""
    if hierarchical and tree is None:
        raise ValueError("the hierarchical representation needs a tree")
    ids_at = tree.ancestor_ids_by_level(histories) if hierarchical else None
    states: dict[int, Any] = {}

    def score(level: int, node_ids: np.ndarray) -> np.ndarray:
        if ids_at is None:
            if 0 not in states:
                states[0] = scorer.user_states([histories])[0]
            return scorer.score_state(states[0], node_ids)
        if level not in states:
            assert tree is not None
            missing = [lv for lv in range(level, tree.depth + 1) if lv not in states]
            states.update(zip(missing, scorer.user_states([ids_at(lv) for lv in missing]), strict=True))
        return scorer.score_state(states[level], node_ids)

    return score


def _timed(score: ScoreFn, on_level: Callable[[int, float], None]) -> ScoreFn:
    def timed(level: int, node_ids: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        result = score(level, node_ids)
        on_level(level, time.perf_counter() - started)
        return result

    return timed


class TreeIndex:
    """A tree and its scorer (no tree: every item is scored, `n_items` of them)."""

    def __init__(self, tree: Tree | None, scorer: UserScorer, hierarchical: bool, n_items: int | None = None,
                 batch_users: int = 256) -> None:
        if tree is None and n_items is None:
            raise ValueError("an index without a tree needs n_items")
        if hierarchical and tree is None:
            raise ValueError("the hierarchical representation needs a tree")
        self.tree = tree
        self.scorer = scorer
        self.hierarchical = hierarchical
        self.n_items = tree.n_items if tree is not None else int(n_items)  # type: ignore[arg-type]
        self.batch_users = batch_users  # users scored together: bounds the (U, C) candidate matrices

    def score_fn(self, histories: np.ndarray) -> ScoreFn:
        """The per-level score function for these users (`level_scores`)."""
        return level_scores(self.scorer, self.tree, histories, self.hierarchical)

    def search(self, histories: np.ndarray, k: int, params: SearchParams | None = None) -> SearchResult:
        """Top-k items for each row of `histories` (U, L) item ids, most recent first, -1 padded:
        layer-wise beam search of width `params.beam`, or every item scored when it is None."""
        params = params or SearchParams()
        if params.beam is not None and self.tree is None:
            raise ValueError("beam search needs a tree")
        if params.exclude is not None and len(params.exclude) != len(histories):
            raise ValueError(f"exclude has {len(params.exclude)} rows for {len(histories)} users")
        parts: list[SearchResult] = []
        for start in range(0, len(histories), self.batch_users):
            stop = min(start + self.batch_users, len(histories))
            score = self.score_fn(histories[start:stop])
            if params.on_level is not None:
                score = _timed(score, params.on_level)
            exclude = exclude_items(params.exclude[start:stop]) if params.exclude is not None else None
            allowed = combine(params.allowed, exclude)
            if params.beam is None:
                leaf_level = self.tree.depth if self.tree is not None else 0
                parts.append(brute_force(self.n_items, score, stop - start, k, leaf_level, allowed))
            else:
                assert self.tree is not None
                parts.append(beam_search(self.tree, score, stop - start, k, params.beam, allowed))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return SearchResult(np.full((0, k), -1, dtype=np.int64), np.full((0, k), -np.inf), 0, 0)
        return SearchResult(np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts]),
                            sum(p.levels_scored for p in parts), sum(p.candidates_scored for p in parts))
