"""One training step, end to end, against the textbook: autograd through the scorer's
`score_by_level` on full histories, nn.Embedding sparse gradients, torch Adam + SparseAdam.
The fast path (window bags, the batch's distinct rows, the fused kernel or autograd on pooled
windows, lazy row Adam) must give the same weights after several steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from tests.trainer.data.test_data import tiny_interactions
from trainer.data.split import make_samples, split_users
from trainer.fit.sampler import LayerwiseSampler, UniformItemSampler
from trainer.fit.schedule import LrSchedule
from trainer.fit.step import ScorerStep, TrainConfig, make_builder
from trainer.model.row_adam import RowAdam
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import random_tree

CONFIG = dict(dim=6, hidden=(12, 8, 4), windows=((0, 1), (0, 5), (0, 69)), max_history=10)


def textbook_steps(model: TreeScorer, samples, sampler, tree, hierarchical: bool, batches, seed: int, lr: float,
                   lr_factor=None):
    """Plain autograd on the module: what training did before the fast path (`lr_factor(step)`:
    torch's LambdaLR on both optimisers)."""
    tables = [model.embedding.weight, model.bias.weight]
    dense = torch.optim.Adam([p for p in model.parameters() if all(p is not t for t in tables)], lr=lr)
    sparse = torch.optim.SparseAdam(tables, lr=lr)
    schedulers = [] if lr_factor is None else [LambdaLR(o, lr_factor) for o in (dense, sparse)]
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
        for scheduler in schedulers:
            scheduler.step()


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


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_learning_rate_schedule_is_torchs_lambda_lr(schedule: str) -> None:
    """Warm-up and decay move both optimisers' rates step by step as torch's LambdaLR would."""
    _, data = tiny_interactions(n_users=40)
    samples = make_samples(data, split_users(data.n_users, 0, 0.0, 0.2).train, max_history=10)
    tree = random_tree(data.n_items, seed=1)
    sampler = LayerwiseSampler.create(tree)
    torch.manual_seed(0)
    reference = TreeScorer(tree.n_rows, ScorerConfig(**CONFIG, hierarchical=True), sparse=True).double()
    fast = TreeScorer(tree.n_rows, reference.config, sparse=False).double()
    fast.load_state_dict(reference.state_dict())
    batches = [np.arange(i, i + 16) % len(samples) for i in range(0, 96, 16)]
    config = TrainConfig(lr=0.02, epochs=2, lr_schedule=schedule, lr_warmup=2, lr_floor=0.1, threads=2)
    step = ScorerStep(fast, config)
    step.plan(steps_per_epoch=3)
    expected = LrSchedule(0.02, schedule, total_steps=6, warmup_steps=2, floor=0.1)
    textbook_steps(reference, samples, sampler, tree, True, batches, seed=7, lr=0.02,
                   lr_factor=lambda k: expected(k) / 0.02)
    builder = make_builder(fast, samples, sampler, tree, True)
    rng = np.random.default_rng(7)
    for index in batches:
        step(builder(index, rng))
    assert step.row_optimizers[0].lr == pytest.approx(0.002 if schedule != "constant" else 0.02)
    for (name, mine), theirs in zip(fast.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11, msg=name)


def test_lr_schedule_shapes() -> None:
    """Warm-up rises to the base rate; cosine passes half way at mid-run; both decays end at the floor."""
    cosine = LrSchedule(1.0, "cosine", total_steps=12, warmup_steps=2, floor=0.0)
    assert [cosine(k) for k in range(2)] == [0.5, 1.0]
    assert cosine(2) == 1.0 and cosine(11) == pytest.approx(0.0, abs=1e-12)
    assert cosine(2 + 4.5) == pytest.approx(0.5)  # mid-way through the 9 decaying steps
    linear = LrSchedule(2.0, "linear", total_steps=11, warmup_steps=0, floor=0.25)
    assert linear(0) == 2.0 and linear(5) == pytest.approx(2.0 * (0.25 + 0.75 * 0.5)) and linear(10) == 0.5
    assert linear(50) == 0.5  # past the budget it stays at the floor
    assert LrSchedule(3e-3).__call__(10_000) == 3e-3
    with pytest.raises(ValueError, match="lr schedule"):
        LrSchedule(1.0, "step")


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


def test_training_draws_a_new_order_of_shuffled_samples_every_epoch(monkeypatch) -> None:
    """fit_scorer reshuffles "shuffled" samples before each epoch, from its own stream (so the
    batches' order and negatives come from the training seed as before)."""
    from trainer.data.split import SampleSet
    from trainer.fit.epochs import fit_scorer

    _, data = tiny_interactions(n_users=40)
    samples = make_samples(data, split_users(data.n_users, 0, 0.0, 0.2).train, max_history=10, history="shuffled")
    tree = random_tree(data.n_items, seed=1)
    orders = []
    original = SampleSet.reshuffle

    def recording(self, rng):
        original(self, rng)
        orders.append(self.ordered_items.copy())

    monkeypatch.setattr(SampleSet, "reshuffle", recording)
    model = TreeScorer(tree.n_rows, ScorerConfig(**CONFIG))
    fit_scorer(model, samples, LayerwiseSampler.create(tree), tree, False, TrainConfig(epochs=3, threads=1), seed=0,
               validate=None, description="test")
    assert len(orders) == 3
    assert not np.array_equal(orders[0], data.item) and not np.array_equal(orders[0], orders[1])
