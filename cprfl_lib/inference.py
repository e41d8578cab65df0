"""Use a trained checkpoint: evaluate it on its benchmark, or predict the classes of images."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from cprfl_lib.train import factory
from cprfl_lib.train.checkpoint import load_checkpoint
from cprfl_lib.data.datasets import MultiLabelImageDataset, load_image
from cprfl_lib.train.engine import report_scores, autocast_for, evaluate, resolve_device
from cprfl_lib.errors import CprflError
from cprfl_lib.data.transforms import build_transform


def load_model(path: str | Path, use_ema: bool = False, ckpt: dict | None = None):
    """(model in eval mode, checkpoint dict). ``use_ema`` loads the EMA weights where the run kept them.

    ``ckpt``: the checkpoint already read from ``path`` (a paper-size one is ~600 MB: read it once).
    """
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


def eval_transform(model, config: dict):
    data = config["data"]
    return build_transform(data["transform"], data["image_size"], train=False,
                           mean=model.backbone.input_mean, std=model.backbone.input_std)


def evaluate_checkpoint(path, data_root=None, list_dir=None, device: str = "auto", use_ema: bool = False, ckpt=None,
                        batch_size: int | None = None) -> dict:
    """The checkpoint's test-set figures (mAP, group mAPs, OP/OR/... ) on its benchmark."""
    model, ckpt = load_model(path, use_ema, ckpt)
    config = ckpt["config"]
    for key, value in (("data_root", data_root), ("list_dir", list_dir)):
        if value is not None:
            config["data"][key] = str(value)
    bench = factory.benchmark_from(config)
    if list(bench.class_names) != list(ckpt["class_names"]):
        raise CprflError(f"{path}: trained on {len(ckpt['class_names'])} classes, {bench.name} has {bench.num_classes}")
    dev = resolve_device(device)
    autocast, _, _ = autocast_for(dev, config["train"])
    dataset = MultiLabelImageDataset(bench.image_root, bench.test, eval_transform(model, config))
    scores = evaluate(model.to(dev), dataset, dev, autocast if not use_ema else nullcontext, cached=False,
                      batch_size=batch_size or config["train"]["eval_batch_size"])
    return {"checkpoint": str(path), "dataset": bench.name, "synthetic": bench.is_synthetic, "epoch": ckpt["epoch"],
            "weights": "ema" if use_ema else "model", **report_scores(scores, bench, config["train"]["threshold"])}


@torch.no_grad()
def predict(path, images, top_k: int = 5, device: str = "auto", use_ema: bool = False,
            ckpt=None) -> list[list[tuple[str, float]]]:
    """For each image file, its ``top_k`` classes with probabilities, highest first."""
    model, ckpt = load_model(path, use_ema, ckpt)
    dev = resolve_device(device)
    tf = eval_transform(model, ckpt["config"])
    batch = torch.stack([tf(load_image(Path(p))) for p in images]).to(dev)
    probs = torch.sigmoid(model.to(dev)(batch).float()).cpu()
    names = ckpt["class_names"]
    k = min(top_k, len(names))
    top = probs.topk(k, dim=1)
    return [[(names[i], float(s)) for s, i in zip(row_s, row_i)] for row_s, row_i in zip(top.values, top.indices)]
