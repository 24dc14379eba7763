"""JTM's Algorithm 1: alternate model training and tree learning under one loss.

    tree_0 <- initial tree;  model_0 <- train on tree_0
    for t = 1..T:
        tree_t  <- learn the tree with model_{t-1} fixed   (Algorithm 2, or TDM's k-means re-clustering)
        model_t <- retrain model_{t-1} on tree_t, warm-started (hierarchical features recomputed)

When a step moves no item (tree_t = tree_{t-1}: the guard kept the old tree), model_t is
model_{t-1}: there is nothing new to fit (`JointConfig.retrain_unchanged` restores the literal
loop). Every iteration records the global loss L(theta, pi) of equation (2) (mean per sample over a
fixed subset of the training samples), the tree-learning objective before/after the step with
the model fixed, the fraction of items that moved, and validation P/R/F@M. The (model, tree)
pair of the best validation recall is kept: iterations are chosen on validation users.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from service.core.tree import Tree
from trainer.config import option
from trainer.data.split import SampleSet
from trainer.evaluate.protocol import validation_metrics
from trainer.fit.context import FitContext
from trainer.fit.epochs import TrainHistory, train_on_tree
from trainer.fit.step import TrainConfig
from trainer.model.scorer import TreeScorer
from trainer.tree.build import kmeans_tree
from trainer.tree.learning import TreeLearningConfig, learn_tree, reinit_internal_nodes, tree_objective, tree_objectives

log = logging.getLogger(__name__)

# How a joint method changes its tree: not at all (dnn, tdm, jtm-h), by JTM's Algorithm 2, or by
# TDM's k-means re-clustering of the item embeddings (the paper's Figure 2 comparison).
TREE_LEARNERS = ("none", "jtm", "kmeans")


@dataclass(frozen=True)
class JointConfig:
    """Algorithm 1's loop: how the tree is learnt, how many steps, and how each is followed."""

    tree_learning: str = "none"  # one of TREE_LEARNERS; the method table sets it
    iterations: int = option(3, "joint iterations T", at_least=0)
    # Per iteration, warm-started; validation still picks the epoch.
    retrain_epochs: int = option(2, "epochs per iteration", at_least=1)
    internal_init: str = option("keep", "internal node rows after a new tree: keep them, or the mean of their "
                                "items' rows", choices=("keep", "mean"))
    # Off: an iteration whose tree step moved no item costs only its tree step (the model is
    # already trained on that tree). On: retrain anyway, the paper's loop literally.
    retrain_unchanged: bool = option(False, "retrain even after a tree step that moved no item (the paper's "
                                     "loop, literally)")
    loss_samples: int = 20_000  # fixed subset on which L(theta, pi) is reported
    learning: TreeLearningConfig = field(default_factory=TreeLearningConfig)

    def __post_init__(self) -> None:
        if self.tree_learning not in TREE_LEARNERS:
            raise ValueError(f"tree_learning must be one of {TREE_LEARNERS}, got {self.tree_learning!r}")

    @property
    def learns_tree(self) -> bool:
        return self.tree_learning != "none"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> JointConfig:
        # Runs written before `retrain_unchanged` existed always retrained.
        return cls(**{"retrain_unchanged": True, **data, "learning": TreeLearningConfig(**data["learning"])})


@dataclass
class IterationRecord:
    iteration: int
    global_loss: float  # L(theta_t, pi_t) / samples, features under pi_t
    valid: dict[str, float]
    moved_fraction: float = 0.0
    # The tree step, model fixed, as its guard judged it (TreeLearningConfig.judge; "trained":
    # -L(theta_{t-1}, pi_{t-1}) and -L(theta_{t-1}, pi_t), summed over the same samples).
    objective_before: float | None = None
    objective_after: float | None = None
    tree_seconds: float = 0.0
    train_seconds: float = 0.0
    tree_report: dict | None = None
    epochs: int = 0  # training epochs run in this iteration (iteration 0: the initial training)
    # Per level 1..depth, how well the tree's nodes separate the log's categories (None without
    # categories); on `trainer synth` data the categories are the planted clusters.
    category_purity: list[float] | None = None
    purity_level: int | None = None  # the deepest level with no more nodes than categories


@dataclass
class JointHistory:
    records: list[IterationRecord] = field(default_factory=list)
    best_iteration: int = 0
    tree_learning: str = "jtm"

    def to_json(self) -> dict:
        return {"tree_learning": self.tree_learning, "best_iteration": self.best_iteration,
                "iterations": [asdict(r) for r in self.records]}


def category_purity(tree: Tree, item_category: np.ndarray) -> list[float]:
    """Per level 1..depth: the share of items whose node's most common category is their own
    (sum over nodes of the majority category's count, over all items). 1.0 where every node
    holds one category; a random tree sits near the largest category's share at wide nodes."""
    categories = np.asarray(item_category, dtype=np.int64)
    n_categories = int(categories.max()) + 1 if len(categories) else 1
    out = []
    for level in range(1, tree.depth + 1):
        nodes = tree.ancestors(np.arange(tree.n_items), level).astype(np.int64)
        # Counts of the (node, category) pairs that occur, not a dense nodes x categories table:
        # at the paper's scale that table would be millions of leaves x thousands of categories.
        pairs, counts = np.unique(nodes * n_categories + categories, return_counts=True)
        node_of = pairs // n_categories  # sorted, so each node's pairs are one run
        starts = np.flatnonzero(np.r_[True, node_of[1:] != node_of[:-1]])
        majority = np.maximum.reduceat(counts, starts) if len(counts) else np.zeros(0, dtype=np.int64)
        out.append(float(majority.sum() / max(tree.n_items, 1)))
    return out


def global_loss(model: TreeScorer, tree: Tree, samples: SampleSet, index: np.ndarray) -> float:
    """L(theta, pi) per sample on samples[index], features under the same tree."""
    return tree_objective(model, tree, tree, samples, index, model.config.hierarchical) / max(len(index), 1)


@dataclass
class JointResult:
    model: TreeScorer  # the weights of the best validation iteration
    tree: Tree  # the tree they were trained on
    history: JointHistory  # L, the tree steps and validation recall per iteration
    initial: TrainHistory  # iteration 0's training (the history given, when it was trained elsewhere)


@dataclass
class _Best:
    """The iteration with the best validation recall so far: its weights and its tree."""

    recall: float
    state: dict
    tree: Tree


def learn_next_tree(model: TreeScorer, tree: Tree, samples: SampleSet, index: np.ndarray, config: JointConfig,
                    seed: int) -> tuple[Tree, float, float, dict | None]:
    """One tree step with the model fixed: (new tree, -L before, -L after, Algorithm 2's report).

    Algorithm 2 reports its own objective on the samples it used; TDM's k-means re-clustering
    of the item embeddings is scored on the loss subset `index`."""
    hierarchical = model.config.hierarchical
    if config.tree_learning == "jtm":
        learning = replace(config.learning, seed=seed)
        new_tree, report = learn_tree(model, tree, samples, hierarchical, learning)
        return new_tree, report.objective_before, report.objective_after, report.to_json()
    embeddings = model.embedding.weight[:tree.n_items].detach().float().cpu().numpy()
    new_tree = kmeans_tree(embeddings, seed=seed, arity=tree.arity)
    before, after = (-v for v in tree_objectives(model, [tree, new_tree], tree, samples, index, hierarchical))
    return new_tree, before, after, None


def joint_fit(model: TreeScorer, tree: Tree, ctx: FitContext, train: TrainConfig, joint: JointConfig,
              beam: int | None, name: str, initial: TrainHistory | None = None) -> JointResult:
    """Algorithm 1 from (`model`, `tree`): train, then T times learn the tree with the model
    fixed and retrain on it; keep the iteration of the best validation recall (beam search of
    width `beam`, as the method serves).

    `model` is trained in place (pass a copy to keep the original). With `initial`, `model` is
    already trained on `tree` (iteration 0 done elsewhere, e.g. by the fixed-tree method that
    `compare` fitted first) and `initial` is that training's history."""
    if not joint.learns_tree:
        raise ValueError("joint_fit needs a tree learner (JointConfig.tree_learning jtm or kmeans)")
    rng = np.random.default_rng(ctx.seed)
    index = np.sort(rng.choice(len(ctx.samples), size=min(joint.loss_samples, len(ctx.samples)), replace=False))
    history = JointHistory(tree_learning=joint.tree_learning)

    def record(iteration: int, tree: Tree, epochs: int, train_seconds: float, **step) -> IterationRecord:
        """The iteration's record after training on `tree` (loss, validation, purity), logged."""
        purity = {}
        if ctx.data.has_category:
            level = max([lv for lv in range(1, tree.depth + 1) if tree.level_size(lv) <= ctx.data.n_categories],
                        default=1)
            purity = {"category_purity": category_purity(tree, ctx.data.item_category), "purity_level": level}
        entry = IterationRecord(iteration, global_loss(model, tree, ctx.samples, index),
                                validation_metrics(model, tree, ctx, beam), epochs=epochs,
                                train_seconds=train_seconds, **step, **purity)
        history.records.append(entry)
        _log(entry)
        return entry

    # Iteration 0: the model trained on the initial tree.
    started = time.perf_counter()
    if initial is None:
        initial = train_on_tree(model, tree, ctx, train, beam, name)
    first = record(0, tree, len(initial.epochs), time.perf_counter() - started)
    best = _Best(first.valid["recall"], copy.deepcopy(model.state_dict()), tree)

    retrain = replace(train, epochs=joint.retrain_epochs, snapshot_epoch=None)
    for iteration in range(1, joint.iterations + 1):
        # Learn the tree with the model fixed.
        started = time.perf_counter()
        new_tree, before, after, report = learn_next_tree(model, tree, ctx.samples, index, joint,
                                                          seed=ctx.seed + iteration)
        step = {"objective_before": before, "objective_after": after, "tree_seconds": time.perf_counter() - started,
                "tree_report": report}
        moved = float((new_tree.item_leaf != tree.item_leaf).mean())
        if moved == 0.0 and not joint.retrain_unchanged:
            # A fixed point: the step kept every item where it was (the guard rejected it, or it
            # found nothing better), so retraining would only continue training the model on the
            # tree that early stopping already stopped it on. Record the iteration and go on.
            previous = history.records[-1]
            entry = IterationRecord(iteration, previous.global_loss, previous.valid, moved_fraction=0.0, epochs=0,
                                    category_purity=previous.category_purity, purity_level=previous.purity_level,
                                    **step)
            history.records.append(entry)
            _log(entry)
            continue

        # Retrain the model on the new tree, warm-started.
        tree = new_tree
        if joint.internal_init == "mean":
            reinit_internal_nodes(model, tree)
        started = time.perf_counter()
        retrained = train_on_tree(model, tree, ctx, retrain, beam, name)
        entry = record(iteration, tree, len(retrained.epochs), time.perf_counter() - started, moved_fraction=moved,
                       **step)
        if entry.valid["recall"] > best.recall:
            best = _Best(entry.valid["recall"], copy.deepcopy(model.state_dict()), tree)
            history.best_iteration = iteration

    model.load_state_dict(best.state)
    return JointResult(model, best.tree, history, initial)


def _log(record: IterationRecord) -> None:
    step = ""
    if record.objective_before is not None:
        step = (f", tree step -L {record.objective_before:,.0f} -> {record.objective_after:,.0f}, "
                f"{100 * record.moved_fraction:.1f}% items moved in {record.tree_seconds:.0f}s")
    log.info("joint iteration %d: L/sample %.4f, validation R %.4f%s", record.iteration, record.global_loss,
             record.valid["recall"], step)


def plot_joint(histories: dict[str, JointHistory], path: Path, m: int) -> None:
    """Validation recall and global loss per iteration, one line per tree learner (paper Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        iterations = [r.iteration for r in history.records]
        left.plot(iterations, [100 * r.valid["recall"] for r in history.records], marker="o", label=name)
        right.plot(iterations, [r.global_loss for r in history.records], marker="o", label=name)
    left.set(xlabel="iteration", ylabel=f"validation recall@{m} (%)", title="Recall per joint iteration")
    right.set(xlabel="iteration", ylabel="L(θ, π) per sample", title="Global loss (eq. 2)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
