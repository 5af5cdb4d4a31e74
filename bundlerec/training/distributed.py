"""Where training runs: one process on the CPU or a GPU, or one of several under torchrun.

torchrun (PyTorch's launcher) sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 every
process joins the process group (NCCL between GPUs, Gloo on CPUs), takes its share of each
epoch's batches, and DistributedDataParallel averages the gradients, so all processes hold the
same weights after every step. Each validates the same users and so reaches the same decisions
(best epoch, early stop, the mix of the two parts); only rank 0 writes the model.

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST:29400 -m bundlerec train --data DIR
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        where = f"{self.device.type}" + (
            f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        )
        return where if self.world == 1 else f"{self.world} workers, {where} each"


def launched_rank() -> int:
    """This process's rank under torchrun, 0 otherwise (before or without a process group)."""
    return int(os.environ.get("RANK", "0"))


def start() -> Workers:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Workers(dist.get_rank() if world > 1 else 0, world, device)


def stop(workers: Workers) -> None:
    if workers.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, workers: Workers) -> nn.Module:
    if workers.world == 1:
        return module
    # The buffers (item text, co-occurrence tables) never change: no need to sync them each step.
    # Some parameters sit out some batches (bundle rows in a batch of items), hence unused parameters.
    return DistributedDataParallel(
        module,
        device_ids=[workers.device.index] if workers.device.type == "cuda" else None,
        forward_sync_buffers=False,
        find_unused_parameters=True,
    )


def share(batches: list[T], workers: Workers) -> list[T]:
    """This worker's batches of an epoch. Every worker must take the same number of steps (each
    step is a collective), so a remainder smaller than the world is dropped; an epoch with fewer
    batches than workers gives every worker one of them."""
    if workers.world == 1:
        return batches
    if len(batches) < workers.world:
        return [batches[workers.rank % len(batches)]] if batches else []
    usable = len(batches) // workers.world * workers.world
    return batches[workers.rank : usable : workers.world]
