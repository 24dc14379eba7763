"""Training the user-node scorer on layer-wise samples (the model half of JTM's Algorithm 1).

One batch: gather the behaviours of B training samples, draw each sample's positive and
negative nodes at every level, compute the user state once per sample (once per sample and
level with the hierarchical representation) and the logits of all its nodes, and minimise
binary log loss. The same step serves DNN (leaf-level samples only, no tree) and every tree
method; only the sampler and the hierarchical switch differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from service.core.tree import Tree
from trainer.data import SampleSet
from trainer.model import TreeScorer
from trainer.sampler import LayerwiseSampler, UniformItemSampler
from trainer.training import AdamWithSparseEmbeddings, TrainHistory, train_epochs


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256
    lr: float = 1e-3  # Adam, as in TDM/JTM
    epochs: int = 10  # upper bound: validation recall picks the epoch
    patience: int = 2
    device: str = "cpu"


def batch_logits(
    model: TreeScorer,
    histories: np.ndarray,
    nodes: np.ndarray,
    tree: Tree | None,
    hierarchical: bool,
    level_slices: dict[int, slice] | None,
    device: str = "cpu",
) -> torch.Tensor:
    """(B, C) logits for sampled nodes. histories: (B, L) item ids; nodes: (B, C) rows.

    With the hierarchical representation the behaviours are mapped to their ancestors at each
    level (JTM 2.3) and the user state is computed per level; `level_slices` says which columns
    belong to which level.
    """
    nodes_t = torch.from_numpy(nodes).to(device)
    if not hierarchical:
        return model(torch.from_numpy(histories.astype(np.int64)).to(device), nodes_t)
    assert tree is not None and level_slices is not None
    parts = []
    for level, columns in level_slices.items():
        mapped = torch.from_numpy(tree.ancestor_ids(histories, level)).to(device)
        parts.append(model.score(model.user_state(mapped), nodes_t[:, columns]))
    return torch.cat(parts, dim=1)


def make_step(
    model: TreeScorer,
    samples: SampleSet,
    sampler: LayerwiseSampler | UniformItemSampler,
    tree: Tree | None,
    hierarchical: bool,
    rng: np.random.Generator,
    device: str = "cpu",
) -> Callable[[np.ndarray], torch.Tensor]:
    """The per-batch loss for `train_epochs`: mean binary log loss over all sampled pairs."""
    targets = samples.targets
    label = torch.from_numpy(sampler.label).to(device)
    slices = sampler.level_slices() if isinstance(sampler, LayerwiseSampler) else None

    def step(batch: np.ndarray) -> torch.Tensor:
        nodes = sampler.sample(targets[batch], rng)
        logits = batch_logits(model, samples.histories(batch), nodes, tree, hierarchical, slices, device)
        return F.binary_cross_entropy_with_logits(logits, label.expand_as(logits))

    return step


def fit_scorer(
    model: TreeScorer,
    samples: SampleSet,
    sampler: LayerwiseSampler | UniformItemSampler,
    tree: Tree | None,
    hierarchical: bool,
    config: TrainConfig,
    seed: int,
    validate: Callable[[], float] | None,
    description: str,
) -> TrainHistory:
    """Adam on layer-wise samples; epochs chosen by `validate` (validation recall)."""
    rng = np.random.default_rng(seed)
    model.to(config.device)
    optimizer = AdamWithSparseEmbeddings(model, config.lr)
    step = make_step(model, samples, sampler, tree, hierarchical, rng, config.device)
    return train_epochs(model, optimizer, step, len(samples), config.batch_size, config.epochs, rng,
                        validate=validate, patience=config.patience, description=description)
