"""The scorer's training computation, forward and backward fused, over chunks of samples.

Training evaluates the MLP tower on every sampled (user, node) pair, a few hundred per sample,
each through 128-64-24-1 with PReLU. Through autograd that costs a full-size (pairs x 128)
tensor per activation and per gradient, a dozen memory passes per step, and torch's PReLU
backward reduces the slope gradient through a slow broadcast kernel. Here the gradients are
derived by hand and computed right after the forward pass, a chunk of samples at a time, so
every activation of a chunk stays in cache and nothing is kept between forward and backward:

    per chunk (b samples, V behaviour mappings, windows p_vw, node embeddings t):
      h1 = a_v + B t + sum_w C_w (p_vw * t),   a_v = A p_v + b1         first layer
      z1 = PReLU(h1); z2 = PReLU(W2 z1 + b2); z3 = PReLU(W3 z2 + b3)
      logit = w4 z3 + b4 + bias[node];  loss = sum of binary log loss; then backwards.

The first layer has two exact forms, chosen per group of columns by its width w_v:
- *split* (wide groups): M_v = B + sum_w C_w diag(p_vw) is built once per (sample, mapping),
  then h1 = a_v + t M_v costs H1 x d per pair. Building M and its gradients costs about as much
  as 8-10 pairs, so it pays only where a mapping scores many columns (the lower levels; all
  columns when there is one mapping).
- *concat* (narrow groups, w_v <= `concat_width`): h1 = a_v + [t, p_v1 * t, ..] Wc^T as one
  GEMM over all narrow pairs of the chunk: 4x the multiply-adds per pair, but no M and no
  small per-mapping matmuls (the upper levels of the hierarchical representation have 2-13
  columns each, where those dominated).

The chunks are shared out over `threads` Python threads, each running torch with one intra-op
thread: torch releases the GIL inside every op, so two threads keep two cores busy without
OpenMP's per-op fork/join, and each thread accumulates its own weight gradients, summed in a
fixed order at the end (deterministic for a given thread count).

Inputs are the pooled behaviour windows p (V, B, W, d), the node embeddings per group
(B, w_v, d) and their biases (B, w_v); outputs are the summed loss and its gradients with
respect to all of those and to the tower's dense weights. The caller turns the input gradients
into embedding-row gradients (`trainer.fit.step`). `TreeScorer.tower_logits` through autograd is
the reference the tests hold this against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from trainer.model.fused_ops import prelu_backward
from trainer.model.threads import run_parallel

# Groups with at most this many columns use the concat form: for narrow groups one wide matmul
# over the concatenated columns beats a batched matmul per group (bench.bench_training).
CONCAT_WIDTH = 8


@dataclass(frozen=True)
class TowerWeights:
    """The dense weights of the scorer in the layouts the kernel wants (views of the module's
    parameters, except `ct_k`, reordered once per step)."""

    a: torch.Tensor  # (H1, W d): first layer, pooled windows
    wc: torch.Tensor  # (H1, (W + 1) d): first layer, [target | window x target products]
    bt: torch.Tensor  # (d, H1): target block, transposed
    ct_k: torch.Tensor  # (d, W, H1): product blocks, C[h, w, k] at [k, w, h]
    b1: torch.Tensor  # (H1,)
    slopes: tuple[torch.Tensor, ...]  # PReLU slope per hidden layer
    hidden: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (weight, bias) of the layers after the first
    out_w: torch.Tensor  # (H_last,)
    out_b: torch.Tensor  # (1,)

    @classmethod
    def of(cls, first: torch.nn.Linear, rest: torch.nn.Sequential, n_windows: int, dim: int) -> TowerWeights:
        """From `TreeScorer.first` and `TreeScorer.rest` (PReLU, Linear, PReLU, ..., Linear)."""
        weight = first.weight.detach()
        h1 = weight.shape[0]
        wd = n_windows * dim
        modules = list(rest)
        slopes = [modules[0].weight.detach()]
        hidden = []
        for i in range(1, len(modules) - 1, 2):
            hidden.append((modules[i].weight.detach(), modules[i].bias.detach()))
            slopes.append(modules[i + 1].weight.detach())
        out = modules[-1]
        return cls(
            a=weight[:, :wd], wc=weight[:, wd:], bt=weight[:, wd:wd + dim].t(),
            ct_k=weight[:, wd + dim:].reshape(h1, n_windows, dim).permute(2, 1, 0).contiguous(),
            b1=first.bias.detach(), slopes=tuple(slopes), hidden=tuple(hidden),
            out_w=out.weight.detach().reshape(-1), out_b=out.bias.detach(),
        )


@dataclass
class TowerGrads:
    """Gradients of the summed loss: inputs in their own layouts, weights in `nn.Module`
    layouts (`first` is (H1, (2W + 1) d) like `nn.Linear.weight`)."""

    loss: torch.Tensor  # () float64
    pooled: torch.Tensor  # (V, B, W, d)
    targets: list[torch.Tensor]  # per group (B, w_v, d)
    node_bias: list[torch.Tensor]  # per group (B, w_v)
    first: torch.Tensor
    b1: torch.Tensor
    slopes: list[torch.Tensor]
    hidden: list[tuple[torch.Tensor, torch.Tensor]]
    out_w: torch.Tensor
    out_b: torch.Tensor


class _Accumulators:
    """One worker's weight-gradient sums (input gradients are written in place, per chunk)."""

    def __init__(self, w: TowerWeights, profile: bool = False) -> None:
        self.seconds = {"forward": 0.0, "backward": 0.0} if profile else None
        self.loss = torch.zeros((), dtype=torch.float64, device=w.b1.device)
        self.a = torch.zeros_like(w.a)
        self.wc = torch.zeros_like(w.wc)  # concat form: [B | C_1 .. C_W]
        self.bt = torch.zeros_like(w.bt)  # split form: B^T
        self.ct_k = torch.zeros_like(w.ct_k)  # split form: C, k-major
        self.b1 = torch.zeros_like(w.b1)
        self.slopes = [torch.zeros_like(s) for s in w.slopes]
        self.hidden = [(torch.zeros_like(wt), torch.zeros_like(b)) for wt, b in w.hidden]
        self.out_w = torch.zeros_like(w.out_w)
        self.out_b = torch.zeros_like(w.out_b)

    def tensors(self) -> list[torch.Tensor]:
        flat = [self.loss, self.a, self.wc, self.bt, self.ct_k, self.b1, self.out_w, self.out_b, *self.slopes]
        for weight, bias in self.hidden:
            flat += [weight, bias]
        return flat

    def first(self) -> torch.Tensor:
        """Both forms' first-layer gradients in `nn.Linear` layout."""
        dim, n_windows, h1 = self.ct_k.shape
        split = torch.cat([self.bt.t(), self.ct_k.permute(2, 1, 0).reshape(h1, n_windows * dim)], dim=1)
        return torch.cat([self.a, self.wc + split], dim=1)


@dataclass(frozen=True)
class _Layout:
    """Where each group's pairs sit in a chunk of `b` samples. Pair rows are ordered: narrow
    groups, then wide groups; inside a group (sample, column)."""

    narrow: tuple[int, ...]  # group indices, concat form
    wide: tuple[int, ...]  # group indices, split form
    offsets: dict[int, tuple[int, int]]  # group -> (first row, end row)
    n_narrow: int  # rows of narrow pairs (they come first)
    owner: torch.Tensor | None  # (n_narrow,) row of p (group-major: v * b + sample) of each narrow pair
    label_rows: torch.Tensor | None = None  # (pairs,) each row's label, when training

    @property
    def order(self) -> tuple[int, ...]:
        return self.narrow + self.wide

    @classmethod
    def build(cls, widths: list[int], b: int, concat_width: int, device: torch.device,
              labels: list[torch.Tensor] | None = None) -> _Layout:
        narrow = tuple(v for v, w in enumerate(widths) if w <= concat_width)
        wide = tuple(v for v, w in enumerate(widths) if w > concat_width)
        offsets, row, owners = {}, 0, []
        for v in narrow + wide:
            offsets[v] = (row, row + b * widths[v])
            row += b * widths[v]
            if v in narrow:
                owners.append(torch.arange(v * b, (v + 1) * b, device=device).repeat_interleave(widths[v]))
        n_narrow = offsets[narrow[-1]][1] if narrow else 0
        label_rows = None
        if labels is not None:
            label_rows = torch.cat([labels[v].expand(b, widths[v]).reshape(-1) for v in narrow + wide])
        return cls(narrow, wide, offsets, n_narrow, torch.cat(owners) if owners else None, label_rows)


@dataclass
class _Forward:
    """A chunk's forward pass: what the backward pass reuses."""

    b: int
    p: torch.Tensor  # (V b, W, d) pooled windows, rows (v, sample)
    a: torch.Tensor  # (V b, H1)
    inputs: list[torch.Tensor]  # pre-activation per hidden layer, rows = pairs
    acts: list[torch.Tensor]  # PReLU outputs
    logit: torch.Tensor  # (pairs,) without the node bias
    x: torch.Tensor | None = None  # narrow groups: [t, p_w * t]
    t_n: torch.Tensor | None = None
    p_n: torch.Tensor | None = None
    m: torch.Tensor | None = None  # wide groups: M, k-major (d, V_w b, H1)
    p_w: torch.Tensor | None = None
    rows_w: torch.Tensor | None = None


def _forward(w: TowerWeights, pooled: torch.Tensor, targets: list[torch.Tensor], start: int, stop: int,
             layout: _Layout) -> _Forward:
    """The tower on every pair of samples [start, stop), rows ordered as `layout` says."""
    b = stop - start
    n_groups, _, n_windows, dim = pooled.shape
    h1_width = w.b1.shape[0]
    widths = [t.shape[1] for t in targets]
    p = pooled[:, start:stop].reshape(n_groups * b, n_windows, dim)  # rows (v, sample)
    a = torch.addmm(w.b1, p.view(n_groups * b, n_windows * dim), w.a.t())  # (V b, H1)
    h = torch.empty(b * sum(widths), h1_width, dtype=p.dtype, device=p.device)
    out = _Forward(b, p, a, [h], [], h)
    # Narrow groups: one GEMM on x = [t, p_w * t]
    if layout.narrow:
        out.t_n = torch.cat([targets[v][start:stop].reshape(-1, dim) for v in layout.narrow])  # (n_N, d)
        out.p_n = p[layout.owner]  # (n_N, W, d)
        out.x = torch.empty(layout.n_narrow, (n_windows + 1) * dim, dtype=p.dtype, device=p.device)
        out.x[:, :dim] = out.t_n
        torch.mul(out.p_n, out.t_n[:, None, :], out=out.x[:, dim:].view(-1, n_windows, dim))
        torch.addmm(a[layout.owner], out.x, w.wc.t(), out=h[:layout.n_narrow])
    # Wide groups: M (k-major, (d, V_w b, H1)) once per (sample, group), then t M per pair
    if layout.wide:
        if len(layout.wide) == n_groups:
            out.p_w = p
        else:
            out.rows_w = torch.cat([torch.arange(v * b, (v + 1) * b, device=p.device) for v in layout.wide])
            out.p_w = p[out.rows_w]  # (V_w b, W, d)
        out.m = m = torch.baddbmm(w.bt[:, None, :], out.p_w.permute(2, 0, 1).contiguous(), w.ct_k)
        for i, v in enumerate(layout.wide):
            r0, r1 = layout.offsets[v]
            torch.baddbmm(a[v * b:(v + 1) * b, None, :], targets[v][start:stop],
                          m[:, i * b:(i + 1) * b].transpose(0, 1), out=h[r0:r1].view(b, widths[v], h1_width))
    # The rest of the tower
    out.acts.append(F.prelu(h, w.slopes[0]))
    for (weight, bias), slope in zip(w.hidden, w.slopes[1:], strict=True):
        out.inputs.append(torch.addmm(bias, out.acts[-1], weight.t()))
        out.acts.append(F.prelu(out.inputs[-1], slope))
    out.logit = torch.addmv(w.out_b, out.acts[-1], w.out_w)
    return out


def _chunk(w: TowerWeights, acc: _Accumulators, out: TowerGrads, pooled: torch.Tensor,
           targets: list[torch.Tensor], node_bias: list[torch.Tensor], labels: list[torch.Tensor],
           start: int, stop: int, layout: _Layout) -> None:
    """Forward and backward for samples [start, stop): input gradients into `out`, weight
    gradients added to `acc` (and, when profiling, seconds into `acc.seconds`)."""
    began = time.perf_counter()
    f = _forward(w, pooled, targets, start, stop, layout)
    b, p, a = f.b, f.p, f.a
    n_groups, _, n_windows, dim = pooled.shape
    h1_width = w.b1.shape[0]
    widths = [t.shape[1] for t in targets]
    # Loss over every pair of the chunk at once (rows in layout order; labels cached per layout).
    assert layout.label_rows is not None
    logit = f.logit.add_(torch.cat([node_bias[v][start:stop].reshape(-1) for v in layout.order]))
    acc.loss += F.binary_cross_entropy_with_logits(logit, layout.label_rows, reduction="sum").double()
    grad_logit = torch.sigmoid(logit).sub_(layout.label_rows)  # d loss / d logit
    for v, width in enumerate(widths):
        r0, r1 = layout.offsets[v]
        out.node_bias[v][start:stop] = grad_logit[r0:r1].view(b, width)
    if acc.seconds is not None:
        now = time.perf_counter()
        acc.seconds["forward"] += now - began
        began = now

    # ---- backward through the tower
    acc.out_w.addmv_(f.acts[-1].t(), grad_logit)
    acc.out_b += grad_logit.sum()
    grad = torch.outer(grad_logit, w.out_w)  # d loss / d last activation
    for layer in range(len(w.hidden), -1, -1):
        grad, slope_grad = prelu_backward(grad, f.inputs[layer], w.slopes[layer])
        acc.slopes[layer] += slope_grad
        if layer == 0:
            break
        weight, _ = w.hidden[layer - 1]
        gw, gb = acc.hidden[layer - 1]
        gw.addmm_(grad.t(), f.acts[layer - 1])
        gb += grad.sum(0)
        grad = grad @ weight

    # ---- first layer, backward
    ga = torch.zeros_like(a)
    gp = torch.zeros_like(p)
    if layout.narrow:
        gh_n = grad[:layout.n_narrow]
        acc.wc.addmm_(gh_n.t(), f.x)
        gx = (gh_n @ w.wc).view(-1, n_windows + 1, dim)  # (n_N, W + 1, d)
        ga.index_add_(0, layout.owner, gh_n)
        gp.index_add_(0, layout.owner, gx[:, 1:] * f.t_n[:, None, :])
        gt_n = gx[:, 0] + (gx[:, 1:] * f.p_n).sum(1)
        for v in layout.narrow:
            r0, r1 = layout.offsets[v]
            out.targets[v][start:stop] = gt_n[r0:r1].view(b, widths[v], dim)
    if layout.wide:
        m = f.m
        gm = torch.empty_like(m)
        for i, v in enumerate(layout.wide):
            r0, r1 = layout.offsets[v]
            gh_v = grad[r0:r1].view(b, widths[v], h1_width)
            t_v = targets[v][start:stop]
            torch.sum(gh_v, 1, out=ga[v * b:(v + 1) * b])
            gm[:, i * b:(i + 1) * b] = torch.bmm(t_v.transpose(1, 2), gh_v).transpose(0, 1)
            torch.bmm(gh_v, m[:, i * b:(i + 1) * b].permute(1, 2, 0), out=out.targets[v][start:stop])
        acc.bt += gm.sum(1)
        acc.ct_k += torch.bmm(f.p_w.permute(2, 1, 0).contiguous(), gm)  # (d, W, V_w b) @ (d, V_w b, H1)
        gp_w = torch.bmm(gm, w.ct_k.transpose(1, 2)).permute(1, 2, 0)  # (d, V_w b, W) -> (V_w b, W, d)
        if f.rows_w is None:
            gp += gp_w
        else:
            gp[f.rows_w] += gp_w
    acc.b1 += ga.sum(0)
    acc.a.addmm_(ga.t(), p.view(n_groups * b, n_windows * dim))
    gp.view(n_groups * b, n_windows * dim).addmm_(ga, w.a)
    out.pooled[:, start:stop] = gp.view(n_groups, b, n_windows, dim)
    if acc.seconds is not None:
        acc.seconds["backward"] += time.perf_counter() - began


def _layouts(widths: list[int], batch: int, chunk: int, concat_width: int, device: torch.device,
             labels: list[torch.Tensor] | None = None) -> tuple[list[int], dict[int, _Layout]]:
    starts = list(range(0, batch, chunk))
    layouts: dict[int, _Layout] = {}
    for start in starts:
        size = min(start + chunk, batch) - start
        if size not in layouts:
            layouts[size] = _Layout.build(widths, size, concat_width, device, labels)
    return starts, layouts


@torch.no_grad()
def tower_logits(
    weights: TowerWeights,
    pooled: torch.Tensor,
    targets: list[torch.Tensor],
    node_bias: list[torch.Tensor],
    chunk: int = 64,
    threads: int = 1,
    concat_width: int = CONCAT_WIDTH,
) -> list[torch.Tensor]:
    """Forward only: per group (B, w_v) logits, same inputs as `tower_loss_and_grads`. Tree
    learning's scoring: in chunks that stay in cache, on worker threads."""
    n_groups, batch = pooled.shape[:2]
    if not len(targets) == len(node_bias) == n_groups:
        raise ValueError(f"{n_groups} behaviour mappings but {len(targets)} target and {len(node_bias)} bias groups")
    pooled = pooled.contiguous()
    targets = [t.contiguous() for t in targets]
    widths = [t.shape[1] for t in targets]
    logits = [pooled.new_empty(batch, width) for width in widths]
    starts, layouts = _layouts(widths, batch, chunk, concat_width, pooled.device)
    workers = max(1, min(threads, len(starts))) if pooled.device.type == "cpu" else 1

    def run(worker: int) -> None:
        for start in starts[worker::workers]:
            stop = min(start + chunk, batch)
            layout = layouts[stop - start]
            f = _forward(weights, pooled, targets, start, stop, layout)
            for v, width in enumerate(widths):
                r0, r1 = layout.offsets[v]
                torch.add(f.logit[r0:r1].view(stop - start, width), node_bias[v][start:stop],
                          out=logits[v][start:stop])

    run_parallel(run, workers)
    return logits


def tower_loss_and_grads(
    weights: TowerWeights,
    pooled: torch.Tensor,
    targets: list[torch.Tensor],
    node_bias: list[torch.Tensor],
    labels: list[torch.Tensor],
    chunk: int = 32,
    threads: int = 1,
    concat_width: int = CONCAT_WIDTH,
    input_grads: torch.Tensor | None = None,
    seconds: dict[str, float] | None = None,
) -> TowerGrads:
    """Summed binary log loss over all (sample, column) pairs and its gradients.

    Columns come in V groups, one per behaviour mapping (the levels of the hierarchical
    representation; a single group without it). pooled: (V, B, W, d) pooled windows per
    mapping; targets[v]: (B, w_v, d) embeddings of the nodes group v scores; node_bias[v]:
    (B, w_v); labels[v]: (w_v,) 1 for a positive column. `threads` > 1 shares the chunks of
    `chunk` samples out over that many workers (CPU only). `concat_width`: the widest group
    computed in the concat form (0: none). `input_grads`, if given, is a (V B W + pairs, d)
    buffer that receives the gradients of `pooled` and then of every group's targets, stacked
    (`TowerGrads.pooled` and `.targets` are views of it). `seconds`, if given, receives the
    wall time of the call split into "forward" and "backward" in proportion to the workers'
    time in each (profiling; `bench/bench_training.py`).
    """
    called = time.perf_counter()
    n_groups, batch = pooled.shape[:2]
    if not len(targets) == len(node_bias) == len(labels) == n_groups:
        raise ValueError(f"{n_groups} behaviour mappings but {len(targets)} target groups, "
                         f"{len(node_bias)} bias groups and {len(labels)} label groups")
    for t, nb, label in zip(targets, node_bias, labels, strict=True):
        if t.shape[0] != batch or t.shape[:2] != nb.shape or label.shape != t.shape[1:2]:
            raise ValueError(f"group shapes disagree: targets {tuple(t.shape)}, node_bias {tuple(nb.shape)}, "
                             f"labels {tuple(label.shape)}, batch {batch}")
    targets = [t.contiguous() for t in targets]
    node_bias = [nb.contiguous() for nb in node_bias]
    pooled = pooled.contiguous()
    if input_grads is None:
        input_grads = pooled.new_empty(pooled[..., 0].numel() + sum(t[..., 0].numel() for t in targets),
                                       pooled.shape[-1])
    grad_pooled = input_grads[:pooled[..., 0].numel()].view(pooled.shape)
    grad_targets, row = [], len(grad_pooled.view(-1, pooled.shape[-1]))
    for t in targets:
        grad_targets.append(input_grads[row:row + t[..., 0].numel()].view(t.shape))
        row += t[..., 0].numel()
    out = TowerGrads(
        loss=torch.zeros((), dtype=torch.float64), pooled=grad_pooled,
        targets=grad_targets, node_bias=[torch.empty_like(nb) for nb in node_bias],
        first=weights.a, b1=weights.b1, slopes=[], hidden=[], out_w=weights.out_w, out_b=weights.out_b,
    )
    widths = [t.shape[1] for t in targets]
    starts, layouts = _layouts(widths, batch, chunk, concat_width, pooled.device,
                               [label.to(pooled.dtype) for label in labels])
    workers = max(1, min(threads, len(starts))) if pooled.device.type == "cpu" else 1
    accumulators = [_Accumulators(weights, profile=seconds is not None) for _ in range(workers)]

    def run(worker: int) -> None:
        for start in starts[worker::workers]:
            stop = min(start + chunk, batch)
            _chunk(weights, accumulators[worker], out, pooled, targets, node_bias, labels, start, stop,
                   layouts[stop - start])

    run_parallel(run, workers)
    total = accumulators[0]
    for other in accumulators[1:]:
        for mine, theirs in zip(total.tensors(), other.tensors(), strict=True):
            mine += theirs
    out.loss, out.first, out.b1 = total.loss, total.first(), total.b1
    out.slopes, out.hidden, out.out_w, out.out_b = total.slopes, total.hidden, total.out_w, total.out_b
    if seconds is not None:
        wall = time.perf_counter() - called
        spent = {phase: sum(acc.seconds[phase] for acc in accumulators) for phase in ("forward", "backward")}
        busy = sum(spent.values()) or 1.0
        for phase, value in spent.items():
            seconds[phase] = seconds.get(phase, 0.0) + wall * value / busy
    return out
