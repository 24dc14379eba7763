"""Initial trees: by category, random, and balanced recursive k-means on item embeddings.

All three reduce to the same step: put items in an order (or a hierarchy of groups) and cut the
ordered list into `arity` nearly equal parts, recursively, down to single items. "Nearly equal"
with the first parts taking the extra item keeps every node within its capacity and leaves
empty leaves only at the bottom level.

Category (TDM): categories in a seeded random order, items of a category together, in a fixed
order (by id). Category-random: the same with a seeded random order inside each category, as
TDM's own description has it; item ids often follow the catalogue's history (on Ciao the id
order correlates with an item's first interaction, Spearman -0.46), so id order inside a
category is side information the paper's tree does not carry. Id-order: items by id alone, no
categories (the part of the category tree's advantage that comes from the ids). Random: a
seeded permutation. K-means (TDM's re-clustering): at every level, split
each node's items into `arity` groups by k-means on their embeddings, each group forced to the
exact size the cut would give, by distance to the centroids. All levels are processed for all
nodes at once (vectorized), so a 1M-item tree builds in seconds, not hours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.core.tree import Tree, depth_for
from trainer.config import option
from trainer.data.interactions import Interactions
from trainer.errors import DataError

log = logging.getLogger(__name__)

TREE_INITS = ("category", "category-random", "id-order", "random", "kmeans")


@dataclass(frozen=True)
class TreeConfig:
    """The tree a tree method starts from."""

    # auto: category when the log has categories (TDM), else balanced k-means on co-occurrence.
    init: str = option("auto", "initial tree (auto: category when the log has categories, else kmeans); "
                       "category-random shuffles items inside a category, id-order ignores categories",
                       flag="--tree-init", choices=("auto", *TREE_INITS))
    arity: int = option(2, "tree arity", at_least=2)  # binary, as the paper


def tree_from_order(order: np.ndarray, arity: int = 2, depth: int | None = None) -> Tree:
    """Cut the item list `order` (a permutation of item ids) recursively into `arity` parts.

    A node with n items gives child j the items of rank floor(j n / a) .. floor((j + 1) n / a) -
    with ceilings, so the sizes differ by at most one and the earlier children take the extra.
    """
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    depth = depth_for(n, arity) if depth is None else depth
    rank = np.arange(n, dtype=np.int64)  # rank of each ordered item inside its node
    size = np.full(n, n, dtype=np.int64)  # size of that node
    position = np.zeros(n, dtype=np.int64)
    for _ in range(depth):
        child = (rank * arity) // size
        start = -(-child * size // arity)  # ceil(child * size / arity)
        end = -(-(child + 1) * size // arity)
        rank, size = rank - start, end - start
        position = position * arity + child
    item_leaf = np.empty(n, dtype=np.int64)
    item_leaf[order] = position
    return Tree.from_leaves(item_leaf, arity=arity, depth=depth)


def category_tree(item_category: np.ndarray, seed: int, arity: int = 2, shuffle_within: bool = False) -> Tree:
    """TDM's initial tree: shuffled categories, items grouped by category in id order, or in a
    seeded random order inside each category with `shuffle_within` (TDM's description)."""
    item_category = np.asarray(item_category)
    rng = np.random.default_rng(seed)
    category_rank = rng.permutation(int(item_category.max()) + 1)
    within = rng.permutation(len(item_category)) if shuffle_within else np.arange(len(item_category))
    order = np.lexsort((within, category_rank[item_category]))
    return tree_from_order(order, arity)


def random_tree(n_items: int, seed: int, arity: int = 2) -> Tree:
    return tree_from_order(np.random.default_rng(seed).permutation(n_items), arity)


def kmeans_tree(embeddings: np.ndarray, seed: int, arity: int = 2, iterations: int = 10) -> Tree:
    """Balanced recursive k-means: every node split into `arity` groups of the cut's sizes.

    embeddings: (n_items, d) float. Each level runs a batched Lloyd iteration for all nodes of the
    level together (segment sums by bincount), then forces balance: child j takes the items that
    are closest to centroid j relative to the remaining centroids, in the exact count that
    `tree_from_order` would give it. Returns the tree whose leaf order is that hierarchy.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n, dim = x.shape
    depth = depth_for(n, arity)
    rng = np.random.default_rng(seed)
    node = np.zeros(n, dtype=np.int64)  # node of each item at the current level (dense index)
    n_nodes = 1
    for level in range(depth):
        node_size = np.bincount(node, minlength=n_nodes)
        # Exact child sizes of the cut, per node: child j gets ceil((j+1)s/a) - ceil(js/a).
        j = np.arange(arity + 1)
        bounds = -(-j[None, :] * node_size[:, None] // arity)  # (n_nodes, arity + 1)
        child_size = np.diff(bounds, axis=1)
        centroids = _init_centroids(x, node, n_nodes, arity, rng)
        for _ in range(iterations):
            assign = _nearest(x, node, centroids)
            centroids = _segment_means(x, node * arity + assign, n_nodes * arity, centroids.reshape(-1, dim))
            centroids = centroids.reshape(n_nodes, arity, dim)
        child = _balanced_assign(x, node, centroids, child_size)
        node = node * arity + child
        n_nodes *= arity
        log.debug("kmeans tree: level %d done", level + 1)
    # `node` is now the leaf position; leaves are filled in order within each parent.
    return Tree.from_leaves(node, arity=arity, depth=depth)


def _init_centroids(x: np.ndarray, node: np.ndarray, n_nodes: int, arity: int, rng: np.random.Generator) -> np.ndarray:
    """Pick `arity` random members of each node as its starting centroids."""
    order = np.lexsort((rng.random(len(node)), node))
    sorted_node = node[order]
    start = np.searchsorted(sorted_node, np.arange(n_nodes))
    size = np.bincount(node, minlength=n_nodes)
    pick = start[:, None] + (np.arange(arity)[None, :] % np.maximum(size, 1)[:, None])
    pick = np.minimum(pick, len(order) - 1)
    return x[order[pick]]  # (n_nodes, arity, d)


def _nearest(x: np.ndarray, node: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = ((x[:, None, :] - centroids[node]) ** 2).sum(-1)  # (n, arity)
    return distances.argmin(axis=1)


def _segment_means(x: np.ndarray, segment: np.ndarray, n_segments: int, fallback: np.ndarray) -> np.ndarray:
    counts = np.bincount(segment, minlength=n_segments).astype(np.float64)
    sums = np.zeros((n_segments, x.shape[1]), dtype=np.float64)
    np.add.at(sums, segment, x)
    means = sums / np.maximum(counts, 1)[:, None]
    return np.where(counts[:, None] > 0, means, fallback).astype(np.float32)


def _balanced_assign(x: np.ndarray, node: np.ndarray, centroids: np.ndarray, child_size: np.ndarray) -> np.ndarray:
    """Assign each item to a child of its node with the exact `child_size` counts.

    Children are filled one after another: child j takes, among the items still unassigned in
    the node, the child_size[j] items with the smallest (distance to c_j - nearest distance to
    a later centroid). For arity 2 this is the classic "sort by d0 - d1 and cut" rule.
    """
    n, arity = len(node), centroids.shape[1]
    distances = ((x[:, None, :] - centroids[node]) ** 2).sum(-1)  # (n, arity)
    child = np.full(n, arity - 1, dtype=np.int64)
    remaining = np.ones(n, dtype=bool)
    for j in range(arity - 1):
        preference = distances[:, j] - distances[:, j + 1:].min(axis=1)
        preference = np.where(remaining, preference, np.inf)
        order = np.lexsort((preference, node))  # by node, then preference
        sorted_node = node[order]
        start = np.searchsorted(sorted_node, sorted_node)  # first index of each item's node
        rank_in_node = np.arange(n) - start
        take = order[(rank_in_node < child_size[sorted_node, j]) & remaining[order]]
        child[take] = j
        remaining[take] = False
    return child


def cooccurrence_embeddings(
    item: np.ndarray, user: np.ndarray, n_items: int, dim: int = 32, seed: int = 0
) -> np.ndarray:
    """Item embeddings from a truncated SVD of the (user x item) matrix: a k-means init input
    when the log has no categories and no model has been trained yet."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    n_users = int(user.max()) + 1
    matrix = sp.csr_matrix((np.ones(len(item)), (user, item)), shape=(n_users, n_items))
    matrix.data[:] = 1.0
    k = max(1, min(dim, min(matrix.shape) - 1))
    rng = np.random.default_rng(seed)
    _, singular, vt = svds(matrix.astype(np.float64), k=k, v0=rng.random(min(matrix.shape)))
    return (vt.T * np.sqrt(singular)).astype(np.float32)


def initial_tree(data: Interactions, train_users: np.ndarray, init: str, seed: int, arity: int) -> Tree:
    """The tree a tree method starts from (TDM: by category)."""
    if init == "auto":
        init = "category" if data.has_category and data.n_categories > 1 else "kmeans"
    if init not in TREE_INITS:
        raise DataError(f"unknown tree init {init!r}; choose from auto, {', '.join(TREE_INITS)}")
    if init in ("category", "category-random"):
        if not data.has_category:
            raise DataError(f"--tree-init {init} needs a log with categories; this one has none")
        return category_tree(data.item_category, seed, arity, shuffle_within=init == "category-random")
    if init == "id-order":
        return tree_from_order(np.arange(data.n_items), arity)
    if init == "random":
        return random_tree(data.n_items, seed, arity)
    from trainer.data.interactions import rows_of_users

    rows = rows_of_users(data.user_offsets, train_users)
    embeddings = cooccurrence_embeddings(data.item[rows], data.user[rows], data.n_items, seed=seed)
    return kmeans_tree(embeddings, seed, arity)
