"""Name -> method registry: the names `compare --methods` and `train --method` accept, and how
the command line's choices (`MethodOptions`) map onto each method's frozen configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from trainer.config import METHOD_VARIANTS, BeamAwareConfig, DeepConfig, JointConfig
from trainer.errors import DataError
from trainer.fit.context import Recommender
from trainer.fit.step import TrainConfig
from trainer.model.scorer import ScorerConfig
from trainer.tree.learning import TreeLearningConfig


@dataclass(frozen=True)
class MethodOptions:
    """What the command line chose for every neural method (None: the flag was not given, so each
    method keeps its own default). `compare` records it with its results, and `merge` refuses to
    pool results whose options differ; `deep_config` maps it onto a method's configuration."""

    epochs: int | None = None
    device: str = "cpu"
    max_history: int = 69
    batch_size: int | None = None
    lr: float | None = None
    dim: int | None = None
    arity: int | None = None
    tree_init: str | None = None
    leaf_negatives: int | None = None
    beam: int | None = None
    iterations: int | None = None  # joint loop T
    retrain_epochs: int | None = None
    internal_init: str | None = None
    gap: int | None = None  # tree learning d
    max_samples_per_item: int | None = None
    workers: int | None = None
    precision: str | None = None
    guard: bool | None = None  # tree learning keeps the old tree when the new one scores worse (None: auto)
    tree_judge: str | None = None  # how the guard scores trees (neutral / trained)
    retrain_unchanged: bool | None = None  # retrain after a tree step that moved nothing
    kernel: str | None = None  # training kernel: fused / autograd (execution only: same gradients)
    threads: int | None = None  # fused kernel workers (execution only)
    itemcf_neighbours: int | None = None  # Item-CF: K most similar items per history item (None: all)
    # dnn, tdm and jtm-h train as many epochs as a joint loop spends (epochs + iterations x
    # retrain_epochs), so that a table compares methods at equal training, not the tree's
    # effect plus extra epochs. The joint methods still start from their iteration-0 model.
    equal_epochs: bool = False
    # Beam-search-aware negatives for the tree methods (trainer/fit/beam_mining.py).
    beam_aware: bool = False
    beam_aware_share: float | None = None
    beam_aware_beam: int | None = None
    beam_aware_min_items: int | None = None
    beam_aware_warmup: int | None = None


def _popularity(options: MethodOptions) -> Recommender:
    from trainer.baselines.popularity import Popularity

    return Popularity()


def _itemcf(options: MethodOptions) -> Recommender:
    from trainer.baselines.itemcf import ItemCF

    return ItemCF(neighbours=options.itemcf_neighbours)


def _youtube(options: MethodOptions) -> Recommender:
    from trainer.baselines.youtube_dnn import YouTubeConfig, YouTubeDNN

    default = YouTubeConfig()
    return YouTubeDNN(replace(default, max_history=options.max_history,
                              epochs=_given(options.epochs, default.epochs),
                              batch_size=_given(options.batch_size, default.batch_size),
                              lr=_given(options.lr, default.lr), dim=_given(options.dim, default.dim)))


def _two_tower(options: MethodOptions) -> Recommender:
    from trainer.baselines.two_tower import TwoTowerConfig, TwoTowerHNSW

    default = TwoTowerConfig()
    # The grid tunes width and learning rate; --dim / --lr pin them instead.
    base = replace(default.base, max_history=options.max_history,
                   epochs=_given(options.epochs, default.base.epochs),
                   batch_size=_given(options.batch_size, default.base.batch_size))
    return TwoTowerHNSW(replace(default, base=base,
                                dims=default.dims if options.dim is None else (options.dim,),
                                lrs=default.lrs if options.lr is None else (options.lr,)))


def _given(value, default):
    """The command line's value, or the configuration's own default where the flag was not given
    (each configuration keeps its defaults: YouTube-DNN's epochs are not the tree methods')."""
    return default if value is None else value


def deep_config(method: str, options: MethodOptions) -> DeepConfig:
    """The frozen configuration of a scorer-based method (dnn, tdm, jtm variants): the method's
    variant (features, tree learner) with the command line's choices mapped onto each part."""
    variant = METHOD_VARIANTS[method]
    train = TrainConfig()
    train = replace(train, device=options.device, epochs=_given(options.epochs, train.epochs),
                    batch_size=_given(options.batch_size, train.batch_size), lr=_given(options.lr, train.lr),
                    precision=_given(options.precision, train.precision), kernel=_given(options.kernel, train.kernel),
                    threads=_given(options.threads, train.threads))
    scorer = ScorerConfig()
    scorer = replace(scorer, max_history=options.max_history, hierarchical=variant["hierarchical"],
                     dim=_given(options.dim, scorer.dim))
    learning = TreeLearningConfig()
    learning = replace(learning, gap=_given(options.gap, learning.gap),
                       workers=_given(options.workers, learning.workers),
                       max_samples_per_item=_given(options.max_samples_per_item, learning.max_samples_per_item),
                       guard=_given(options.guard, learning.guard), judge=_given(options.tree_judge, learning.judge))
    joint = JointConfig()
    joint = replace(joint, learning=learning, iterations=_given(options.iterations, joint.iterations),
                    retrain_epochs=_given(options.retrain_epochs, joint.retrain_epochs),
                    internal_init=_given(options.internal_init, joint.internal_init),
                    retrain_unchanged=_given(options.retrain_unchanged, joint.retrain_unchanged))
    if options.equal_epochs and variant["tree_learning"] == "none":
        # Keep a snapshot after the joint loop's initial epochs: the joint twin starts there.
        train = replace(train, epochs=train.epochs + joint.iterations * joint.retrain_epochs,
                        snapshot_epoch=train.epochs if method != "dnn" else None)
    beam_aware = None
    if options.beam_aware:
        default_aware = BeamAwareConfig()
        beam_aware = BeamAwareConfig(share=_given(options.beam_aware_share, default_aware.share),
                                     beam=_given(options.beam_aware_beam, default_aware.beam),
                                     min_node_items=_given(options.beam_aware_min_items,
                                                           default_aware.min_node_items),
                                     warmup_epochs=_given(options.beam_aware_warmup, default_aware.warmup_epochs))
    config = DeepConfig()
    return DeepConfig(method=method, scorer=scorer, train=train, tree_learning=variant["tree_learning"], joint=joint,
                      arity=_given(options.arity, config.arity), tree_init=_given(options.tree_init, config.tree_init),
                      leaf_negatives=_given(options.leaf_negatives, config.leaf_negatives),
                      beam=_given(options.beam, config.beam), beam_aware=beam_aware)


def _deep(method: str) -> Callable[[MethodOptions], Recommender]:
    def factory(options: MethodOptions) -> Recommender:
        from trainer.deep_retrieval import DeepRetrieval

        return DeepRetrieval(deep_config(method, options))

    return factory


METHODS: dict[str, Callable[[MethodOptions], Recommender]] = {
    "pop": _popularity,
    "itemcf": _itemcf,
    "youtube": _youtube,
    "two-tower": _two_tower,
    "dnn": _deep("dnn"),
    "tdm": _deep("tdm"),
    "jtm-j": _deep("jtm-j"),
    "jtm-h": _deep("jtm-h"),
    "jtm": _deep("jtm"),
    "jtm-cluster": _deep("jtm-cluster"),
}


def parse_methods(spec: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise DataError(f"unknown method(s) {unknown or spec!r}; choose from {', '.join(METHODS)}")
    return names


def build_method(name: str, options: MethodOptions) -> Recommender:
    return METHODS[name](options)
