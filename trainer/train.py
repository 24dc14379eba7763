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
from trainer import distributed
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
    # Mixed precision for the forward pass (weights stay fp32): "auto" uses bf16 where the
    # hardware has native bf16 matrix units (AMX / AVX512-BF16 / CUDA), where it trains
    # 1.4-1.7x faster; "fp32" everywhere else.
    precision: str = "auto"
    # Also keep what a run of only this many epochs would end with (`compare --equal-epochs`:
    # the fixed-tree method trains the joint loop's total, its joint twin starts from here).
    snapshot_epoch: int | None = None


def resolve_precision(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return None
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else None


class TrainingForward(torch.nn.Module):
    """The training computation as one `forward`, so DistributedDataParallel can wrap it.

    forward(history (B, L), nodes (B, C)) for plain features; forward(histories (V, B, L),
    nodes, slices) for hierarchical ones (columns slices[v] use mapping v).
    """

    def __init__(self, model: TreeScorer) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor, nodes: torch.Tensor, slices: list[slice] | None = None) -> torch.Tensor:
        if slices is None:
            return self.model(history, nodes)
        return self.model.score_by_level(history, nodes, slices)


def batch_logits(
    forward: torch.nn.Module,
    histories: np.ndarray,
    nodes: np.ndarray,
    tree: Tree | None,
    hierarchical: bool,
    level_slices: dict[int, slice] | None,
    device: str = "cpu",
) -> torch.Tensor:
    """(B, C) logits for sampled nodes. histories: (B, L) item ids; nodes: (B, C) rows.

    With the hierarchical representation the behaviours are mapped to their ancestors at each
    level (JTM 2.3); `level_slices` says which columns belong to which level.
    """
    nodes_t = torch.from_numpy(nodes).to(device)
    if not hierarchical:
        return forward(torch.from_numpy(histories.astype(np.int64)).to(device), nodes_t)
    assert tree is not None and level_slices is not None
    mapped = np.stack([tree.ancestor_ids(histories, level) for level in level_slices])  # (V, B, L)
    return forward(torch.from_numpy(mapped).to(device), nodes_t, list(level_slices.values()))


def make_step(
    model: TreeScorer,
    samples: SampleSet,
    sampler: LayerwiseSampler | UniformItemSampler,
    tree: Tree | None,
    hierarchical: bool,
    rng: np.random.Generator,
    device: str = "cpu",
    autocast: torch.dtype | None = None,
) -> Callable[[np.ndarray], torch.Tensor]:
    """The per-batch loss for `train_epochs`: mean binary log loss over all sampled pairs."""
    targets = samples.targets
    label = torch.from_numpy(sampler.label).to(device)
    slices = sampler.level_slices() if isinstance(sampler, LayerwiseSampler) else None
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    forward: torch.nn.Module = TrainingForward(model)
    if distributed.context() is not None:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(forward, device_ids=[device] if device.startswith("cuda") else None)

    def step(batch: np.ndarray) -> torch.Tensor:
        nodes = sampler.sample(targets[batch], rng)
        with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits = batch_logits(forward, samples.histories(batch), nodes, tree, hierarchical, slices, device)
        return F.binary_cross_entropy_with_logits(logits.float(), label.expand_as(logits))

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
    step = make_step(model, samples, sampler, tree, hierarchical, rng, config.device,
                     resolve_precision(config.precision, config.device))
    return train_epochs(model, optimizer, step, len(samples), config.batch_size, config.epochs, rng,
                        validate=validate, patience=config.patience, description=description,
                        snapshot_epoch=config.snapshot_epoch)
