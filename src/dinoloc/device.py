"""Device and torchrun process-group helpers, used by every stage that runs a model (one copy)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dinoloc.io import DinolocError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when visible, else cpu; a cuda device that is not visible is refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DinolocError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def loader_context(num_workers: int) -> str | None:
    """The DataLoader's `multiprocessing_context`: None (torch's default) except in a process whose default start
    method is not one of the platform's, i.e. a joblib worker (hydra/launcher=local), where it is loky's and a
    DataLoader worker fails to start ('Process' object has no attribute 'env'); there, the platform's default."""
    import multiprocessing as mp

    methods = mp.get_all_start_methods()  # the platform's, its default first
    if num_workers == 0 or mp.get_start_method(allow_none=True) in (None, *methods):
        return None
    return methods[0]


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    owned: bool  # we initialised the process group, so we tear it down


def setup(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU); each rank
    gets its LOCAL_RANK's GPU."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    owned = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owned = True
    rank, world = rank_and_world()
    if cuda and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(rank, world, dev, owned)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
