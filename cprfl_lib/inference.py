"""Use a trained run: evaluate its weights on its benchmark, or predict the classes of images."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from cprfl_lib.data.datasets import MultiLabelImageDataset, load_image
from cprfl_lib.errors import CprflError
from cprfl_lib.train import factory
from cprfl_lib.train.checkpoint import check_compatible, find_run_file, load_checkpoint
from cprfl_lib.train.device import resolve_device
from cprfl_lib.train.engine import evaluate
from cprfl_lib.train.loaders import as_tokens, caches_features, worker_count
from cprfl_lib.train.scoring import split_figures
from cprfl_lib.train.state import autocast_for


def load_model(path: str | Path, use_ema: bool = False, ckpt: dict | None = None):
    """(model in eval mode, checkpoint dict) of a run's ``weights.pt`` / ``checkpoint.pt`` (or its folder).

    ``use_ema`` loads the EMA weights where the run kept them. ``ckpt``: the file already read
    (a paper-size one is ~400 MB: read it once).
    """
    path = find_run_file(path)
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    if use_ema:
        if ckpt.get("ema") is None:
            raise CprflError(f"{path}: this run kept no EMA weights (train.ema was off)")
        ckpt = {**ckpt, "model": _ema_state(ckpt)}
    try:
        return factory.model_from_checkpoint(ckpt), ckpt
    except CprflError as exc:  # say which file
        raise CprflError(f"{path}: {exc}") from None


def _ema_state(ckpt: dict) -> dict:
    ema = ckpt["ema"]
    if any(k.startswith("backbone.") for k in ema):
        return ema
    # cached-feature runs keep an EMA of the head only: graft it onto the model's backbone
    return {**{k: v for k, v in ckpt["model"].items() if not k.startswith("head.")},
            **{f"head.{k}": v for k, v in ema.items()}}


def preprocess(model, config: dict):
    """The run's test-time preprocessing: PIL image → uint8 (3, S, S) (the model normalises)."""
    return factory.preprocessing_from(config, model.backbone)


def evaluate_checkpoint(path, data_root=None, list_dir=None, device: str = "auto", use_ema: bool = False, ckpt=None,
                        batch_size: int | None = None) -> dict:
    """The run's test-set figures (mAP, group mAPs, OP/OR/... ) on its benchmark.

    ``data_root`` / ``list_dir`` say where the images and lists are here; for a run on generated
    data, ``data_root`` must hold that generated set (it is read, never written).
    """
    path = find_run_file(path)
    model, ckpt = load_model(path, use_ema, ckpt)
    config = copy.deepcopy(ckpt["config"])
    for key, value in (("data_root", data_root), ("list_dir", list_dir)):
        if value is not None:
            config["data"][key] = str(value)
    config["data"]["eval_splits"] = None  # every split there is: the test split also for a run evaluated on val only
    bench = factory.benchmark_from(config)
    check_compatible(ckpt, path, class_names=bench.class_names)
    dev = resolve_device(device)
    autocast, _, _ = autocast_for(dev, config["train"])
    tr = config["train"]
    cached = caches_features(config)
    if cached:  # a frozen backbone: its feature maps of the test split, as the run's own evaluation read them
        dataset = _cached_tokens(model, config, bench, tr["eval_batch_size"], dev)
    else:
        dataset = MultiLabelImageDataset(bench.image_root, bench.test, preprocess(model, config))
    from cprfl_lib.train.distributed import Dist

    workers = worker_count(config["data"]["num_workers"], dev, Dist(), cached)
    loader = DataLoader(Subset(dataset, list(range(len(dataset)))), batch_size=batch_size or tr["eval_batch_size"],
                        num_workers=workers, pin_memory=dev.type == "cuda")
    tag = "ema" if use_ema else "model"
    scores = evaluate({tag: model.to(dev)}, loader, len(dataset), dev, autocast, cached=cached,
                      channels_last=tr["channels_last"])[tag]
    return {"checkpoint": str(path), "dataset": bench.name, "synthetic": bench.is_synthetic, "epoch": ckpt["epoch"],
            "weights": tag, **split_figures(scores, bench, tr["threshold"])}


def _cached_tokens(model, config: dict, bench, batch_size: int, device: torch.device) -> TensorDataset:
    """The frozen backbone's feature maps of the test split, from the features cache under the key the run's
    training filled it with (computed and stored there when absent), as tokens (N, h*w, C) for the head: the
    figures of the run's own evaluation, bit for bit."""
    from cprfl_lib.model import MultiLabelClassifier
    from cprfl_lib.train.distributed import Dist
    from cprfl_lib.train.features import cached_features

    backbone = _training_backbone(model, config)
    norm = [None if t is None else t.tolist() for t in (model.input_mean, model.input_std)]
    features = MultiLabelClassifier(backbone, torch.nn.Identity(), *norm)  # the checkpoint's normalisation
    dataset = MultiLabelImageDataset(bench.image_root, bench.test, factory.preprocessing_from(config, backbone))
    workers = worker_count(config["data"]["num_workers"], device, Dist(), False)
    return as_tokens(cached_features(features, dataset, batch_size=batch_size, device=device, num_workers=workers,
                                     desc="test features"))


def _training_backbone(model, config: dict):
    """The backbone as the run's training built it, where its weights are here and the checkpoint's frozen
    backbone is exactly them (the weights' identity, not the tensors, names the training's features in the
    cache); else the checkpoint's own backbone (named by its tensors: a random-weight run's key, or a key of
    its own where the weights are not here)."""
    try:
        built = factory.backbone_from(config)
    except CprflError:  # the weights file or tag is not available here; the checkpoint holds the tensors
        return model.backbone
    own, theirs = model.backbone.state_dict(), built.state_dict()
    if own.keys() == theirs.keys() and all(torch.equal(own[k], theirs[k]) for k in own):
        return built
    return model.backbone


@torch.no_grad()
def predict(path, images, top_k: int = 5, device: str = "auto", use_ema: bool = False,
            ckpt=None) -> list[list[tuple[str, float]]]:
    """For each image file, its ``top_k`` classes with probabilities, highest first."""
    model, ckpt = load_model(path, use_ema, ckpt)
    names = ckpt["class_names"]
    if not 1 <= top_k:
        raise CprflError(f"--top-k must be at least 1, got {top_k}")
    dev = resolve_device(device)
    prep = preprocess(model, ckpt["config"])
    batch = torch.stack([prep.resize(load_image(Path(p))) for p in images]).to(dev)
    probs = torch.sigmoid(model.to(dev).eval()(batch).float()).cpu()
    k = min(top_k, len(names))
    top = probs.topk(k, dim=1)
    return [[(names[i], float(s)) for s, i in zip(row_s, row_i)] for row_s, row_i in zip(top.values, top.indices)]
