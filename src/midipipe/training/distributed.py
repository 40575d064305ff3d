"""Data-parallel training under `torchrun`: who this process is, and its process group.

`torchrun --nproc_per_node N stages/08_train_generator.py` starts N copies of a stage with
RANK, LOCAL_RANK and WORLD_SIZE set; without torchrun they are unset and everything here
describes one process, so the same code runs both ways.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that logs, evaluates and writes files."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This process's GPU (by LOCAL_RANK) when several share a machine, made the current
    CUDA device so that NCCL's collectives and every unqualified `cuda` tensor land on it,
    not all on GPU 0; CPU stays CPU."""
    if device.type == "cuda" and world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """A process group for the length of a training run when torchrun started several
    processes (gloo on CPU, nccl on CUDA); nothing otherwise. `device` comes from
    `local_device`; NCCL is bound to it (`device_id`) so its communicator is made eagerly
    on the right GPU."""
    if world_size() <= 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        device = local_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def from_main(value):
    """The main process's `value`, in every process (e.g. validation metrics only it computed)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(value: float, device: torch.device) -> float:
    """`value` summed over the processes (itself in a single one); `device` is this
    process's, where the collective runs (a GPU under nccl)."""
    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())
