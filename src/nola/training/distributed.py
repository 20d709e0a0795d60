"""Data-parallel training across processes started by `torchrun --nproc_per_node=N`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them the run is a
single process and every collective here is a no-op. NCCL on CUDA, gloo on CPU. Each process
computes gradients of its share of the global batch (already divided by the global token count),
and one all-reduce per optimizer step sums the adapter gradients, flattened into one buffer: the
adapter is small, so a single collective is cheaper than DDP's bucketing and needs no wrapper
around the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nola.errors import NolaError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, chosen)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise NolaError(f"train.device={device!r} but CUDA is not available; use train.device=cpu or auto")
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    return chosen


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over processes in place (and return it)."""
    if ctx.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(ctx: DistContext, params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of `params` over processes with one collective."""
    if not ctx.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for param, grad in zip(params, grads):
        count = grad.numel()
        reduced = flat[offset : offset + count].view_as(grad)
        if param.grad is None:
            param.grad = reduced.clone()
        else:
            param.grad.copy_(reduced)
        offset += count


def broadcast_parameters(ctx: DistContext, params: list[torch.nn.Parameter]) -> None:
    """Give every process rank 0's values (the trainable parameters must start identical)."""
    if not ctx.active:
        return
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=0)


def broadcast_object(ctx: DistContext, value):
    """Rank 0's Python object on every process."""
    if not ctx.active:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
