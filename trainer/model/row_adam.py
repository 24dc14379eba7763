"""Adam for embedding tables, one batch's rows at a time ("lazy" Adam, as torch's SparseAdam).

A batch touches a few thousand rows of tables that may hold millions (items and tree nodes):
dense gradients would zero, update and write the whole table every step. torch's SparseAdam
avoids that, but reaching it through sparse COO gradients cost a coalesce (sort) per step and
table, 20-35% of a training step in the profile. Here the step already knows the distinct rows
of its batch (`trainer.fit.batches`), computes their gradients densely, and `RowAdam.step` updates
exactly those rows with SparseAdam's arithmetic:

    m[r] = b1 m[r] + (1 - b1) g;  v[r] = b2 v[r] + (1 - b2) g^2       (touched rows only)
    w[r] -= lr sqrt(1 - b2^t) / (1 - b1^t) * m[r] / (sqrt(v[r]) + eps)  (t counts every step)

Under torch.distributed every rank sends its (rows, gradients) to all others
(`merge_rows`), and all apply the same merged update, so the replicas stay identical without
ever all-reducing a full table.
"""

from __future__ import annotations

import functools
import math

import torch

from trainer.fit import distributed


class RowAdam:
    """Lazy Adam over the rows of several tables that share their row ids.

    Each table's two moments live interleaved in one (rows, 2 x width) tensor, so a step reads
    and writes each touched row's state with one gather and one scatter: at Ciao's size (a
    quarter of a 233K-row table touched per batch) the random row accesses, not the arithmetic,
    are the cost."""

    def __init__(self, tables: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.tables = tables
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.moments = [torch.zeros(len(t), 2 * t[0].numel(), dtype=t.dtype, device=t.device) for t in tables]

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """rows: (U,) distinct int64 row ids; grads[i]: (U, ...) gradient of tables[i] at rows."""
        self.step_count += 1
        beta1, beta2 = self.betas
        step_size = self.lr * math.sqrt(1 - beta2**self.step_count) / (1 - beta1**self.step_count)
        for table, moments, grad in zip(self.tables, self.moments, grads, strict=True):
            grad = grad.reshape(len(rows), -1)
            width = grad.shape[1]
            state = moments.index_select(0, rows)  # (U, 2 width): [m | v]
            m, v = state[:, :width], state[:, width:]
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            moments.index_copy_(0, rows, state)
            weights = table.index_select(0, rows).reshape(len(rows), width)
            weights.addcdiv_(m, v.sqrt().add_(self.eps), value=-step_size)
            table.index_copy_(0, rows, weights.reshape(len(rows), *table.shape[1:]))

    @property
    def exp_avg(self) -> list[torch.Tensor]:
        """First moments, table-shaped (a copy; for inspection and tests)."""
        return [mo[:, :mo.shape[1] // 2].reshape(t.shape) for mo, t in zip(self.moments, self.tables, strict=True)]

    def state_dict(self) -> dict:
        return {"step": self.step_count, "moments": self.moments}


def merge_rows(rows: torch.Tensor, grads: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Under torch.distributed: the union of every rank's rows with their summed gradients, the
    same on every rank (ranks are concatenated in rank order, so the sums are bit-identical);
    a bool column comes back as "true on any rank". Without it: the input unchanged.

    Two all-gathers per step: the row ids (int64) and the gradients packed in their own dtype
    (33 floats a row for the embedding and bias tables), padded to the longest rank's rows."""
    ctx = distributed.context()
    if ctx is None:
        return rows, grads
    sizes = distributed.all_gather_sizes(len(rows))
    longest = max(sizes)
    flats = [g.reshape(len(rows), -1).to(torch.float32 if g.dtype == torch.bool else g.dtype) for g in grads]
    dtype = functools.reduce(torch.promote_types, [f.dtype for f in flats])
    width = sum(f.shape[1] for f in flats)
    packed = torch.zeros(longest, width, dtype=dtype, device=rows.device)
    packed[:len(rows)] = torch.cat([f.to(dtype) for f in flats], dim=1)
    padded_rows = torch.full((longest,), -1, dtype=torch.int64, device=rows.device)
    padded_rows[:len(rows)] = rows
    all_rows = torch.cat([part[:size] for part, size in
                          zip(distributed.all_gather_tensor(padded_rows), sizes, strict=True)])
    parts = torch.cat([part[:size] for part, size in zip(distributed.all_gather_tensor(packed), sizes, strict=True)])
    merged_rows, inverse = torch.unique(all_rows, sorted=True, return_inverse=True)
    summed = torch.zeros(len(merged_rows), width, dtype=dtype, device=rows.device).index_add_(0, inverse, parts)
    out, column = [], 0
    for grad, flat in zip(grads, flats, strict=True):
        part = summed[:, column:column + flat.shape[1]]
        out.append((part if grad.dtype != torch.bool else part > 0).to(grad.dtype)
                   .reshape(len(merged_rows), *grad.shape[1:]))
        column += flat.shape[1]
    return merged_rows, out
