"""Algorithm 1 as a function of values: `joint_fit(model, tree, ctx, train, joint, beam, name) -> JointResult`."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.tree import Tree
from trainer.data.interactions import DataConfig, load_interactions
from trainer.data.split import make_eval_set, make_samples, split_users
from trainer.data.synth import SynthConfig, generate, write
from trainer.deep_retrieval import DeepRetrieval
from trainer.evaluate.protocol import validation_metrics
from trainer.fit.context import FitContext
from trainer.fit.epochs import seed_everything
from trainer.joint import joint_fit
from trainer.methods import deep_config
from trainer.model.scorer import TreeScorer
from trainer.tree.build import initial_tree


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> FitContext:
    path = tmp_path_factory.mktemp("joint") / "log.parquet"
    write(generate(SynthConfig(n_items=200, n_users=400, seed=1)), Path(path))
    data = load_interactions(DataConfig(path=str(path)))
    split = split_users(data.n_users, 0)
    return FitContext(data=data, split=split, samples=make_samples(data, split.train),
                      valid=make_eval_set(data, split.valid), m=40, exclude_seen=False, seed=0)


def _start(ctx: FitContext, method: str):
    config = deep_config(method, epochs=1, iterations=2, retrain_epochs=1)
    seed_everything(ctx.seed)
    tree = initial_tree(ctx.data, ctx.split.train, config.tree.init, ctx.seed, config.tree.arity)
    return config, TreeScorer(tree.n_rows, config.scorer), tree


def _joint_fit(model, tree, ctx: FitContext, config):
    return joint_fit(model, tree, ctx, config.train, config.joint, config.search_beam(ctx.m), config.method)


def assert_valid_tree(tree: Tree, n_items: int) -> None:
    """Every item on exactly one leaf of the deepest level, distinct leaves."""
    assert tree.n_items == n_items
    assert len(np.unique(tree.item_leaf)) == n_items
    assert tree.item_leaf.min() >= 0 and tree.item_leaf.max() < tree.arity ** tree.depth


@pytest.mark.slow
def test_joint_fit_returns_the_best_iteration_and_leaves_its_inputs_alone(ctx: FitContext) -> None:
    config, model, tree = _start(ctx, "jtm-j")
    leaves = tree.item_leaf.copy()
    result = _joint_fit(model, tree, ctx, config)
    assert np.array_equal(tree.item_leaf, leaves)  # the tree given is a value: never edited
    history = result.history
    assert [r.iteration for r in history.records] == [0, 1, 2]
    assert result.initial is not None and len(result.initial.epochs) == history.records[0].epochs == 1
    assert_valid_tree(result.tree, ctx.data.n_items)
    # The returned pair is the best validation iteration's, and scores what that record says.
    best = history.records[history.best_iteration]
    assert best.valid["recall"] == max(r.valid["recall"] for r in history.records)
    beam = config.beam or ctx.m
    assert validation_metrics(result.model, result.tree, ctx, beam) == pytest.approx(best.valid)


@pytest.mark.slow
def test_the_method_adapter_is_joint_fit(ctx: FitContext) -> None:
    """`DeepRetrieval.fit` only builds the start and stores what `joint_fit` returns."""
    config, model, tree = _start(ctx, "jtm-j")
    direct = _joint_fit(model, tree, ctx, config)
    method = DeepRetrieval(config)
    method.fit(ctx)
    assert np.array_equal(method.tree.item_leaf, direct.tree.item_leaf)
    for name, value in direct.model.state_dict().items():
        assert torch.equal(method.model.state_dict()[name], value), name
    assert _without_seconds(method.joint_history.to_json()) == _without_seconds(direct.history.to_json())


@pytest.mark.slow
def test_continuing_from_a_trained_model_skips_iteration_0_training(ctx: FitContext) -> None:
    config, model, tree = _start(ctx, "jtm-j")
    base = DeepRetrieval(deep_config("tdm", epochs=1))
    base.fit(ctx)
    trained = copy.deepcopy(base.model.state_dict())
    method = DeepRetrieval(config)
    method.fit(ctx, start_from=base)
    for name, value in base.model.state_dict().items():  # the base keeps its own model
        assert torch.equal(trained[name], value), name
    assert method.joint_history.records[0].epochs == len(base.history.epochs)
    assert method.joint_history.records[0].valid == pytest.approx(
        validation_metrics(base.model, base.tree, ctx, config.beam or ctx.m))


def _without_seconds(value):
    """A history without its timings and rates (they differ between two identical runs)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "seconds" not in k and not k.endswith("_per_s")}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_category_purity_has_known_values() -> None:
    from trainer.joint import category_purity
    from trainer.tree.build import tree_from_order

    # 8 items, categories in blocks of 2: the ordered tree's level-2 nodes (pairs) are pure,
    # its level-1 nodes (halves) hold two categories each.
    category = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    ordered = tree_from_order(np.arange(8))
    assert category_purity(ordered, category) == [0.5, 1.0, 1.0]
    # Interleaved: each half holds one item of every category, every pair mixes two.
    mixed = tree_from_order(np.array([0, 2, 4, 6, 1, 3, 5, 7]))
    assert category_purity(mixed, category) == [0.25, 0.5, 1.0]


@pytest.mark.slow
def test_joint_records_category_purity_per_iteration(ctx: FitContext) -> None:
    from trainer.joint import category_purity

    config, model, tree = _start(ctx, "jtm-j")
    result = _joint_fit(model, tree, ctx, config)
    for record in result.history.records:
        assert record.category_purity is not None and len(record.category_purity) == tree.depth
        assert ctx.data.n_categories >= tree.level_size(record.purity_level)
    assert result.history.records[0].category_purity == category_purity(tree, ctx.data.item_category)


def test_category_purity_matches_a_dense_count() -> None:
    from trainer.joint import category_purity
    from trainer.tree.build import random_tree

    rng = np.random.default_rng(0)
    for n_items, n_categories in [(1000, 7), (37, 3)]:
        tree = random_tree(n_items, seed=1)
        category = rng.integers(0, n_categories, size=n_items)
        expected = []
        for level in range(1, tree.depth + 1):
            nodes = tree.ancestors(np.arange(n_items), level)
            counts = np.zeros((tree.level_size(level), n_categories), dtype=np.int64)
            np.add.at(counts, (nodes, category), 1)
            expected.append(float(counts.max(axis=1).sum() / n_items))
        assert category_purity(tree, category) == expected
