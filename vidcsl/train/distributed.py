"""Process-group plumbing for DDP, written so that one plain process needs none of it.

``init_distributed`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
NCCL on CUDA, gloo on CPU. Without those variables it returns a single-process :class:`DistInfo` and
every helper here becomes a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from vidcsl.config import DEVICE_PATTERN
from vidcsl.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(pref: str = "auto", local_rank: int = 0, *, name: str = "config key 'train.device'") -> torch.device:
    """``auto`` -> this process's GPU when CUDA is available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` are checked
    against this machine (:class:`ConfigError` naming ``name`` otherwise)."""
    if not isinstance(pref, str) or not re.fullmatch(DEVICE_PATTERN, pref):
        raise ConfigError(f"{name} must be auto, cpu, cuda or cuda:N, got {pref!r}")
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name} is {pref!r} but this machine has no usable CUDA GPU; use cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{name} asks for GPU {device.index} but this machine has "
                          f"{torch.cuda.device_count()} (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun (or already joined), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, select_device(device_pref, local))
    if world <= 1:
        return DistInfo(0, 1, 0, select_device(device_pref, 0))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 in rank order, gradients flowing back to every rank's rows."""
    if not is_distributed():
        return x
    from kernels.distributed import all_gather_with_grad

    return all_gather_with_grad(x)


@torch.no_grad()
def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 in rank order (equal shapes on every rank), no gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process); for small state such as RNG states."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` | ``max`` | ``mean``); returns ``t``."""
    if is_distributed():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "mean": dist.ReduceOp.SUM}
        dist.all_reduce(t, op=ops[op])
        if op == "mean":
            t /= dist.get_world_size()
    return t


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose per-epoch shuffle is seeded by (seed, epoch) and that can start mid-epoch.

    ``set_position(epoch, start)`` skips the first ``start`` indices of this rank's share, so a resumed
    run sees exactly the samples an uninterrupted run would have seen next.
    """

    def __init__(self, dataset: Dataset, info: DistInfo, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
