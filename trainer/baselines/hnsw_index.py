"""Inner-product retrieval through a faiss HNSW graph: the index a two-tower model is served by.

Kept apart from the towers (no torch here) so that a benchmark can time the index alone, at
catalogue sizes no model here was trained on, with the exact parameters the two-tower
baseline uses. faiss is an optional dependency (the `train` extra): imported when an index is
built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HNSWConfig:
    """faiss IndexHNSWFlat parameters. The defaults are the usual production starting point
    (degree 32, construction depth 200); the search depth grows with the results asked for."""

    neighbours: int = 32  # M: links per node
    ef_construction: int = 200
    ef_search: int = 256  # at least; raised to 2 x the results asked for

    def ef_search_for(self, k: int) -> int:
        """The search depth for k results: a graph search keeps ef candidates, and with ef near
        k the last results are the ones it misses."""
        return max(self.ef_search, 2 * k)


def euclidean_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows [x, sqrt(R^2 - |x|^2)] with R the largest norm: all of norm R, so a query [q, 0]'s
    Euclidean ranking is its inner-product ranking (|q' - x'|^2 = |q|^2 + R^2 - 2 q . x).

    Why: an HNSW graph built on raw inner products links poorly around the few long (popular,
    high-bias) vectors; this reduction (Bachrach et al., RecSys 2014) lets it use the metric
    it navigates best."""
    norms = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def build_hnsw(vectors: np.ndarray, config: HNSWConfig):
    """An HNSW graph whose nearest neighbours of [q, 0] are the inner-product top of q."""
    import faiss

    rows = euclidean_rows(vectors)
    index = faiss.IndexHNSWFlat(rows.shape[1], config.neighbours, faiss.METRIC_L2)
    index.hnsw.efConstruction = config.ef_construction
    index.add(rows)
    return index


def search_queries(queries: np.ndarray) -> np.ndarray:
    """Queries [q, 0] for an index from `build_hnsw`."""
    return np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1))]), dtype=np.float32)
