"""The item catalog of an artifact: original ids <-> internal item indices, categories, popularity.

Requests speak original ids (what the product knows); the tree and the scorer speak internal
indices 0..n_items-1. Lookups are vectorized over a sorted id array (searchsorted), which keeps
a 1M-item catalog at a few MB and loads in milliseconds (no per-id Python dict).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from service.core.errors import ArtifactError
from service.core.filters import ItemFilter, allow_items, exclude_retired

_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _as_key_array(values: Sequence[object] | np.ndarray, numeric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Request ids as the catalog's key type; returns (keys, ok) where ok marks convertible ids."""
    if numeric:
        keys = np.zeros(len(values), dtype=np.int64)
        ok = np.zeros(len(values), dtype=bool)
        for i, value in enumerate(values):
            if isinstance(value, bool):
                continue
            if isinstance(value, str):
                try:  # not str.isdigit(): "²" is a digit to it, but no int
                    value = int(value, 10)
                except ValueError:
                    continue
            # Outside int64 no catalog id can match: unknown, not an overflow.
            if isinstance(value, (int, np.integer)) and _INT64_MIN <= value <= _INT64_MAX:
                keys[i], ok[i] = int(value), True
        return keys, ok
    return np.array([str(v) for v in values], dtype=str), np.ones(len(values), dtype=bool)


@dataclass(frozen=True)
class IdIndex:
    """Sorted original ids with their internal indices."""

    sorted_ids: np.ndarray
    order: np.ndarray  # internal index of each sorted id
    ids: np.ndarray  # original id of each internal index

    @classmethod
    def build(cls, ids: np.ndarray) -> IdIndex:
        order = np.argsort(ids, kind="stable")
        return cls(sorted_ids=ids[order], order=order.astype(np.int64), ids=ids)

    @property
    def numeric(self) -> bool:
        return np.issubdtype(self.ids.dtype, np.integer)

    def lookup(self, values: Sequence[object] | np.ndarray) -> np.ndarray:
        """Internal index of each original id, -1 for unknown ones."""
        if len(values) == 0:
            return np.zeros(0, dtype=np.int64)
        keys, ok = _as_key_array(values, self.numeric)
        return np.where(ok, self.lookup_keys(keys), -1)

    def lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        """`lookup` for ids already of the key type (int64 or str), vectorized: the bulk path of
        the catalogue tools, which read whole files of ids. -1 for unknown ones."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.sorted_ids, keys), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[position] == keys, self.order[position], -1)

    def original(self, index: np.ndarray) -> list:
        """Original ids for internal indices, as JSON-ready Python values."""
        return self.ids[np.asarray(index)].tolist()


@dataclass(frozen=True)
class ItemCatalog:
    """Retired items (`trainer retire-items`) stay in the catalog and on their leaves: users'
    histories still hold them, and their rows still describe those users. They are never
    *served*: `served_filter` keeps them out of every answer, the beam search's included."""

    items: IdIndex
    categories: IdIndex  # original category ids
    item_category: np.ndarray  # (n_items,) index into categories
    popular: np.ndarray  # item indices, most popular first (training users)
    retired: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # sorted item indices
    # Items added since the last full training (`trainer add-items`), by recent events, most
    # first: what a `fresh` request ranks (`service.recommend`).
    fresh: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    @property
    def n_items(self) -> int:
        return len(self.items.ids)

    @property
    def n_served(self) -> int:
        return self.n_items - len(self.retired)

    def retired_mask(self) -> np.ndarray:
        """(n_items,) bool, True for retired items."""
        mask = np.zeros(self.n_items, dtype=bool)
        mask[self.retired] = True
        return mask

    @cached_property
    def served_filter(self) -> ItemFilter | None:
        """The filter that keeps retired items out of answers; None when none is retired (the
        common case costs nothing). Built once per loaded catalog."""
        return exclude_retired(self.retired_mask()) if len(self.retired) else None

    @cached_property
    def fresh_filter(self) -> ItemFilter | None:
        """The filter that accepts only the items added since training (a `fresh` request's
        allow-list); None when there are none. Built once per loaded catalog, not per request."""
        if not len(self.fresh):
            return None
        mask = np.zeros(self.n_items, dtype=bool)
        mask[self.fresh] = True
        return allow_items(mask)

    def save(self, path: Path) -> None:
        arrays = {"item_ids": self.items.ids, "category_ids": self.categories.ids,
                  "item_category": self.item_category.astype(np.int32), "popular": self.popular.astype(np.int32)}
        if len(self.retired):  # absent when empty: older services read the file unchanged
            arrays["retired"] = self.retired.astype(np.int32)
        if len(self.fresh):  # the same
            arrays["fresh"] = self.fresh.astype(np.int32)
        np.savez(path, **arrays)

    @classmethod
    def create(cls, item_ids: np.ndarray, category_ids: np.ndarray, item_category: np.ndarray,
               popular: np.ndarray, retired: np.ndarray | None = None, fresh: np.ndarray | None = None
               ) -> ItemCatalog:
        retired = np.zeros(0, np.int32) if retired is None else np.unique(np.asarray(retired, np.int32))
        fresh = np.zeros(0, np.int32) if fresh is None else np.asarray(fresh, np.int32)
        return cls(items=IdIndex.build(_plain(item_ids)), categories=IdIndex.build(_plain(category_ids)),
                   item_category=np.asarray(item_category, dtype=np.int32), popular=np.asarray(popular, np.int32),
                   retired=retired, fresh=fresh)

    @classmethod
    def load(cls, path: Path, n_items: int) -> ItemCatalog:
        """Load and check shapes against the tree's item count before anything else uses them."""
        from service.core.npz import NpzError, check_members, member_headers

        try:
            check_members(path, {"item_ids": ("iuU", (n_items,)), "category_ids": ("iuU", (None,)),
                                 "item_category": ("iu", (n_items,)), "popular": ("iu", (None,))})
            present = member_headers(path)
            optional = {name: ("iu", (None,)) for name in ("retired", "fresh") if name in present}
            check_members(path, optional)
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in ("item_ids", "category_ids", "item_category", "popular", *optional)}
        except NpzError as exc:
            raise ArtifactError(str(exc)) from exc
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"{path}: not a readable item catalog ({exc.__class__.__name__}: {exc})") from exc
        if len(arrays["item_ids"]) != n_items or len(arrays["item_category"]) != n_items:
            raise ArtifactError(f"{path}: {len(arrays['item_ids'])} items, the tree has {n_items}")
        if len(np.unique(arrays["item_ids"])) != n_items:
            raise ArtifactError(f"{path}: item ids are not unique")
        n_categories = len(arrays["category_ids"])
        if n_items and (arrays["item_category"].min() < 0 or arrays["item_category"].max() >= n_categories):
            raise ArtifactError(f"{path}: item categories out of range")
        popular = arrays["popular"]
        if len(popular) and (popular.min() < 0 or popular.max() >= n_items):
            raise ArtifactError(f"{path}: popularity list names unknown items")
        retired = arrays.get("retired", np.zeros(0, np.int32))
        if len(retired) and (retired.min() < 0 or retired.max() >= n_items or len(np.unique(retired)) != len(retired)):
            raise ArtifactError(f"{path}: retired list names unknown or repeated items")
        if len(retired) >= n_items:
            raise ArtifactError(f"{path}: every item is retired: nothing left to serve")
        fresh = arrays.get("fresh", np.zeros(0, np.int32))
        if len(fresh) and (fresh.min() < 0 or fresh.max() >= n_items or len(np.unique(fresh)) != len(fresh)):
            raise ArtifactError(f"{path}: fresh list names unknown or repeated items")
        return cls.create(arrays["item_ids"], arrays["category_ids"], arrays["item_category"], popular, retired,
                          fresh)


def _plain(ids: np.ndarray) -> np.ndarray:
    """Integer ids stay int64; anything else becomes a unicode string array (never object)."""
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.integer):
        return ids.astype(np.int64)
    return ids.astype(str)
