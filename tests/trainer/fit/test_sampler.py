"""Layer-wise sampler: positives are true ancestors, negatives on the right level, never the positive."""

from __future__ import annotations

import numpy as np

from service.core.tree import Tree
from trainer.fit.sampler import LayerwiseSampler, UniformItemSampler, default_negative_counts, parse_negative_counts
from trainer.tree.build import random_tree


def test_schedule_grows_with_depth_and_respects_level_size() -> None:
    tree = random_tree(5000, seed=0)
    counts = default_negative_counts(tree, leaf_negatives=100)
    assert counts[0] == 0 and counts[tree.depth] == 100
    assert (np.diff(counts[1:]) >= 0).all()
    for level in range(1, tree.depth + 1):
        assert 1 <= counts[level] <= tree.level_size(level) - 1
    assert counts[1] == 1  # level 1 has two nodes: one negative at most


def test_positives_negatives_and_layout() -> None:
    tree = random_tree(700, seed=1, arity=3)
    sampler = LayerwiseSampler.create(tree, parse_negative_counts("leaf=20", tree))
    targets = np.random.default_rng(0).integers(0, 700, size=64)
    nodes = sampler.sample(targets, np.random.default_rng(1))
    assert nodes.shape == (64, len(sampler.label))
    levels = sampler.level_of_column
    for level, columns in sampler.level_slices().items():
        block = nodes[:, columns]
        node_levels, positions = tree.node_positions(block)
        assert (node_levels == level).all() and (levels[columns] == level).all()
        assert np.array_equal(positions[:, 0], tree.ancestors(targets, level))  # positive first
        assert (positions[:, 1:] != positions[:, :1]).all()  # never the positive
        assert tree.nonempty(level)[positions].all()  # never an empty node
        assert sampler.label[columns][0] == 1 and (sampler.label[columns][1:] == 0).all()


def test_negatives_cover_the_level_uniformly() -> None:
    tree = Tree.from_leaves(np.arange(16), arity=2)  # level 2: 4 nodes
    sampler = LayerwiseSampler.create(tree, np.array([0, 1, 3, 3, 3]))
    targets = np.zeros(20_000, dtype=np.int64)  # positive at level 2 is node 0
    nodes = sampler.sample(targets, np.random.default_rng(0))
    _, positions = tree.node_positions(nodes[:, sampler.level_slices()[2]][:, 1:])
    counts = np.bincount(positions.ravel(), minlength=4)
    assert counts[0] == 0
    assert np.allclose(counts[1:] / counts[1:].sum(), 1 / 3, atol=0.01)


def test_deterministic_with_a_seed() -> None:
    tree = random_tree(300, seed=2)
    sampler = LayerwiseSampler.create(tree)
    targets = np.arange(50)
    a = sampler.sample(targets, np.random.default_rng(9))
    b = sampler.sample(targets, np.random.default_rng(9))
    assert np.array_equal(a, b)


def test_uniform_item_sampler() -> None:
    sampler = UniformItemSampler(n_items=10, negatives=9)
    targets = np.random.default_rng(0).integers(0, 10, size=500)
    nodes = sampler.sample(targets, np.random.default_rng(1))
    assert (nodes[:, 0] == targets).all()
    assert (nodes[:, 1:] != targets[:, None]).all() and nodes.min() >= 0 and nodes.max() < 10
