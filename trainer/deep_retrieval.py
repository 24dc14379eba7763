"""DNN, TDM and the JTM variants as one method class, switched by `DeepConfig`.

| method      | tree                        | user features | retrieval   |
|-------------|-----------------------------|---------------|-------------|
| dnn         | none (leaf samples only)    | plain         | brute force |
| tdm         | fixed initial tree          | plain         | beam search |
| jtm-h       | fixed initial tree          | hierarchical  | beam search |
| jtm-j       | learnt (Algorithm 1 + 2)    | plain         | beam search |
| jtm         | learnt (Algorithm 1 + 2)    | hierarchical  | beam search |
| jtm-cluster | TDM's k-means re-clustering | hierarchical  | beam search |

(`jtm-cluster` is the comparison curve of the paper's Figure 2; `trainer.methods` is the table of
every method's name.) `DeepRetrieval` is the adapter between the functions that do the work
(`initial_tree`, `train_on_tree`, `joint_fit`, `recommend`) and what `compare`, `train` and
`export` handle: a fitted method holds a model, its tree and the histories of its training, and
saves to and loads from a run directory (``model.pt``, ``tree.npz``).
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
from trainer.config import option
from trainer.data.split import EvalSet
from trainer.evaluate.recommend import recommend
from trainer.fit.context import FitContext
from trainer.fit.epochs import TrainHistory, seed_everything, train_on_tree
from trainer.fit.step import TrainConfig
from trainer.joint import JointConfig, JointHistory, joint_fit
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import TreeConfig, initial_tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeepConfig:
    """Everything that decides what a scorer-based method learns, one configuration per stage:
    the tree it starts from (None: DNN, no tree), the scorer, its training, the joint loop and
    the beam. Saved with the model, and compared when a joint method continues a fixed-tree one."""

    method: str = "tdm"
    tree: TreeConfig | None = field(default_factory=TreeConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    joint: JointConfig = field(default_factory=JointConfig)  # tree_learning "none": the tree stays fixed
    beam: int | None = option(None, "beam width", at_least=1, kind=int, show=lambda v: "= M")

    @property
    def uses_tree(self) -> bool:
        return self.tree is not None

    def search_beam(self, m: int) -> int | None:
        """The beam this method retrieves `m` items with: None (every item scored) without a tree."""
        return (self.beam or m) if self.uses_tree else None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DeepConfig:
        train = dict(data["train"])
        joint = JointConfig.from_json(data["joint"]) if "joint" in data else JointConfig()
        if "tree" in data:
            tree = TreeConfig(**data["tree"]) if data["tree"] is not None else None
        else:  # written before the per-stage layout: the tree, negatives and learner at the top
            tree = None if data["method"] == "dnn" else TreeConfig(init=data["tree_init"], arity=int(data["arity"]))
            train.setdefault("leaf_negatives", int(data["leaf_negatives"]))
            train.setdefault("beam_aware", data.get("beam_aware"))
            joint = replace(joint, tree_learning=data.get("tree_learning", "none"))
        return cls(method=data["method"], tree=tree, scorer=ScorerConfig.from_json(data["scorer"]),
                   train=TrainConfig.from_json(train), joint=joint, beam=data.get("beam"))


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
        if start_from is not None:
            if not self.can_start_from(start_from, same_training=False):
                raise ValueError(f"{self.name} cannot continue from {start_from.name}")
            model, history = copy.deepcopy(start_from.model), start_from.history
            if history is not None and history.snapshot is not None:
                # The fixed-tree method trained longer (--equal-epochs): start from the weights
                # it had after this method's own epochs, i.e. exactly this method's iteration 0.
                model.load_state_dict(history.snapshot_state)
                history = history.snapshot
            # (A run loaded by `train --start-from` has no history: iteration 0 reports 0 epochs.)
            result = joint_fit(model, start_from.tree, ctx, cfg.train, cfg.joint, cfg.search_beam(ctx.m), cfg.method,
                               initial=history or TrainHistory())
            self.model, self.tree, self.history, self.joint_history = result.model, result.tree, history, result.history
            return
        tree = initial_tree(ctx.data, ctx.split.train, cfg.tree.init, ctx.seed, cfg.tree.arity) if cfg.tree else None
        model = TreeScorer(tree.n_rows if tree is not None else ctx.data.n_items, cfg.scorer)
        beam = cfg.search_beam(ctx.m)
        if not cfg.joint.learns_tree:
            self.model, self.tree = model, tree
            self.history = train_on_tree(model, tree, ctx, cfg.train, beam, cfg.method)
        else:
            result = joint_fit(model, tree, ctx, cfg.train, cfg.joint, beam, cfg.method)
            self.model, self.tree, self.history, self.joint_history = (result.model, result.tree, result.initial,
                                                                       result.history)

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
        return (mine.joint.learns_tree and not theirs.joint.learns_tree and mine.uses_tree and theirs.uses_tree
                and other.model is not None and mine.scorer == theirs.scorer
                and (mine.train == their_train or not same_training)
                and mine.tree.arity == theirs.tree.arity
                and mine.train.leaf_negatives == theirs.train.leaf_negatives
                and (mine.tree.init == theirs.tree.init or not same_training))

    def epochs_run(self) -> list[int]:
        """Training epochs actually run: the initial training, then each joint iteration's."""
        if self.joint_history is not None:
            return [r.epochs for r in self.joint_history.records]
        return [len(self.history.epochs)] if self.history is not None else []

    def validation_curve(self) -> list[dict]:
        """Validation recall against the run's cumulative seconds (training and validation; the
        tree steps too): a point per initial epoch, then one per joint iteration (its best)."""
        points, seconds = [], 0.0
        for record in self.history.epochs if self.history is not None else []:
            seconds += record.wall_seconds or record.seconds
            points.append({"phase": "epoch", "epoch": record.epoch, "seconds": seconds, "valid": record.valid_score})
        for record in (self.joint_history.records[1:] if self.joint_history is not None else []):
            seconds += record.tree_seconds + record.train_seconds
            points.append({"phase": "iteration", "iteration": record.iteration, "epochs": record.epochs,
                           "seconds": seconds, "valid": record.valid["recall"]})
        return points

    # ----------------------------------------------------------------- retrieve

    def recommend(self, eval_set: EvalSet, m: int, exclude_seen: bool, beam: int | None = None) -> np.ndarray:
        assert self.model is not None, "fit or load first"
        return recommend(self.model, self.tree, eval_set, m, exclude_seen,
                         (beam or self.config.search_beam(m)) if self.config.uses_tree else None)

    @property
    def approximate(self) -> bool:
        """Beam search over a tree finds only part of the model's exact top-m (`brute_force`)."""
        return self.tree is not None

    def brute_force(self, eval_set: EvalSet, m: int, exclude_seen: bool) -> np.ndarray:
        """Score every item with the same model (the fidelity reference for beam search)."""
        assert self.model is not None
        return recommend(self.model, self.tree, eval_set, m, exclude_seen, None)

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
        if method.config.uses_tree:
            method.tree = Tree.load(directory / "tree.npz")
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
