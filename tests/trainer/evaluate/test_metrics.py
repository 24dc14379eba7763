"""Metric arithmetic on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.split import EvalSet
from trainer.evaluate.metrics import UserMetrics, paired_difference, summarize_seeds, user_metrics


def eval_set(truths: list[list[int]], n_items: int = 10) -> EvalSet:
    return EvalSet(
        users=np.arange(len(truths)),
        feature_items=np.zeros(0, dtype=np.int32), feature_offsets=np.zeros(len(truths) + 1, dtype=np.int64),
        truth_items=np.array([i for t in truths for i in sorted(t)], dtype=np.int32),
        truth_offsets=np.r_[0, np.cumsum([len(t) for t in truths])].astype(np.int64),
        n_items=n_items,
    )


def test_hand_computed_case() -> None:
    ev = eval_set([[1, 2, 3, 4], [5], [6, 7]])
    recs = np.array([
        [1, 2, 9, 0],     # 2 hits of 4 truth: P = 2/4, R = 2/4, F = 0.5
        [5, -1, -1, -1],  # 1 hit, fewer than M returned: P = 1/4, R = 1, F = 2*.25/(1.25) = 0.4
        [0, 1, 2, 3],     # 0 hits: all zero
    ])
    m = user_metrics(recs, ev, m=4)
    assert m.precision == pytest.approx([0.5, 0.25, 0.0])
    assert m.recall == pytest.approx([0.5, 1.0, 0.0])
    assert m.f_measure == pytest.approx([0.5, 0.4, 0.0])
    assert m.means()["recall"] == pytest.approx(0.5)


def test_duplicate_recommendations_count_once_and_m_truncates() -> None:
    ev = eval_set([[1, 2]])
    m = user_metrics(np.array([[1, 1, 2]]), ev, m=2)  # only the first 2 count: {1}
    assert m.precision[0] == pytest.approx(0.5) and m.recall[0] == pytest.approx(0.5)


def test_paired_difference_and_seed_summary() -> None:
    d = paired_difference(np.array([0.5, 0.7, 0.9]), np.array([0.4, 0.5, 0.6]))
    assert d["mean"] == pytest.approx(0.2)
    assert d["se"] == pytest.approx(np.std([0.1, 0.2, 0.3], ddof=1) / np.sqrt(3))
    a = UserMetrics(np.array([0.1, 0.3]), np.array([0.2, 0.4]), np.array([0.1, 0.2]))
    b = UserMetrics(np.array([0.2, 0.4]), np.array([0.4, 0.6]), np.array([0.2, 0.3]))
    s = summarize_seeds([a, b])
    assert s["recall"] == pytest.approx(0.4)
    assert s["std"]["recall"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert s["user_se"]["recall"] == pytest.approx(np.std([0.2, 0.4], ddof=1) / np.sqrt(2))
