"""YouTube product-DNN (Covington et al. 2016): the paper's vector-kNN baseline.

User tower: behaviours pooled in time windows -> MLP -> user vector u (d). Item side: an output
embedding e_j and bias b_j per item. Preference = u . e_j + b_j, an inner product, so retrieval is
an exact top-M by one matrix product. Trained with sampled softmax: each batch shares
`negatives` uniformly drawn items; accidental hits are masked. Uniform sampling makes the
log-Q correction a constant, which softmax ignores.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainer.baselines.ranking import rank_by_scores
from trainer.config import MAX_HISTORY, option
from trainer.data.split import PAD, EvalSet
from trainer.evaluate.protocol import evaluate
from trainer.fit.context import FitContext
from trainer.fit.epochs import TrainHistory, autograd_step, seed_everything, train_epochs
from trainer.model.layers import WINDOW_PRESETS, WindowPooling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class YouTubeConfig:
    # The flags the tree methods declare (--dim, --batch-size, --lr, --epochs, --max-history) set
    # these too; these are YouTube-DNN's own defaults.
    dim: int = option(32, None)
    hidden: int = 128
    negatives: int = 1000  # shared per batch; all other items when the corpus is smaller
    batch_size: int = option(256, None)
    lr: float = option(1e-3, None)
    epochs: int = option(20, None)  # upper bound; validation recall picks the epoch
    patience: int = 2
    windows: tuple[tuple[int, int], ...] = WINDOW_PRESETS["probe"]
    max_history: int = option(MAX_HISTORY, None)


class YouTubeNet(nn.Module):
    def __init__(self, n_items: int, config: YouTubeConfig) -> None:
        super().__init__()
        self.n_items = n_items
        d = config.dim
        self.input_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)  # last row: PAD
        self.pool = WindowPooling(config.windows, config.max_history)
        self.user_tower = nn.Sequential(
            nn.Linear(self.pool.n_windows * d, config.hidden), nn.PReLU(), nn.Linear(config.hidden, d)
        )
        self.output_embedding = nn.Embedding(n_items, d)
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.input_embedding.weight, std=0.05)
        nn.init.normal_(self.output_embedding.weight, std=0.05)
        with torch.no_grad():
            self.input_embedding.weight[n_items].zero_()

    def user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """history: (B, L) item ids with PAD -> (B, d)."""
        mask = history != PAD
        ids = torch.where(mask, history, torch.full_like(history, self.n_items))
        pooled = self.pool(self.input_embedding(ids), mask)  # (B, W, d)
        return self.user_tower(pooled.flatten(1))

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B, d) x items (..., ) -> logits over the given items (B, n) for shared items."""
        return users @ self.output_embedding(items).T + self.output_bias[items]


class YouTubeDNN:
    name = "youtube"

    def __init__(self, config: YouTubeConfig | None = None) -> None:
        self.config = config or YouTubeConfig()
        self.net: YouTubeNet | None = None
        self.history: TrainHistory | None = None

    def fit(self, ctx: FitContext) -> None:
        cfg = self.config
        seed_everything(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        n_items = ctx.data.n_items
        net = YouTubeNet(n_items, cfg)
        self.net = net
        samples = ctx.samples
        targets_all = torch.from_numpy(samples.targets.astype(np.int64))
        n_neg = min(cfg.negatives, n_items - 1)
        full_softmax = n_neg >= n_items - 1

        def loss_of(batch: np.ndarray) -> torch.Tensor:
            history = torch.from_numpy(samples.histories(batch).astype(np.int64))
            targets = targets_all[batch]
            users = net.user_vectors(history)
            if full_softmax:
                return F.cross_entropy(users @ net.output_embedding.weight.T + net.output_bias, targets)
            negatives = torch.from_numpy(rng.integers(0, n_items, size=n_neg))
            positive = (users * net.output_embedding(targets)).sum(-1) + net.output_bias[targets]
            negative = net.logits(users, negatives)  # (B, n_neg)
            negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
            logits = torch.cat([positive[:, None], negative], dim=1)
            return F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))

        def validate() -> float:
            return evaluate(self, ctx.valid, ctx.m, ctx.exclude_seen, fidelity=False).metrics.means()["recall"]

        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        self.history = train_epochs(
            net, autograd_step(loss_of, optimizer), len(samples), cfg.batch_size, cfg.epochs, rng,
            validate=validate if len(ctx.valid) else None, patience=cfg.patience, description="youtube",
        )

    @torch.no_grad()
    def recommend(self, eval_set: EvalSet, m: int, exclude_seen: bool) -> np.ndarray:
        assert self.net is not None, "fit first"
        net = self.net.eval()
        items = net.output_embedding.weight
        bias = net.output_bias

        def scores(users: slice) -> np.ndarray:
            history = torch.from_numpy(eval_set.subset(np.arange(users.start, users.stop))
                                       .histories(self.config.max_history).astype(np.int64))
            return (net.user_vectors(history) @ items.T + bias).numpy()

        return rank_by_scores(scores, eval_set, m, exclude_seen)

    def describe(self) -> dict:
        return {"config": asdict(self.config), "training": self.history.to_json() if self.history else None}
