"""Data-parallel training under ``torchrun``: process-group set-up from the environment, the mask broadcast
from rank 0, and the DistributedDataParallel wrapper (rebuilt when the recipe removes ghost branches).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything here is a no-op, so the
training loop has one code path.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "Distributed":
        """Join the process group ``torchrun`` describes (gloo on CPU, NCCL on CUDA), or stay single-process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device_type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(minutes=30))
        return cls(rank, world_size, local_rank, backend)

    def device(self, device_type: str) -> torch.device:
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device(device_type)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_masks(self, masks: dict | None, device: torch.device) -> dict:
        """Rank 0's masks on every rank: the names and shapes go as an object, the bits as one tensor."""
        if not self.enabled:
            return masks
        header = [[(name, tuple(m.shape)) for name, m in masks.items()] if self.is_main else None]
        dist.broadcast_object_list(header, src=0)
        layout = header[0]
        total = sum(math.prod(shape) for _, shape in layout)
        comm_device = device if self.backend == "nccl" else torch.device("cpu")
        if self.is_main:
            flat = torch.cat([masks[name].reshape(-1).to(comm_device, torch.uint8) for name, _ in layout]) \
                if layout else torch.zeros(0, dtype=torch.uint8, device=comm_device)
        else:
            flat = torch.empty(total, dtype=torch.uint8, device=comm_device)
        dist.broadcast(flat, src=0)
        out, offset = {}, 0
        for name, shape in layout:
            n = math.prod(shape)
            out[name] = flat[offset:offset + n].view(shape).to(device=device, dtype=torch.bool)
            offset += n
        return out

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Elementwise sum of ``values`` over the ranks (train loss and accuracy counts)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64,
                         device=device if self.backend == "nccl" else torch.device("cpu"))
        dist.all_reduce(t)
        return t.tolist()

    def parameters_identical(self, model: nn.Module) -> bool:
        """Whether every rank holds exactly rank 0's parameters (the kept weights, ghosts, biases, norms)."""
        if not self.enabled:
            return True
        device = next(model.parameters()).device if self.backend == "nccl" else torch.device("cpu")
        mine = torch.cat([p.detach().reshape(-1).to(device, torch.float64) for p in model.parameters()])
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        same = torch.tensor([int(torch.equal(mine, reference))], device=device)
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        return bool(same.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (it broadcasts rank 0's parameters and buffers, so every rank starts equal)."""
        if not self.enabled:
            return model
        ids = [self.local_rank] if self.backend == "nccl" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
