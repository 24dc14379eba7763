"""The method table: every name `compare --methods` and `train --method` accept, what it is, and
how it is built from the flags the command line was given.

`given` maps a flag's key (`trainer.config.dest_of`: "epochs", "tree_guard", ...) to its value,
for the flags actually given; each method's configuration keeps its own defaults for the rest
(`trainer.config.configure`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainer.config import configure
from trainer.errors import DataError
from trainer.fit.context import Recommender


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    build: Callable[[Mapping[str, Any]], Recommender]
    # Scorer-based methods (dnn, tdm, the JTM variants; `train` writes a run of them): the user
    # features and the tree learner. None for the baselines, which only `compare` evaluates.
    hierarchical: bool | None = None
    tree_learning: str | None = None  # "none": a fixed tree (or none at all: dnn)

    @property
    def trainable(self) -> bool:
        return self.tree_learning is not None

    @property
    def joint(self) -> bool:
        """A joint method (Algorithm 1): it continues from its fixed-tree twin's model."""
        return self.tree_learning not in (None, "none")


def _popularity(given: Mapping[str, Any]) -> Recommender:
    from trainer.baselines.popularity import Popularity

    return Popularity()


def _itemcf(given: Mapping[str, Any]) -> Recommender:
    from trainer.baselines.itemcf import ItemCF

    return ItemCF(neighbours=given.get("itemcf_neighbours"))


def _youtube(given: Mapping[str, Any]) -> Recommender:
    from trainer.baselines.youtube_dnn import YouTubeConfig, YouTubeDNN

    return YouTubeDNN(configure(YouTubeConfig(), given))


def _two_tower(given: Mapping[str, Any]) -> Recommender:
    from trainer.baselines.two_tower import TwoTowerConfig, TwoTowerHNSW

    return TwoTowerHNSW(configure(TwoTowerConfig(), given))


def _deep(given: Mapping[str, Any], name: str) -> Recommender:
    from trainer.deep_retrieval import DeepRetrieval

    return DeepRetrieval(deep_config(name, given))


def _scorer_method(name: str, summary: str, hierarchical: bool, tree_learning: str) -> Method:
    return Method(name, summary, lambda given: _deep(given, name), hierarchical, tree_learning)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("pop", "most popular items among the training users", _popularity),
    Method("itemcf", "item-based collaborative filtering, cosine similarity", _itemcf),
    Method("youtube", "YouTube product-DNN, inner product over every item", _youtube),
    Method("two-tower", "the YouTube towers tuned on validation users, served by a faiss HNSW index", _two_tower),
    _scorer_method("dnn", "the scorer, every item scored (no tree)", False, "none"),
    _scorer_method("tdm", "the scorer on a fixed initial tree (TDM)", False, "none"),
    _scorer_method("jtm-j", "tree learning (Algorithm 1 + 2), plain features", False, "jtm"),
    _scorer_method("jtm-h", "hierarchical user representation, fixed tree", True, "none"),
    _scorer_method("jtm", "tree learning and the hierarchical representation (JTM)", True, "jtm"),
    _scorer_method("jtm-cluster", "TDM's k-means re-clustering, hierarchical features (Figure 2)", True, "kmeans"),
)}
TRAINABLE = tuple(name for name, method in METHODS.items() if method.trainable)


def deep_config(name: str, given: Mapping[str, Any] | None = None, **flags: Any):
    """The frozen configuration of a scorer-based method: its row of the table (features, tree
    learner) with the flags `given` (and `flags`, the same by keyword) written into each stage."""
    from trainer.deep_retrieval import DeepConfig
    from trainer.fit.sampler import BeamAwareConfig

    method = METHODS[name]
    given = {**(given or {}), **flags}
    config = DeepConfig(method=name)
    config = replace(config, tree=None if name == "dnn" else config.tree,
                     scorer=replace(config.scorer, hierarchical=method.hierarchical),
                     joint=replace(config.joint, tree_learning=method.tree_learning))
    config = configure(config, given)
    if given.get("beam_aware"):
        config = replace(config, train=replace(config.train, beam_aware=configure(BeamAwareConfig(), given)))
    if given.get("equal_epochs") and not method.joint:
        # Train as many epochs as a joint loop spends (its initial epochs, then retrain_epochs per
        # iteration), so a table compares methods at equal training, not the tree's effect plus
        # extra epochs; keep a snapshot after the initial epochs, where the joint twin starts.
        train, joint = config.train, config.joint
        config = replace(config, train=replace(train, epochs=train.epochs + joint.iterations * joint.retrain_epochs,
                                               snapshot_epoch=train.epochs if name != "dnn" else None))
    return config


def parse_methods(spec: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise DataError(f"unknown method(s) {unknown or spec!r}; choose from {', '.join(METHODS)}")
    return names


def build_method(name: str, given: Mapping[str, Any] | None = None, **flags: Any) -> Recommender:
    return METHODS[name].build({**(given or {}), **flags})
