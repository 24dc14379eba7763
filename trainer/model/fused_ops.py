"""Element-wise steps of the training kernel fused into one pass each (numba, CPU).

PReLU's backward pass is, per element, `g if x > 0 else s * g` plus the slope gradient
`sum_i g * min(x, 0)`. With torch ops that is five passes over the (pairs x width) block
(threshold, subtract, multiply, reduce, multiply-add). `prelu_backward` does it in one
vectorised pass and releases the GIL, so the kernel's worker threads run it in parallel. It
compiles on first use (about a second) and caches the machine code beside this file; where
numba is missing or the tensors are not float32/float64 CPU tensors, the torch version runs
instead (same results up to rounding).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

try:  # numba is in the `train` extra; the torch fallback keeps the kernel working without it
    import numba
    import numpy as np

    # reassoc lets the per-column sums vectorise; no nnan/ninf assumptions (they would hide
    # a diverging run's NaNs).
    @numba.njit(nogil=True, fastmath={"reassoc", "contract", "nsz"}, cache=True, boundscheck=False,
                error_model="numpy")
    def _prelu_backward_rows(grad, x, slope, out, slope_grad):  # pragma: no cover - compiled
        rows, width = grad.shape
        acc = np.zeros(width, dtype=grad.dtype)
        zero = grad.dtype.type(0.0)
        one = grad.dtype.type(1.0)
        for i in range(rows):
            for j in range(width):
                g = grad[i, j]
                v = x[i, j]
                out[i, j] = g * (one if v > zero else slope[j])  # a select, not a branch
                acc[j] += g * min(v, zero)
        slope_grad[:] = acc

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False


def _torch_prelu_backward(grad: torch.Tensor, x: torch.Tensor, slope: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    # threshold_backward is torch's fused kernel for `grad * (x > 0)`: one pass, where
    # torch.where with a boolean mask materialises the mask first.
    positive = torch.ops.aten.threshold_backward(grad, x, 0.0)
    negative = grad - positive
    return torch.addcmul(positive, negative, slope), (negative * x).sum(0)


def prelu_backward(grad: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d x, d loss / d slope) of PReLU(x) with per-column slopes, for (rows, width)
    `grad` and pre-activation `x`."""
    if (HAVE_NUMBA and grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64)
            and grad.dtype == x.dtype == slope.dtype and grad.is_contiguous() and x.is_contiguous()):
        out = torch.empty_like(grad)
        slope_grad = torch.empty_like(slope)
        _prelu_backward_rows(grad.numpy(), x.numpy(), slope.contiguous().numpy(), out.numpy(), slope_grad.numpy())
        return out, slope_grad
    return _torch_prelu_backward(grad, x, slope)
