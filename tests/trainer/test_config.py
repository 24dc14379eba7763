"""Flags reach the stage configurations that declare them, and only the flags given: every
method keeps its own defaults for the rest (`trainer.config`, `trainer.methods.deep_config`)."""

from __future__ import annotations

import dataclasses

import pytest

from trainer.cli import build_parser, method_options
from trainer.config import configure
from trainer.errors import DataError
from trainer.methods import build_method, deep_config


def test_each_flag_lands_in_its_stage_and_nothing_else_moves() -> None:
    default = deep_config("jtm")
    config = deep_config("jtm", gap=3, dim=16, lr=0.01, tree_guard=False, arity=3, iterations=1)
    assert (config.joint.learning.gap, config.scorer.dim, config.train.lr) == (3, 16, 0.01)
    assert (config.joint.learning.guard, config.tree.arity, config.joint.iterations) == (False, 3, 1)
    untouched = dataclasses.replace(config, scorer=default.scorer, train=default.train, tree=default.tree,
                                    joint=default.joint)
    assert untouched == default
    assert config.joint.tree_learning == "jtm" and config.scorer.hierarchical


def test_methods_keep_their_own_defaults_for_flags_not_given() -> None:
    from trainer.baselines.youtube_dnn import YouTubeConfig
    from trainer.fit.step import TrainConfig

    youtube, two_tower = build_method("youtube"), build_method("two-tower")
    assert deep_config("tdm").train.epochs == TrainConfig().epochs != YouTubeConfig().epochs == youtube.config.epochs
    assert two_tower.config.base.epochs not in (TrainConfig().epochs, YouTubeConfig().epochs)
    assert len(two_tower.config.dims) > 1
    pinned = build_method("two-tower", {"dim": 64, "epochs": 5})
    assert pinned.config.dims == (64,) and pinned.config.base.epochs == 5
    assert pinned.config.lrs == two_tower.config.lrs  # --lr not given: the grid stays
    assert build_method("youtube", {"epochs": 5}).config.epochs == 5


def test_structure_comes_from_the_method_table() -> None:
    assert deep_config("dnn").tree is None and not deep_config("dnn").uses_tree
    assert deep_config("tdm").joint.tree_learning == "none"
    assert deep_config("jtm-cluster").joint.tree_learning == "kmeans"
    equal = deep_config("tdm", epochs=3, iterations=2, retrain_epochs=1, equal_epochs=True)
    assert (equal.train.epochs, equal.train.snapshot_epoch) == (5, 3)
    assert deep_config("jtm", epochs=3, iterations=2, retrain_epochs=1, equal_epochs=True).train.epochs == 3


def test_the_command_line_gives_each_flag_once_parsed_and_checked() -> None:
    parse = build_parser().parse_args
    args = parse(["train", "--data", "x", "--method", "jtm", "--out", "o", "--tree-guard", "off", "--gap", "4"])
    options = method_options(args)
    assert options["tree_guard"] is False and options["gap"] == 4
    assert options["epochs"] is None and options["equal_epochs"] is False and options["retrain_unchanged"] is False
    with pytest.raises(DataError, match="--gap must be at least 1, got 0"):
        method_options(parse(["train", "--data", "x", "--method", "jtm", "--out", "o", "--gap", "0"]))


def test_configure_leaves_a_config_alone_when_no_flag_applies() -> None:
    config = deep_config("tdm")
    assert configure(config, {}) is config
    assert configure(config, {"unrelated": 1}) is config
