"""One recommendation: history -> top-k items, by the shared beam search over the bundle.

Filters (exclude the user's own items, a category allow-list) are applied while expanding the
last level, with the beam widened so k results still come back. Without a usable history the
answer is the popularity list (filtered the same way), flagged as a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.bundle import ModelBundle
from service.core.filters import ItemFilter, allow_categories, combine, exclude_items
from service.core.index import SearchParams


@dataclass(frozen=True)
class Retrieved:
    items: np.ndarray  # internal item indices, best first
    scores: np.ndarray | None  # logits at the leaf level; None for the popularity fallback
    fallback: str | None


def item_filter(bundle: ModelBundle, seen: np.ndarray | None, categories: np.ndarray | None) -> ItemFilter | None:
    """seen: internal item indices to exclude; categories: internal category indices allowed.
    Retired items are always excluded (`ItemCatalog.served_filter`, None when there are none)."""
    return combine(
        bundle.catalog.served_filter,
        exclude_items([seen]) if seen is not None and len(seen) else None,
        allow_categories(bundle.catalog.item_category, categories) if categories is not None else None,
    )


def search(
    bundle: ModelBundle,
    history: np.ndarray,
    k: int,
    beam: int,
    allowed: ItemFilter | None = None,
    on_level: Callable[[int, float], None] | None = None,
) -> Retrieved:
    """Beam search for one user. history: internal item indices, most recent first."""
    row = np.full((1, bundle.history_length), -1, dtype=np.int64)
    recent = history[: bundle.history_length]
    row[0, : len(recent)] = recent
    params = SearchParams(beam=beam, allowed=allowed, on_level=on_level)
    if bundle.batcher is not None:
        with bundle.batcher.active():  # the batcher waits for rows only from searches in progress
            result = bundle.index.search(row, k, params)
    else:
        result = bundle.index.search(row, k, params)
    keep = result.items[0] >= 0
    return Retrieved(items=result.items[0][keep], scores=result.scores[0][keep], fallback=None)


def popular(bundle: ModelBundle, k: int, allowed: ItemFilter | None) -> Retrieved:
    """The cold-start answer: most popular items (training users) passing the filter."""
    candidates = bundle.catalog.popular.astype(np.int64)
    if allowed is not None:
        candidates = candidates[allowed(candidates[None, :])[0]]
    return Retrieved(items=candidates[:k], scores=None, fallback="popular")
