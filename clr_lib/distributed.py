"""Training on several processes with torchrun: the process group, the device, the wrapper.

Introduced in chapter 04. Launched by ``torchrun --nproc_per_node K -m clr_lib.train``, each
process takes batch_size / K images of every global batch, NT-Xent gathers z from all of them
(``loss.nt_xent_views(..., distributed=True)``), and BatchNorm is synchronised across GPUs:
the paper's "global BN" (Chen et al., 2020, Section 2.2).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def rank_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK``), or the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """Global BatchNorm across processes (on GPUs), and DistributedDataParallel."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def all_min(value: int, device: torch.device) -> int:
    """The smallest ``value`` over all processes (every rank must stop at the same step)."""
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
