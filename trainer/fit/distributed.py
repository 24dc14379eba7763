"""torch.distributed plumbing: `torchrun --nproc_per_node N -m trainer train ...`.

Single-process training stays the default; with torchrun's environment (WORLD_SIZE > 1) the
trainer joins a process group (gloo on CPU, nccl on GPU):

- model training is data-parallel: every rank walks the same shuffled order and takes its 1/N
  share of every batch; the dense gradients are averaged (all-reduce, what DDP does) and the
  embedding rows' gradients exchanged (all-gather of (row, gradient), `row_adam.merge_rows`),
  so no rank ever all-reduces a whole table; validation runs on rank 0 and its score is
  broadcast so all ranks stop at the same epoch;
- tree learning spreads the independent subtrees of a segment over the ranks (balanced by
  sample count): each rank computes the weights of its subtrees' items and solves their
  assignments, and the new positions are summed (all_reduce) so every rank holds the same
  tree. Top segments with fewer subtrees than ranks (the first has only the root) split the
  weight computation by items instead and all ranks solve the same deterministic assignment;
- only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT: DistContext | None = None


def init_from_env(device: str = "cpu") -> DistContext | None:
    """Join the process group torchrun describes; None when not launched by torchrun."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           backend=backend)
    return _CONTEXT


def context() -> DistContext | None:
    return _CONTEXT


def broadcast_float(value: float | None) -> float:
    """Rank 0's value on every rank."""
    tensor = torch.tensor([float("nan") if value is None else value], dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def sum_array(array: np.ndarray) -> np.ndarray:
    """Element-wise sum of `array` over all ranks (float64)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()


def sum_int_array(array: np.ndarray) -> np.ndarray:
    """Element-wise sum of an integer array over all ranks (int64, exact)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()


def sum_int(value: int) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def _device() -> torch.device:
    """Where collectives run: nccl only moves CUDA tensors."""
    if _CONTEXT is not None and _CONTEXT.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `tensor` over all ranks (a new tensor on the input's device)."""
    work = tensor.detach().to(_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.div_(_CONTEXT.world_size if _CONTEXT is not None else 1).to(tensor.device)


def all_gather_sizes(size: int) -> list[int]:
    """Every rank's `size`, in rank order."""
    local = torch.tensor([size], dtype=torch.int64, device=_device())
    parts = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return [int(p.item()) for p in parts]


def all_gather_tensor(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape on all ranks), in rank order, on the input's device."""
    local = tensor.to(_device())
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return [p.to(tensor.device) for p in parts]


def barrier() -> None:
    if _CONTEXT is not None:
        dist.barrier()


def shutdown() -> None:
    global _CONTEXT
    if _CONTEXT is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None
