"""The tuned two-tower baseline: the index against exact inner-product search, the bias folded
into the vectors against the network's own logits, tuning by validation, and end to end on
MovieLens against the same model's exact retrieval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.baselines.test_baselines import context
from trainer.baselines.hnsw_index import HNSWConfig, build_hnsw, search_queries
from trainer.baselines.two_tower import TwoTowerConfig, TwoTowerHNSW, augmented_item_vectors
from trainer.baselines.youtube_dnn import YouTubeConfig, YouTubeNet
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_eval_set, split_users
from trainer.evaluate.metrics import user_metrics
from trainer.evaluate.protocol import beam_fidelity, evaluate


def test_hnsw_finds_the_exact_inner_product_top_k() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(5000, 17)).astype(np.float32)
    queries = rng.normal(size=(50, 17)).astype(np.float32)
    index = build_hnsw(items, HNSWConfig())
    index.hnsw.efSearch = 256
    _, found = index.search(search_queries(queries), 50)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :50]  # independent reference
    assert beam_fidelity(found, exact) >= 0.95


def test_augmented_vectors_reproduce_the_networks_logits() -> None:
    torch.manual_seed(0)
    net = YouTubeNet(40, YouTubeConfig(dim=8, hidden=16))
    with torch.no_grad():
        net.output_bias.normal_()
    users = torch.randn(3, 8)
    expected = net.logits(users, torch.arange(40)).detach().numpy()
    queries = torch.cat([users, torch.ones(3, 1)], dim=1).numpy()
    np.testing.assert_allclose(queries @ augmented_item_vectors(net).T, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_tower_tunes_on_validation_and_serves_through_the_index(movielens_path: Path) -> None:
    data = load_interactions(DataConfig(path=str(movielens_path)))
    split = split_users(data.n_users, seed=0)
    ctx = context(data, split, m=200, exclude_seen=True)
    config = TwoTowerConfig(base=YouTubeConfig(epochs=2, patience=1), dims=(16, 32), lrs=(3e-3,))
    method = TwoTowerHNSW(config)
    method.fit(ctx)

    # Tuning: one candidate per grid point, the kept model is the validation's best.
    assert [(t["dim"], t["lr"]) for t in method.tuning] == [(16, 3e-3), (32, 3e-3)]
    best = max(method.tuning, key=lambda t: t["valid_recall"])
    assert method.model is not None and method.model.config.dim == best["dim"]

    test = make_eval_set(data, split.test)
    result = evaluate(method, test, 200, True, fidelity=True)
    got = result.recommended
    # Feature-half items are filtered out of a deeper search, and every row is filled.
    offsets = test.feature_offsets
    for user in range(len(test)):
        assert not np.isin(got[user], test.feature_items[offsets[user]:offsets[user + 1]]).any()
        assert (got[user] >= 0).all() and len(np.unique(got[user])) == 200
    # The index finds (nearly) the model's exact top-200, so recall is the exact model's.
    assert result.fidelity is not None and result.fidelity >= 0.95
    exact_recall = user_metrics(method.brute_force(test, 200, True), test, 200).recall.mean()
    assert abs(result.metrics.recall.mean() - exact_recall) < 0.01
    assert method.describe()["ann_fidelity_valid"] >= 0.95


def test_compare_records_the_tuning_grid() -> None:
    from trainer.evaluate.compare import SeedRun
    from trainer.evaluate.metrics import UserMetrics

    metrics = UserMetrics(precision=np.array([0.1]), recall=np.array([0.5]), f_measure=np.array([0.2]))
    run = SeedRun(seed=0, metrics=metrics, seconds=1.0, tuning=[{"dim": 32, "lr": 3e-3, "valid_recall": 0.6}])
    assert SeedRun.from_json(run.to_json()).tuning == run.tuning



def test_bench_retrieval_times_the_two_tower_index_beside_the_beam_search(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "retrieval.json"
    result = subprocess.run([sys.executable, "-m", "bench.bench_retrieval", "--sizes", "3000", "--requests", "20",
                             "--brute-requests", "2", "--beams", "50", "--k", "50", "--hnsw", "--json", str(out)],
                            cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HNSW recall of exact top-k" in result.stdout
    hnsw = json.loads(out.read_text())["results"][0]["hnsw"]
    assert hnsw["ef_search"] == 256 and hnsw["dim"] == 65
    assert hnsw["recall_of_exact_top_k"] >= 0.95  # the exact scan is the reference
    assert hnsw["search_ms"]["p50"] > 0 and hnsw["build_seconds"] > 0
