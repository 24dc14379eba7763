"""The scorer's user/node split equals the plain concatenation; the torch scorer plugs into
the shared beam search; training lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.beam import beam_search, brute_force
from service.core.index import level_scores
from trainer.evaluate.recommend import TorchScorer
from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import random_tree


@pytest.mark.parametrize("windows", [((0, 1), (0, 5), (0, 69)), ((0, 2), (2, 10))])
@pytest.mark.parametrize("attention", [False, True])
def test_split_first_layer_equals_concatenation(windows, attention: bool) -> None:
    torch.manual_seed(0)
    config = ScorerConfig(dim=8, hidden=(16, 8, 4), windows=windows, max_history=12, attention=attention)
    model = TreeScorer(50, config).eval()
    with torch.no_grad():
        model.bias.weight.normal_()  # make every part of the score matter
        model.bias.weight[50].zero_()
    history = torch.randint(-1, 50, (6, 12))
    history[0] = -1  # a user with no behaviour at all
    nodes = torch.randint(-1, 50, (6, 9))
    with torch.no_grad():
        fast = model(history, nodes)
        reference = model.reference_logits(history, nodes)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip() -> None:
    model = TreeScorer(30, ScorerConfig(dim=4, hidden=(8, 4)))
    clone = TreeScorer.from_checkpoint(model.checkpoint())
    history, nodes = torch.randint(-1, 30, (3, 69)), torch.randint(0, 30, (3, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(history, nodes), clone(history, nodes))


@pytest.mark.parametrize("hierarchical", [False, True])
def test_torch_scorer_in_shared_beam_search(hierarchical: bool) -> None:
    torch.manual_seed(1)
    tree = random_tree(200, seed=0)
    model = TreeScorer(tree.n_rows, ScorerConfig(dim=8, hidden=(16, 8), hierarchical=hierarchical)).eval()
    histories = np.random.default_rng(0).integers(-1, 200, size=(4, 69))
    score = level_scores(TorchScorer(model), tree, histories, hierarchical)
    full = beam_search(tree, score, 4, k=15, beam=tree.n_items)
    exact = brute_force(tree.n_items, score, 4, k=15, leaf_level=tree.depth)
    assert np.array_equal(full.items, exact.items)
    # Scores at a level equal a direct model call with that level's behaviour mapping.
    level = tree.depth - 2
    nodes = tree.node_ids(level, np.array([[0, 1, 2]] * 4))
    mapped = tree.ancestor_ids(histories, level) if hierarchical else histories
    with torch.no_grad():
        direct = model(torch.from_numpy(mapped), torch.from_numpy(nodes)).numpy()
    np.testing.assert_allclose(score(level, nodes), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", [False, True])
def test_score_by_level_equals_per_level_calls(attention: bool) -> None:
    torch.manual_seed(2)
    model = TreeScorer(40, ScorerConfig(dim=8, hidden=(16, 8), max_history=10, attention=attention)).eval()
    histories = torch.randint(-1, 40, (3, 5, 10))
    nodes = torch.randint(0, 40, (5, 9))
    slices = [slice(0, 2), slice(2, 5), slice(5, 9)]
    with torch.no_grad():
        together = model.score_by_level(histories, nodes, slices)
        apart = torch.cat([model(histories[v], nodes[:, cols]) for v, cols in enumerate(slices)], dim=1)
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)


def test_score_by_level_gradients_equal_the_concatenation() -> None:
    """Training's split path gives the logits and the gradients of the explicit concatenation."""
    torch.manual_seed(3)
    model = TreeScorer(40, ScorerConfig(dim=8, hidden=(16, 8), max_history=10), sparse=False)
    histories = torch.randint(-1, 40, (3, 5, 10))
    nodes = torch.randint(0, 40, (5, 9))
    slices = [slice(0, 2), slice(2, 5), slice(5, 9)]
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    weights = torch.randn(5, 9)
    grads = []
    for logits in (lambda: model.score_by_level(histories, nodes, slices),
                   lambda: model.concat_logits(histories, nodes, group)):
        model.zero_grad()
        out = logits()
        (out * weights).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], atol=1e-5, rtol=1e-4, msg=name)
