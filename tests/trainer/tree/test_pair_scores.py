"""Tree learning's scores through the kernel equal the module's `user_state` + `score`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from trainer.model.scorer import ScorerConfig, TreeScorer
from trainer.tree.build import random_tree
from trainer.tree.pair_scores import PairScorer


@pytest.mark.parametrize("hierarchical", [False, True])
@pytest.mark.parametrize("attention", [False, True])
def test_pair_scores_equal_the_module(hierarchical: bool, attention: bool) -> None:
    torch.manual_seed(0)
    tree = random_tree(300, seed=2)
    model = TreeScorer(tree.n_rows, ScorerConfig(dim=8, hidden=(16, 8, 4), max_history=12,
                                                 hierarchical=hierarchical, attention=attention)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        model.embedding.weight[-1].zero_()
        model.bias.weight[-1].zero_()
    rng = np.random.default_rng(0)
    history = rng.integers(0, tree.n_items, size=(23, 12))
    history[3, 5:] = -1  # a short history
    history[4] = -1  # none at all
    nodes = {level: tree.node_ids(level, rng.integers(0, tree.level_size(level), size=(23, 1 + level)))
             for level in (1, 4, tree.depth)}
    got = PairScorer(model, tree, hierarchical).log_probs(history, nodes)
    with torch.no_grad():
        for level, level_nodes in nodes.items():
            mapped = tree.ancestor_ids(history, level) if hierarchical else history
            state = model.user_state(torch.from_numpy(mapped.astype(np.int64)))
            expected = F.logsigmoid(model.score(state, torch.from_numpy(level_nodes))).numpy()
            np.testing.assert_allclose(got[level], expected, rtol=1e-5, atol=1e-6)
