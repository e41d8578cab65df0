"""GPU smoke test: the paper's model at full size trains, evaluates and fits in memory.

    tools/gpu_check.sh                # on a GPU box: no install, the checkout goes on PYTHONPATH
    tools/gpu_check.sh --cpu --tiny   # the same code path at toy sizes, on a CPU

1. ``paper-coco`` at full size: ResNet-101 at 448 px, d=2048 VSI (8 heads x 512), frozen class
   embeddings from the CLIP RN50 text tower, 80 classes, the recipe's batch (32). It runs a few
   training steps (the engine's ``train_one_epoch``) with bf16 autocast and channels_last on one
   fixed random batch with the recipe's ASL (images/s, peak memory), then a few with BCE, whose loss
   must go down (ASL's detached focusing weight lets its value rise at first from random weights);
   then evaluates random batches (``evaluate`` + ``map_report``).
2. ``code-coco`` (the official code): the CLIP text tower trained inside the model, fp16 autocast
   with a GradScaler, EMA; 2 steps, whose gradients must reach the text tower.

Offline by design: random weights everywhere (``backbone_weights=None``, ``semantics.weights=None``)
and random data, so nothing is downloaded and no data set is needed. The learning rate is 1e-4
(not the recipe's 1e-5) so that a few steps move the loss clearly. Exit code 0 only when every
check passes; 2 when a Python module is missing (listed first, before anything runs).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
import warnings

# import name -> pip package; checked before anything else is imported
REQUIRED = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "open_clip": "open_clip_torch",
            "ftfy": "ftfy", "regex": "regex", "numpy": "numpy", "sklearn": "scikit-learn", "yaml": "pyyaml",
            "tqdm": "tqdm", "PIL": "pillow", "huggingface_hub": "huggingface-hub"}
TINY = {"model.backbone": "resnet18", "data.image_size": 64, "model.dim": 64, "model.heads": 2,
        "model.dim_head": 32, "model.mlp_dim": 128, "semantics.encoder": "clip-tiny", "optim.batch_size": 4,
        "train.eval_batch_size": 8}


def missing_modules() -> list[str]:
    """'module (pip package): why' for every required module that does not import."""
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install
            missing.append(f"{module} (pip package {package}): {type(exc).__name__}: {exc}")
    return missing


def smoke_config(recipe: str, tiny: bool, **overrides):
    from cprfl_lib.train.recipes import load_recipe

    base = {"model.backbone_weights": None, "semantics.weights": None, "optim.lr": 1e-4, "train.amp": True,
            **(TINY if tiny else {})}
    return load_recipe(recipe, {**base, **overrides})


def random_batch(n: int, size: int, num_classes: int, seed: int):
    """Images N(0, 1) and multi-hot targets with about 3 labels an image, at least one each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (torch.rand(n, num_classes, generator=g) < 3 / num_classes).float()
    y[torch.arange(n), torch.randint(num_classes, (n,), generator=g)] = 1.0
    return x, y


class Trainer:
    """A model with the engine's loss, optimizer, scheduler, scaler and autocast, stepping on given batches."""

    def __init__(self, config: dict, device, with_ema: bool = False):
        import torch

        from cprfl_lib.train import engine, factory
        from cprfl_lib.data import synthetic
        from cprfl_lib.losses import build_loss
        from cprfl_lib.train.optim import ModelEma, build_optimizer, build_scheduler

        self.engine, self.config, self.device = engine, config, device
        self.class_names = synthetic.class_names("synth-coco-lt")  # the 80 COCO class names
        self.train_counts = synthetic.target_train_counts("synth-coco-lt")  # COCO-LT-shaped: head/medium/tail
        start = time.perf_counter()
        self.model = factory.model_from(config, self.class_names).to(device)
        self.build_s = time.perf_counter() - start
        if config["train"]["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        # num_train: COCO-LT's 1,909 training images (only the re-weighted losses use it)
        self.loss_fn = build_loss(config["loss"]["name"], train_counts=self.train_counts, num_train=1909,
                                  family=factory.dataset_family(config), **(config["loss"]["params"] or {})).to(device)
        self.optimizer = build_optimizer(self.model, config["optim"])
        self.scheduler = build_scheduler(self.optimizer, config["optim"], 100)
        self.autocast, amp_on, amp_dtype = engine.autocast_for(device, config["train"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_on and amp_dtype == torch.float16)
        decay = config["train"]["ema"] if with_ema else None
        self.ema = ModelEma(self.model, decay).to(device) if decay else None

    def step(self, x, y) -> float:
        """One training step; the loss before the update."""
        return self.engine.train_one_epoch(self.model, self.model, [(x, y)], self.loss_fn, self.optimizer,
                                           self.scheduler, self.scaler, self.autocast, self.device, self.config,
                                           cached=False, ema=self.ema, show=False)




def check_paper(device, tiny: bool, steps: int, eval_batches: int, say) -> list[str]:
    """paper-coco: steps with AMP descend on a fixed batch; evaluation gives finite scores and a report."""
    import numpy as np
    import torch

    from tools.bench import _sync, peak_memory
    from cprfl_lib.losses import build_loss
    from cprfl_lib.metrics import map_report
    from cprfl_lib.model import count_parameters

    failures = []
    torch.manual_seed(0)  # the random weights
    config = smoke_config("paper-coco", tiny, **{"train.amp_dtype": "bfloat16",
                                                  "train.channels_last": device.type == "cuda"})
    trainer = Trainer(config, device)
    m, oc = config["model"], config["optim"]
    params = count_parameters(trainer.model, trainable_only=False)
    say(f"paper-coco: {m['backbone']} {config['data']['image_size']} px, d={m['dim']} VSI ({m['heads']}x"
        f"{m['dim_head']}), {config['semantics']['encoder']} class embeddings (random weights, frozen), "
        f"{params / 1e6:.1f} M parameters, built in {trainer.build_s:.1f} s; batch {oc['batch_size']}, bf16 autocast"
        + (", channels_last" if config["train"]["channels_last"] else ""))
    x, y = random_batch(oc["batch_size"], config["data"]["image_size"], len(trainer.class_names), seed=0)
    x, y = x.to(device), y.to(device)
    with peak_memory(device) as mem:
        losses = [trainer.step(x, y)]  # the first step (cuDNN autotuning, allocations) is not timed
        _sync(device)
        start = time.perf_counter()
        losses += [trainer.step(x, y) for _ in range(steps - 1)]
        _sync(device)
        seconds = time.perf_counter() - start
    say(f"  train: {steps} steps on one fixed batch, {oc['batch_size'] * (steps - 1) / seconds:.1f} images/s "
        f"({1000 * seconds / (steps - 1):.0f} ms/step), peak memory {mem['bytes'] / 2**30:.2f} GiB ({mem['what']})")
    say("  ASL loss: " + " ".join(f"{v:.4f}" for v in losses))
    if not all(np.isfinite(losses)):
        failures.append(f"paper-coco: an ASL loss is not finite: {losses}")
    # ASL's focusing weight is detached (as in the official code), so its gradient is not that of the value
    # it reports: from a random start that value may rise for a while (seen at lr <= 1e-5). Whether the
    # steps descend is checked with BCE, whose gradient is that of its value, from the same state.
    trainer.loss_fn = build_loss("bce").to(device)
    bce = [trainer.step(x, y) for _ in range(max(steps // 2, 3))]
    say("  BCE loss: " + " ".join(f"{v:.4f}" for v in bce))
    late = float(np.mean(bce[-2:]))  # dropout makes single steps noisy
    if np.isfinite(bce).all() and late < bce[0]:
        say(f"  loss went down on the fixed batch: {bce[0]:.4f} -> {late:.4f} (mean of the last 2)  OK")
    else:
        failures.append(f"paper-coco: the BCE loss did not go down on a fixed batch ({bce[0]:.4f} -> {late:.4f})")

    n = eval_batches * config["train"]["eval_batch_size"]
    images, targets = random_batch(n, config["data"]["image_size"], len(trainer.class_names), seed=1)
    dataset = torch.utils.data.TensorDataset(images, targets)
    with peak_memory(device) as mem:
        start = time.perf_counter()
        scores = trainer.engine.evaluate(trainer.model, dataset, device, trainer.autocast, cached=False,
                                         batch_size=config["train"]["eval_batch_size"], show=False)
        _sync(device)
        seconds = time.perf_counter() - start
    with warnings.catch_warnings():  # random targets: a class may have no positive
        warnings.simplefilter("ignore")
        report = map_report(scores, targets, trainer.train_counts, trainer.class_names)
    say(f"  evaluate: {n} images in batches of {config['train']['eval_batch_size']}, {n / seconds:.1f} images/s, "
        f"peak memory {mem['bytes'] / 2**30:.2f} GiB; mAP {report.mAP:.2f} (random data: chance level)")
    if tuple(scores.shape) != (n, len(trainer.class_names)) or not torch.isfinite(scores).all():
        failures.append(f"paper-coco: evaluation scores have shape {tuple(scores.shape)} or are not finite")
    return failures


def check_code(device, tiny: bool, say) -> list[str]:
    """code-coco: the CLIP text tower trains inside the model under fp16 autocast + GradScaler, with EMA."""
    import numpy as np
    import torch

    from tools.bench import _sync
    from cprfl_lib.model import count_parameters

    failures = []
    torch.manual_seed(0)
    config = smoke_config("code-coco", tiny, **{"train.amp_dtype": "float16",
                                                 "train.channels_last": device.type == "cuda"})
    trainer = Trainer(config, device, with_ema=True)
    text = trainer.model.head.text_encoder
    reached = []
    first = next(p for p in text.parameters() if p.requires_grad)
    first.register_hook(lambda g: reached.append(bool(g.float().abs().sum() > 0)))
    say(f"code-coco: trainable {config['semantics']['encoder']} text tower "
        f"({count_parameters(text, trainable_only=False) / 1e6:.1f} M parameters), float16 autocast"
        + (" + GradScaler" if trainer.scaler.is_enabled() else "") + f", EMA {config['train']['ema']}")
    x, y = random_batch(config["optim"]["batch_size"], config["data"]["image_size"], len(trainer.class_names), seed=2)
    start = time.perf_counter()
    losses = [trainer.step(x.to(device), y.to(device)) for _ in range(2)]
    _sync(device)
    scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None
    say(f"  2 steps in {time.perf_counter() - start:.1f} s, loss " + " ".join(f"{v:.4f}" for v in losses)
        + (f", grad scale {scale:g}" if scale is not None else ""))
    if not all(np.isfinite(losses)):
        failures.append(f"code-coco: a loss is not finite: {losses}")
    if not any(reached):
        failures.append("code-coco: no gradient reached the CLIP text tower")
    else:
        say("  gradients reach the text tower  OK")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny, to test the script)")
    p.add_argument("--tiny", action="store_true", help="toy sizes: ResNet-18 at 64 px, d=64, clip-tiny, batch 4")
    p.add_argument("--steps", type=int, help="training steps of paper-coco (default 10; 5 with --tiny)")
    p.add_argument("--eval-batches", type=int, help="evaluation batches (default 4; 2 with --tiny)")
    args = p.parse_args(argv)
    args.steps = args.steps or (5 if args.tiny else 10)
    args.eval_batches = args.eval_batches or (2 if args.tiny else 4)
    say = lambda line: print(line, flush=True)  # noqa: E731
    missing = missing_modules()
    if missing:
        say("gpu_smoke: missing Python modules (nothing was run):")
        for line in missing:
            say(f"  - {line}")
        say("  carry wheels, e.g. `pip download --no-deps open_clip_torch ftfy wcwidth -d wheels/` where there is a "
            "network, then `python3 -m pip install --no-deps wheels/*.whl` on this machine")
        return 2
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first one is not timed)")
    import torch

    from cprfl_lib.runinfo import device_name

    if not args.cpu and not torch.cuda.is_available():
        say("gpu_smoke: no CUDA device (torch.cuda.is_available() is False); use --cpu --tiny to test on a CPU")
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    say(f"gpu_smoke on {device_name()} [{device}], torch {torch.__version__}, python {sys.version.split()[0]}"
        + (" (tiny sizes)" if args.tiny else ""))
    start, failures = time.perf_counter(), []
    for name, check in (("paper-coco", lambda: check_paper(device, args.tiny, args.steps, args.eval_batches, say)),
                        ("code-coco", lambda: check_code(device, args.tiny, say))):
        try:
            failures += check()
        except Exception as exc:  # a smoke test reports every failure with its traceback, then goes on
            traceback.print_exc()
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    say(f"gpu_smoke: {'FAILED' if failures else 'OK'} in {time.perf_counter() - start:.0f} s")
    for failure in failures:
        say(f"  FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
