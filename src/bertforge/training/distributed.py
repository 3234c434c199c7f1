"""Data-parallel set-up (torch.distributed) from the environment torchrun provides.

`torchrun --nproc_per_node=N -m bertforge pretrain|finetune ...` sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT; without them everything runs as a single process (rank 0 of 1). The backend is gloo on
CPU; on GPUs NCCL carries CUDA tensors and gloo the small CPU ones (loss sums, decisions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_distributed(device: torch.device | None = None) -> World:
    """Join the process group described by the environment (or the one already joined)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local_rank)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    backend = "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(local_rank)  # NCCL binds each process to the GPU current when it first communicates
        backend = "cpu:gloo,cuda:nccl"  # NCCL takes CUDA tensors only; statistics summed on the CPU go by gloo
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def join_world(device: torch.device) -> tuple[torch.device, World]:
    """This process's place among torchrun's processes, and its device: on GPUs the one of its local rank."""
    world = init_distributed(device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    return device, world


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op in a single process)."""
    if world.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sum_gradients(model: torch.nn.Module, world: World) -> None:
    """Add every parameter's gradient up over the ranks, in one all-reduce (a no-op in a single process).

    Each rank has back-propagated its own part of the global batch with that part's share of the batch's
    loss, so the sum is the gradient of the whole batch: the step one process would take. A parameter that
    no rank has a gradient for (unused by the task, or every rank's part was empty) keeps `grad = None`, as
    in one process, so the optimizer skips it instead of decaying it."""
    if not world.distributed:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    flat = torch.cat([*(p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params),
                      present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for param, ranks_with_grad in zip(params, flat[-len(params):].tolist(), strict=True):
        param.grad = flat[offset : offset + param.numel()].view_as(param) if ranks_with_grad else None
        offset += param.numel()


def from_main(value: T, world: World) -> T:
    """Rank 0's `value` (any picklable object) on every rank: one process decides, all act alike."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def leave_world(finished: bool = True) -> None:
    """Leave the process group, if this process joined one: the last thing a torchrun job does.

    After a finished job every rank first waits for the others, so no rank tears its connections down
    while another is still using them; a failed job leaves at once (the others may never arrive). Leaving
    explicitly, rather than at interpreter exit, matters: gloo's worker threads torn down during
    finalization can abort the process (SIGABRT) after it has done all its work."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()
