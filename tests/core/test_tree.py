"""Tree invariants for every initialisation, lookups, and the on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.tree import Tree, TreeError, depth_for
from trainer.tree.build import category_tree, kmeans_tree, random_tree, tree_from_order


def assert_valid(tree: Tree, n_items: int) -> None:
    assert tree.n_items == n_items
    assert tree.depth == depth_for(n_items, tree.arity)  # complete and as shallow as possible
    assert len(np.unique(tree.item_leaf)) == n_items  # every item on exactly one leaf
    assert (tree.leaf_item[tree.item_leaf] == np.arange(n_items)).all()
    assert (tree.leaf_item >= 0).sum() == n_items
    for level in range(tree.depth + 1):
        counts = tree.item_counts(level)
        assert counts.sum() == n_items
        assert counts.max() <= tree.capacity(level)  # balanced: no node over its capacity
    # The initialisations cut evenly, so internal nodes are never empty.
    for level in range(tree.depth):
        assert tree.nonempty(level).all()


@pytest.mark.parametrize("n_items", [1, 2, 3, 7, 8, 9, 100, 1000, 1023, 1025])
@pytest.mark.parametrize("arity", [2, 3, 4])
def test_order_cut_invariants(n_items: int, arity: int) -> None:
    order = np.random.default_rng(n_items).permutation(n_items)
    tree = tree_from_order(order, arity)
    assert_valid(tree, n_items)
    # The cut keeps the order: leaves in position order list the items in `order`.
    assert np.array_equal(tree.leaf_item[tree.leaf_item >= 0], order)


def test_category_tree_groups_categories() -> None:
    rng = np.random.default_rng(0)
    categories = rng.integers(0, 6, size=500)
    tree = category_tree(categories, seed=1, arity=2)
    assert_valid(tree, 500)
    leaf_order = tree.leaf_item[tree.leaf_item >= 0]
    sequence = categories[leaf_order]
    assert (np.diff(sequence) != 0).sum() == len(np.unique(categories)) - 1  # each category contiguous
    other = category_tree(categories, seed=2, arity=2)
    assert not np.array_equal(categories[other.leaf_item[other.leaf_item >= 0]], sequence)
    assert category_tree(categories, seed=1).equals(tree)


def test_category_tree_in_random_order_within_categories() -> None:
    """TDM's description: categories contiguous, items inside one in a seeded random order
    (the default keeps them in id order, which carries the catalogue's history)."""
    rng = np.random.default_rng(0)
    categories = rng.integers(0, 6, size=500)
    by_id = category_tree(categories, seed=1)
    shuffled = category_tree(categories, seed=1, shuffle_within=True)
    assert_valid(shuffled, 500)
    order = shuffled.leaf_item[shuffled.leaf_item >= 0]
    assert (np.diff(categories[order]) != 0).sum() == len(np.unique(categories)) - 1
    id_order = by_id.leaf_item[by_id.leaf_item >= 0]
    for category in np.unique(categories):
        inside = order[categories[order] == category]
        assert np.array_equal(np.sort(inside), id_order[categories[id_order] == category])
        assert not np.array_equal(inside, np.sort(inside))
    assert category_tree(categories, seed=1, shuffle_within=True).equals(shuffled)


@pytest.mark.parametrize("arity", [2, 3])
def test_random_and_kmeans_trees(arity: int) -> None:
    assert_valid(random_tree(777, seed=0, arity=arity), 777)
    # Two well separated blobs: k-means puts each blob under its own child of the root.
    rng = np.random.default_rng(0)
    blob = np.r_[np.zeros(128), np.ones(128)]
    x = rng.normal(size=(256, 8)) * 0.1 + blob[:, None] * 5
    tree = kmeans_tree(x, seed=0, arity=2)
    assert_valid(tree, 256)
    top = tree.ancestors(np.arange(256), 1)
    assert len(set(top[blob == 0])) == 1 and len(set(top[blob == 1])) == 1 and top[0] != top[-1]
    assert_valid(kmeans_tree(rng.normal(size=(500, 4)), seed=1, arity=arity), 500)


def test_lookups_are_consistent() -> None:
    tree = random_tree(100, seed=3, arity=2)
    items = np.arange(100)
    all_anc = tree.all_ancestors()
    for level in range(tree.depth + 1):
        assert np.array_equal(all_anc[:, level], tree.ancestors(items, level))
        ids = tree.ancestor_ids(items, level)
        levels, positions = tree.node_positions(ids)
        assert (levels == level).all() and np.array_equal(positions, tree.ancestors(items, level))
    # Children of a node contain the node's items' ancestors one level down.
    kids = tree.children(np.array([[0, 1], [2, -1]]))
    assert kids.shape == (2, 2, 2) and (kids[1, 1] == -1).all()
    assert np.array_equal(kids[0, 0], [0, 1])
    assert tree.ancestor_ids(np.array([5, -1]), 2)[1] == -1
    # Node ids: items first, then internal nodes, one id space.
    assert tree.n_rows == 100 + (2**tree.depth - 1)
    assert tree.node_ids(0, np.array([0]))[0] == 100


def test_round_trip(tmp_path: Path) -> None:
    tree = random_tree(1000, seed=0, arity=3)
    tree.save(tmp_path / "tree.npz")
    loaded = Tree.load(tmp_path / "tree.npz")
    assert loaded.equals(tree) and loaded.arity == 3


def test_bad_trees_and_files(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="holds 2 items"):
        Tree.from_leaves(np.array([0, 0, 1]))
    with pytest.raises(TreeError, match="leaf positions"):
        Tree.from_leaves(np.array([0, 9]), depth=2)
    with pytest.raises(TreeError, match="cannot hold"):
        Tree.from_leaves(np.arange(5), depth=2)
    path = tmp_path / "tree.npz"
    random_tree(50, seed=0).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TreeError, match=str(path)):
        Tree.load(path)
    with pytest.raises(TreeError, match="no such tree file"):
        Tree.load(tmp_path / "missing.npz")


def test_million_item_tree_round_trip(tmp_path: Path) -> None:
    # Load time is measured by bench/bench_tdm.py, not asserted here.
    tree = tree_from_order(np.random.default_rng(0).permutation(1_000_000))
    tree.save(tmp_path / "big.npz")
    loaded = Tree.load(tmp_path / "big.npz")
    assert loaded.equals(tree) and loaded.depth == 20
