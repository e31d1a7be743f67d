"""Everything distributed lives here: process-group set-up, DDP / FSDP2 wrapping, reductions, rank-0 helpers.

Launch with ``torchrun --nproc_per_node N -m genlip.train.cli ...`` (or the ``genlip-pretrain`` script under
torchrun). Without torchrun's environment the run is a single process and nothing here does any communication.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

log = logging.getLogger(__name__)


def world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (single process: ``(0, 0, 1)``)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init() -> torch.device:
    """Join the process group when launched by torchrun and return this rank's device."""
    rank, local_rank, ws = world()
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    return device


def backend_for(device: torch.device) -> str:
    """The process group's backends: NCCL for CUDA tensors and gloo for CPU ones on GPUs (the trainer reduces a few
    CPU scalars, such as the supervised-token count, which NCCL alone refuses), gloo on CPUs."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_single(device: torch.device) -> None:
    """A process group of this one process (an in-memory store, no port, no torchrun), so that FSDP2 can hold a
    single process's parameters: ``train.param_dtype=bf16`` on one GPU keeps its fp32 master weights that way."""
    if dist.is_initialized():
        return
    if device.type == "cuda" and device.index is None:  # the process group needs the device's index
        device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if device.type == "cuda" else None)


def is_main() -> bool:
    return world()[0] == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_object(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap(model: nn.Module, parallel: str, device: torch.device, param_dtype: str = "fp32") -> nn.Module:
    """Apply data parallelism from outside the model: DDP, or FSDP2 (``fully_shard`` per block, then the root).

    ``param_dtype="bf16"`` (FSDP2 only): the shards, which the optimizer updates, stay fp32 (the master weights);
    each forward gathers them as bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``), so no weight is
    cast per operation."""
    if not dist.is_initialized():
        return model
    if parallel == "ddp":
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if parallel == "fsdp":
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if param_dtype == "bf16" else MixedPrecisionPolicy())
        for block in model.vit.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"train.parallel must be ddp or fsdp, got {parallel!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
