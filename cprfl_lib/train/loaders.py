"""The data of a run: its training set and evaluated splits, as images or cached backbone features, and their loaders.

Images come decoded from the decoded-image cache (``data.decoded_cache``) or from their files; with a
frozen backbone (``train.cache_features``) each split is replaced by its cached feature maps, laid out
as tokens. In a distributed run rank 0 fills each cache first and the others read it; every process
trains on its rows of each global batch and evaluates its shard of each split.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from cprfl_lib.cpus import cpu_share
from cprfl_lib.data.datasets import MultiLabelImageDataset
from cprfl_lib.data.decoded import decoded_images
from cprfl_lib.model import to_tokens
from cprfl_lib.train import factory
from cprfl_lib.train.distributed import Dist, GlobalBatchSampler, rank0_first, shard_indices


def worker_count(setting, device: torch.device, d: Dist, on_tensors: bool) -> int:
    """DataLoader workers: the recipe's number, or (auto) from this process's share of the CPUs.

    Cached features or decoded images in memory need none on the CPU; a GPU is fed by up to 8
    workers a process, leaving one core to the process itself. The CPUs are shared by the processes
    of a distributed run and by the runs a studies pool trains side by side.
    """
    if setting != "auto":
        return int(setting)
    share = cpu_share(d.local_world)
    if device.type == "cuda":
        return max(1, min(8, share - 1))
    return 0 if on_tensors else min(2, share)


def as_tokens(features: TensorDataset) -> TensorDataset:
    """Cached feature maps (N, C, h, w) laid out as tokens (N, h·w, C): a batch then enters the visual projection
    without a transposing copy (about a tenth of a CPU head step)."""
    maps, targets = features.tensors
    return TensorDataset(to_tokens(maps).contiguous(), targets)


def caches_features(config: dict) -> bool:
    """Whether a run reads its splits as the frozen backbone's cached feature maps (``train.cache_features``)."""
    setting = config["train"]["cache_features"]
    return setting is True or (setting == "auto" and config["model"]["freeze_backbone"])


class RunData:
    """The training set and the evaluated splits of a run, as images or cached backbone features, and their loaders."""

    def __init__(self, config: dict, benchmark, model, device: torch.device, d: Dist, progress: bool = True):
        data, tr = config["data"], config["train"]
        self.cached = caches_features(config)
        self.decoded = data["decoded_cache"] is True or (data["decoded_cache"] == "auto" and not self.cached)
        self.workers = worker_count(data["num_workers"], device, d, on_tensors=self.cached or self.decoded)
        self.device, self.d, self.progress = device, d, progress and d.is_main
        prep = factory.preprocessing_from(config, model.backbone)
        splits = {"train": benchmark.train, **benchmark.eval_splits}
        # the training images are augmented, unless the backbone's features are cached
        sets = {name: self._images(benchmark.image_root, split, prep, train=name == "train" and not self.cached,
                                   seed=tr["seed"]) for name, split in splits.items()}
        if self.cached:
            sets = {name: self._features(model, name, images, tr["eval_batch_size"]) for name, images in sets.items()}
        self.train, self.eval = sets["train"], {k: sets[k] for k in benchmark.eval_splits}
        self.sampler = GlobalBatchSampler(len(self.train), config["optim"]["batch_size"], tr["seed"], True, d.rank,
                                          d.world, tag_epoch=not self.cached)
        self.train_loader = self._loader(self.train, batch_sampler=self.sampler)
        self.eval_loaders = {k: self._loader(Subset(ds, shard_indices(len(ds), d)), batch_size=tr["eval_batch_size"])
                             for k, ds in self.eval.items()}

    def _images(self, root, split, prep, train: bool, seed: int) -> MultiLabelImageDataset:
        """A split's images: decoded into the cache first (rank 0 fills it, the others read it), or from their files."""
        pixels = None
        if self.decoded:
            pixels = rank0_first(self.d, partial(decoded_images, root, split, prep, self.workers, self.progress))
        return MultiLabelImageDataset(root, split, prep, train=train, decoded=pixels, seed=seed)

    def _features(self, model, name: str, images: MultiLabelImageDataset, batch_size: int) -> TensorDataset:
        """A split's backbone features from the cache, as tokens (rank 0 fills the cache, the others read it)."""
        from cprfl_lib.train.features import cached_features

        fill = partial(cached_features, model, images, batch_size=batch_size, device=self.device,
                       num_workers=self.workers, desc=f"{name} features", progress=self.progress)
        return as_tokens(rank0_first(self.d, fill))

    def _loader(self, dataset, **kw) -> DataLoader:
        extra = dict(persistent_workers=True, prefetch_factor=4) if self.workers else {}
        # a private generator: a DataLoader draws its base seed from the global RNG otherwise, so evaluating
        # (more often, or an EMA too) would change the training's dropout draws
        return DataLoader(dataset, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(), **extra, **kw)

    def tokens(self) -> int | None:
        return to_tokens(self.train[0][0][None]).shape[1] if self.cached else None
