"""Data parallelism over torch.distributed: shard batches, average gradients, sync parameters."""

from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU);
    nothing when the script runs as a single process.

    Example:
        >>> init_from_env()   # then fit / distill average gradients across the processes
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(_leave_group)


def _leave_group() -> None:
    """Tear the process group down before the interpreter exits (a gloo group left to the C++
    destructors can abort a process whose peer already exited)."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # exiting anyway: nothing left to report to
            dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when no process group is initialised.

    Example:
        >>> world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_model(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if world()[1] == 1:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_gradients(model: nn.Module) -> None:
    """All-reduce and average the gradients of every trainable parameter (one flat buffer)."""
    _, size = world()
    if size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= size
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(synced)


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch of sample indices."""
    rank, size = world()
    return index[rank::size]


def all_mean(value: float) -> float:
    """Mean of a float over ranks."""
    _, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / size
