"""One training step, end to end, against the textbook: autograd through the scorer's
`score_by_level` on full histories, nn.Embedding sparse gradients, torch Adam + SparseAdam.
The fast path (window bags, the batch's distinct rows, the fused kernel or autograd on pooled
windows, lazy row Adam) must give the same weights after several steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.trainer.data.test_data import tiny_interactions
from trainer.data.split import make_samples, split_users
from trainer.fit.sampler import LayerwiseSampler, UniformItemSampler
from trainer.fit.step import ScorerStep, TrainConfig, make_builder
from trainer.model.row_adam import RowAdam
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import random_tree

CONFIG = dict(dim=6, hidden=(12, 8, 4), windows=((0, 1), (0, 5), (0, 69)), max_history=10)


def textbook_steps(model: TreeScorer, samples, sampler, tree, hierarchical: bool, batches, seed: int, lr: float):
    """Plain autograd on the module: what training did before the fast path."""
    tables = [model.embedding.weight, model.bias.weight]
    dense = torch.optim.Adam([p for p in model.parameters() if all(p is not t for t in tables)], lr=lr)
    sparse = torch.optim.SparseAdam(tables, lr=lr)
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(sampler.label).double()
    for index in batches:
        nodes = torch.from_numpy(sampler.sample(samples.targets[index], rng))
        history = samples.histories(index)
        if hierarchical:
            slices = sampler.level_slices()
            mapped = torch.from_numpy(np.stack([tree.ancestor_ids(history, level) for level in slices]))
            logits = model.score_by_level(mapped, nodes, list(slices.values()))
        else:
            logits = model(torch.from_numpy(history.astype(np.int64)), nodes)
        loss = F.binary_cross_entropy_with_logits(logits, label.expand_as(logits))
        dense.zero_grad()
        sparse.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()


@pytest.mark.parametrize(("hierarchical", "kernel", "attention"), [
    (False, "fused", False), (True, "fused", False), (False, "autograd", False), (True, "autograd", False),
    (True, "autograd", True),
])
def test_fast_step_equals_the_textbook(hierarchical: bool, kernel: str, attention: bool) -> None:
    _, data = tiny_interactions(n_users=40)
    samples = make_samples(data, split_users(data.n_users, 0, 0.0, 0.2).train, max_history=10)
    tree = random_tree(data.n_items, seed=1)
    sampler = LayerwiseSampler.create(tree)
    torch.manual_seed(0)
    reference = TreeScorer(tree.n_rows, ScorerConfig(**CONFIG, hierarchical=hierarchical, attention=attention),
                           sparse=True).double()
    with torch.no_grad():
        reference.bias.weight[:-1].normal_(0, 0.1)
    fast = TreeScorer(tree.n_rows, reference.config, sparse=False).double()
    fast.load_state_dict(reference.state_dict())
    batches = [np.arange(i, i + 16) % len(samples) for i in range(0, 64, 16)]
    textbook_steps(reference, samples, sampler, tree, hierarchical, batches, seed=7, lr=0.01)
    step = ScorerStep(fast, TrainConfig(lr=0.01, kernel=kernel, threads=2))
    builder = make_builder(fast, samples, sampler, tree, hierarchical)
    rng = np.random.default_rng(7)
    for index in batches:
        step(builder(index, rng))
    for (name, mine), theirs in zip(fast.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11, msg=name)


def test_dnn_uniform_samples_train_through_the_same_step() -> None:
    _, data = tiny_interactions(n_users=40)
    samples = make_samples(data, split_users(data.n_users, 0, 0.0, 0.2).train, max_history=10)
    sampler = UniformItemSampler(data.n_items, 7)
    torch.manual_seed(0)
    reference = TreeScorer(data.n_items, ScorerConfig(**CONFIG), sparse=True).double()
    fast = TreeScorer(data.n_items, reference.config).double()
    fast.load_state_dict(reference.state_dict())
    batches = [np.arange(i, i + 16) for i in range(0, 48, 16)]
    textbook_steps(reference, samples, sampler, None, False, batches, seed=2, lr=0.01)
    step, builder, rng = ScorerStep(fast, TrainConfig(lr=0.01)), make_builder(fast, samples, sampler, None, False), \
        np.random.default_rng(2)
    for index in batches:
        step(builder(index, rng))
    for mine, theirs in zip(fast.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11)


def test_row_adam_equals_sparse_adam() -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    reference = torch.nn.Parameter(table.clone())
    sparse = torch.optim.SparseAdam([reference], lr=0.05)
    mine = table.clone()
    row_adam = RowAdam([mine], lr=0.05)
    for step in range(6):
        rows = torch.unique(torch.randint(0, 50, (12,), generator=generator))
        grad = torch.randn(len(rows), 3, generator=generator, dtype=torch.float64)
        reference.grad = torch.sparse_coo_tensor(rows[None], grad, (50, 3), check_invariants=True)
        sparse.step()
        row_adam.step(rows, [grad])
        torch.testing.assert_close(mine, reference.detach(), msg=f"step {step}")


@pytest.mark.parametrize(("device_bf16", "precision", "hierarchical", "expected"), [
    (False, "auto", False, "fused"), (False, "auto", True, "fused"),
    (True, "auto", False, "autograd"), (True, "auto", True, "fused"),  # as measured on a bf16 CPU
    (True, "fp32", False, "fused"), (False, "bf16", True, "autograd"),
])
def test_auto_kernel_follows_the_measured_choice(monkeypatch, device_bf16: bool, precision: str,
                                                 hierarchical: bool, expected: str) -> None:
    """`kernel=auto` on a CPU: fused, except the plain tower where the CPU has bf16 units (and
    the precision allows it); an explicit bf16 always means autograd."""
    from trainer.fit import step as step_module

    monkeypatch.setattr(step_module, "resolve_precision",
                        lambda p, d: torch.bfloat16 if p == "bf16" or (p == "auto" and device_bf16) else None)
    model = TreeScorer(20, ScorerConfig(hierarchical=hierarchical, **CONFIG))
    config = TrainConfig(precision=precision)
    assert step_module.resolve_kernel(config, model) == expected
    step = ScorerStep(model, config)
    assert step.kernel == expected
    assert (step.autocast is not None) == (expected == "autograd")
