"""Training batches: window bags pool exactly like `WindowPooling`, the transposed bags route
every gradient to its row, local ids name the sampled nodes, and the background builder keeps
order and surfaces errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.trainer.data.test_data import tiny_interactions
from trainer.data.split import make_samples, split_users
from trainer.fit.batches import BatchBuilder, prefetch
from trainer.fit.sampler import LayerwiseSampler, UniformItemSampler
from trainer.model.layers import WindowPooling
from trainer.tree.build import random_tree

WINDOWS = ((0, 1), (0, 5), (2, 69))


def setup(hierarchical: bool, uniform: bool = False):
    _, data = tiny_interactions()
    samples = make_samples(data, split_users(data.n_users, 0, 0.0, 0.2).train, max_history=12)
    tree = random_tree(data.n_items, seed=0)
    sampler = UniformItemSampler(data.n_items, 5) if uniform else LayerwiseSampler.create(tree)
    n_rows = data.n_items if uniform else tree.n_rows
    return samples, tree, BatchBuilder(samples, sampler, None if uniform else tree, hierarchical, WINDOWS, n_rows,
                                       keep_history=True), n_rows


@pytest.mark.parametrize("hierarchical", [False, True])
def test_bags_pool_like_window_pooling_and_ids_are_the_sampled_nodes(hierarchical: bool) -> None:
    samples, tree, builder, n_rows = setup(hierarchical)
    index = np.arange(min(40, len(samples)))
    batch = builder(index, np.random.default_rng(3))
    nodes = builder.sampler.sample(samples.targets[index], np.random.default_rng(3))
    groups = np.concatenate(batch.groups, axis=1)
    assert np.array_equal(batch.rows[groups], nodes)  # local ids name the sampled nodes
    assert (np.diff(batch.rows) > 0).all()
    table = torch.randn(n_rows + 1, 6, dtype=torch.float64)
    table[n_rows] = 0
    history = samples.histories(index)
    levels = builder.levels if hierarchical else (None,)
    assert batch.n_groups == len(levels)
    local = torch.from_numpy(batch.rows)
    pooled = F.embedding_bag(torch.from_numpy(batch.bag_ids), table[local], torch.from_numpy(batch.bag_offsets),
                             mode="sum", per_sample_weights=torch.from_numpy(batch.bag_weights).double())
    pooled = pooled.view(batch.n_groups, len(index), len(WINDOWS), 6)
    pool = WindowPooling(WINDOWS, samples.max_history).double()
    for v, level in enumerate(levels):
        mapped = history if level is None else tree.ancestor_ids(history, level)
        rows = torch.from_numpy(np.where(mapped >= 0, mapped, n_rows))
        expected = pool(table[rows], torch.from_numpy(mapped >= 0))
        torch.testing.assert_close(pooled[v], expected)
        assert np.array_equal(np.where(batch.history[v] >= 0, batch.rows[np.maximum(batch.history[v], 0)], -1),
                              mapped)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_transposed_bags_give_every_row_its_gradient(hierarchical: bool) -> None:
    samples, _, builder, n_rows = setup(hierarchical)
    batch = builder(np.arange(min(30, len(samples))), np.random.default_rng(0))
    table = torch.randn(len(batch.rows), 4, dtype=torch.float64, requires_grad=True)
    pooled = F.embedding_bag(torch.from_numpy(batch.bag_ids), table, torch.from_numpy(batch.bag_offsets),
                             mode="sum", per_sample_weights=torch.from_numpy(batch.bag_weights).double())
    columns = torch.from_numpy(np.concatenate([g.ravel() for g in batch.groups]))
    targets = table[columns]
    g_pooled, g_targets = torch.randn_like(pooled), torch.randn_like(targets)
    (expected,) = torch.autograd.grad((pooled * g_pooled).sum() + (targets * g_targets).sum(), table)
    got = F.embedding_bag(torch.from_numpy(batch.grad_sources), torch.cat([g_pooled, g_targets]),
                          torch.from_numpy(batch.grad_offsets), mode="sum",
                          per_sample_weights=torch.from_numpy(batch.grad_weights).double())
    torch.testing.assert_close(got, expected)


def test_uniform_sampler_batches_have_one_group() -> None:
    samples, _, builder, _ = setup(False, uniform=True)
    batch = builder(np.arange(10), np.random.default_rng(0))
    assert batch.n_groups == 1 and batch.groups[0].shape == (10, 6) and batch.pairs == 60
    assert batch.labels[0].tolist() == [1, 0, 0, 0, 0, 0]


def test_the_same_generator_builds_the_same_batches() -> None:
    samples, _, builder, _ = setup(True)
    rng = np.random.default_rng(5)
    first = [builder(np.arange(i, i + 8), rng) for i in (0, 8)]
    rng = np.random.default_rng(5)
    again = list(prefetch(lambda index: builder(index, rng), [np.arange(0, 8), np.arange(8, 16)]))
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a.groups, b.groups, strict=True))
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.grad_sources, b.grad_sources)


def test_prefetch_keeps_order_and_raises_the_builders_error() -> None:
    assert list(prefetch(lambda i: i * 2, range(7))) == [0, 2, 4, 6, 8, 10, 12]

    def failing(i: int) -> int:
        if i == 3:
            raise RuntimeError("bad batch 3")
        return i

    seen = []
    with pytest.raises(RuntimeError, match="bad batch 3"):
        for item in prefetch(failing, range(10)):
            seen.append(item)
    assert seen == [0, 1, 2]
    stream = prefetch(lambda i: i, range(100))  # a consumer that stops early frees the worker
    assert next(stream) == 0
    stream.close()
