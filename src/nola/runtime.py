"""Where the work runs, for every stage (training, decoding, serving, the mini): the device and the
process group of `torchrun --nproc_per_node=N`.

`pick_device` resolves a `train.device` / `decode.device` / `serve.device` setting (`auto`: this
process's CUDA device when there is one, else cpu). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; without them the job is a single process and every collective here is a
no-op. An inconsistent environment (WORLD_SIZE without the others, a value that is not a number, a
rank outside the world) is a NolaError before anything starts, and forming the group (a peer that
never comes) and every collective are bounded by `train.dist_timeout_s`. NCCL on CUDA, gloo on CPU.
In training each process computes gradients of its share of every micro-batch (each loss already
divided by the whole micro-batch's token count), and one all-reduce per optimizer step sums the
adapter gradients, flattened into one buffer: the adapter is small, so a single collective is
cheaper than DDP's bucketing and needs no wrapper around the model.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
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


ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
START_HINT = "start data-parallel runs with `torchrun --nproc_per_node=N -m nola.train ...`, or unset these variables"


def read_environment(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's variables; (1, 0, 0) when none is set (an
    empty variable counts as unset)."""
    env = {key: env[key] for key in ENVIRONMENT if env.get(key, "") != ""}
    present = list(env)
    if not present:
        return 1, 0, 0
    numbers = {}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        if key in env:
            try:
                numbers[key] = int(env[key])
            except ValueError:
                raise NolaError(f"environment variable {key}={env[key]!r} is not an integer; {START_HINT}") from None
    world_size = numbers.get("WORLD_SIZE", 1)
    if world_size < 1:
        raise NolaError(f"environment variable WORLD_SIZE={world_size} must be at least 1; {START_HINT}")
    if world_size > 1:
        missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in env]
        if missing:
            raise NolaError(
                f"WORLD_SIZE={world_size} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; "
                f"{START_HINT}"
            )
    rank, local_rank = numbers.get("RANK", 0), numbers.get("LOCAL_RANK", numbers.get("RANK", 0))
    if not 0 <= rank < world_size:
        raise NolaError(f"environment variable RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    if local_rank < 0:
        raise NolaError(f"environment variable LOCAL_RANK={local_rank} must not be negative")
    if "MASTER_PORT" in numbers and not 0 < numbers["MASTER_PORT"] < 65536:
        raise NolaError(f"environment variable MASTER_PORT={numbers['MASTER_PORT']} is not a TCP port (1..65535)")
    return world_size, rank, local_rank


def init_distributed(device: str = "auto", timeout_s: float = 300.0, *, key: str = "train.device") -> DistContext:
    """Join the process group torchrun describes in the environment (if any) and pick the device
    (`key`: the setting that chose it, for the error message).

    Forming the group waits at most `timeout_s` for the other processes (torch's default is 30
    minutes); then, or when the rendezvous address cannot be reached, a NolaError says so.
    """
    world_size, rank, local_rank = read_environment(os.environ)
    chosen = pick_device(device, local_rank, key=key)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError, OSError) as err:
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise NolaError(
                f"rank {rank} of {world_size} could not form the process group at {where} within "
                f"{timeout_s:g} s ({str(err).splitlines()[0][:200]}); check that all {world_size} processes were "
                "started (torchrun) and can reach MASTER_ADDR:MASTER_PORT, or raise train.dist_timeout_s"
            ) from None
    return DistContext(rank, world_size, local_rank, chosen)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(device: str, local_rank: int = 0, *, key: str = "train.device") -> torch.device:
    """A device setting (`key`: train.device, decode.device, serve.device) as a torch device: auto =
    this process's CUDA device when there is one, else cpu."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise NolaError(f"{key}={device!r} but CUDA is not available; use {key}=cpu or auto")
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


def main_process_first(ctx: DistContext, work):
    """`work()` on the main process, then on the others (so downloads and caches are written once)."""
    if ctx.is_main:
        result = work()
        barrier(ctx)
        return result
    barrier(ctx)
    return work()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
