"""The training loop: shuffled batches, progress, early stopping; and the scorer's training on
one tree (the model half of JTM's Algorithm 1), which `trainer.joint` alternates with tree
learning.

Epochs are chosen on validation users (never test users): after each epoch `validate` returns a
score (higher is better, e.g. recall@M), the best weights are kept, and training stops after
`patience` epochs without improvement. One step of the scorer is `trainer.fit.step.ScorerStep`;
YouTube-DNN runs the same loop with an autograd step.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from service.core.tree import Tree
from trainer.data.split import SampleSet
from trainer.errors import DataError
from trainer.evaluate.protocol import validation_metrics
from trainer.fit.batches import steps_per_epoch
from trainer.fit.beam_mining import BeamAwareSampler
from trainer.fit.context import FitContext
from trainer.fit.sampler import BeamAwareConfig, LayerwiseSampler, UniformItemSampler, default_negative_counts
from trainer.fit.step import ScorerStep, StepTimes, TrainConfig, make_builder
from trainer.model.scorer import TreeScorer

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    samples_per_s: float
    valid_score: float | None
    seconds: float  # the epoch's batches
    wall_seconds: float = 0.0  # and its validation: what the epoch cost the run


@dataclass
class TrainHistory:
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    # With `snapshot_epoch`: what a run of only that many epochs would have ended with (its
    # weights and history). Not serialised; `compare --equal-epochs` starts joint loops from it.
    snapshot: TrainHistory | None = field(default=None, repr=False)
    snapshot_state: dict | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "epochs": [vars(e) for e in self.epochs],
        }


def autograd_step(loss_of: Callable[[np.ndarray], torch.Tensor], optimizer: torch.optim.Optimizer
                  ) -> Callable[[np.ndarray], float]:
    """A `train_epochs` step from a loss function: backward, then one optimizer step."""

    def step(batch: np.ndarray) -> float:
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def seed_everything(seed: int) -> None:
    """Seed torch's global generator; numpy randomness goes through explicit Generators."""
    torch.manual_seed(seed)


def train_epochs(
    model: torch.nn.Module,
    step: Callable[[Any], float],
    n_samples: int,
    batch_size: int,
    epochs: int,
    rng: np.random.Generator,
    validate: Callable[[], float] | None = None,
    patience: int = 2,
    description: str = "train",
    progress: bool = True,
    snapshot_epoch: int | None = None,
    make_batch: Callable[[np.ndarray], Any] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Run up to `epochs` epochs of `step(batch) -> loss` and keep the best weights.

    `step` does the whole update (forward, backward, optimizer) and returns the batch's mean
    loss. It receives the batch's sample indices, or, with `make_batch`, what `make_batch`
    built from them: then the batches are built in a background thread one step ahead
    (`trainer.fit.batches.prefetch`), so sampling never stalls the model. Under torch.distributed
    the global batch stays `batch_size`: every rank walks the same order and takes its 1/world
    share of each batch, so the averaged gradient is the single-process step's and an epoch
    makes the same number of updates. The order comes from its own generator there, so it
    cannot drift apart between ranks whose negative sampling consumed different amounts of
    `rng`. Rank 0's validation score decides for all.

    `snapshot_epoch` E keeps, beside the result, exactly what a run with `epochs=E` would have
    returned (its best weights so far and its history): the first E epochs of a longer run are
    the same computation, because the order and the negatives come from `rng` in the same
    sequence. That lets one run serve both a longer budget and the shorter one.

    `before_epoch(epoch)` runs before each epoch's batches are built (beam-aware negatives
    are mined there, from the model as the previous epoch left it).
    """
    from trainer.fit import distributed
    from trainer.fit.batches import batch_indices, prefetch

    dist_ctx = distributed.context()
    rank, world = (0, 1) if dist_ctx is None else (dist_ctx.rank, dist_ctx.world_size)
    history = TrainHistory()
    best_state = None
    stale = 0
    order_rng = rng if dist_ctx is None else np.random.default_rng(int(rng.integers(2**63)))
    for epoch in range(1, epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        order = order_rng.permutation(n_samples)
        started = time.perf_counter()
        total, seen = 0.0, 0
        indices = list(batch_indices(n_samples, batch_size, order, rank, world))
        batches = prefetch(make_batch, indices) if make_batch is not None else iter(indices)
        bar = tqdm(
            batches, total=len(indices), desc=f"{description} epoch {epoch}/{epochs}",
            unit="batch", leave=False, disable=None if progress and (dist_ctx is None or dist_ctx.is_main) else True,
            mininterval=1.0,
        )
        for index, batch in zip(indices, bar, strict=True):
            loss = step(batch)
            total += loss * len(index)
            seen += len(index)
            elapsed = time.perf_counter() - started
            rate = seen / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{total / seen:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - started
        score = None
        if validate is not None:
            model.eval()
            if dist_ctx is None or dist_ctx.is_main:
                with torch.no_grad():
                    score = float(validate())
            if dist_ctx is not None:
                score = distributed.broadcast_float(score)
        record = EpochRecord(epoch, total / max(seen, 1), seen / max(seconds, 1e-9), score, seconds,
                             wall_seconds=time.perf_counter() - started)
        history.epochs.append(record)
        log.info(
            "%s epoch %d: loss %.4f, %.0f samples/s%s", description, epoch, record.train_loss,
            record.samples_per_s, "" if score is None else f", validation {score:.4f}",
        )
        if score is None:
            history.best_epoch, history.best_score = epoch, float("nan")
        elif score > history.best_score:
            history.best_epoch, history.best_score = epoch, score
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
        if epoch == snapshot_epoch:
            _take_snapshot(history, best_state if best_state is not None else model.state_dict())
        if stale >= patience:
            log.info("%s: no validation gain for %d epochs, stopping", description, patience)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if snapshot_epoch is not None and history.snapshot is None:  # stopped (or ended) before the snapshot
        _take_snapshot(history, model.state_dict())
    return history


def _take_snapshot(history: TrainHistory, state: dict) -> None:
    history.snapshot = TrainHistory(list(history.epochs), history.best_epoch, history.best_score)
    history.snapshot_state = copy.deepcopy(state)


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
    times: StepTimes | None = None,
) -> TrainHistory:
    """Adam on layer-wise samples; epochs chosen by `validate` (validation recall)."""
    rng = np.random.default_rng(seed)
    model.to(config.device)
    builder = make_builder(model, samples, sampler, tree, hierarchical, times)
    step = ScorerStep(model, config, times)
    step.plan(steps_per_epoch(len(samples), config.batch_size))
    shuffle_rng = np.random.default_rng([seed, 2])  # its own stream, as the mining's
    mine = None
    if isinstance(sampler, BeamAwareSampler):
        from trainer.fit import distributed

        if distributed.context() is not None:
            raise DataError("beam-aware negatives run in one process (each torchrun rank would mine every sample)")
        mining_rng = np.random.default_rng([seed, 1])  # its own stream: the batches' draws stay the same

        def mine(epoch: int) -> None:
            if epoch > sampler.config.warmup_epochs:  # uniform negatives until then
                sampler.refresh(model, samples, mining_rng)

    def before_epoch(epoch: int) -> None:
        samples.reshuffle(shuffle_rng)  # "shuffled" samples: every user's behaviours in a new order
        if mine is not None:
            mine(epoch)

    return train_epochs(model, step, len(samples), config.batch_size, config.epochs, rng,
                        validate=validate, patience=config.patience, description=description,
                        snapshot_epoch=config.snapshot_epoch, make_batch=lambda index: builder(index, rng),
                        before_epoch=before_epoch)


def make_sampler(tree: Tree | None, n_items: int, leaf_negatives: int, beam_aware: BeamAwareConfig | None = None
                 ) -> LayerwiseSampler | UniformItemSampler:
    """Layer-wise samples of `tree` (part of them from the beam's candidates with `beam_aware`),
    or without a tree (DNN) uniform leaf negatives."""
    if tree is not None:
        sampler = LayerwiseSampler.create(tree, default_negative_counts(tree, leaf_negatives))
        return sampler if beam_aware is None else BeamAwareSampler.wrap(sampler, beam_aware)
    return UniformItemSampler(n_items, min(leaf_negatives, n_items - 1))


def train_on_tree(model: TreeScorer, tree: Tree | None, ctx: FitContext, train: TrainConfig, beam: int | None,
                  description: str) -> TrainHistory:
    """Train (or continue training) `model` in place on `tree`'s layer-wise samples, keeping
    the epoch of the best validation recall (beam search of width `beam` as the method serves;
    None: every item scored)."""

    def validate() -> float:
        return validation_metrics(model, tree, ctx, beam)["recall"]

    sampler = make_sampler(tree, ctx.data.n_items, train.leaf_negatives, train.beam_aware)
    return fit_scorer(model, ctx.samples, sampler, tree, model.config.hierarchical, train, seed=ctx.seed,
                      validate=validate if len(ctx.valid) else None, description=description)
