"""Backbone features cached on disk: a frozen backbone runs once per split, not once per step.

With a frozen backbone (``model.freeze_backbone``) the feature map of an image does not change
during training, so it is computed once with the test-time preprocessing and stored in float16
under ``cache_dir("features")``, keyed (:func:`cprfl_lib.digest.content_key`) by the backbone
and the content of its weights (random weights by a digest of the backbone's state: another
seed draws other weights), the preprocessing and normalisation, the content of the split's
images, and what computed them (the device type, the torch version). The cache is filled by
one process at a time, without drawing from the run's random streams
(:func:`cprfl_lib.caches.filling`). The head then trains on the stored maps. Random
augmentation would change the feature every epoch; runs on cached features therefore train
without data augmentation (the recipe says so through ``cache_features``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from cprfl_lib.caches import filling
from cprfl_lib.cpus import torch_threads, usable_cpus
from cprfl_lib.digest import content_key, files_digest, state_digest
from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_torch_save
from cprfl_lib.paths import cache_dir

FORMAT = 3  # 3: content keys; computed in the channels-last memory format


def features_key(model: nn.Module, dataset, device: str | torch.device = "cpu") -> str:
    """Everything that determines the features of ``dataset`` (a MultiLabelImageDataset) under ``model``, computed
    on ``device`` (a GPU's convolutions differ from the CPU's in the last bits, as do torch versions)."""
    backbone = model.backbone
    weights = getattr(backbone, "weights_id", "unknown")  # a weights file by its content, a tag by its name
    return content_key("backbone-features", {
        "backbone": getattr(backbone, "name", type(backbone).__name__),
        "weights": weights,
        # random weights are named by nothing but themselves: the run's seed drew them
        **({"state": state_digest(backbone)} if weights in ("random", "unknown") else {}),
        "decode": dataset.prep.decode_key(),
        "normalize": [dataset.prep.mean, dataset.prep.std],
        "images": files_digest(dataset.root, dataset.split.paths),
        "computed": {"device": torch.device(device).type, "torch": torch.__version__},
    }, FORMAT)


@torch.no_grad()
def extract_features(model: nn.Module, dataset, batch_size: int = 64, device: str | torch.device = "cpu",
                     num_workers: int = 0, desc: str = "features", progress: bool = True) -> torch.Tensor:
    """Feature maps (N, C_b, h, w) of ``model.features`` (a MultiLabelClassifier's) in float16, in dataset order.

    Computed in the channels-last memory format (measured 2x faster for EfficientNet-Lite0 on
    this CPU; the maps differ from the default format's by about 1e-5); the backbone is put back
    in its own format afterwards.
    """
    backbone = model.backbone
    conv = next((p for p in backbone.parameters() if p.dim() == 4), None)
    own_format = torch.channels_last if conv is not None and not conv.is_contiguous() else torch.contiguous_format
    backbone.to(device).eval().to(memory_format=torch.channels_last)
    # A private generator: iterating a DataLoader draws its base seed from the global RNG, so a
    # cold cache would otherwise shift the run's dropout draws (a rerun with a warm cache differed).
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator(), pin_memory=torch.device(device).type == "cuda")
    chunks = []
    on_cpu = torch.device(device).type == "cpu"  # a one-off cache fill: every core, whatever a run trains with
    with torch_threads(max(torch.get_num_threads(), usable_cpus()) if on_cpu else None):
        try:
            for images, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
                x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                chunks.append(model.features(x).contiguous().half().cpu())
        finally:
            backbone.to(memory_format=own_format)
    return torch.cat(chunks)


def cached_features(model: nn.Module, dataset, *, batch_size: int = 64, device="cpu",
                    num_workers: int = 0, root: Path | None = None, desc: str = "features",
                    progress: bool = True) -> TensorDataset:
    """A TensorDataset of (features, targets) for ``dataset`` (a MultiLabelImageDataset), from cache if present."""
    key = features_key(model, dataset, device)
    path = Path(root or cache_dir("features")) / f"{key}.pt"
    targets = torch.from_numpy(dataset.targets.astype("float32"))
    if not path.is_file():
        with filling(path, say=progress):  # one filler at a time; the run's random streams untouched
            if not path.is_file():  # another process may have made it while this one waited
                feats = extract_features(model, dataset, batch_size, device, num_workers, desc, progress)
                atomic_torch_save({"features": feats, "source": str(dataset.split.source), "format": FORMAT}, path)
                return TensorDataset(feats, targets)
    try:
        stored = torch.load(path, weights_only=True)
        feats = stored["features"]
    except Exception as exc:  # a truncated or foreign file: say which
        raise CprflError(f"{path}: cached features are unreadable ({type(exc).__name__}); it is a cache file: "
                         "delete it and it is computed again") from None
    if feats.shape[0] != len(dataset):
        raise CprflError(f"{path}: cached features hold {feats.shape[0]} images, the split has {len(dataset)}; "
                         "it is a cache file: delete it and it is computed again")
    return TensorDataset(feats, targets)
