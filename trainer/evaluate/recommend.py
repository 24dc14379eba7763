"""PyTorch scores for the shared numpy beam search: the offline side of `service.core.beam`.

`TorchScoreFn` binds a trained scorer to a batch of users and answers
``score(level, node_ids) -> (U, C)`` as `beam_search` and `brute_force` expect. The per-user,
per-level state (a_u, M_u) is computed once per level and cached, exactly as the service does
with ONNX, so the offline evaluator measures what production serves.
"""

from __future__ import annotations

import numpy as np
import torch

from service.core.beam import SearchResult, beam_search, brute_force
from service.core.filters import exclude_items
from service.core.tree import Tree
from trainer.data.split import EvalSet
from trainer.model.scorer import TreeScorer, UserState


class TorchScoreFn:
    def __init__(self, model: TreeScorer, histories: np.ndarray, tree: Tree | None, hierarchical: bool) -> None:
        """histories: (U, L) item ids, most recent first, -1 padded."""
        if hierarchical and tree is None:
            raise ValueError("the hierarchical representation needs a tree")
        self.model = model
        self.histories = histories
        self.tree = tree
        self.hierarchical = hierarchical
        self._states: dict[int, UserState] = {}
        self.device = next(model.parameters()).device

    def state(self, level: int) -> UserState:
        key = level if self.hierarchical else -1
        state = self._states.get(key)
        if state is None:
            history = self.histories
            if self.hierarchical:
                assert self.tree is not None
                history = self.tree.ancestor_ids(history, level)
            with torch.no_grad():
                state = self.model.user_state(_tensor(history, self.device))
            self._states[key] = state
        return state

    def __call__(self, level: int, node_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.model.score(self.state(level), _tensor(node_ids, self.device))
        return logits.float().cpu().numpy()


def _tensor(ids: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(device)


def retrieve(
    model: TreeScorer,
    histories: np.ndarray,
    k: int,
    tree: Tree | None,
    hierarchical: bool,
    beam: int | None,
    seen: list[np.ndarray] | None = None,
    batch: int = 256,
) -> np.ndarray:
    """(U, k) item ids: beam search when `beam` is given (needs a tree), else brute force."""
    model.eval()
    out = np.full((len(histories), k), -1, dtype=np.int64)
    n_items = tree.n_items if tree is not None else model.n_rows
    for start in range(0, len(histories), batch):
        stop = min(start + batch, len(histories))
        score = TorchScoreFn(model, histories[start:stop], tree, hierarchical)
        allowed = None if seen is None else exclude_items(seen[start:stop])
        result: SearchResult
        if beam is not None:
            assert tree is not None
            result = beam_search(tree, score, stop - start, k, beam, allowed)
        else:
            leaf_level = tree.depth if tree is not None else 0
            result = brute_force(n_items, score, stop - start, k, leaf_level, allowed)
        out[start:stop] = result.items
    return out



def recommend(model: TreeScorer, tree: Tree | None, eval_set: EvalSet, m: int, exclude_seen: bool,
              beam: int | None) -> np.ndarray:
    """(len(eval_set), m) item ids, best first: beam search of `beam` through `tree`, or every
    item scored when `beam` is None (DNN, which has no tree, and the brute-force reference)."""
    histories = eval_set.histories(model.config.max_history)
    seen = np.split(eval_set.feature_items, eval_set.feature_offsets[1:-1]) if exclude_seen else None
    return retrieve(model, histories, m, tree, model.config.hierarchical, beam, seen)
