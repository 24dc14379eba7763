"""Item-based collaborative filtering with cosine similarity, sparse and vectorized.

sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|) over the training users' binary interaction matrix
X (users x items); the score of item j for a user with feature items H is
sum_{i in H, i != j} sim(i, j). With D = diag(|U_i|^-1/2):

    scores = H D X^T X D - H * [|U_j| > 0]

computed as two sparse products per batch of users, so the items x items similarity matrix is
never formed (it would be dense-ish for popular items).

`neighbours = K` is the classic neighbourhood variant (Sarwar et al. 2001): each history item
contributes only its K most similar items. Then the similarity matrix is formed once (sparse,
top-K per row). On sparse data the two differ: full cosine favours long-tail items that a
single training user co-rated, while a small K leaves most of the list to the popularity
tie-breaker.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from trainer.baselines.ranking import rank_by_scores
from trainer.data.interactions import rows_of_users
from trainer.data.split import EvalSet
from trainer.fit.context import FitContext


class ItemCF:
    name = "itemcf"

    def __init__(self, neighbours: int | None = None) -> None:
        if neighbours is not None and neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.neighbours = neighbours
        self.similarity: sp.csr_matrix | None = None  # top-K per row, when neighbours is set
        self.scaled: sp.csr_matrix | None = None  # X D: (train users, items)
        self.item_scale: np.ndarray | None = None  # diag of D
        self.popular: np.ndarray | None = None

    def fit(self, ctx: FitContext) -> None:
        data, users = ctx.data, ctx.split.train
        rows = rows_of_users(data.user_offsets, users)
        owner = np.repeat(np.arange(len(users)), data.user_lengths()[users])
        x = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float64), (owner, data.item[rows])),
            shape=(len(users), data.n_items),
        )
        x.sum_duplicates()
        x.data[:] = 1.0  # binary: repeated consumption counts once
        degree = np.asarray(x.sum(axis=0)).ravel()
        self.item_scale = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
        self.scaled = (x @ sp.diags(self.item_scale)).tocsr()
        # Popularity as a vanishing tie-breaker, so users with no co-occurring items still get M.
        self.popular = degree / (degree.max() + 1.0) * 1e-6
        if self.neighbours is not None:
            self.similarity = top_k_per_row(_without_diagonal((self.scaled.T @ self.scaled).tocsr()),
                                            self.neighbours)

    def scores(self, eval_set: EvalSet, users: slice) -> np.ndarray:
        assert self.scaled is not None and self.item_scale is not None and self.popular is not None
        h = eval_set.subset(np.arange(users.start, users.stop)).feature_matrix(np.float64)
        if self.similarity is not None:
            return (h @ self.similarity).toarray() + self.popular
        left = h @ self.scaled.T  # H D X^T: (U, train users)
        dense = (left @ self.scaled).toarray()  # H D X^T X D: (U, items)
        dense -= h.multiply(self.item_scale > 0).toarray()  # remove sim(i, i) = 1
        return dense + self.popular

    def recommend(self, eval_set: EvalSet, m: int, exclude_seen: bool) -> np.ndarray:
        return rank_by_scores(lambda users: self.scores(eval_set, users), eval_set, m, exclude_seen, batch=256)


def _without_diagonal(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = matrix.tocoo()
    keep = matrix.row != matrix.col
    return sp.csr_matrix((matrix.data[keep], (matrix.row[keep], matrix.col[keep])), shape=matrix.shape)


def top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of every row (ties: lower column first), vectorized."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    row = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, row))
    rank = np.arange(len(order)) - matrix.indptr[row[order]]
    kept = order[rank < k]
    return sp.csr_matrix((matrix.data[kept], (row[kept], matrix.indices[kept])), shape=matrix.shape)
