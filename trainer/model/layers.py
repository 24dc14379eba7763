"""Building blocks shared by the neural methods (YouTube-DNN, DNN, TDM, JTM)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Behaviour windows over the history, most recent first: (start, end) positions.
# "probe" is what worked in this project's probe (REFERENCE.md): the last 1, last 5 and all 69.
# "xdl" is TDM's open-source setting: 10 windows, oldest to newest 20,20,10,10,2,2,2,1,1,1.
WINDOW_PRESETS: dict[str, tuple[tuple[int, int], ...]] = {
    "probe": ((0, 1), (0, 5), (0, 69)),
    "xdl": ((0, 1), (1, 2), (2, 3), (3, 5), (5, 7), (7, 9), (9, 19), (19, 29), (29, 49), (49, 69)),
}


def parse_windows(spec: str) -> tuple[tuple[int, int], ...]:
    """A preset name or "start-end,start-end,..." (most recent first, end exclusive)."""
    if spec in WINDOW_PRESETS:
        return WINDOW_PRESETS[spec]
    windows = []
    for part in spec.split(","):
        start, _, end = part.partition("-")
        if not start.strip().isdigit() or not end.strip().isdigit() or int(end) <= int(start):
            raise ValueError(f"bad window {part!r} in {spec!r}: expected start-end with end > start")
        windows.append((int(start), int(end)))
    return tuple(windows)


class WindowPooling(nn.Module):
    """Mean of the embedded behaviours inside each time window.

    Input: embedded history (B, L, d) with padding rows already zero, and the validity mask
    (B, L). Output: (B, W, d); a window with no behaviour pools to zeros.
    """

    def __init__(self, windows: tuple[tuple[int, int], ...], history_length: int) -> None:
        super().__init__()
        weights = torch.zeros(len(windows), history_length)
        for w, (start, end) in enumerate(windows):
            weights[w, start:min(end, history_length)] = 1.0
        self.register_buffer("weights", weights, persistent=False)

    @property
    def n_windows(self) -> int:
        return self.weights.shape[0]

    def forward(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Plain matmuls, not einsum: onnxruntime runs Einsum several times slower.
        weights = self.weights.to(embedded.dtype)
        sums = torch.matmul(weights, embedded)  # (W, L) @ (..., L, d) -> (..., W, d)
        counts = torch.matmul(mask.to(embedded.dtype), weights.T)  # (..., W)
        return sums / counts.clamp(min=1.0).unsqueeze(-1)


class PReLU(nn.Module):
    """PReLU with one slope per feature of the *last* dimension.

    torch's nn.PReLU puts channels on dim 1, which is wrong for (B, C, H) candidate batches.
    Flattening to (N, H) makes the last dimension dim 1, so the fused native kernel applies (a
    broadcast multiply instead was 70% of a training step in the profile).
    """

    def __init__(self, features: int, init: float = 0.25) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((features,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # onnxruntime's PRelu kernel is slow; the same function is max(x, w x) when every
            # slope is in [0, 1] (two cheap kernels), else relu(x) + w min(x, 0) (four).
            if bool(((self.weight >= 0) & (self.weight <= 1)).all()):
                return torch.maximum(x, x * self.weight)
            return F.relu(x) + self.weight * torch.clamp(x, max=0.0)
        return F.prelu(x.reshape(-1, x.shape[-1]), self.weight).reshape(x.shape)
