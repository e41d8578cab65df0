"""Data-parallel training with torch.distributed (launched by ``torchrun``), and the one-process case.

The batch sampler draws one global permutation per epoch from (seed, epoch) and gives each
rank an interleaved share of every *global* batch. With gradients averaged by DDP, N
processes therefore take the same optimisation steps as one process with the same global
batch size, and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Batches of a shuffled global order; rank r takes positions r, r + world, ... of each global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        if batch_size < world:
            raise ValueError(f"the batch size ({batch_size}) must be at least the number of processes ({world})")
        self.n, self.batch_size, self.seed, self.shuffle, self.rank, self.world = n, batch_size, seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = np.arange(self.n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) < self.world:  # every rank needs at least one sample: wrap around
                batch = np.concatenate([batch, order[: self.world - len(batch)]])
            yield batch[self.rank::self.world].tolist()


def shard_indices(n: int, d: Dist) -> list[int]:
    """The test-set indices this rank evaluates (every index exactly once over all ranks)."""
    return list(range(d.rank, n, d.world))


def gather_predictions(indices: list[int], scores: torch.Tensor, n: int, d: Dist) -> torch.Tensor:
    """Scores of the whole test set in dataset order, on every rank, before any AP is computed."""
    if not d.enabled:
        return scores
    shards: list = [None] * d.world
    dist.all_gather_object(shards, (indices, scores.cpu()))
    out = torch.empty(n, scores.shape[1], dtype=scores.dtype)
    for idx, s in shards:
        out[torch.as_tensor(idx, dtype=torch.long)] = s
    return out
