"""Where a new item goes in a learnt tree, and which existing rows its own row is made from.

Why this design. A learnt tree is a max-heap over the scorer: a user reaches an item only
through ancestors that scored well for them. A new item is therefore put *next to* what its
future users already consume, so the beam search that reaches those neighbours reaches it:

1. co-consumed: the old item most often consumed by the same users, within `window` events of
   the new item (a session, roughly), anchors it. Its row is the count-weighted mean of its
   `top_sources` co-consumed items' rows (embedding and bias), so it scores like them.
2. category: without co-consumption, the category's popular items anchor it (new items of one
   category take turns over the top 10, not all piling up next to the first); its row is the
   mean of the same-category items nearest its leaf (its siblings), else the category's.
3. popularity: without either, the most popular items anchor it (turns over the top 100), and
   its row is the mean of the items nearest its leaf.

Spare capacity. A complete tree already has free leaves (arity**depth - n_items), and retired
items' leaves are free too (the retired item is parked on a far free leaf: it is never served,
and its row still describes the users whose histories hold it). A new item takes the free leaf
sharing the deepest ancestor with its anchor, so nothing else moves. But those free leaves sit
where the tree builder left them (usually together at the end), so they are rarely *near* an
anchor. When some new item would land more than `local_levels` above its anchor (or there are
fewer free leaves than new items), the tree is split once: one level more, every item's leaf p
becomes p * arity, so every item has arity - 1 free leaves beside it, and the old leaf level
becomes internal nodes that carry their item's own row. That split keeps every old answer: at
the new internal level a node scores exactly as its item did (same row; with the hierarchical
representation the history maps to the same rows too), so the beam keeps the items it kept
before, and a new item competes only where its anchor was reached. The price is one more level
per request and arity**depth more rows in the table (the leaf level's); a split tree has room
for as many new items again before it needs another, and the next full training rebuilds it.
Internal node rows are left as trained: they are the max of many items, and one item more
does not move that enough to be worth changing answers for users who never see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.tree import Tree
from trainer.config import option

CO_CONSUMED, CATEGORY, POPULAR = 0, 1, 2
@dataclass(frozen=True)
class PlacementConfig:
    """How `add-items` reads co-consumption from recent events."""

    window: int = option(50, "events either side of a new item's event that count as co-consumed", at_least=1)
    top_sources: int = 20  # the co-consumed items whose rows a new item's row is averaged from



REASONS = ("co_consumed", "category", "popularity")


@dataclass(frozen=True)
class CoConsumption:
    """For each new item j, old items consumed by the same users near it, most first (CSR)."""

    offsets: np.ndarray  # (n_new + 1,) int64
    items: np.ndarray  # (nnz,) old item indices
    counts: np.ndarray  # (nnz,) users who consumed both

    def of(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[self.offsets[j]:self.offsets[j + 1]], self.counts[self.offsets[j]:self.offsets[j + 1]]


def co_consumption(user: np.ndarray, item: np.ndarray, n_old: int, n_new: int, served: np.ndarray,
                   popularity_rank: np.ndarray, window: int, top: int) -> CoConsumption:
    """Count, for every (new item, served old item) pair, the users that consumed both within
    `window` events of each other. user: (E,) grouped by user, time order inside; item: (E,)
    internal indices with new items as n_old + j and unknown ones as -1. Keeps the `top` pairs
    per new item by association, count / sqrt(users of the old item in the events) (Item-CF's
    cosine up to the new item's own constant): raw counts would anchor every new item next to
    the few most popular items; ties: the more popular old item first."""
    pairs_new, pairs_old, pairs_user = [], [], []
    is_new = item >= n_old
    if is_new.any():
        for offset in range(1, window + 1):
            a, b = item[:-offset], item[offset:]
            same = user[:-offset] == user[offset:]
            for new_side, old_side in ((a, b), (b, a)):
                hit = same & (new_side >= n_old) & (old_side >= 0) & (old_side < n_old)
                if hit.any():
                    old = old_side[hit]
                    ok = served[old]
                    pairs_new.append(new_side[hit][ok] - n_old)
                    pairs_old.append(old[ok])
                    pairs_user.append(user[:-offset][hit][ok])
    if not pairs_new:
        return CoConsumption(np.zeros(n_new + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    new = np.concatenate(pairs_new).astype(np.int64)
    old = np.concatenate(pairs_old).astype(np.int64)
    users = np.concatenate(pairs_user).astype(np.int64)
    triples = np.unique(np.stack([new, old, users]), axis=1)  # one vote per user and pair
    keys = triples[0] * n_old + triples[1]
    pair_keys, counts = np.unique(keys, return_counts=True)
    new, old = pair_keys // n_old, pair_keys % n_old
    known = (item >= 0) & (item < n_old)
    old_users = np.unique(np.stack([user[known], item[known]]), axis=1)[1]
    association = counts / np.sqrt(np.maximum(np.bincount(old_users, minlength=n_old)[old], 1))
    order = np.lexsort((popularity_rank[old], -association, new))
    new, old, counts = new[order], old[order], counts[order]
    starts = np.searchsorted(new, np.arange(n_new))
    rank = np.arange(len(new)) - starts[new]
    keep = rank < top
    new, old, counts = new[keep], old[keep], counts[keep]
    offsets = np.searchsorted(new, np.arange(n_new + 1))
    return CoConsumption(offsets.astype(np.int64), old, counts.astype(np.int64))


class FreeLeaves:
    """Free leaf positions with per-node counts at every level, for "nearest free leaf to this
    one inside the smallest subtree that has any" in O(depth * arity) per query."""

    def __init__(self, arity: int, depth: int, free: np.ndarray) -> None:
        self.arity, self.depth = arity, depth
        positions = np.flatnonzero(free)
        self.counts = [np.bincount(positions // arity ** (depth - level), minlength=arity**level).astype(np.int64)
                       for level in range(depth + 1)]

    @property
    def total(self) -> int:
        return int(self.counts[0][0])

    def nearest(self, leaf: int) -> int:
        """The free leaf nearest `leaf` (in leaf order) inside the lowest ancestor with any; -1 if none."""
        arity, depth = self.arity, self.depth
        level = depth
        while level >= 0 and self.counts[level][leaf // arity ** (depth - level)] == 0:
            level -= 1
        if level < 0:
            return -1
        node = leaf // arity ** (depth - level)
        for below in range(level + 1, depth + 1):
            target = leaf // arity ** (depth - below)
            counts = self.counts[below]
            best = -1
            for child in range(node * arity, node * arity + arity):
                if counts[child] > 0 and (best < 0 or abs(child - target) < abs(best - target)):
                    best = child
            node = best
        return node

    def take(self, leaf: int) -> None:
        for level in range(self.depth + 1):
            self.counts[level][leaf // self.arity ** (self.depth - level)] -= 1

    def last(self) -> int:
        """The free leaf with the largest position (where retired items are parked); -1 if none."""
        if self.total == 0:
            return -1
        node = 0
        for level in range(1, self.depth + 1):
            counts, first = self.counts[level], node * self.arity
            node = next(c for c in range(first + self.arity - 1, first - 1, -1) if counts[c] > 0)
        return node


@dataclass(frozen=True)
class Placement:
    """The new tree's leaves and where every new item's row comes from."""

    item_leaf: np.ndarray  # (n_old + n_new,) leaf of every item in the (possibly grown) tree
    depth: int  # the new tree's depth (old depth + grown)
    grown: int  # levels added because the tree had too few free leaves
    reason: np.ndarray  # (n_new,) CO_CONSUMED / CATEGORY / POPULAR
    sources: list[np.ndarray]  # per new item: old item rows whose weighted mean is its row
    weights: list[np.ndarray]
    parked: int  # retired items moved off a leaf a new item took
    far: int  # new items whose leaf shares no ancestor with their anchor's within `local_levels` of the leaves


def place(tree: Tree, retired: np.ndarray, item_category: np.ndarray, popular: np.ndarray,
          new_category: np.ndarray, co: CoConsumption, top_sources: int = 20, local_levels: int = 3,
          sibling_levels: int = 6, min_siblings: int = 4) -> Placement:
    """Place n_new items. retired: (n_old,) bool; item_category: (n_old,) internal category of
    old items; popular: old items, most popular first; new_category: (n_new,) internal category
    of each new item, -1 when none or one the catalogue has no items of.

    A slot is *local* when it shares an ancestor with the anchor at most `local_levels` above
    the leaves. When the tree's own free leaves cannot give every new item a local slot (or are
    too few), the tree is split once (one level more, see the module docstring) and the items
    placed again: after the split every item has arity - 1 free leaves beside it."""
    grow = 0
    while True:
        placement = _place(tree, grow, retired, item_category, popular, new_category, co, top_sources,
                           local_levels, sibling_levels, min_siblings)
        if placement is not None and (placement.far == 0 or grow > 0):
            return placement
        grow += 1


def _place(tree: Tree, grow: int, retired: np.ndarray, item_category: np.ndarray, popular: np.ndarray,
           new_category: np.ndarray, co: CoConsumption, top_sources: int, local_levels: int,
           sibling_levels: int, min_siblings: int) -> Placement | None:
    """One placement into the tree split `grow` times; None when it has too few free leaves."""
    n_old, n_new, arity = tree.n_items, len(new_category), tree.arity
    served = ~retired
    item_leaf = tree.item_leaf.astype(np.int64).copy()
    empty = np.ones(tree.n_leaves, dtype=bool)
    empty[item_leaf] = False
    depth, grown = tree.depth + grow, grow
    if grow:
        item_leaf *= arity**grow
        empty = np.ones(arity**depth, dtype=bool)
        empty[item_leaf] = False
    if int(empty.sum()) < n_new:
        return None
    leaf_item = np.full(arity**depth, -1, dtype=np.int64)
    leaf_item[item_leaf] = np.arange(n_old)
    retired_leaves = np.zeros(arity**depth, dtype=bool)
    retired_leaves[item_leaf[retired]] = True
    slots = FreeLeaves(arity, depth, empty | retired_leaves)  # where a new item may go
    parking = FreeLeaves(arity, depth, empty)  # where a displaced retired item may go

    popularity_rank = np.full(n_old, len(popular), dtype=np.int64)
    popularity_rank[popular] = np.arange(len(popular))
    by_popularity = np.lexsort((np.arange(n_old), popularity_rank))
    by_popularity = by_popularity[served[by_popularity]]
    category_top: dict[int, np.ndarray] = {}
    turns: dict[int, int] = {}

    new_leaf = np.full(n_new, -1, dtype=np.int64)
    reason = np.full(n_new, POPULAR, dtype=np.int8)
    sources: list[np.ndarray] = [np.zeros(0, np.int64)] * n_new
    weights: list[np.ndarray] = [np.zeros(0)] * n_new
    strength = np.array([co.of(j)[1].sum() for j in range(n_new)], dtype=np.int64)
    parked = far = 0
    for j in np.lexsort((np.arange(n_new), -strength)):  # strongest evidence first: nearest leaves
        partners, counts = co.of(j)
        category = int(new_category[j])
        if len(partners):
            anchor, reason[j] = int(partners[0]), CO_CONSUMED
            sources[j], weights[j] = partners[:top_sources], counts[:top_sources].astype(np.float64)
        else:
            if category >= 0 and category not in category_top:
                members = by_popularity[item_category[by_popularity] == category]
                category_top[category] = members[:10]
            pool = category_top.get(category, np.zeros(0, np.int64)) if category >= 0 else np.zeros(0, np.int64)
            if len(pool):
                reason[j] = CATEGORY
            else:
                pool, category = by_popularity[:100], -1
            turn = turns.get(category, 0)
            turns[category] = turn + 1
            anchor = int(pool[turn % len(pool)])
        leaf = slots.nearest(int(item_leaf[anchor]))
        slots.take(leaf)
        far += int(leaf // arity**local_levels != item_leaf[anchor] // arity**local_levels)
        if retired_leaves[leaf]:  # reuse a retired item's leaf: park the retired item far away
            spot = parking.last()
            parking.take(spot)
            if empty[spot]:
                slots.take(spot)
            empty[spot] = False
            displaced = leaf_item[leaf]
            item_leaf[displaced], leaf_item[spot] = spot, displaced
            retired_leaves[leaf], parked = False, parked + 1
        else:
            parking.take(leaf)
            empty[leaf] = False
        leaf_item[leaf] = n_old + j
        new_leaf[j] = leaf
        if reason[j] != CO_CONSUMED:
            sources[j] = _siblings(leaf_item, leaf, arity, depth, n_old, served, item_category, category,
                                   sibling_levels, min_siblings, fallback=pool[:top_sources])
            weights[j] = np.ones(len(sources[j]))
    return Placement(item_leaf=np.concatenate([item_leaf, new_leaf]), depth=depth, grown=grown, reason=reason,
                     sources=sources, weights=weights, parked=parked, far=far)


def _siblings(leaf_item: np.ndarray, leaf: int, arity: int, depth: int, n_old: int, served: np.ndarray,
              item_category: np.ndarray, category: int, levels: int, enough: int, fallback: np.ndarray) -> np.ndarray:
    """Served old items (of `category` when >= 0) under the lowest ancestor of `leaf`, up to
    `levels` above it, that holds at least `enough` of them; else `fallback`."""
    for up in range(1, min(levels, depth) + 1):
        span = arity**up
        start = leaf // span * span
        items = leaf_item[start:start + span]
        items = items[(items >= 0) & (items < n_old)]
        items = items[served[items]]
        if category >= 0:
            items = items[item_category[items] == category]
        if len(items) >= enough:
            return items
    return fallback.astype(np.int64)
