"""The tree index: a complete `arity`-ary tree whose leaves hold the items (numpy only).

Layout. Level 0 is the root, level `depth` (the paper's l_max) holds the leaves, and every leaf
sits at that level, so beam search never compares leaves of different depths. A node is named
by its level and its *position* in that level (0 .. arity**level - 1); the children of position
p are ``p * arity + 0 .. arity - 1`` and its ancestor at level l is ``p // arity**(depth - l)``.
The tree is fully determined by `item_leaf`, the leaf position of every item (the paper's pi).

Ids. Items and nodes share one id space, which is also the row space of the scorer's embedding
table: item i is row i (an item *is* its leaf, so its embedding follows it when tree learning
moves it), and the internal node at (level, position) is row
``n_items + (arity**level - 1) // (arity - 1) + position``. Leaf positions that hold no item
have no id (-1); when the number of items is not a power of the arity, some leaves stay empty,
and after tree learning some internal nodes may be empty too: `nonempty` tells which.

On disk: an uncompressed ``.npz`` (no pickle) with a format version; a 1M-item tree loads in
milliseconds.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TREE_FORMAT_VERSION = 1
# A loaded tree allocates per-leaf arrays (arity**depth of them); the file holds per-item ones.
# A minimal-depth tree has fewer than `arity` leaves per item, so this admits every tree of
# arity <= 64 the trainer builds, and stops a 1 KB header from asking for 2**60 leaves.
MAX_LEAVES_PER_ITEM = 64


class TreeError(ValueError):
    """A tree that breaks an invariant or a tree file that cannot be read."""


def depth_for(n_items: int, arity: int) -> int:
    """Smallest depth whose arity**depth leaves hold n_items (at least 1)."""
    if arity < 2:
        raise TreeError(f"arity must be >= 2, got {arity}")
    if n_items < 1:
        raise TreeError("a tree needs at least one item")
    depth, capacity = 1, arity
    while capacity < n_items:
        depth, capacity = depth + 1, capacity * arity
    return depth


@dataclass(frozen=True, eq=False)
class Tree:
    """Complete tree with items on leaves. Construct with `Tree.from_leaves` to validate."""

    arity: int
    depth: int
    item_leaf: np.ndarray  # (n_items,) int64 leaf position of each item
    leaf_item: np.ndarray = field(repr=False)  # (arity**depth,) int32 item on each leaf, -1 if empty
    _cache: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_leaves(cls, item_leaf: np.ndarray, arity: int = 2, depth: int | None = None) -> Tree:
        """Build and validate: every item on exactly one leaf of a complete tree."""
        item_leaf = np.asarray(item_leaf, dtype=np.int64)
        if item_leaf.ndim != 1:
            raise TreeError(f"item_leaf must be 1-D, got shape {item_leaf.shape}")
        n_items = len(item_leaf)
        minimal = depth_for(n_items, arity)
        depth = minimal if depth is None else int(depth)
        if depth < minimal:
            raise TreeError(f"depth {depth} cannot hold {n_items} items with arity {arity}")
        n_leaves = arity**depth
        if n_items and (item_leaf.min() < 0 or item_leaf.max() >= n_leaves):
            raise TreeError(f"leaf positions must lie in [0, {n_leaves}); got {item_leaf.min()}..{item_leaf.max()}")
        occupancy = np.bincount(item_leaf, minlength=n_leaves)
        if (occupancy > 1).any():
            leaf = int(np.flatnonzero(occupancy > 1)[0])
            raise TreeError(f"leaf {leaf} holds {int(occupancy[leaf])} items; each leaf holds at most one")
        leaf_item = np.full(n_leaves, -1, dtype=np.int32)
        leaf_item[item_leaf] = np.arange(n_items, dtype=np.int32)
        return cls(arity=arity, depth=depth, item_leaf=item_leaf, leaf_item=leaf_item)

    # ------------------------------------------------------------------ sizes and ids

    @property
    def n_items(self) -> int:
        return len(self.item_leaf)

    @property
    def n_leaves(self) -> int:
        return self.arity**self.depth

    def level_size(self, level: int) -> int:
        return self.arity**level

    def level_offset(self, level: int) -> int:
        """Number of internal nodes above `level`: the row offset of that level's nodes."""
        return (self.arity**level - 1) // (self.arity - 1)

    @property
    def n_internal(self) -> int:
        return self.level_offset(self.depth)

    @property
    def n_rows(self) -> int:
        """Rows of the embedding table: items plus internal nodes (root included)."""
        return self.n_items + self.n_internal

    def node_ids(self, level: int, positions: np.ndarray) -> np.ndarray:
        """Embedding rows of nodes at `level`; -1 where a position is -1 or an empty leaf."""
        positions = np.asarray(positions, dtype=np.int64)
        if level == self.depth:
            safe = np.where(positions >= 0, positions, 0)
            ids = self.leaf_item[safe].astype(np.int64)
        else:
            ids = self.n_items + self.level_offset(level) + positions
        return np.where(positions >= 0, ids, -1)

    def node_positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `node_ids` for valid ids: (levels, positions)."""
        ids = np.asarray(ids, dtype=np.int64)
        levels = np.full(ids.shape, self.depth, dtype=np.int64)
        positions = np.zeros(ids.shape, dtype=np.int64)
        is_item = ids < self.n_items
        positions[is_item] = self.item_leaf[ids[is_item]]
        internal = ids[~is_item] - self.n_items
        offsets = np.array([self.level_offset(level) for level in range(self.depth + 1)])
        lv = np.searchsorted(offsets, internal, side="right") - 1
        levels[~is_item] = lv
        positions[~is_item] = internal - offsets[lv]
        return levels, positions

    # ------------------------------------------------------------------ navigation

    def ancestors(self, items: np.ndarray, level: int) -> np.ndarray:
        """Position at `level` of each item's ancestor (the item's own leaf at level == depth)."""
        return self.item_leaf[np.asarray(items)] // self.arity ** (self.depth - level)

    def ancestor_ids(self, items: np.ndarray, level: int, pad: int = -1) -> np.ndarray:
        """Embedding rows of the items' ancestors at `level`; entries equal to `pad` stay `pad`.

        This is the hierarchical user representation's mapping (JTM section 2.3): a behaviour b
        is replaced by b_level(pi(b)). At the leaf level it is the identity.
        """
        return self.ancestor_ids_by_level(items, pad)(level)

    def ancestor_ids_by_level(self, items: np.ndarray, pad: int = -1) -> Callable[[int], np.ndarray]:
        """`level -> ancestor_ids(items, level)` for the same items at many levels (a beam search
        walks every level): the items' leaf positions are looked up once, not once per level."""
        items = np.asarray(items)
        valid = items != pad
        safe = np.where(valid, items, 0)
        leaves: np.ndarray | None = None  # looked up on the first level above the leaves

        def at(level: int) -> np.ndarray:
            nonlocal leaves
            if level == self.depth:
                ids = safe.astype(np.int64)
            else:
                if leaves is None:
                    leaves = self.item_leaf[safe]
                ids = self.n_items + self.level_offset(level) + leaves // self.arity ** (self.depth - level)
            return np.where(valid, ids, pad)

        return at

    def all_ancestors(self) -> np.ndarray:
        """(n_items, depth + 1) position of every item's ancestor at every level."""
        shifts = self.arity ** (self.depth - np.arange(self.depth + 1))
        return self.item_leaf[:, None] // shifts[None, :]

    def children(self, positions: np.ndarray) -> np.ndarray:
        """(..., arity) child positions of nodes; -1 stays -1."""
        positions = np.asarray(positions, dtype=np.int64)
        kids = positions[..., None] * self.arity + np.arange(self.arity)
        return np.where(positions[..., None] >= 0, kids, -1)

    def item_counts(self, level: int) -> np.ndarray:
        """(arity**level,) number of items under each node of `level`."""
        return np.bincount(self.ancestors(np.arange(self.n_items), level), minlength=self.level_size(level))

    def item_counts_cached(self, level: int) -> np.ndarray:
        """`item_counts`, computed once per level (the tree is immutable)."""
        cached = self._cache.get(("counts", level))
        if cached is None:
            cached = self.item_counts(level)
            self._cache[("counts", level)] = cached
        return cached

    def nonempty(self, level: int) -> np.ndarray:
        """(arity**level,) bool: does the node hold at least one item? Cached per level."""
        cached = self._cache.get(("nonempty", level))
        if cached is None:
            cached = self.item_counts_cached(level) > 0
            self._cache[("nonempty", level)] = cached
        return cached

    def nonempty_positions(self, level: int) -> np.ndarray:
        """Sorted positions of the non-empty nodes of `level`. Cached per level."""
        cached = self._cache.get(("positions", level))
        if cached is None:
            cached = np.flatnonzero(self.nonempty(level))
            self._cache[("positions", level)] = cached
        return cached

    def min_nonempty_count(self, level: int) -> int:
        """Fewest items under any non-empty node of `level` (cached): a lower bound the beam
        search uses to skip counting items under the nodes it keeps."""
        cached = self._cache.get(("min_count", level))
        if cached is None:
            counts = self.item_counts_cached(level)
            cached = np.array(int(counts[counts > 0].min()) if (counts > 0).any() else 0)
            self._cache[("min_count", level)] = cached
        return int(cached)

    def widest_level(self) -> int:
        """Most non-empty nodes on any level (the widest a beam can usefully be)."""
        cached = self._cache.get(("widest", 0))
        if cached is None:
            cached = np.array(max(len(self.nonempty_positions(level)) for level in range(self.depth + 1)))
            self._cache[("widest", 0)] = cached
        return int(cached)

    def warm(self) -> Tree:
        """Fill the per-level caches now (the service does this at load, not on a request)."""
        for level in range(self.depth + 1):
            self.nonempty_positions(level)
            self.item_counts_cached(level)
            self.min_nonempty_count(level)
        self.widest_level()
        return self

    def capacity(self, level: int) -> int:
        """Most items a node at `level` can hold: the leaves below it."""
        return self.arity ** (self.depth - level)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(
                fh,
                header=np.array(json.dumps({"format_version": TREE_FORMAT_VERSION, "arity": self.arity,
                                            "depth": self.depth, "n_items": self.n_items})),
                item_leaf=self.item_leaf.astype(np.int64),
            )

    @classmethod
    def load(cls, path: str | Path, n_items: int | None = None) -> Tree:
        """Load a tree file; with `n_items`, the array's shape is checked from its header
        before it is read (a hostile file cannot make us allocate more)."""
        from service.core.npz import NpzError, check_members

        path = Path(path)
        if not path.exists():
            raise TreeError(f"{path}: no such tree file")
        try:
            check_members(path, {"header": ("U", ()), "item_leaf": ("iu", (n_items,))})
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"]))
                item_leaf = archive["item_leaf"]
        except NpzError as exc:
            raise TreeError(str(exc)) from exc
        except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile) as exc:
            raise TreeError(f"{path}: not a readable tree file ({exc.__class__.__name__}: {exc})") from exc
        arity, depth = _checked_header(path, header, len(item_leaf))
        try:
            return cls.from_leaves(item_leaf, arity=arity, depth=depth)
        except TreeError as exc:
            raise TreeError(f"{path}: {exc}") from exc

    def equals(self, other: Tree) -> bool:
        return (self.arity, self.depth) == (other.arity, other.depth) and np.array_equal(
            self.item_leaf, other.item_leaf)


def _checked_header(path: Path, header: object, n_items: int) -> tuple[int, int]:
    """(arity, depth) from a tree file's JSON header, checked before any per-leaf array is
    allocated: the header is the one part of the file whose numbers are not bounded by its size."""
    if not isinstance(header, dict):
        raise TreeError(f"{path}: tree header is not a JSON object")
    version = header.get("format_version")
    if version != TREE_FORMAT_VERSION:
        raise TreeError(f"{path}: tree format version {version}, this code reads {TREE_FORMAT_VERSION}")
    if header.get("n_items") != n_items:
        raise TreeError(f"{path}: header says {header.get('n_items')} items, file holds {n_items}")
    arity, depth = header.get("arity"), header.get("depth")
    if type(arity) is not int or type(depth) is not int or arity < 2 or depth < 1:
        raise TreeError(f"{path}: tree header needs integer arity >= 2 and depth >= 1, got {arity!r}, {depth!r}")
    limit = MAX_LEAVES_PER_ITEM * max(n_items, 1)
    leaves = 1
    for _ in range(depth):  # arity**depth, stopping as soon as it passes the limit
        leaves *= arity
        if leaves > limit:
            raise TreeError(f"{path}: arity {arity} and depth {depth} give more than {limit} leaves for {n_items} "
                            f"items (at most {MAX_LEAVES_PER_ITEM} per item): refused before allocating them")
    return arity, depth
