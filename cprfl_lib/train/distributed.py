"""Data-parallel training with torch.distributed (launched by ``torchrun``), and the one-process case.

The batch sampler draws one global permutation per epoch from (seed, epoch) and gives each
rank an interleaved share of every *global* batch. With gradients averaged by DDP and batch
normalisation computed over the global batch (:func:`sync_batchnorm`), N processes therefore
take the same optimisation steps as one process with the same global batch size, every rank
holds the same BatchNorm statistics (so every test shard is scored by the same model and the
EMA copies agree), and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# Rank 0 fills caches (decoded images, features, embeddings) while the others wait at a barrier;
# for a paper-size split that takes minutes, so the default 10-minute collective timeout is too short.
TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

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
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=TIMEOUT)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local,
                local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def from_rank0(make, device_type: str):
    """``make()`` on rank 0, the same value on every rank (broadcast); joins the process group under torchrun.

    For what each rank would otherwise choose for itself, such as a timestamped output folder.
    """
    d = init_distributed(device_type)
    value = [make() if d.is_main else None]
    if d.enabled:
        dist.broadcast_object_list(value, src=0)
    return value[0]


def is_main_process() -> bool:
    """Rank 0 of a process group, or a process on its own: the one that prints a run's figures."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def rank0_first(d: Dist, make):
    """``make()`` on rank 0 first (it downloads, generates or caches what is missing), then on the others."""
    result = None
    for turn in (True, False):
        if d.is_main == turn:
            result = make()
        barrier(d)
    return result


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Batches of a shuffled global order; rank r takes positions r, r + world, ... of each global batch.

    With ``tag_epoch`` each index comes as ``(epoch, index)``, so that a dataset can draw its random
    augmentation from (seed, epoch, index) alone, whatever the worker processes (see
    :class:`cprfl_lib.data.datasets.MultiLabelImageDataset`).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 tag_epoch: bool = False):
        if batch_size < world:
            raise ValueError(f"the batch size ({batch_size}) must be at least the number of processes ({world})")
        self.n, self.batch_size, self.seed, self.shuffle, self.rank, self.world = n, batch_size, seed, shuffle, rank, world
        self.epoch, self.tag_epoch = 0, tag_epoch

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
            mine = batch[self.rank::self.world].tolist()
            yield [(self.epoch, i) for i in mine] if self.tag_epoch else mine


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (one all-reduce of the loss; True without a process group).

    A rank that skipped a non-finite step alone would leave the others waiting in DDP's gradient
    all-reduce until the collective timeout: the ranks agree first, then all skip (or all stop).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return True
    total = loss.detach().float().reshape(1).clone()
    dist.all_reduce(total)  # a non-finite term makes the sum non-finite
    return bool(torch.isfinite(total).item())


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


# ---------------------------------------------------------------- batch normalisation over all ranks


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, on any backend (gloo too).

    torch's ``SyncBatchNorm`` runs on GPUs only; this one all-reduces the per-channel count, sum and
    sum of squares (differentiably), so a two-process CPU run normalises exactly as one process would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        local = torch.cat([x.new_full((1,), x.numel() / c), x.sum((0, 2, 3)), (x * x).sum((0, 2, 3))])
        stats = all_reduce(local)
        n, mean = stats[0], stats[1:1 + c] / stats[0]
        var = stats[1 + c:] / n - mean * mean  # biased, as batch norm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1) if self.affine else y


def sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Batch norms computed over the global batch: torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm2d` else.

    Only plain ``nn.BatchNorm2d`` layers (torchvision's) are replaced; another batch-norm class
    (timm's BatchNormAct2d) that trains is refused, since rank-local statistics would make the ranks differ.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            if device_type == "cuda":
                new = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            else:
                new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(iter(child.state_dict().values())).device).train(child.training)
            new.requires_grad_(any(p.requires_grad for p in child.parameters()))
            setattr(module, name, new)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in child.parameters()):
            from cprfl_lib.errors import CprflError

            raise CprflError(f"several processes with a trainable {type(child).__name__} ({name}): its statistics "
                             "cannot be synchronised across ranks; train in one process or freeze the backbone")
        else:
            sync_batchnorm(child, device_type)
    return module
