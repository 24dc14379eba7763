"""The training loop shared by the neural methods: shuffled batches, Adam, progress, early stopping.

Epochs are chosen on validation users (never test users): after each epoch `validate` returns a
score (higher is better, e.g. recall@M), the best weights are kept, and training stops after
`patience` epochs without improvement.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    samples_per_s: float
    valid_score: float | None
    seconds: float


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


class AdamWithSparseEmbeddings:
    """Adam for dense weights, SparseAdam for sparse embedding tables.

    A batch touches a few thousand rows of tables with up to millions: dense gradients would
    zero, update and write the whole table every step (the training rate halved from 7K to
    70K items before this). SparseAdam updates only the touched rows ("lazy" Adam).
    """

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids]
        self.optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr)]
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def seed_everything(seed: int) -> None:
    """Seed torch's global generator; numpy randomness goes through explicit Generators."""
    torch.manual_seed(seed)


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | AdamWithSparseEmbeddings,
    step: Callable[[np.ndarray], torch.Tensor],
    n_samples: int,
    batch_size: int,
    epochs: int,
    rng: np.random.Generator,
    validate: Callable[[], float] | None = None,
    patience: int = 2,
    description: str = "train",
    progress: bool = True,
    snapshot_epoch: int | None = None,
) -> TrainHistory:
    """Run up to `epochs` epochs of `step(batch_indices) -> loss` and keep the best weights.

    `step` computes the loss of one batch (forward only); this function does backward and the
    optimizer step, so every method trains the same way. Under torch.distributed the global
    batch stays `batch_size`: every rank walks the same order and takes its 1/world share of
    each batch, so DDP's averaged gradient is the single-process step's and an epoch makes the
    same number of updates (a share per rank instead of a batch per rank would halve them).
    The order comes from its own generator there, so it cannot drift apart between ranks
    whose negative sampling consumed different amounts of `rng`. Rank 0's validation score
    decides for all.

    `snapshot_epoch` E keeps, beside the result, exactly what a run with `epochs=E` would have
    returned (its best weights so far and its history): the first E epochs of a longer run are
    the same computation, because the order and the negatives come from `rng` in the same
    sequence. That lets one run serve both a longer budget and the shorter one.
    """
    from trainer import distributed

    dist_ctx = distributed.context()
    history = TrainHistory()
    best_state = None
    stale = 0
    order_rng = rng if dist_ctx is None else np.random.default_rng(int(rng.integers(2**63)))
    for epoch in range(1, epochs + 1):
        model.train()
        order = order_rng.permutation(n_samples)
        started = time.perf_counter()
        total, seen = 0.0, 0
        starts = list(range(0, n_samples, batch_size))
        if dist_ctx is not None and n_samples - starts[-1] < dist_ctx.world_size:
            starts.pop()  # a last batch too small to give every rank a share
        bar = tqdm(
            starts, desc=f"{description} epoch {epoch}/{epochs}",
            unit="batch", leave=False, disable=None if progress and (dist_ctx is None or dist_ctx.is_main) else True,
            mininterval=1.0,
        )
        for start in bar:
            batch = order[start:start + batch_size]
            if dist_ctx is not None:
                batch = batch[dist_ctx.rank::dist_ctx.world_size]
            loss = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
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
        record = EpochRecord(epoch, total / max(seen, 1), seen / max(seconds, 1e-9), score, seconds)
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
