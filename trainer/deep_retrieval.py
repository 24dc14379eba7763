"""DNN, TDM and the JTM variants as `Recommender`s: one class, switched by configuration.

| method      | tree                        | user features | retrieval   |
|-------------|-----------------------------|---------------|-------------|
| dnn         | none (leaf samples only)    | plain         | brute force |
| tdm         | fixed initial tree          | plain         | beam search |
| jtm-h       | fixed initial tree          | hierarchical  | beam search |
| jtm-j       | learnt (Algorithm 1 + 2)    | plain         | beam search |
| jtm         | learnt (Algorithm 1 + 2)    | hierarchical  | beam search |
| jtm-cluster | TDM's k-means re-clustering | hierarchical  | beam search |

(`jtm-cluster` is the comparison curve of the paper's Figure 2.)

A fitted method saves to and loads from a run directory (``model.pt``, ``tree.npz``), which is
what `train`, `evaluate` and `export` exchange.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from service.core.tree import Tree
from trainer.data import EvalSet, Interactions
from trainer.errors import DataError
from trainer.joint import JointConfig, JointHistory, joint_fit
from trainer.metrics import user_metrics
from trainer.model import ScorerConfig, TreeScorer
from trainer.recommender import FitContext
from trainer.sampler import DEFAULT_LEAF_NEGATIVES, LayerwiseSampler, UniformItemSampler, default_negative_counts
from trainer.scoring import retrieve
from trainer.train import TrainConfig, fit_scorer
from trainer.training import TrainHistory, seed_everything
from trainer.tree_build import TREE_INITS, category_tree, cooccurrence_embeddings, kmeans_tree, random_tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeepConfig:
    method: str = "tdm"
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    arity: int = 2
    tree_init: str = "auto"  # category when the log has categories, else k-means on co-occurrence
    # Negatives at the leaf level (the schedule halves upward). 50 with lr 2e-3 matched or beat
    # the paper's 100 with lr 1e-3 in validation recall after every epoch (DNN, TDM, JTM-H on
    # MovieLens; JTM-H on Ciao) at 1.5-1.7x the samples/s: docs/PERFORMANCE.md, training.
    leaf_negatives: int = DEFAULT_LEAF_NEGATIVES
    beam: int | None = None  # None: the beam equals the number of results asked for
    tree_learning: str = "none"  # none, jtm (Algorithm 2) or kmeans (TDM re-clustering)
    joint: JointConfig = field(default_factory=JointConfig)

    @property
    def uses_tree(self) -> bool:
        return self.method != "dnn"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DeepConfig:
        return cls(
            method=data["method"], scorer=ScorerConfig.from_json(data["scorer"]),
            train=TrainConfig(**data["train"]), arity=int(data["arity"]), tree_init=data["tree_init"],
            leaf_negatives=int(data["leaf_negatives"]), beam=data.get("beam"),
            tree_learning=data.get("tree_learning", "none"),
            joint=JointConfig.from_json(data["joint"]) if "joint" in data else JointConfig(),
        )


METHOD_VARIANTS: dict[str, dict] = {
    "dnn": {"hierarchical": False, "tree_learning": "none"},
    "tdm": {"hierarchical": False, "tree_learning": "none"},
    "jtm-h": {"hierarchical": True, "tree_learning": "none"},
    "jtm-j": {"hierarchical": False, "tree_learning": "jtm"},
    "jtm": {"hierarchical": True, "tree_learning": "jtm"},
    "jtm-cluster": {"hierarchical": True, "tree_learning": "kmeans"},
}


def initial_tree(data: Interactions, train_users: np.ndarray, init: str, seed: int, arity: int) -> Tree:
    """The tree a tree method starts from (TDM: by category)."""
    if init == "auto":
        init = "category" if data.has_category and data.n_categories > 1 else "kmeans"
    if init not in TREE_INITS:
        raise DataError(f"unknown tree init {init!r}; choose from auto, {', '.join(TREE_INITS)}")
    if init == "category":
        return category_tree(data.item_category, seed, arity)
    if init == "random":
        return random_tree(data.n_items, seed, arity)
    from trainer.data import rows_of_users

    rows = rows_of_users(data.user_offsets, train_users)
    embeddings = cooccurrence_embeddings(data.item[rows], data.user[rows], data.n_items, seed=seed)
    return kmeans_tree(embeddings, seed, arity)


class DeepRetrieval:
    """A scorer, optionally a tree, and the retrieval rule that goes with the method."""

    def __init__(self, config: DeepConfig) -> None:
        self.config = config
        self.name = config.method
        self.model: TreeScorer | None = None
        self.tree: Tree | None = None
        self.history: TrainHistory | None = None
        self.joint_history: JointHistory | None = None

    # ----------------------------------------------------------------- fit

    def fit(self, ctx: FitContext, start_from: DeepRetrieval | None = None) -> None:
        """Train (and for jtm variants run Algorithm 1).

        `start_from`: a fitted fixed-tree method with the same features on the same context
        (tdm for jtm-j, jtm-h for jtm and jtm-cluster). Its model is exactly iteration 0 of the
        joint loop, so the loop continues from a copy instead of training it again.
        """
        cfg = self.config
        seed_everything(ctx.seed)
        self.n_items = ctx.data.n_items
        if start_from is not None:
            if not self.can_start_from(start_from, same_training=False):
                raise ValueError(f"{self.name} cannot continue from {start_from.name}")
            self.tree = start_from.tree
            self.model = copy.deepcopy(start_from.model)
            self.history = start_from.history
            if start_from.history is not None and start_from.history.snapshot is not None:
                # The fixed-tree method trained longer (--equal-epochs): start from the weights
                # it had after this method's own epochs, i.e. exactly this method's iteration 0.
                self.model.load_state_dict(start_from.history.snapshot_state)
                self.history = start_from.history.snapshot
            joint = replace(cfg.joint, tree_learning=cfg.tree_learning)
            self.joint_history = joint_fit(self, ctx, joint, train_initial=False)
            return
        if cfg.uses_tree:
            self.tree = initial_tree(ctx.data, ctx.split.train, cfg.tree_init, ctx.seed, cfg.arity)
            n_rows = self.tree.n_rows
        else:
            n_rows = ctx.data.n_items
        self.model = TreeScorer(n_rows, cfg.scorer)
        if cfg.tree_learning == "none":
            self.history = self.train_model(ctx, self.make_sampler(), cfg.train)
        else:
            joint = replace(cfg.joint, tree_learning=cfg.tree_learning)
            self.joint_history = joint_fit(self, ctx, joint)

    def can_start_from(self, other: DeepRetrieval, same_training: bool = True) -> bool:
        """Is `other` this joint method's iteration 0 (same model, tree and training setup)?

        With `same_training` (how `compare` pairs methods), its training must also be this
        method's initial training: the same settings, or a longer run that kept a snapshot
        after exactly this method's epochs (`snapshot_epoch`); then continuing from it gives
        what training iteration 0 here would. `train --start-from` relaxes that: the user
        names the run whose model iteration 0 is, however it was trained."""
        mine, theirs = self.config, other.config
        their_train = theirs.train
        if other.history is not None and other.history.snapshot is not None:
            their_train = replace(their_train, epochs=their_train.snapshot_epoch, snapshot_epoch=None)
        return (mine.tree_learning != "none" and theirs.tree_learning == "none" and theirs.uses_tree
                and other.model is not None and mine.scorer == theirs.scorer
                and (mine.train == their_train or not same_training)
                and (mine.arity, mine.leaf_negatives) == (theirs.arity, theirs.leaf_negatives)
                and (mine.tree_init == theirs.tree_init or not same_training))

    def epochs_run(self) -> list[int]:
        """Training epochs actually run: the initial training, then each joint iteration's."""
        if self.joint_history is not None:
            return [r.epochs for r in self.joint_history.records]
        return [len(self.history.epochs)] if self.history is not None else []

    def make_sampler(self) -> LayerwiseSampler | UniformItemSampler:
        """Layer-wise samples of the current tree, or the DNN's uniform leaf samples."""
        if self.tree is not None:
            return LayerwiseSampler.create(self.tree, default_negative_counts(self.tree, self.config.leaf_negatives))
        return UniformItemSampler(self.n_items, min(self.config.leaf_negatives, self.n_items - 1))

    def train_model(self, ctx: FitContext, sampler, train: TrainConfig) -> TrainHistory:
        """Train (or continue training) the current model on the current tree."""
        assert self.model is not None
        self.n_items = ctx.data.n_items

        def validate() -> float:
            recs = self.recommend(ctx.valid, ctx.m, ctx.exclude_seen)
            return user_metrics(recs, ctx.valid, ctx.m).means()["recall"]

        return fit_scorer(
            self.model, ctx.samples, sampler, self.tree, self.config.scorer.hierarchical, train,
            seed=ctx.seed, validate=validate if len(ctx.valid) else None, description=self.name,
        )

    # ----------------------------------------------------------------- retrieve

    def recommend(self, eval_set: EvalSet, m: int, exclude_seen: bool, beam: int | None = None) -> np.ndarray:
        assert self.model is not None, "fit or load first"
        histories = eval_set.histories(self.config.scorer.max_history)
        seen = None
        if exclude_seen:
            seen = np.split(eval_set.feature_items, eval_set.feature_offsets[1:-1])
        search_beam = None
        if self.config.uses_tree:
            search_beam = beam or self.config.beam or m
        return retrieve(self.model, histories, m, self.tree, self.config.scorer.hierarchical, search_beam, seen)

    def brute_force(self, eval_set: EvalSet, m: int, exclude_seen: bool) -> np.ndarray:
        """Score every item with the same model (the fidelity reference for beam search)."""
        assert self.model is not None
        histories = eval_set.histories(self.config.scorer.max_history)
        seen = np.split(eval_set.feature_items, eval_set.feature_offsets[1:-1]) if exclude_seen else None
        return retrieve(self.model, histories, m, self.tree, self.config.scorer.hierarchical, None, seen)

    # ----------------------------------------------------------------- persistence

    def save(self, directory: Path) -> None:
        assert self.model is not None
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({**self.model.checkpoint(), "method_config": json.dumps(self.config.to_json())},
                   directory / "model.pt")
        if self.tree is not None:
            self.tree.save(directory / "tree.npz")
        if self.history is not None:
            (directory / "training.json").write_text(json.dumps(self.history.to_json(), indent=2))
        if self.joint_history is not None:
            (directory / "joint.json").write_text(json.dumps(self.joint_history.to_json(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> DeepRetrieval:
        checkpoint = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        method = cls(DeepConfig.from_json(json.loads(checkpoint["method_config"])))
        method.model = TreeScorer.from_checkpoint(checkpoint)
        method.n_items = method.model.n_rows
        if method.config.uses_tree:
            method.tree = Tree.load(directory / "tree.npz")
            method.n_items = method.tree.n_items
        return method

    def with_beam(self, beam: int | None) -> DeepRetrieval:
        clone = DeepRetrieval(replace(self.config, beam=beam))
        clone.model, clone.tree, clone.history = self.model, self.tree, self.history
        return clone

    def describe(self) -> dict:
        described = {"config": self.config.to_json()}
        if self.history is not None:
            described["training"] = self.history.to_json()
        if self.joint_history is not None:
            described["joint"] = self.joint_history.to_json()
        return described
