"""The paper's metrics (section 3.1) and the statistics that tell a gap from noise.

For a user u with recalled set P_u (|P_u| = M) and ground truth G_u:

    Precision@M(u) = |P_u ∩ G_u| / M
    Recall@M(u)    = |P_u ∩ G_u| / |G_u|
    F@M(u)         = 2 P R / (P + R)   (0 when P = R = 0)

each averaged over the test users. Precision divides by M even when a method returns fewer
than M items (a corpus smaller than M), as the paper's |P_u| = M does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.split import EvalSet

METRICS = ("precision", "recall", "f_measure")


@dataclass(frozen=True)
class UserMetrics:
    """Per-user metrics of one method on one evaluation set: arrays of shape (n_users,)."""

    precision: np.ndarray
    recall: np.ndarray
    f_measure: np.ndarray

    def means(self) -> dict[str, float]:
        return {name: float(np.mean(getattr(self, name))) for name in METRICS}

    def standard_errors(self) -> dict[str, float]:
        """Standard error of each mean over users: std / sqrt(n)."""
        n = len(self.recall)
        return {
            name: float(np.std(getattr(self, name), ddof=1) / np.sqrt(n)) if n > 1 else 0.0
            for name in METRICS
        }


def hits_per_user(recommended: np.ndarray, eval_set: EvalSet) -> np.ndarray:
    """|P_u ∩ G_u| per user. recommended: (U, M) item ids, -1 for "no item"; duplicates count once."""
    n_users, m = recommended.shape
    if n_users != len(eval_set):
        raise ValueError(f"{n_users} recommendation rows for {len(eval_set)} users")
    owner = np.repeat(np.arange(n_users, dtype=np.int64), m)
    flat = recommended.reshape(-1).astype(np.int64)
    valid = flat >= 0
    keys = np.unique(owner[valid] * eval_set.n_items + flat[valid])
    truth_owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(eval_set.truth_offsets))
    truth_keys = truth_owner * eval_set.n_items + eval_set.truth_items
    hit_keys = keys[np.isin(keys, truth_keys, assume_unique=True)]
    return np.bincount(hit_keys // eval_set.n_items, minlength=n_users)


def user_metrics(recommended: np.ndarray, eval_set: EvalSet, m: int) -> UserMetrics:
    """Precision, recall and F-measure @m per user for a (U, >= m) recommendation matrix."""
    if recommended.shape[1] < m:
        pad = np.full((recommended.shape[0], m - recommended.shape[1]), -1, dtype=recommended.dtype)
        recommended = np.concatenate([recommended, pad], axis=1)
    hits = hits_per_user(recommended[:, :m], eval_set).astype(np.float64)
    truth = eval_set.truth_sizes().astype(np.float64)
    precision = hits / m
    recall = np.divide(hits, truth, out=np.zeros_like(hits), where=truth > 0)
    denominator = precision + recall
    f_measure = np.divide(2 * precision * recall, denominator, out=np.zeros_like(hits), where=denominator > 0)
    return UserMetrics(precision=precision, recall=recall, f_measure=f_measure)


def hit_matrix(recommended: np.ndarray, eval_set: EvalSet) -> np.ndarray:
    """(U, K) bool: whether the item at each rank is in the user's truth; -1 ("no item") and
    an item repeated further down a list are not hits."""
    n_users, k = recommended.shape
    if n_users != len(eval_set):
        raise ValueError(f"{n_users} recommendation rows for {len(eval_set)} users")
    owner = np.repeat(np.arange(n_users, dtype=np.int64), k)
    keys = owner * eval_set.n_items + recommended.reshape(-1).astype(np.int64)
    truth_owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(eval_set.truth_offsets))
    hits = np.isin(keys, truth_owner * eval_set.n_items + eval_set.truth_items) & (recommended.reshape(-1) >= 0)
    _, first = np.unique(keys, return_index=True)
    repeated = np.ones(len(keys), dtype=bool)
    repeated[first] = False
    return (hits & ~repeated).reshape(n_users, k)


def ranking_metrics(recommended: np.ndarray, eval_set: EvalSet, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per user, recall@k and NDCG@k for each k (the published splits' protocol, e.g. LightGCN):

        recall@k(u) = hits in the top k / |G_u|
        NDCG@k(u)   = sum over hit ranks r (1-based) of 1 / log2(r + 1), divided by the same sum
                      for an ideal list of min(|G_u|, k) hits

    0 for a user without truth. `recommended`: (U, >= max(ks)) item ids best first, -1 padded."""
    width = max(ks)
    if recommended.shape[1] < width:
        pad = np.full((recommended.shape[0], width - recommended.shape[1]), -1, dtype=recommended.dtype)
        recommended = np.concatenate([recommended, pad], axis=1)
    hits = hit_matrix(recommended[:, :width], eval_set)
    truth = eval_set.truth_sizes().astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    ideal_prefix = np.r_[0.0, np.cumsum(discount)]
    result = {}
    for k in ks:
        found = hits[:, :k]
        result[f"recall@{k}"] = np.divide(found.sum(axis=1), truth, out=np.zeros(len(truth)), where=truth > 0)
        ideal = ideal_prefix[np.minimum(truth, k).astype(np.int64)]
        result[f"ndcg@{k}"] = np.divide(found @ discount[:k], ideal, out=np.zeros(len(truth)), where=ideal > 0)
    return result


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b over the same users with its standard error and z = mean / se."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(diff)
    mean = float(diff.mean()) if n else 0.0
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "se": se, "z": mean / se if se > 0 else 0.0, "users": n}


def summarize_seeds(per_seed: list[UserMetrics]) -> dict:
    """Mean over seeds of the per-seed means, their std across seeds, and the per-user SE.

    `std` is the spread across seeds (ddof=1; 0 for a single seed); `user_se` is the mean over
    seeds of each seed's standard error over users: the noise of one split's estimate.
    """
    means = [m.means() for m in per_seed]
    ses = [m.standard_errors() for m in per_seed]
    result: dict = {}
    for name in METRICS:
        values = np.array([m[name] for m in means])
        result[name] = float(values.mean())
        result.setdefault("std", {})[name] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        result.setdefault("user_se", {})[name] = float(np.mean([s[name] for s in ses]))
        result.setdefault("per_seed", {})[name] = values.tolist()
    result["users"] = int(np.mean([len(m.recall) for m in per_seed]))
    return result
