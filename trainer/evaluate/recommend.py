"""Recommending with a PyTorch scorer through the service's index (`service.core.index`).

`TorchScorer` gives a trained `TreeScorer` the two halves the index asks of any scorer (the
users' state once per level, then every candidate of a level scored against it, as the service
does with ONNX), so the offline evaluator measures exactly the search production serves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from service.core.index import SearchParams, TreeIndex
from service.core.tree import Tree
from trainer.data.split import EvalSet
from trainer.model.scorer import TreeScorer, UserState


class TorchScorer:
    """`service.core.index.UserScorer` over a trained model, in inference mode."""

    def __init__(self, model: TreeScorer) -> None:
        self.model = model
        self.device = next(model.parameters()).device

    def user_states(self, rows: Sequence[np.ndarray]) -> list[UserState]:
        with torch.no_grad():
            return [self.model.user_state(_tensor(r, self.device)) for r in rows]

    def score_state(self, state: UserState, nodes: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.model.score(state, _tensor(nodes, self.device))
        return logits.float().cpu().numpy()


def _tensor(ids: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(device)


def torch_index(model: TreeScorer, tree: Tree | None) -> TreeIndex:
    """The index of a trained model and its tree (no tree: every one of its items is scored)."""
    return TreeIndex(tree, TorchScorer(model), model.config.hierarchical, n_items=model.n_rows)


def retrieve(model: TreeScorer, histories: np.ndarray, k: int, tree: Tree | None, beam: int | None,
             seen: list[np.ndarray] | None = None) -> np.ndarray:
    """(U, k) item ids: beam search of width `beam` (needs a tree), or every item scored when
    `beam` is None; `seen[u]`: items never returned to user u."""
    model.eval()
    return torch_index(model, tree).search(histories, k, SearchParams(beam=beam, exclude=seen)).items


def recommend(model: TreeScorer, tree: Tree | None, eval_set: EvalSet, m: int, exclude_seen: bool,
              beam: int | None) -> np.ndarray:
    """(len(eval_set), m) item ids, best first: beam search of `beam` through `tree`, or every
    item scored when `beam` is None (DNN, which has no tree, and the brute-force reference)."""
    histories = eval_set.histories(model.config.max_history)
    seen = np.split(eval_set.feature_items, eval_set.feature_offsets[1:-1]) if exclude_seen else None
    return retrieve(model, histories, m, tree, beam, seen)
