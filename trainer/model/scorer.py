"""The user-node scorer: TDM's DNN, shared by DNN, TDM and the JTM variants.

Inputs: the user's behaviours (embedding rows, most recent first, -1 padded) pooled in time
windows u_1..u_W (each d), and the target node's embedding t (d). The MLP sees

    x = [u_1 .. u_W, t, u_1 * t .. u_W * t]          ((2W + 1) d)
    logit = MLP_{H1-H2-H3-1, PReLU}(x) + bias[target]

Serving cost is dominated by the first layer, and it splits into a user part and a node part:

    W1 x + b1 = (A u + b1) + (B + sum_w C_w diag(u_w)) t = a_u + M_u t

where a_u (H1) and M_u (H1 x d) depend only on the user (and, with the hierarchical
representation, on the level), so they are computed once per user and level and reused for
every candidate node: per candidate the first layer costs H1 x d instead of H1 x (2W + 1) d.
`user_state` computes (a_u, M_u); `score` applies them to candidate nodes. `reference_logits`
is the plain concatenation, kept as the independent reference the tests compare against
(and used for hierarchical training, where it is the faster path).

Switches: `hierarchical` (JTM 2.3) is applied by the caller, which maps behaviours to their
level-l ancestors before `user_state` (the model only embeds rows); `attention` replaces mean
pooling by target attention inside each window (DIN-like). Attention depends on the target, so
it cannot use the user/node split and costs more per candidate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from trainer.config import MAX_HISTORY, option
from trainer.model.layers import WINDOW_PRESETS, PReLU, WindowPooling


@dataclass(frozen=True)
class ScorerConfig:
    dim: int = option(32, "embedding size")  # 32 worked in the project's probe
    hidden: tuple[int, ...] = (128, 64, 24)  # TDM's MLP
    windows: tuple[tuple[int, int], ...] = WINDOW_PRESETS["probe"]
    max_history: int = option(MAX_HISTORY, None)  # set with the protocol's --max-history
    hierarchical: bool = False  # JTM's hierarchical user representation
    attention: bool = False  # target attention in each window instead of the mean

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ScorerConfig:
        return cls(
            dim=int(data["dim"]), hidden=tuple(int(h) for h in data["hidden"]),
            windows=tuple((int(a), int(b)) for a, b in data["windows"]),
            max_history=int(data["max_history"]), hierarchical=bool(data["hierarchical"]),
            attention=bool(data.get("attention", False)),
        )


@dataclass
class UserState:
    """What `score` needs about a batch of users at one level.

    Plain: a (B, H1) and m (B, H1, d). Attention: the embedded history (B, L, d) and mask (B, L).
    """

    a: torch.Tensor | None = None
    m: torch.Tensor | None = None
    history: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


class TreeScorer(nn.Module):
    """p(node | user) as a logit. `n_rows` embedding rows: items, then internal tree nodes."""

    def __init__(self, n_rows: int, config: ScorerConfig, sparse: bool = False) -> None:
        super().__init__()
        if not config.hidden:
            raise ValueError("the scorer needs at least one hidden layer")
        self.config = config
        self.n_rows = n_rows
        d, n_windows = config.dim, len(config.windows)
        # Training never asks autograd for these tables' gradients (trainer.train computes the
        # batch's rows directly and updates them with lazy Adam); `sparse` only matters to code
        # that backpropagates through the module itself (the tests' textbook reference).
        self.embedding = nn.Embedding(n_rows + 1, d, padding_idx=n_rows, sparse=sparse)  # last row: padding
        self.bias = nn.Embedding(n_rows + 1, 1, padding_idx=n_rows, sparse=sparse)
        self.pool = WindowPooling(config.windows, config.max_history)
        self.first = nn.Linear((2 * n_windows + 1) * d, config.hidden[0])
        layers: list[nn.Module] = [PReLU(config.hidden[0])]
        for width_in, width_out in zip(config.hidden[:-1], config.hidden[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), PReLU(width_out)]
        layers.append(nn.Linear(config.hidden[-1], 1))
        self.rest = nn.Sequential(*layers)
        if config.attention:
            self.attention_query = nn.Linear(d, d, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.05)
        nn.init.zeros_(self.bias.weight)
        with torch.no_grad():
            self.embedding.weight[n_rows].zero_()

    # ----------------------------------------------------------------- pieces of the first layer

    @property
    def n_windows(self) -> int:
        return self.pool.n_windows

    def first_layer_blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split W1 into A (H1, W d) for the pooled windows, B (H1, d) for the target and
        C (H1, W, d) for the window-target products."""
        d, w = self.config.dim, self.n_windows
        weight = self.first.weight
        a = weight[:, : w * d]
        b = weight[:, w * d : (w + 1) * d]
        c = weight[:, (w + 1) * d :].reshape(-1, w, d)
        return a, b, c

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Map -1 (no behaviour / no candidate) to the zero padding row."""
        return torch.where(ids >= 0, ids, torch.full_like(ids, self.n_rows))

    def embed_history(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = history >= 0
        return self.embedding(self.rows(history)), mask

    # ----------------------------------------------------------------- user side, node side

    def user_state(self, history: torch.Tensor) -> UserState:
        """history: (B, L) embedding rows (-1 padded) -> the reusable per-user state."""
        embedded, mask = self.embed_history(history)
        if self.config.attention:
            return UserState(history=embedded, mask=mask)
        pooled = self.pool(embedded, mask)  # (B, W, d)
        a_w, b_w, c_w = self.first_layer_blocks()
        a = pooled.flatten(1) @ a_w.T + self.first.bias  # (B, H1)
        m = (pooled[:, None] * c_w[None]).sum(2) + b_w  # (B, H1, W, d) summed over W -> (B, H1, d)
        return UserState(a=a, m=m)

    def score(self, state: UserState, nodes: torch.Tensor) -> torch.Tensor:
        """nodes: (B, C) embedding rows (-1 = none) -> (B, C) logits."""
        rows = self.rows(nodes)
        target = self.embedding(rows)  # (B, C, d)
        if self.config.attention:
            hidden = self.first(self._attention_input(state, target))
        else:
            assert state.a is not None and state.m is not None
            # a_u + M_u t for every candidate in one fused batched matmul: (B, C, H1).
            hidden = torch.baddbmm(state.a[:, None, :], target, state.m.transpose(1, 2))
        return self._mlp(hidden) + self.bias(rows).squeeze(-1)

    def _mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layers after the first, on (..., H1) -> (...). Run on a 2-D view: onnxruntime
        then fuses each MatMul + Add into one Gemm."""
        return self.rest(hidden.reshape(-1, hidden.shape[-1])).reshape(hidden.shape[:-1])

    def forward(self, history: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.score(self.user_state(history), nodes)

    def score_by_level(self, histories: torch.Tensor, nodes: torch.Tensor, slices: list[slice]) -> torch.Tensor:
        """Logits when each group of columns has its own behaviour mapping (hierarchical).

        histories: (V, B, L) rows, one mapping per column group; nodes: (B, C); slices[v] are
        the columns scored with histories[v]. Training uses this path. The user/node split is
        applied per group: one embedding lookup for all V mappings and one for all targets,
        (a_v, M_v) for every group at once, then per group a_v + M_v t over its columns; the
        first layer then costs H1 x d per (sample, node) instead of H1 x (2W + 1) d. (Building
        M with a broadcast product materialised (V, B, H1, W, d) and was slower than the
        concatenation; the batched contraction below does not.)
        """
        if self.config.attention:
            group = torch.zeros(nodes.shape[1], dtype=torch.long, device=nodes.device)
            for v, cols in enumerate(slices):
                group[cols] = v
            return self.concat_logits(histories, nodes, group)
        groups, batch, length = histories.shape
        embedded, mask = self.embed_history(histories.reshape(groups * batch, length))
        pooled = self.pool(embedded, mask)  # (V B, W, d)
        a_w, b_w, c_w = self.first_layer_blocks()
        a = (pooled.flatten(1) @ a_w.T + self.first.bias).reshape(groups, batch, -1)  # (V, B, H1)
        # M[n, h, k] = sum_w pooled[n, w, k] C[h, w, k] + B[h, k]: d batched (V B, W) @ (W, H1),
        # kept transposed and contiguous, (V B, d, H1), the layout baddbmm takes below.
        m_t = torch.bmm(pooled.permute(2, 0, 1), c_w.permute(2, 1, 0)).transpose(0, 1).contiguous() + b_w.T
        m_t = m_t.reshape(groups, batch, *m_t.shape[1:])  # (V, B, d, H1)
        rows = self.rows(nodes)
        target = self.embedding(rows)  # (B, C, d)
        # unbind/split, not a[v] / target[:, cols]: their backward is one stack / one cat, where
        # indexing would zero-fill a full-size gradient per group.
        widths = [cols.stop - cols.start for cols in slices]
        assert slices[0].start == 0 and all(p.stop == n.start for p, n in zip(slices, slices[1:], strict=False))
        hidden = torch.cat([torch.baddbmm(a_v[:, None, :], t_v, m_v)
                            for a_v, m_v, t_v in zip(a.unbind(0), m_t.unbind(0), target.split(widths, dim=1),
                                                     strict=True)], dim=1)  # (B, C, H1)
        return self._mlp(hidden) + self.bias(rows).squeeze(-1)

    def tower_logits(self, pooled: torch.Tensor, targets: list[torch.Tensor],
                     node_bias: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits from already pooled windows, through autograd: the training path on CUDA (where
        autocast handles bf16) and the reference `trainer.model.tower` is tested against.

        pooled: (V, B, W, d) per behaviour mapping; targets[v]: (B, w_v, d) embeddings of the
        nodes mapping v scores; node_bias[v]: (B, w_v). Returns per group (B, w_v) logits.
        """
        groups, batch, n_windows, dim = pooled.shape
        a_w, b_w, c_w = self.first_layer_blocks()
        flat = pooled.reshape(groups * batch, n_windows, dim)
        a = (flat.flatten(1) @ a_w.T + self.first.bias).view(groups, batch, -1)  # (V, B, H1)
        m_t = torch.bmm(flat.permute(2, 0, 1), c_w.permute(2, 1, 0)).transpose(0, 1) + b_w.T  # (V B, d, H1)
        m_t = m_t.reshape(groups, batch, dim, -1)
        widths = [t.shape[1] for t in targets]
        hidden = torch.cat([torch.baddbmm(a[v][:, None, :], targets[v], m_t[v]) for v in range(groups)], dim=1)
        logits = self._mlp(hidden)  # (B, C)
        return [part + bias for part, bias in zip(logits.split(widths, dim=1), node_bias, strict=True)]

    def concat_logits(self, histories: torch.Tensor, nodes: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Logits by explicit concatenation [u_1..u_W, t, u_1*t..u_W*t] (no user/node split).

        histories: (V, B, L) rows; nodes: (B, C); group: (C,) which history mapping each column
        uses. This is also the independent reference the split (`score`) is tested against.
        """
        groups, batch, length = histories.shape
        embedded, mask = self.embed_history(histories.reshape(groups * batch, length))
        rows = self.rows(nodes)
        target = self.embedding(rows)  # (B, C, d)
        if self.config.attention:
            parts = []
            for v in range(groups):
                state = UserState(history=embedded.reshape(groups, batch, length, -1)[v],
                                  mask=mask.reshape(groups, batch, length)[v])
                parts.append(self._attention_input(state, target))
            inputs = torch.stack(parts)  # (V, B, C, F)
            x = inputs[group, :, torch.arange(nodes.shape[1])].transpose(0, 1)
        else:
            pooled = self.pool(embedded, mask).reshape(groups, batch, self.n_windows, -1)  # (V, B, W, d)
            per_column = pooled[group].transpose(0, 1)  # (B, C, W, d)
            x = torch.cat([per_column.flatten(2), target, (per_column * target[:, :, None]).flatten(2)], dim=-1)
        return self.rest(self.first(x)).squeeze(-1) + self.bias(rows).squeeze(-1)

    def reference_logits(self, history: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """`concat_logits` with one behaviour mapping for every column."""
        group = torch.zeros(nodes.shape[1], dtype=torch.long, device=nodes.device)
        return self.concat_logits(history[None], nodes, group)

    def _attention_input(self, state: UserState, target: torch.Tensor) -> torch.Tensor:
        """Per-target window pooling with attention weights softmax(e_l . Q t / sqrt(d))."""
        assert state.history is not None and state.mask is not None
        query = self.attention_query(target)  # (B, C, d)
        logits = torch.einsum("bld,bcd->bcl", state.history, query) / self.config.dim**0.5
        weights = self.pool.weights  # (W, L) window membership
        member = (weights[None, None] > 0) & state.mask[:, None, None, :]  # (B, 1, W, L)
        scores = logits[:, :, None, :].expand(-1, -1, weights.shape[0], -1)
        scores = scores.masked_fill(~member, float("-inf"))  # (B, C, W, L)
        attn = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        pooled = torch.einsum("bcwl,bld->bcwd", attn, state.history)  # (B, C, W, d)
        return torch.cat([pooled.flatten(2), target, (pooled * target[:, :, None]).flatten(2)], dim=-1)

    # ----------------------------------------------------------------- persistence

    def checkpoint(self) -> dict:
        """Everything needed to rebuild the model: config as JSON, weights as tensors."""
        return {"format": 1, "n_rows": self.n_rows, "config": json.dumps(self.config.to_json()),
                "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TreeScorer:
        model = cls(int(checkpoint["n_rows"]), ScorerConfig.from_json(json.loads(checkpoint["config"])))
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()
