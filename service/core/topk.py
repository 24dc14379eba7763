"""Row-wise top-k selection over score matrices, the last step of every retrieval method."""

from __future__ import annotations

import numpy as np


def gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[r, index[r, j]] for every row r: np.take_along_axis for 2-D arrays, without the
    index grid it builds on every call (the beam search gathers several times per level)."""
    return values[np.arange(len(index))[:, None], index]


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, best first.

    scores: (n, m) float; -inf marks entries that must never be returned. Rows with fewer than k
    finite entries are padded with index -1 and value -inf (faiss's convention).
    Returns (indices (n, k) int64, values (n, k) scores.dtype).
    """
    n, m = scores.shape
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    kk = min(k, m)
    if kk < m:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    values = gather(scores, part)
    order = np.argsort(-values, axis=1, kind="stable")
    indices = gather(part, order).astype(np.int64)
    values = gather(values, order)
    if kk < k:
        indices = np.concatenate([indices, np.full((n, k - kk), -1, dtype=np.int64)], axis=1)
        values = np.concatenate([values, np.full((n, k - kk), -np.inf, dtype=values.dtype)], axis=1)
    invalid = ~np.isfinite(values)
    indices[invalid] = -1
    return indices, values
