"""Layer-wise negative sampling (TDM): one positive and n_l negatives at every level.

For a target item c, the positives are c's ancestors at levels 1..depth (the root is skipped:
it is every item's ancestor and carries no signal). At each level l, n_l negatives are drawn
uniformly from the non-empty nodes of that level, excluding the positive, with replacement.
The counts grow with depth, because deeper levels hold more nodes to tell apart.

Output layout is fixed per sampler: columns are grouped by level (level 1 first), inside a
level the positive comes first. `level_of_column` and `label` describe the columns once, so a
batch is just a (B, C) array of embedding rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.tree import Tree
from trainer.config import option

# Negatives at the leaf level (`TrainConfig.leaf_negatives`, the --leaf-negatives flag). The
# paper uses 100; 50 (with lr 2e-3) matched or beat it in validation recall after every epoch,
# in fewer seconds per epoch (docs/experiments/training-defaults.md).
DEFAULT_LEAF_NEGATIVES = 50


@dataclass(frozen=True)
class BeamAwareConfig:
    """Beam-search-aware negatives (`trainer.fit.beam_mining`, OTM): before each epoch the model's
    own beam search (width `beam`) runs for every training sample, and `share` of each level's
    negatives are drawn from the nodes it compared there. Set by --beam-aware."""

    share: float = option(0.5, "with --beam-aware: share of each level's negatives from the beam",
                          flag="--beam-aware-share", above=0, at_most=1)
    beam: int = option(32, "with --beam-aware: beam width of the mining search", flag="--beam-aware-beam",
                       at_least=1)
    # 1: every level, OTM literally. Deep nodes the user never touched are weak negatives: most of
    # the beam's best leaves are items the user would consume but has not (trainer/fit/beam_mining.py).
    min_node_items: int = option(1, "with --beam-aware: mine only at levels whose nodes hold at least this many "
                                 "items on average (1: every level)", flag="--beam-aware-min-items", at_least=1)
    # OTM's argument needs a model whose beam already means something: an untrained model's beam
    # candidates are arbitrary nodes, and mining them only adds noise. 0: mine from the first epoch.
    warmup_epochs: int = option(0, "with --beam-aware: epochs of each training run on uniform negatives before "
                                "mining starts", flag="--beam-aware-warmup", at_least=0)

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"beam-aware share must be in (0, 1], got {self.share}")
        if self.beam < 1:
            raise ValueError(f"beam-aware beam must be positive, got {self.beam}")
        if self.min_node_items < 1:
            raise ValueError(f"beam-aware min_node_items must be positive, got {self.min_node_items}")
        if self.warmup_epochs < 0:
            raise ValueError(f"beam-aware warmup_epochs must be >= 0, got {self.warmup_epochs}")


def default_negative_counts(tree: Tree, leaf_negatives: int = DEFAULT_LEAF_NEGATIVES) -> np.ndarray:
    """(depth + 1,) negatives per level; entry 0 (root) is 0.

    Level l gets max(l, leaf_negatives / 2**(depth - l)): about l near the top, halving upward
    from `leaf_negatives` at the leaves, never more than the level's other non-empty nodes.
    """
    counts = np.zeros(tree.depth + 1, dtype=np.int64)
    for level in range(1, tree.depth + 1):
        wanted = max(level, int(round(leaf_negatives / 2 ** (tree.depth - level))))
        counts[level] = min(wanted, len(tree.nonempty_positions(level)) - 1)
    return counts


def parse_negative_counts(spec: str, tree: Tree) -> np.ndarray:
    """"leaf=N" for the default schedule with N leaf negatives, or a comma list per level 1..depth."""
    if spec.startswith("leaf="):
        return default_negative_counts(tree, int(spec[5:]))
    values = [int(v) for v in spec.split(",")]
    if len(values) != tree.depth:
        raise ValueError(f"negative counts need {tree.depth} values (levels 1..{tree.depth}), got {len(values)}")
    counts = np.array([0, *values], dtype=np.int64)
    limits = np.array([0] + [len(tree.nonempty_positions(level)) - 1 for level in range(1, tree.depth + 1)])
    return np.minimum(counts, limits)


@dataclass(frozen=True)
class LayerwiseSampler:
    tree: Tree
    negatives: np.ndarray  # (depth + 1,) per-level counts, [0] unused
    levels: tuple[int, ...]  # levels that get samples (default 1..depth)

    @classmethod
    def create(cls, tree: Tree, negatives: np.ndarray | None = None, levels: tuple[int, ...] | None = None):
        negatives = default_negative_counts(tree) if negatives is None else np.asarray(negatives)
        if len(negatives) != tree.depth + 1:
            raise ValueError(f"negative counts must have depth + 1 = {tree.depth + 1} entries")
        return cls(tree=tree, negatives=negatives, levels=levels or tuple(range(1, tree.depth + 1)))

    @property
    def level_of_column(self) -> np.ndarray:
        return np.concatenate([np.full(1 + self.negatives[level], level) for level in self.levels])

    @property
    def label(self) -> np.ndarray:
        """(C,) float32: 1 for each level's positive column, 0 for its negatives."""
        return np.concatenate([np.r_[1.0, np.zeros(self.negatives[level])] for level in self.levels]).astype(np.float32)

    def level_slices(self) -> dict[int, slice]:
        slices, start = {}, 0
        for level in self.levels:
            width = 1 + int(self.negatives[level])
            slices[level] = slice(start, start + width)
            start += width
        return slices

    def sample(self, targets: np.ndarray, rng: np.random.Generator, index: np.ndarray | None = None) -> np.ndarray:
        """(B, C) int64 embedding rows: per level, the positive ancestor then its negatives.
        `index`, the samples' indices, is for samplers that keep per-sample state
        (`trainer.fit.beam_mining.BeamAwareSampler`); uniform sampling ignores it."""
        targets = np.asarray(targets, dtype=np.int64)
        blocks = []
        for level in self.levels:
            positive = self.tree.ancestors(targets, level)  # positions (B,)
            pool = self.tree.nonempty_positions(level)
            n_neg = int(self.negatives[level])
            # Draw from the pool minus the positive: index r in [0, |pool| - 1), skip the positive's index.
            r = rng.integers(0, max(len(pool) - 1, 1), size=(len(targets), n_neg))
            skip = np.searchsorted(pool, positive)[:, None]
            negative = pool[r + (r >= skip)]
            positions = np.concatenate([positive[:, None], negative], axis=1)
            blocks.append(self.tree.node_ids(level, positions))
        return np.concatenate(blocks, axis=1)


@dataclass(frozen=True)
class UniformItemSampler:
    """The DNN baseline's sampler: the target item plus `negatives` uniform other items."""

    n_items: int
    negatives: int = 100

    @property
    def label(self) -> np.ndarray:
        return np.r_[1.0, np.zeros(self.negatives)].astype(np.float32)

    def sample(self, targets: np.ndarray, rng: np.random.Generator, index: np.ndarray | None = None) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64)
        r = rng.integers(0, self.n_items - 1, size=(len(targets), self.negatives))
        negative = r + (r >= targets[:, None])
        return np.concatenate([targets[:, None], negative], axis=1)
