"""The index (`service.core.index.TreeIndex`) against a numpy brute force written here: the same
top-k with every item scored, with filters and per-user exclusions, whatever the user batching;
the scorer's user states computed once per batch and level."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.index import SearchParams, TreeIndex, level_scores
from service.core.tree import Tree
from trainer.tree.build import random_tree


class MeanScorer:
    """A `UserScorer`: the state is the mean embedding of the behaviour rows (-1 ignored), a
    node's logit its dot product with the node's row. Records every `user_states` call."""

    def __init__(self, n_rows: int, dim: int = 6, seed: int = 0) -> None:
        self.table = np.random.default_rng(seed).normal(size=(n_rows, dim))
        self.calls: list[int] = []

    def state(self, rows: np.ndarray) -> np.ndarray:
        valid = rows >= 0
        summed = (self.table[np.maximum(rows, 0)] * valid[..., None]).sum(axis=1)
        return summed / np.maximum(valid.sum(axis=1), 1)[:, None]

    def user_states(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        self.calls.append(len(rows))
        return [self.state(r) for r in rows]

    def score_state(self, state: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        return np.einsum("ud,ucd->uc", state, self.table[np.maximum(nodes, 0)])


def exact_top_k(scorer: MeanScorer, histories: np.ndarray, n_items: int, k: int,
                banned: list[np.ndarray] | None = None) -> np.ndarray:
    """Every item scored with the leaf-level state (the behaviours' own rows), best first."""
    scores = scorer.state(histories) @ scorer.table[:n_items].T
    if banned is not None:
        for u, items in enumerate(banned):
            scores[u, items] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def setup(n_items: int = 120, n_users: int = 10, seed: int = 0) -> tuple[Tree, MeanScorer, np.ndarray]:
    tree = random_tree(n_items, seed=seed)
    histories = np.random.default_rng(seed + 1).integers(-1, n_items, size=(n_users, 12))
    return tree, MeanScorer(tree.n_rows, seed=seed), histories


@pytest.mark.parametrize("hierarchical", [False, True])
def test_without_a_beam_every_item_is_scored(hierarchical: bool) -> None:
    tree, scorer, histories = setup()
    result = TreeIndex(tree, scorer, hierarchical).search(histories, 15)
    np.testing.assert_array_equal(result.items, exact_top_k(scorer, histories, tree.n_items, 15))
    assert result.items.shape == result.scores.shape == (len(histories), 15)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_a_beam_over_every_leaf_is_exact_and_batching_changes_nothing(hierarchical: bool) -> None:
    tree, scorer, histories = setup()
    whole = TreeIndex(tree, scorer, hierarchical).search(histories, 15, SearchParams(beam=tree.n_items))
    np.testing.assert_array_equal(whole.items, exact_top_k(scorer, histories, tree.n_items, 15))
    narrow = SearchParams(beam=8)
    one_batch = TreeIndex(tree, scorer, hierarchical).search(histories, 15, narrow)
    batched = TreeIndex(tree, scorer, hierarchical, batch_users=3).search(histories, 15, narrow)
    np.testing.assert_array_equal(one_batch.items, batched.items)
    np.testing.assert_array_equal(one_batch.scores, batched.scores)
    assert batched.candidates_scored == one_batch.candidates_scored


def test_exclusions_are_per_user_and_combine_with_the_allow_filter() -> None:
    tree, scorer, histories = setup()
    rng = np.random.default_rng(5)
    exclude = [rng.choice(tree.n_items, size=rng.integers(0, 30), replace=False) for _ in histories]
    odd = np.arange(tree.n_items) % 2 == 1

    def allowed(ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & odd[np.maximum(ids, 0)]

    params = SearchParams(beam=tree.n_items, allowed=allowed, exclude=exclude)
    got = TreeIndex(tree, scorer, False, batch_users=4).search(histories, 10, params).items
    banned = [np.union1d(e, np.flatnonzero(~odd)) for e in exclude]
    np.testing.assert_array_equal(got, exact_top_k(scorer, histories, tree.n_items, 10, banned))
    for row, excluded in zip(got, exclude, strict=True):
        assert not np.isin(row, excluded).any() and odd[row].all()


def test_without_a_tree_every_item_is_scored_and_a_beam_is_refused() -> None:
    _, scorer, histories = setup()
    index = TreeIndex(None, scorer, False, n_items=50)
    np.testing.assert_array_equal(index.search(histories, 7).items, exact_top_k(scorer, histories, 50, 7))
    with pytest.raises(ValueError, match="needs a tree"):
        index.search(histories, 7, SearchParams(beam=10))
    with pytest.raises(ValueError, match="needs a tree"):
        TreeIndex(None, scorer, True, n_items=50)
    with pytest.raises(ValueError, match="rows for"):
        index.search(histories, 7, SearchParams(exclude=[np.zeros(0, np.int64)]))


def test_states_are_computed_once_per_batch_all_levels_together() -> None:
    """Plain features: one state for every level. Hierarchical: the first level scored and
    every level below it in one `user_states` call."""
    tree, scorer, histories = setup()
    TreeIndex(tree, scorer, False).search(histories, 10, SearchParams(beam=6))
    assert scorer.calls == [1]
    scorer.calls.clear()
    index = TreeIndex(tree, scorer, True, batch_users=4)
    index.search(histories, 10, SearchParams(beam=6))
    assert len(scorer.calls) == 3  # three batches of users
    first_scored = next(lv for lv in range(1, tree.depth + 1) if len(tree.nonempty_positions(lv)) > 6)
    assert set(scorer.calls) == {tree.depth - first_scored + 1}


def test_level_scores_map_the_behaviours_to_their_ancestors() -> None:
    tree, scorer, histories = setup()
    score = level_scores(scorer, tree, histories, hierarchical=True)
    level = tree.depth - 2
    nodes = tree.node_ids(level, np.array([[0, 1, 2]] * len(histories)))
    expected = scorer.score_state(scorer.state(tree.ancestor_ids(histories, level)), nodes)
    np.testing.assert_allclose(score(level, nodes), expected)


def test_on_level_times_each_scorer_call() -> None:
    tree, scorer, histories = setup()
    seen: list[tuple[int, float]] = []
    params = SearchParams(beam=4, on_level=lambda level, seconds: seen.append((level, seconds)))
    result = TreeIndex(tree, scorer, False).search(histories[:1], 5, params)
    assert len(seen) == result.levels_scored and seen[-1][0] == tree.depth
    assert all(seconds >= 0 for _, seconds in seen)
