"""Name -> method registry: the names `compare --methods` and `train --method` accept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from trainer.errors import DataError
from trainer.recommender import Recommender


@dataclass(frozen=True)
class MethodOptions:
    """Command-line overrides that apply to every neural method (None = the method's default)."""

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
    guard: bool | None = None  # tree learning keeps the old tree when the new one scores worse
    retrain_unchanged: bool | None = None  # retrain after a tree step that moved nothing
    kernel: str | None = None  # training kernel: fused / autograd (execution only: same gradients)
    threads: int | None = None  # fused kernel workers (execution only)
    itemcf_neighbours: int | None = None  # Item-CF: K most similar items per history item (None: all)
    # dnn, tdm and jtm-h train as many epochs as a joint loop spends (epochs + iterations x
    # retrain_epochs), so that a table compares methods at equal training, not the tree's
    # effect plus extra epochs. The joint methods still start from their iteration-0 model.
    equal_epochs: bool = False


def _popularity(options: MethodOptions) -> Recommender:
    from trainer.baselines.popularity import Popularity

    return Popularity()


def _itemcf(options: MethodOptions) -> Recommender:
    from trainer.baselines.itemcf import ItemCF

    return ItemCF(neighbours=options.itemcf_neighbours)


def _youtube(options: MethodOptions) -> Recommender:
    from trainer.baselines.youtube_dnn import YouTubeConfig, YouTubeDNN

    config = YouTubeConfig(max_history=options.max_history)
    config = replace(config, **_overrides(options, "epochs", "batch_size", "lr", "dim"))
    return YouTubeDNN(config)


def _overrides(options: MethodOptions, *names: str) -> dict:
    return {name: getattr(options, name) for name in names if getattr(options, name) is not None}


def deep_config(method: str, options: MethodOptions):
    """The configuration of a scorer-based method (dnn, tdm, jtm variants) with CLI overrides."""
    from trainer.deep_retrieval import METHOD_VARIANTS, DeepConfig
    from trainer.joint import JointConfig
    from trainer.model import ScorerConfig
    from trainer.train import TrainConfig
    from trainer.tree_learning import TreeLearningConfig

    variant = METHOD_VARIANTS[method]
    train = replace(TrainConfig(device=options.device),
                    **_overrides(options, "epochs", "batch_size", "lr", "precision", "kernel", "threads"))
    scorer = replace(ScorerConfig(max_history=options.max_history, hierarchical=variant["hierarchical"]),
                     **_overrides(options, "dim"))
    learning = replace(TreeLearningConfig(), **_overrides(options, "gap", "max_samples_per_item", "workers", "guard"))
    joint = replace(JointConfig(learning=learning),
                    **_overrides(options, "iterations", "retrain_epochs", "internal_init", "retrain_unchanged"))
    if options.equal_epochs and variant["tree_learning"] == "none":
        # Keep a snapshot after the joint loop's initial epochs: the joint twin starts there.
        train = replace(train, epochs=train.epochs + joint.iterations * joint.retrain_epochs,
                        snapshot_epoch=train.epochs if method != "dnn" else None)
    return replace(DeepConfig(method=method, scorer=scorer, train=train, tree_learning=variant["tree_learning"],
                              joint=joint),
                   **_overrides(options, "arity", "tree_init", "leaf_negatives", "beam"))


def _deep(method: str) -> Callable[[MethodOptions], Recommender]:
    def factory(options: MethodOptions) -> Recommender:
        from trainer.deep_retrieval import DeepRetrieval

        return DeepRetrieval(deep_config(method, options))

    return factory


METHODS: dict[str, Callable[[MethodOptions], Recommender]] = {
    "pop": _popularity,
    "itemcf": _itemcf,
    "youtube": _youtube,
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
