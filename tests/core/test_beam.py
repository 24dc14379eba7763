"""Beam search against brute force: exact when the beam covers everything, and exact for any
beam >= k when scores are max-heap consistent (TDM's premise)."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.beam import beam_search, brute_force, start_level
from service.core.filters import allow_categories, combine, exclude_items
from service.core.tree import Tree
from trainer.tree.build import random_tree


class TableScorer:
    """Scores from a table: leaf scores per user, internal nodes = max over their leaves
    (max-heap) or independent noise. Counts calls to check one call per level."""

    def __init__(self, tree: Tree, leaf_scores: np.ndarray, max_heap: bool = True, seed: int = 0) -> None:
        self.tree, self.leaf_scores, self.calls = tree, leaf_scores, []
        self.node_scores: dict[int, np.ndarray] = {}
        rng = np.random.default_rng(seed)
        n_users = leaf_scores.shape[0]
        for level in range(tree.depth):
            if max_heap:
                table = np.full((n_users, tree.level_size(level)), -np.inf)
                anc = tree.ancestors(np.arange(tree.n_items), level)
                for u in range(n_users):
                    np.maximum.at(table[u], anc, leaf_scores[u])
            else:
                table = rng.normal(size=(n_users, tree.level_size(level)))
            self.node_scores[level] = table

    def __call__(self, level: int, node_ids: np.ndarray) -> np.ndarray:
        self.calls.append((level, node_ids.shape))
        rows = np.arange(node_ids.shape[0])[:, None]
        safe = np.maximum(node_ids, 0)
        if level == self.tree.depth:
            return self.leaf_scores[rows, safe]
        positions = np.where(node_ids >= 0, node_ids - self.tree.n_items - self.tree.level_offset(level), 0)
        return self.node_scores[level][rows, positions]


def setup(n_items=300, n_users=5, arity=2, seed=0):
    tree = random_tree(n_items, seed=seed, arity=arity)
    leaf = np.random.default_rng(seed + 1).normal(size=(n_users, n_items))
    return tree, leaf


@pytest.mark.parametrize("arity", [2, 3])
def test_beam_covering_all_leaves_is_brute_force(arity: int) -> None:
    tree, leaf = setup(arity=arity)
    scorer = TableScorer(tree, leaf, max_heap=False)
    got = beam_search(tree, scorer, 5, k=20, beam=tree.n_items)
    want = brute_force(tree.n_items, scorer, 5, k=20, leaf_level=tree.depth)
    assert np.array_equal(got.items, want.items)
    np.testing.assert_allclose(got.scores, want.scores)


@pytest.mark.parametrize("k, beam", [(10, 10), (10, 25), (50, 50), (1, 3)])
def test_max_heap_scores_make_beam_search_exact(k: int, beam: int) -> None:
    tree, leaf = setup(n_items=1000)
    scorer = TableScorer(tree, leaf, max_heap=True)
    got = beam_search(tree, scorer, 5, k=k, beam=beam)
    want = brute_force(tree.n_items, scorer, 5, k=k, leaf_level=tree.depth)
    assert np.array_equal(got.items, want.items)


def test_one_scorer_call_per_level_and_start_level() -> None:
    tree, leaf = setup(n_items=1000)
    scorer = TableScorer(tree, leaf)
    result = beam_search(tree, scorer, 5, k=20, beam=20)
    first = start_level(tree, 20)
    assert tree.level_size(first) > 20 >= tree.level_size(first - 1)
    assert [lv for lv, _ in scorer.calls] == list(range(first, tree.depth + 1))
    assert result.levels_scored == tree.depth + 1 - first
    assert all(shape[0] == 5 and shape[1] <= 2 * 20 + 2 for lv, shape in scorer.calls[1:-1])


def test_filters_still_return_k_and_match_filtered_brute_force() -> None:
    tree, leaf = setup(n_items=500, n_users=4)
    rng = np.random.default_rng(5)
    seen = [rng.choice(500, size=60, replace=False) for _ in range(4)]
    category = rng.integers(0, 5, size=500)
    allowed = combine(exclude_items(seen), allow_categories(category, np.array([1, 2, 3])))
    # Max-heap over the allowed leaves only: then the filtered beam search is exact too.
    mask = allowed(np.broadcast_to(np.arange(500), (4, 500)).copy())
    masked_leaf = np.where(mask, leaf, -1e9)
    scorer = TableScorer(tree, masked_leaf, max_heap=True)
    got = beam_search(tree, scorer, 4, k=40, beam=10, allowed=allowed)
    want = brute_force(tree.n_items, scorer, 4, k=40, leaf_level=tree.depth, allowed=allowed)
    assert np.array_equal(got.items, want.items)
    for u in range(4):
        assert not set(got.items[u]) & set(seen[u].tolist())
        assert set(category[got.items[u]]) <= {1, 2, 3}
    # With unrelated internal scores the beam widens at the last level and still returns k.
    noisy = TableScorer(tree, leaf, max_heap=False)
    wide = beam_search(tree, noisy, 4, k=40, beam=10, allowed=allowed)
    assert (wide.items >= 0).all()
    assert all(not set(wide.items[u]) & set(seen[u].tolist()) for u in range(4))


def test_empty_nodes_are_never_returned() -> None:
    # 10 items packed on the left of a depth-5 tree: most internal nodes are empty.
    tree = Tree.from_leaves(np.arange(10) * 2, arity=2, depth=5)
    leaf = np.random.default_rng(0).normal(size=(3, 10))
    scorer = TableScorer(tree, leaf, max_heap=False)
    result = beam_search(tree, scorer, 3, k=10, beam=2)
    assert (result.items >= 0).all() and all(len(set(r)) == 10 for r in result.items)
    assert np.isfinite(result.scores).all()


def test_fewer_items_than_k_pads() -> None:
    tree, leaf = setup(n_items=7, n_users=2)
    result = beam_search(tree, TableScorer(tree, leaf), 2, k=10, beam=4)
    assert ((result.items >= 0).sum(axis=1) == 7).all()
    assert (result.items[:, 7:] == -1).all() and np.isneginf(result.scores[:, 7:]).all()
