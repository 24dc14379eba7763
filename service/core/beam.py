"""Layer-wise beam search over the tree, and brute-force scoring of every leaf (numpy only).

This one implementation serves both the offline evaluator (scores from PyTorch) and the online
service (scores from onnxruntime), so offline metrics describe exactly what production serves.

The scorer is a callable ``score(level, node_ids) -> scores``: node_ids is (U, C) int64
embedding rows of candidate nodes at `level` for U users (-1 = no candidate), and the result is
(U, C) float, one row per user of the batch the scorer was built for. All candidates of a level
go to the scorer in one call, which is what makes batching (and cross-request micro-batching)
possible. Scores are only ever compared within a level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.core.filters import ItemFilter
from service.core.topk import gather, top_k
from service.core.tree import Tree


class ScoreFn(Protocol):
    def __call__(self, level: int, node_ids: np.ndarray) -> np.ndarray: ...




@dataclass(frozen=True)
class SearchResult:
    """items: (U, k) int64 item ids best first, -1 padded; scores: (U, k) float, -inf padded."""

    items: np.ndarray
    scores: np.ndarray
    levels_scored: int  # how many levels went through the scorer
    candidates_scored: int  # total (user, node) pairs scored


def start_level(tree: Tree, beam: int) -> int:
    """First level with more non-empty nodes than the beam: everything above it is kept anyway."""
    for level in range(1, tree.depth + 1):
        if len(tree.nonempty_positions(level)) > beam:
            return level
    return tree.depth


def beam_search(
    tree: Tree,
    score: ScoreFn,
    n_users: int,
    k: int,
    beam: int,
    allowed: ItemFilter | None = None,
) -> SearchResult:
    """Top-k leaves for each of `n_users` users by layer-wise beam search.

    From the first level wider than the beam, keep the `beam` best nodes per level and expand
    only their children. A level keeps more than `beam` nodes (in score order) when the kept
    ones would hold fewer than k items; at the last internal level the count is of items that
    pass `allowed`. If a filter still leaves a user short of k, the search reruns with a wider
    beam until every user has k results or the beam covers the tree.
    """
    if k < 1 or beam < 1:
        raise ValueError(f"k and beam must be positive, got k={k}, beam={beam}")
    widest = tree.widest_level()
    levels_scored = scored = 0
    while True:
        result = _search(tree, score, n_users, k, beam, allowed)
        levels_scored += result.levels_scored
        scored += result.candidates_scored
        short = (result.items >= 0).sum(axis=1) < min(k, tree.n_items)
        if allowed is None or not short.any() or beam >= widest:
            return SearchResult(result.items, result.scores, levels_scored, scored)
        beam = min(beam * 4, widest)


def _search(tree: Tree, score: ScoreFn, n_users: int, k: int, beam: int, allowed: ItemFilter | None) -> SearchResult:
    level = start_level(tree, beam)
    first = tree.nonempty_positions(level)
    candidates = np.broadcast_to(first, (n_users, len(first)))
    dense = True  # no -1 among the candidates: the common case, which skips the masking below
    levels_scored = scored = 0
    while True:
        if dense and level < tree.depth:
            # tree.node_ids without the -1 mask; every candidate is valid, so no mask either
            ids = tree.n_items + tree.level_offset(level) + candidates
            scores = _score(score, level, ids, None)
            scored += ids.size
        else:
            ids = tree.node_ids(level, candidates)
            valid = ids >= 0
            if level == tree.depth and allowed is not None:
                valid &= allowed(np.where(valid, ids, -1))
            scores = _score(score, level, ids, valid)
            scored += int(valid.sum())
        levels_scored += 1
        if level == tree.depth:
            index, values = top_k(scores, k)
            items = np.where(index >= 0, gather(ids, np.maximum(index, 0)), -1)
            return SearchResult(items=items, scores=values, levels_scored=levels_scored, candidates_scored=scored)
        kept = _keep(tree, level, candidates, scores, beam, k, allowed)
        nonempty = tree.nonempty(level + 1)
        if (kept >= 0).all():
            children = (kept[..., None] * tree.arity + np.arange(tree.arity)).reshape(n_users, -1)
            usable = nonempty[children]
            dense = bool(usable.all())
            candidates = children if dense else _compact(np.where(usable, children, -1))
        else:
            children = tree.children(kept).reshape(n_users, -1)
            children = np.where((children >= 0) & nonempty[np.maximum(children, 0)], children, -1)
            candidates = _compact(children)
            dense = bool((candidates >= 0).all())
        level += 1


def brute_force(
    n_items: int,
    score: ScoreFn,
    n_users: int,
    k: int,
    leaf_level: int,
    allowed: ItemFilter | None = None,
    chunk: int = 8192,
) -> SearchResult:
    """Score every item as a leaf-level node and keep the top k: the exact reference.

    Items are scored `chunk` at a time with a running top-k, so memory stays O(U * (k + chunk)).
    """
    best_items = np.full((n_users, 0), -1, dtype=np.int64)
    best_scores = np.full((n_users, 0), -np.inf)
    for start in range(0, n_items, chunk):
        ids = np.broadcast_to(np.arange(start, min(start + chunk, n_items), dtype=np.int64),
                              (n_users, min(chunk, n_items - start)))
        valid = np.ones(ids.shape, dtype=bool) if allowed is None else allowed(ids)
        scores = _score(score, leaf_level, ids, valid)
        merged_ids = np.concatenate([best_items, ids], axis=1)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        index, best_scores = top_k(merged_scores, k)
        best_items = np.where(index >= 0, gather(merged_ids, np.maximum(index, 0)), -1)
    return SearchResult(items=best_items, scores=best_scores, levels_scored=1, candidates_scored=n_items * n_users)


def _score(score: ScoreFn, level: int, ids: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Call the scorer with invalid entries as -1 and mask them to -inf afterwards (valid None:
    every entry is valid)."""
    everything = valid is None or bool(valid.all())
    result = np.asarray(score(level, ids if everything else np.where(valid, ids, -1)), dtype=np.float64)
    if result.shape != ids.shape:
        raise ValueError(f"scorer returned shape {result.shape} for candidates {ids.shape}")
    return result if everything else np.where(valid, result, -np.inf)


def _keep(
    tree: Tree, level: int, candidates: np.ndarray, scores: np.ndarray, beam: int, k: int,
    allowed: ItemFilter | None,
) -> np.ndarray:
    """Nodes to expand, best first: while rank < beam or the kept nodes hold < k items.

    Item counts come from the tree; at the last internal level they count only the leaves
    that `allowed` accepts. Returns (U, width) positions, -1 padded.
    """
    if candidates.shape[1] <= beam:
        return np.where(np.isfinite(scores), candidates, -1)
    # Fast path (the usual case): the `beam` best nodes already hold >= k usable items, so
    # an unordered top-beam (argpartition, O(C)) is enough; no full sort.
    top = np.argpartition(scores, -beam, axis=1)[:, -beam:]  # the beam largest, unordered
    kept = gather(candidates, top)
    top_scores = gather(scores, top)
    if np.isfinite(top_scores).all() and (kept >= 0).all():
        # Every kept node is a real one: no per-node count is needed when even the emptiest
        # non-empty node of the level would give `beam` of them k items (counts are of usable
        # items only at the last internal level, and only a filter makes them differ).
        if (allowed is None or level < tree.depth - 1) and beam * tree.min_nonempty_count(level) >= k:
            return kept
    else:
        kept = np.where(np.isfinite(top_scores), kept, -1)
    if (_usable_counts(tree, level, kept, allowed).sum(axis=1) >= k).all():
        return kept
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = gather(candidates, order)
    ranked_scores = gather(scores, order)
    count = _usable_counts(tree, level, ranked, allowed)
    before = np.cumsum(count, axis=1) - count
    rank = np.arange(ranked.shape[1])[None, :]
    keep = np.isfinite(ranked_scores) & ((rank < beam) | (before < k))
    width = max(int(keep.sum(axis=1).max()), 1)
    return np.where(keep, ranked, -1)[:, :width]


def _usable_counts(tree: Tree, level: int, nodes: np.ndarray, allowed: ItemFilter | None) -> np.ndarray:
    """Items under each node (-1 counts 0); at the last internal level, leaves `allowed` accepts."""
    if level == tree.depth - 1:
        leaf_items = tree.node_ids(tree.depth, tree.children(nodes))  # (U, C, arity)
        usable = leaf_items >= 0
        if allowed is not None:
            usable &= allowed(leaf_items.reshape(len(leaf_items), -1)).reshape(leaf_items.shape)
        return usable.sum(axis=2)
    return np.where(nodes >= 0, tree.item_counts_cached(level)[np.maximum(nodes, 0)], 0)


def _compact(positions: np.ndarray) -> np.ndarray:
    """Move -1 entries to the end of each row and drop all-(-1) columns."""
    valid = positions >= 0
    if valid.all():
        return positions
    width = int(valid.sum(axis=1).max()) if positions.size else 0
    order = np.argsort(~valid, axis=1, kind="stable")
    return gather(positions, order)[:, :max(width, 1)]
