"""One optimisation step of the user-node scorer on layer-wise samples; `trainer.fit.epochs` runs
the epochs around it.

One step, for a batch built ahead of time by `trainer.fit.batches` (sampled nodes, behaviour
bags, the batch's distinct embedding rows):

    gather the batch's rows of the embedding and bias tables          (U, d), (U,)
    pool the behaviour windows with embedding_bag                       (V, B, W, d)
    gather each group's target embeddings and biases                    (B, w_v, d), (B, w_v)
    loss and gradients of the tower                                     trainer.model.tower (fused, CPU)
                                                                        or autograd (CUDA, bf16)
    scatter the input gradients back onto the rows                      (U, d), (U,)
    Adam on the dense weights, lazy Adam on the rows                    trainer.model.row_adam

The same step serves DNN (leaf samples, no tree), TDM and every JTM variant: only the sampler
and the hierarchical switch (which behaviour mapping scores which columns) differ. Under
torch.distributed (torchrun) each rank trains on its share of every batch; the dense
gradients are all-reduced and the rows' gradients exchanged (`row_adam.merge_rows`), so every
rank applies the same update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from service.core.tree import Tree
from trainer.config import option
from trainer.data.split import SampleSet
from trainer.fit import distributed
from trainer.fit.allocator import keep_freed_memory
from trainer.fit.batches import Batch, BatchBuilder
from trainer.fit.sampler import DEFAULT_LEAF_NEGATIVES, BeamAwareConfig, LayerwiseSampler, UniformItemSampler
from trainer.fit.schedule import SCHEDULES, LrSchedule
from trainer.model.row_adam import RowAdam, merge_rows
from trainer.model.scorer import TreeScorer, UserState
from trainer.model.tower import TowerWeights, tower_loss_and_grads

KERNELS = ("auto", "fused", "autograd")


@dataclass(frozen=True)
class TrainConfig:
    """How the scorer is fitted on a tree: the schedule, the negatives and where it runs."""

    epochs: int = option(10, "max epochs; validation recall picks the best", at_least=1)  # an upper bound
    batch_size: int = option(256, "training batch size", at_least=1)
    # Adam. TDM/JTM use 1e-3; 2e-3 reached the same validation recall in fewer epochs.
    lr: float = option(2e-3, "Adam learning rate", above=0)
    # trainer.fit.schedule: constant, or a decay over each training run's --epochs budget.
    lr_schedule: str = option("constant", "learning-rate schedule over each run's --epochs (cosine, linear: "
                              "decay to --lr-floor x --lr at the budget's last step)", choices=SCHEDULES)
    lr_warmup: int = option(0, "steps of linear learning-rate warm-up at the start of each training run",
                            at_least=0)
    lr_floor: float = option(0.0, "with a decaying --lr-schedule: the final rate as a share of --lr",
                             at_least=0, at_most=1)
    leaf_negatives: int = option(DEFAULT_LEAF_NEGATIVES, "negatives at the leaf level, halving upward", at_least=1)
    beam_aware: BeamAwareConfig | None = None  # None: uniform layer-wise negatives (TDM, JTM); --beam-aware sets it
    patience: int = 2  # epochs without a validation gain before stopping
    device: str = option("cpu", "cpu, or cuda (cuda:N) when present")
    # Mixed precision for the tower on the autograd kernel (weights stay fp32): "auto" uses bf16
    # where the hardware has native bf16 matrix units (AMX / AVX512-BF16 / CUDA) and the kernel
    # is autograd (see `resolve_kernel`); "fp32" never; "bf16" always (and means autograd).
    precision: str = option("auto", "training forward precision (auto: bf16 on AMX/AVX512-BF16/CUDA)",
                            choices=("auto", "bf16", "fp32"))
    # Also keep what a run of only this many epochs would end with (`compare --equal-epochs`:
    # the fixed-tree method trains the joint loop's total, its joint twin starts from here).
    snapshot_epoch: int | None = None
    # "fused": forward and backward by hand, chunk by chunk, on worker threads (trainer.model.tower;
    # the CPU default, faster than autograd there). "autograd": torch autograd, with bf16 autocast
    # when `precision` allows (the CUDA default). Same gradients either way.
    kernel: str = option("auto", "training kernel (auto: fused on the CPU, but autograd under bf16 for the plain "
                         "tower on a CPU with bf16 units; autograd on CUDA or with --precision bf16)",
                         choices=KERNELS)
    threads: int = option(0, "fused kernel worker threads (0: torch's thread count, i.e. the cores)", at_least=0)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        values = dict(data)
        if values.get("beam_aware"):
            values["beam_aware"] = BeamAwareConfig(**values["beam_aware"])
        return cls(**values)


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
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return None
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else None


def resolve_kernel(config: TrainConfig, model: TreeScorer) -> str:
    """The kernel a run uses: target attention has no user/node split, so only autograd trains
    it; an explicit bf16 precision also means autograd (the fused kernel is fp32).

    `auto`: autograd on CUDA; on a CPU the fused kernel, except for the plain (non-hierarchical)
    tower on a CPU with native bf16 matrix units, where bf16 autocast outruns the fp32 fused
    kernel. The hierarchical tower stays fused there: under autograd it pays for the per-level
    user states and the (B, 2W+1, d) first-layer input (docs/PERFORMANCE.md, training)."""
    if config.kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {config.kernel!r}")
    if model.config.attention:
        return "autograd"
    if config.kernel == "auto":
        if config.device.startswith("cuda") or config.precision == "bf16":
            return "autograd"
        wants_bf16 = resolve_precision(config.precision, config.device) is not None
        return "autograd" if wants_bf16 and not model.config.hierarchical else "fused"
    return config.kernel


@dataclass
class StepTimes:
    """Seconds per phase, summed over steps (for `bench/bench_training.py`)."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def per_step_ms(self) -> dict[str, float]:
        return {phase: 1000 * value / max(self.steps, 1) for phase, value in self.seconds.items()}


class ScorerStep:
    """One optimisation step of a `TreeScorer` on a `Batch`; returns the batch's mean loss.

    Owns the optimisers: Adam for the dense weights, `RowAdam` for the embedding and bias
    tables (only their `.weight` tensors are read and written)."""

    def __init__(self, model: TreeScorer, config: TrainConfig, times: StepTimes | None = None) -> None:
        self.model = model
        self.config = config
        self.device = torch.device(config.device)
        self.kernel = resolve_kernel(config, model)
        self.autocast = resolve_precision(config.precision, config.device) if self.kernel == "autograd" else None
        self.threads = config.threads or torch.get_num_threads()
        self.tables = [model.embedding.weight, model.bias.weight]
        self.dense = [p for p in model.parameters() if all(p is not t for t in self.tables)]
        self.dense_optimizer = torch.optim.Adam(self.dense, lr=config.lr)
        # One per table: lazy Adam moves exactly the rows a table was read at. Node biases are
        # read only for scored nodes, embeddings also for behaviours.
        self.row_optimizers = [RowAdam([t.data], lr=config.lr) for t in self.tables]
        self.schedule = LrSchedule(config.lr)  # `plan` sets the run's length
        self.steps_taken = 0
        self.times = times
        keep_freed_memory()

    def plan(self, steps_per_epoch: int) -> None:
        """Spread the configured schedule over this run's `epochs` x `steps_per_epoch` steps."""
        config = self.config
        self.schedule = LrSchedule(config.lr, config.lr_schedule, config.epochs * steps_per_epoch,
                                   config.lr_warmup, config.lr_floor)

    def _set_lr(self) -> None:
        lr = self.schedule(self.steps_taken)
        for group in self.dense_optimizer.param_groups:
            group["lr"] = lr
        for optimizer in self.row_optimizers:
            optimizer.lr = lr
        self.steps_taken += 1

    def _mark(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        if self.times is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                now = time.perf_counter()
            self.times.add(phase, now - started)
        return now

    def __call__(self, batch: Batch) -> float:
        started = time.perf_counter()
        device = self.device
        rows = torch.from_numpy(batch.rows).to(device)
        groups = [torch.from_numpy(g).to(device) for g in batch.groups]
        dtype = self.tables[0].dtype
        labels = [torch.from_numpy(label).to(device, dtype) for label in batch.labels]
        bag_ids = torch.from_numpy(batch.bag_ids).to(device)
        bag_offsets = torch.from_numpy(batch.bag_offsets).to(device)
        bag_weights = torch.from_numpy(batch.bag_weights).to(device, dtype)
        started = self._mark("data movement", started)

        table = self.tables[0].detach().index_select(0, rows)  # (U, d)
        bias = self.tables[1].detach().index_select(0, rows).squeeze(1)  # (U,)
        dim = table.shape[1]
        pooled = F.embedding_bag(bag_ids, table, bag_offsets, mode="sum", per_sample_weights=bag_weights)
        pooled = pooled.view(batch.n_groups, batch.size, batch.n_windows, dim)  # (V, B, W, d)
        columns = torch.cat([g.reshape(-1) for g in groups])
        widths = [g.numel() for g in groups]
        targets = [t.view(*g.shape, dim) for t, g in zip(table[columns].split(widths), groups, strict=True)]
        node_bias = [nb.view(g.shape) for nb, g in zip(bias[columns].split(widths), groups, strict=True)]
        started = self._mark("embedding gather", started)

        scale = 1.0 / batch.pairs
        if self.kernel == "fused":
            weights = TowerWeights.of(self.model.first, self.model.rest, batch.n_windows, dim)
            input_grads = table.new_empty(pooled[..., 0].numel() + len(columns), dim)
            grads = tower_loss_and_grads(weights, pooled, targets, node_bias, labels, threads=self.threads,
                                         input_grads=input_grads,
                                         seconds=self.times.seconds if self.times is not None else None)
            loss = float(grads.loss) * scale
            self._set_dense_grads(grads, scale)
            grad_bias = torch.cat([g.reshape(-1) for g in grads.node_bias])
            started = time.perf_counter()  # the kernel booked its own forward and backward
        else:
            loss, input_grads, grad_bias, history_grad = self._autograd_tower(batch, table, pooled, targets,
                                                                              node_bias, labels)
            scale = 1.0
            started = self._mark("forward+backward (autograd)", started)

        # Row gradients: the transposed bags sum every bag entry's and node column's gradient.
        row_grad = F.embedding_bag(torch.from_numpy(batch.grad_sources).to(device), input_grads,
                                   torch.from_numpy(batch.grad_offsets).to(device), mode="sum",
                                   per_sample_weights=torch.from_numpy(batch.grad_weights).to(device, dtype))
        bias_grad = torch.zeros_like(bias).index_add_(0, columns, grad_bias)
        if self.kernel != "fused" and history_grad is not None:
            row_grad += history_grad
        if scale != 1.0:
            row_grad.mul_(scale)
            bias_grad.mul_(scale)
        started = self._mark("embedding backward", started)

        node_rows = torch.zeros(len(rows), dtype=torch.bool, device=device)
        node_rows[columns] = True
        self._all_reduce_dense()
        rows, (row_grad, bias_grad, node_rows) = merge_rows(rows, [row_grad, bias_grad[:, None], node_rows[:, None]])
        keep = rows < self.model.n_rows  # the padding row stays zero
        node_rows = node_rows[:, 0] > 0
        started = self._mark("gradient exchange", started)
        self._set_lr()
        self.dense_optimizer.step()
        started = self._mark("optimizer dense", started)
        self.row_optimizers[0].step(rows[keep], [row_grad[keep]])
        self.row_optimizers[1].step(rows[keep & node_rows], [bias_grad[keep & node_rows]])
        self._mark("optimizer rows", started)
        if self.times is not None:
            self.times.steps += 1
        return loss

    def _set_dense_grads(self, grads, scale: float) -> None:
        model = self.model
        model.first.weight.grad = grads.first.mul_(scale)
        model.first.bias.grad = grads.b1.mul_(scale)
        modules = list(model.rest)
        modules[0].weight.grad = grads.slopes[0].mul_(scale)
        for i, ((gw, gb), slope) in enumerate(zip(grads.hidden, grads.slopes[1:], strict=True)):
            modules[1 + 2 * i].weight.grad = gw.mul_(scale)
            modules[1 + 2 * i].bias.grad = gb.mul_(scale)
            modules[2 + 2 * i].weight.grad = slope.mul_(scale)
        modules[-1].weight.grad = grads.out_w.mul(scale).view_as(modules[-1].weight)
        modules[-1].bias.grad = grads.out_b.mul(scale)

    def _autograd_tower(self, batch: Batch, table: torch.Tensor, pooled: torch.Tensor, targets: list[torch.Tensor],
                        node_bias: list[torch.Tensor], labels: list[torch.Tensor]
                        ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Through autograd (bf16 autocast when configured): the mean loss, the stacked input
        gradients (pooled, then targets), the flat node-bias gradients, and with target
        attention the rows' gradients through the behaviours (else None). Sets the dense
        gradients."""
        model = self.model
        dim = pooled.shape[-1]
        pooled = pooled.detach().requires_grad_()
        targets = [t.detach().requires_grad_() for t in targets]
        node_bias = [b.detach().requires_grad_() for b in node_bias]
        inputs = [pooled, *targets, *node_bias]
        history = None
        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            if model.config.attention:
                if batch.history is None:
                    raise ValueError("target attention needs batches that keep the history")
                history = torch.from_numpy(batch.history).to(self.device)  # (V, B, L) local, -1 padded
                padded = torch.cat([table, table.new_zeros(1, dim)])
                embedded = padded[torch.where(history >= 0, history, len(table))].requires_grad_()  # (V, B, L, d)
                inputs.append(embedded)
                logits = [model.rest(model.first(model._attention_input(
                    UserState(history=embedded[v], mask=history[v] >= 0), t_v))).squeeze(-1) + b_v
                    for v, (t_v, b_v) in enumerate(zip(targets, node_bias, strict=True))]
            else:
                logits = model.tower_logits(pooled, targets, node_bias)
        flat_logits = torch.cat([lg.to(table.dtype).reshape(-1) for lg in logits])
        flat_labels = torch.cat([label.expand(batch.size, -1).reshape(-1) for label in labels])
        loss = F.binary_cross_entropy_with_logits(flat_logits, flat_labels)
        grads = list(torch.autograd.grad(loss, [*inputs, *self.dense], allow_unused=True))
        grads = [torch.zeros_like(x) if g is None else g.to(x.dtype) for g, x in zip(grads, [*inputs, *self.dense],
                                                                                    strict=True)]
        for p, g in zip(self.dense, grads[len(inputs):], strict=True):
            p.grad = g
        v = len(targets)
        input_grads = torch.cat([g.reshape(-1, dim) for g in grads[:1 + v]])
        bias_grads = torch.cat([g.reshape(-1) for g in grads[1 + v:1 + 2 * v]])
        history_grad = None
        if history is not None:
            valid = history >= 0
            history_grad = torch.zeros_like(table).index_add_(0, history[valid], grads[1 + 2 * v][valid])
        return float(loss.detach()), input_grads, bias_grads, history_grad

    def _all_reduce_dense(self) -> None:
        """Average the dense gradients over ranks (what DistributedDataParallel would do)."""
        if distributed.context() is None:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in self.dense])
        flat = distributed.all_reduce_mean(flat)
        offset = 0
        for p in self.dense:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def make_builder(model: TreeScorer, samples: SampleSet, sampler: LayerwiseSampler | UniformItemSampler,
                 tree: Tree | None, hierarchical: bool, times: StepTimes | None = None) -> BatchBuilder:
    return BatchBuilder(samples, sampler, tree, hierarchical, model.config.windows, model.n_rows,
                        keep_history=model.config.attention, times=times)
