"""Baselines against direct computations, and YouTube-DNN against popularity on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.baselines.itemcf import ItemCF
from trainer.baselines.popularity import Popularity
from trainer.data.formats import RawLog
from trainer.data.interactions import DataConfig, build_interactions, load_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.evaluate.metrics import user_metrics
from trainer.fit.context import FitContext


def context(data, split, m=3, exclude_seen=False, seed=0) -> FitContext:
    return FitContext(data=data, split=split, samples=make_samples(data, split.train),
                      valid=make_eval_set(data, split.valid), m=m, exclude_seen=exclude_seen, seed=seed)


def tiny():
    # 4 training users and one test user over 5 items.
    rows = [
        ("a", 0), ("a", 1), ("a", 2),
        ("b", 0), ("b", 1),
        ("c", 1), ("c", 3),
        ("d", 2), ("d", 4), ("d", 0),
        ("t", 0), ("t", 3), ("t", 1), ("t", 2),  # test: features [0, 3], truth {1, 2}
    ]
    frame = pd.DataFrame(rows, columns=["user", "item"])
    data = build_interactions(RawLog(frame=frame, format="generic", path=Path("tiny")), 1)
    test_user = int(np.flatnonzero(data.user_ids == "t")[0])
    others = np.array([u for u in range(data.n_users) if u != test_user])
    from trainer.data.split import UserSplit
    split = UserSplit(train=others, valid=np.array([], dtype=np.int64), test=np.array([test_user]),
                      seed=0, valid_fraction=0.0, test_fraction=0.2)
    return data, split


def test_itemcf_matches_direct_cosine() -> None:
    data, split = tiny()
    cf = ItemCF()
    cf.fit(context(data, split))
    test = make_eval_set(data, split.test)
    got = cf.scores(test, slice(0, 1))[0]
    # Direct: binary matrix of training users, cosine between item columns, sum over history.
    x = np.zeros((len(split.train), data.n_items))
    for row, u in enumerate(split.train):
        x[row, data.item[data.user_offsets[u]:data.user_offsets[u + 1]]] = 1
    norms = np.sqrt(x.sum(0))
    sim = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(sim, 0)
    history = data.item_ids.tolist()
    expected = sim[[history.index(0), history.index(3)]].sum(0)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # popularity tie-breaker is ~1e-6


def test_itemcf_neighbourhood_matches_direct_top_k() -> None:
    data, split = tiny()
    test = make_eval_set(data, split.test)
    x = np.zeros((len(split.train), data.n_items))
    for row, u in enumerate(split.train):
        x[row, data.item[data.user_offsets[u]:data.user_offsets[u + 1]]] = 1
    norms = np.sqrt(x.sum(0))
    sim = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(sim, 0)
    features = test.feature_items
    for k in (1, 2, 4):
        cf = ItemCF(neighbours=k)
        cf.fit(context(data, split))
        truncated = np.zeros_like(sim)
        for i in range(len(sim)):  # direct: each row's k largest (ties: lower column first)
            keep = sorted(range(len(sim)), key=lambda j, i=i: (-sim[i, j], j))[:k]
            truncated[i, keep] = sim[i, keep]
        expected = truncated[features].sum(0)
        np.testing.assert_allclose(cf.scores(test, slice(0, 1))[0], expected, atol=1e-5)
    full = ItemCF(neighbours=data.n_items)
    full.fit(context(data, split))
    np.testing.assert_allclose(full.scores(test, slice(0, 1))[0], sim[features].sum(0), atol=1e-5)


def test_itemcf_and_popularity_exclude_seen() -> None:
    data, split = tiny()
    test = make_eval_set(data, split.test)
    for method in (ItemCF(), Popularity()):
        method.fit(context(data, split))
        recs = method.recommend(test, 5, exclude_seen=True)[0]
        features = set(test.feature_items.tolist())
        assert not features & set(recs[recs >= 0].tolist())
        assert (recs >= 0).sum() == data.n_items - len(features)
        unfiltered = method.recommend(test, 5, exclude_seen=False)[0]
        assert sorted(unfiltered.tolist()) == list(range(data.n_items))


def test_popularity_ranks_by_training_counts() -> None:
    data, split = tiny()
    pop = Popularity()
    pop.fit(context(data, split))
    recs = pop.recommend(make_eval_set(data, split.test), 2, exclude_seen=False)[0]
    # Training counts: item 0 -> 3, item 1 -> 3, item 2 -> 2: ties broken by smaller id.
    assert data.item_ids[recs].tolist() == [0, 1]


@pytest.mark.slow
def test_youtube_dnn_beats_popularity_on_movielens(movielens_path: Path) -> None:
    from trainer.baselines.youtube_dnn import YouTubeConfig, YouTubeDNN

    data = load_interactions(DataConfig(path=str(movielens_path)))
    split = split_users(data.n_users, seed=0)
    ctx = context(data, split, m=200)
    test = make_eval_set(data, split.test)
    pop, youtube = Popularity(), YouTubeDNN(YouTubeConfig(epochs=6, patience=2))
    pop.fit(ctx)
    youtube.fit(ctx)
    r_pop = user_metrics(pop.recommend(test, 200, False), test, 200).recall
    r_yt = user_metrics(youtube.recommend(test, 200, False), test, 200).recall
    assert youtube.history is not None and youtube.history.epochs[-1].train_loss < youtube.history.epochs[0].train_loss
    diff = r_yt - r_pop
    assert diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff)), (r_yt.mean(), r_pop.mean())
