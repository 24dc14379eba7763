"""Item filters for retrieval: `allowed(items) -> bool mask` over a (U, C) item-id matrix.

Filters are applied while expanding the last level of the beam search (and to brute force),
with the beam widened so k results still come back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ItemFilter = Callable[[np.ndarray], np.ndarray]


def exclude_items(per_user: Sequence[np.ndarray]) -> ItemFilter:
    """Reject, for row u, the items in per_user[u] (e.g. items the user already has)."""
    lengths = np.array([len(s) for s in per_user], dtype=np.int64)
    owner = np.repeat(np.arange(len(per_user), dtype=np.int64), lengths)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in per_user] or [np.zeros(0, np.int64)])
    span = int(items.max()) + 2 if len(items) else 1
    banned = np.unique(owner * span + items)

    def allowed(candidates: np.ndarray) -> np.ndarray:
        rows = np.arange(candidates.shape[0], dtype=np.int64)[:, None]
        keys = rows * span + np.where(candidates < span - 1, candidates, span - 1)
        hit = np.isin(keys, banned) & (candidates < span - 1)
        return (candidates >= 0) & ~hit

    return allowed


def allow_categories(item_category: np.ndarray, categories: np.ndarray) -> ItemFilter:
    """Accept only items whose category is in `categories` (same list for every row)."""
    ok = np.zeros(int(item_category.max()) + 1, dtype=bool)
    categories = np.asarray(categories, dtype=np.int64)
    ok[categories[(categories >= 0) & (categories < len(ok))]] = True
    accepted = ok[item_category]

    def allowed(candidates: np.ndarray) -> np.ndarray:
        return (candidates >= 0) & accepted[np.maximum(candidates, 0)]

    return allowed


def allow_items(accepted: np.ndarray) -> ItemFilter:
    """Accept only items marked in `accepted`, an (n_items,) bool mask (same for every row)."""
    accepted = np.asarray(accepted, dtype=bool)

    def allowed(candidates: np.ndarray) -> np.ndarray:
        return (candidates >= 0) & accepted[np.maximum(candidates, 0)]

    return allowed


def exclude_retired(retired: np.ndarray) -> ItemFilter:
    """Reject retired items: `retired` is an (n_items,) bool mask. The same filter for every
    row; the beam search widens past retired leaves as it does for any filter."""
    return allow_items(~np.asarray(retired, dtype=bool))


def combine(*filters: ItemFilter | None) -> ItemFilter | None:
    active = [f for f in filters if f is not None]
    if not active:
        return None

    def allowed(candidates: np.ndarray) -> np.ndarray:
        mask = active[0](candidates)
        for f in active[1:]:
            mask &= f(candidates)
        return mask

    return allowed
