"""log p(node | user) for many (sample, node) pairs with the model fixed: tree learning's cost.

Algorithm 2 scores every training sample (capped per item) against every node of its
candidate subtree, and the guard scores every sample's path under two trees: millions of
(sample, node) pairs per step, forward only. `PairScorer` runs them through the training
kernel's forward pass (`trainer.model.tower.tower_logits`: user state once per sample and mapping,
chunks that stay in cache, the narrow/wide first-layer forms) on window bags pooled by
`embedding_bag`, instead of the module's generic `user_state` + `score`.

Scores are grouped by level: with the hierarchical representation each level is its own
behaviour mapping (JTM 2.3); without it all levels share one user state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from service.core.tree import Tree
from trainer.fit.batches import window_bags, window_mask
from trainer.model.scorer import TreeScorer
from trainer.model.tower import TowerWeights, tower_logits


class PairScorer:
    """Scores for a fixed model (read once: do not train it while a scorer is in use)."""

    def __init__(self, model: TreeScorer, feature_tree: Tree | None, hierarchical: bool) -> None:
        if hierarchical and feature_tree is None:
            raise ValueError("the hierarchical representation needs the tree the model was trained with")
        self.model = model
        self.tree = feature_tree
        self.hierarchical = hierarchical
        self.device = model.embedding.weight.device
        self.table = model.embedding.weight.detach()
        self.bias = model.bias.weight.detach()[:, 0]
        self.weights = TowerWeights.of(model.first, model.rest, model.pool.n_windows, model.config.dim)
        self.mask = window_mask(model.config.windows, model.config.max_history)

    def log_probs(self, history: np.ndarray, nodes: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """history: (B, L) item ids, most recent first, -1 padded; nodes: level -> (B, w) node
        rows (-1: no node, scored as the zero padding row). Returns level -> (B, w) float32
        log-sigmoid scores."""
        levels = list(nodes)
        if self.model.config.attention:
            return self._module_log_probs(history, nodes)
        if self.hierarchical:
            assert self.tree is not None
            ids_at = self.tree.ancestor_ids_by_level(history)
            mapped = np.stack([ids_at(level) for level in levels])  # (V, B, L)
            groups = [nodes[level] for level in levels]
        else:
            mapped = history[None].astype(np.int64)
            groups = [np.concatenate([nodes[level] for level in levels], axis=1)]
        bags = window_bags(mapped, history >= 0, self.mask)
        device = self.device
        pooled = F.embedding_bag(torch.from_numpy(bags.ids).to(device), self.table,
                                 torch.from_numpy(bags.offsets).to(device), mode="sum",
                                 per_sample_weights=torch.from_numpy(bags.weights).to(device, self.table.dtype))
        pooled = pooled.view(len(mapped), len(history), self.mask.shape[0], -1)
        pad = self.model.n_rows
        rows = [torch.from_numpy(np.where(g >= 0, g, pad).astype(np.int64)).to(device) for g in groups]
        logits = tower_logits(self.weights, pooled, [self.table[r] for r in rows], [self.bias[r] for r in rows])
        scores = [F.logsigmoid(lg).float().cpu().numpy() for lg in logits]
        if self.hierarchical:
            return dict(zip(levels, scores, strict=True))
        widths = np.cumsum([0, *(nodes[level].shape[1] for level in levels)])
        return {level: scores[0][:, widths[i]:widths[i + 1]] for i, level in enumerate(levels)}

    @torch.no_grad()
    def _module_log_probs(self, history: np.ndarray, nodes: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Through the module (target attention has no user/node split for the kernel)."""
        def ids(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.device)

        out = {}
        state = None if self.hierarchical else self.model.user_state(ids(history))
        for level, level_nodes in nodes.items():
            if self.hierarchical:
                assert self.tree is not None
                state = self.model.user_state(ids(self.tree.ancestor_ids(history, level)))
            out[level] = F.logsigmoid(self.model.score(state, ids(level_nodes))).float().cpu().numpy()
        return out
