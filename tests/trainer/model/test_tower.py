"""The fused training kernel equals autograd: loss and every gradient, in float64 (where the
only difference is summation order), for one behaviour mapping and for the hierarchical
representation's many, in both first-layer forms, on one and two worker threads."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.model.tower import TowerWeights, tower_loss_and_grads


def problem(widths: list[int], batch: int = 37, windows=((0, 1), (0, 5), (0, 69)), dim: int = 8):
    generator = torch.Generator().manual_seed(0)
    model = TreeScorer(100, ScorerConfig(dim=dim, hidden=(16, 12, 6), windows=windows)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.3)
    groups = len(widths)
    pooled = torch.randn(groups, batch, len(windows), dim, generator=generator, dtype=torch.float64)
    targets = [torch.randn(batch, w, dim, generator=generator, dtype=torch.float64) for w in widths]
    node_bias = [torch.randn(batch, w, generator=generator, dtype=torch.float64) for w in widths]
    labels = [(torch.arange(w) == 0).double() for w in widths]
    return model, pooled, targets, node_bias, labels


def autograd_reference(model: TreeScorer, pooled, targets, node_bias, labels):
    model.zero_grad()
    leaves = [pooled.clone().requires_grad_(), *(t.clone().requires_grad_() for t in targets),
              *(b.clone().requires_grad_() for b in node_bias)]
    v = len(targets)
    logits = model.tower_logits(leaves[0], leaves[1:1 + v], leaves[1 + v:])
    loss = sum(F.binary_cross_entropy_with_logits(lg, y.expand_as(lg), reduction="sum")
               for lg, y in zip(logits, labels, strict=True))
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("widths", [[40], [2, 3, 5, 9, 17], [1, 2, 30]])
@pytest.mark.parametrize("concat_width", [0, 8, 1000])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernel_equals_autograd(widths: list[int], concat_width: int, threads: int) -> None:
    model, pooled, targets, node_bias, labels = problem(widths)
    loss, (g_pooled, *g_rest) = autograd_reference(model, pooled, targets, node_bias, labels)
    weights = TowerWeights.of(model.first, model.rest, pooled.shape[2], pooled.shape[3])
    grads = tower_loss_and_grads(weights, pooled, targets, node_bias, labels, chunk=8, threads=threads,
                                 concat_width=concat_width)
    v = len(widths)
    torch.testing.assert_close(grads.loss, loss, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(grads.pooled, g_pooled, rtol=1e-10, atol=1e-12)
    for mine, ref in zip(grads.targets + grads.node_bias, g_rest[:v] + g_rest[v:], strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)
    modules = list(model.rest)
    expected = [model.first.weight.grad, model.first.bias.grad, modules[0].weight.grad,
                modules[-1].weight.grad.reshape(-1), modules[-1].bias.grad]
    got = [grads.first, grads.b1, grads.slopes[0], grads.out_w, grads.out_b]
    for i, (gw, gb) in enumerate(grads.hidden):
        expected += [modules[1 + 2 * i].weight.grad, modules[1 + 2 * i].bias.grad, modules[2 + 2 * i].weight.grad]
        got += [gw, gb, grads.slopes[1 + i]]
    for mine, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


def test_two_threads_are_deterministic_and_match_one() -> None:
    model, pooled, targets, node_bias, labels = problem([3, 11, 50], batch=64)
    model = model.float()
    pooled, targets = pooled.float(), [t.float() for t in targets]
    node_bias, labels = [b.float() for b in node_bias], [y.float() for y in labels]
    weights = TowerWeights.of(model.first, model.rest, pooled.shape[2], pooled.shape[3])
    runs = [tower_loss_and_grads(weights, pooled, targets, node_bias, labels, chunk=8, threads=t) for t in (2, 2, 1)]
    assert torch.equal(runs[0].first, runs[1].first) and torch.equal(runs[0].pooled, runs[1].pooled)
    torch.testing.assert_close(runs[0].first, runs[2].first)  # float32: only the summation order differs


def test_mismatched_groups_are_refused() -> None:
    model, pooled, targets, node_bias, labels = problem([3, 4])
    weights = TowerWeights.of(model.first, model.rest, pooled.shape[2], pooled.shape[3])
    with pytest.raises(ValueError, match="2 behaviour mappings but 1 target groups"):
        tower_loss_and_grads(weights, pooled, targets[:1], node_bias[:1], labels[:1])
    with pytest.raises(ValueError, match="group shapes disagree"):
        tower_loss_and_grads(weights, pooled, targets, node_bias, [labels[1], labels[0]])


@pytest.mark.parametrize("widths", [[40], [2, 3, 5, 9, 17]])
def test_forward_only_logits_equal_autograd(widths: list[int]) -> None:
    from trainer.model.tower import tower_logits

    model, pooled, targets, node_bias, _ = problem(widths, batch=70)
    weights = TowerWeights.of(model.first, model.rest, pooled.shape[2], pooled.shape[3])
    with torch.no_grad():
        expected = model.tower_logits(pooled, targets, node_bias)
    for threads in (1, 2):
        got = tower_logits(weights, pooled, targets, node_bias, chunk=16, threads=threads)
        for mine, ref in zip(got, expected, strict=True):
            torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
