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
from trainer.config import TREE_LEARNERS, DeepConfig, JointConfig
from trainer.data.split import SampleSet
from trainer.evaluate.protocol import validation_metrics
from trainer.fit.context import FitContext
from trainer.fit.epochs import TrainHistory, train_on_tree
from trainer.model.scorer import TreeScorer
from trainer.tree.build import kmeans_tree
from trainer.tree.learning import learn_tree, reinit_internal_nodes, tree_objective, tree_objectives

log = logging.getLogger(__name__)


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


def joint_fit(model: TreeScorer, tree: Tree, data: FitContext, config: DeepConfig,
              initial: TrainHistory | None = None) -> JointResult:
    """Algorithm 1 from (`model`, `tree`): train, then T times learn the tree with the model
    fixed and retrain on it; keep the iteration of the best validation recall.

    `model` is trained in place (pass a copy to keep the original). With `initial`, `model` is
    already trained on `tree` (iteration 0 done elsewhere, e.g. by the fixed-tree method that
    `compare` fitted first) and `initial` is that training's history."""
    joint = replace(config.joint, tree_learning=config.tree_learning)
    if joint.tree_learning not in TREE_LEARNERS[1:]:
        raise ValueError(f"tree_learning must be one of {TREE_LEARNERS[1:]}, got {joint.tree_learning!r}")
    beam = config.search_beam(data.m)
    rng = np.random.default_rng(data.seed)
    index = np.sort(rng.choice(len(data.samples), size=min(joint.loss_samples, len(data.samples)), replace=False))
    history = JointHistory(tree_learning=joint.tree_learning)

    def purity(of: Tree) -> dict:
        if not data.data.has_category:
            return {}
        level = max([lv for lv in range(1, of.depth + 1) if of.level_size(lv) <= data.data.n_categories], default=1)
        return {"category_purity": category_purity(of, data.data.item_category), "purity_level": level}

    # Iteration 0: the model trained on the initial tree.
    started = time.perf_counter()
    if initial is None:
        initial = train_on_tree(model, tree, data, config, config.train)
    record = IterationRecord(0, global_loss(model, tree, data.samples, index),
                             validation_metrics(model, tree, data, beam), epochs=len(initial.epochs),
                             train_seconds=time.perf_counter() - started, **purity(tree))
    history.records.append(record)
    _log(record)
    best = (record.valid["recall"], copy.deepcopy(model.state_dict()), tree)

    retrain = replace(config.train, epochs=joint.retrain_epochs, snapshot_epoch=None)
    for iteration in range(1, joint.iterations + 1):
        # Learn the tree with the model fixed.
        started = time.perf_counter()
        new_tree, before, after, report = learn_next_tree(model, tree, data.samples, index, joint,
                                                          seed=data.seed + iteration)
        tree_seconds = time.perf_counter() - started
        moved = float((new_tree.item_leaf != tree.item_leaf).mean())
        if moved == 0.0 and not joint.retrain_unchanged:
            # A fixed point: the step kept every item where it was (the guard rejected it, or it
            # found nothing better), so retraining would only continue training the model on the
            # tree that early stopping already stopped it on. Record the iteration and go on.
            previous = history.records[-1]
            record = IterationRecord(iteration, previous.global_loss, previous.valid, moved_fraction=0.0,
                                     objective_before=before, objective_after=after, tree_seconds=tree_seconds,
                                     tree_report=report, epochs=0, category_purity=previous.category_purity,
                                     purity_level=previous.purity_level)
            history.records.append(record)
            _log(record)
            continue

        # Retrain the model on the new tree, warm-started.
        tree = new_tree
        if joint.internal_init == "mean":
            reinit_internal_nodes(model, tree)
        started = time.perf_counter()
        retrained = train_on_tree(model, tree, data, config, retrain)
        record = IterationRecord(
            iteration, global_loss(model, tree, data.samples, index), validation_metrics(model, tree, data, beam),
            moved_fraction=moved, objective_before=before, objective_after=after, tree_seconds=tree_seconds,
            train_seconds=time.perf_counter() - started, tree_report=report, epochs=len(retrained.epochs),
            **purity(tree),
        )
        history.records.append(record)
        _log(record)
        if record.valid["recall"] > best[0]:
            best = (record.valid["recall"], copy.deepcopy(model.state_dict()), tree)
            history.best_iteration = iteration

    model.load_state_dict(best[1])
    return JointResult(model, best[2], history, initial)


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
