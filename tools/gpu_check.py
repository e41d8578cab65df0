"""The GPU check: one complete ``paper-voc`` run on a bare GPU machine, and what the whole paper profile would take.

    gpu-bundle/run.sh                                  # on a GPU machine, from tools/gpu_bundle.sh's folder
    tools/gpu_check.sh --list-dir /lists               # the same, the wheels already importable
    tools/gpu_check.sh --cpu --tiny --list-dir /lists  # the same code path at toy sizes, on a CPU

It runs under the machine's own Python and torch (not the package's pins: the checkout goes on
PYTHONPATH), and imports nothing of the notebook stack (papermill, nbformat, Jupyter): a stock
PyTorch image lacks it. What such an image lacks besides, open_clip, ftfy and wcwidth, comes in
the bundle (``tools/gpu_bundle.sh``); a missing module is listed before anything runs. It builds a
real-layout tree of JPEGs at VOC's image size for every path of the VOC-LT lists (random content;
``--data-root`` reuses an existing tree), writes weight files in the real formats with random
values (a torchvision ResNet-101 state dict, an open_clip RN50 state dict), fills the decoded-image
cache (once per benchmark, timed apart), and trains the ``paper-voc`` recipe as written (30 epochs,
batch 32, 448 px, DataLoader workers, evaluated after the last epoch), then prints: epoch 1 apart
(cuDNN autotuning, compilation, the workers' start) and the steady rate from epoch 2 on, the share
of the training time spent waiting for the loader, evaluation images/s, peak GPU memory, the fixed
seconds of a run (wall - training - evaluation, plus epoch 1's excess), on a GPU the speed-up of
each speed lever (``optim.fused``, ``train.compile``), and the projected hours of the whole paper
profile: its planned runs' FLOP count at the steady rate plus the fixed seconds for every run. The
numbers are of random weights and images: speed, not accuracy. Exit code 0 when the run finished
with finite figures and a projection; 2 when something is missing; 1 on any other failure; every
failure is one line.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import sys
import time
from pathlib import Path

# import name -> pip package; checked before anything else is imported
REQUIRED = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "open_clip": "open_clip_torch",
            "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex", "numpy": "numpy", "sklearn": "scikit-learn",
            "yaml": "pyyaml", "tqdm": "tqdm", "PIL": "pillow", "huggingface_hub": "huggingface-hub"}
TINY = {"model.backbone": "resnet18", "data.image_size": 64, "model.dim": 64, "model.heads": 2, "model.dim_head": 32,
        "model.mlp_dim": 128, "optim.epochs": 2, "optim.batch_size": 8, "train.max_steps_per_epoch": 2,
        "train.eval_batch_size": 16, "data.test_subset": 32, "train.num_threads": 2}


def missing_modules() -> list[str]:
    """'module (pip package): why' for every required module that does not import."""
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install
            missing.append(f"{module} (pip package {package}): {type(exc).__name__}: {exc}")
    return missing


def prepare_inputs(work: Path, list_dir: str | None, data_root: str | None, tiny: bool, say) -> dict:
    """The lists, the image tree and the weight files of the check (reused when already there)."""
    from cprfl_lib.data.lists import fetch_split_lists
    from tools.standin import VOC_SIZE, clip_weights, image_tree, list_paths, resnet_weights

    lists = fetch_split_lists("voc-lt", list_dir=list_dir, download=False)
    root = Path(data_root) if data_root else work / "images"
    start = time.perf_counter()
    paths = list_paths([lists["train"], lists["test"]])
    if not data_root:
        image_tree(root, paths, size=(64, 48) if tiny else VOC_SIZE)
    say(f"  images: {len(paths):,} JPEGs under {root} ({'64x48' if tiny else f'{VOC_SIZE[0]}x{VOC_SIZE[1]}'}, "
        f"random content; {time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    backbone = resnet_weights(work / "weights" / ("resnet18.pth" if tiny else "resnet101.pth"),
                              "resnet18" if tiny else "resnet101")
    text = None if tiny else clip_weights(work / "weights" / "RN50-openai.bin", "RN50")
    say(f"  weights: {backbone}" + (f", {text}" if text else " (clip-tiny, random)")
        + f" (random values; {time.perf_counter() - start:.1f} s)")
    return {"data_root": root, "list_dir": lists["labels"].parent, "backbone": backbone, "text": text,
            "user_list_dir": list_dir}


def run_check(device_name: str, work: Path, inputs: dict, tiny: bool, epochs: int | None, say) -> list[str]:
    """Train the recipe; print the figures (epoch 1 apart, the steady rate, the fixed seconds); the failures."""
    import torch

    from cprfl_lib.train import engine, factory
    from cprfl_lib.train.recipes import load_recipe
    from cprfl_repro.plan import architecture_cost

    over = {"data.data_root": str(inputs["data_root"]), "data.list_dir": str(inputs["list_dir"]),
            "model.backbone_weights": str(inputs["backbone"]), "train.device": device_name}
    over.update({"semantics.encoder": "clip-tiny", "semantics.weights": None} if tiny else
                {"semantics.weights": str(inputs["text"])})
    if tiny:
        over.update(TINY)
    if epochs:
        over["optim.epochs"] = epochs
    config = load_recipe("paper-voc", over)
    out = work / "run"
    o, d, tr = config["optim"], config["data"], config["train"]
    say(f"  recipe paper-voc: {o['epochs']} epochs, batch {o['batch_size']}, {d['image_size']} px, "
        f"{config['model']['backbone']}, d={config['model']['dim']}, workers {d['num_workers']}, "
        f"decoded cache {d['decoded_cache']}, amp {tr['amp']}, channels_last {tr['channels_last']}, "
        f"fused Adam {o['fused']}, compile {tr['compile']}, a mid-run checkpoint after {tr['checkpoint_minutes']:g} min")
    start = time.perf_counter()
    engine.prepare(config, progress=sys.stderr.isatty())  # the decoded images: filled once for the whole profile
    say(f"  caches (decoded images, class embeddings) filled in {time.perf_counter() - start:.0f} s: once per "
        "benchmark, not per run")
    if torch.cuda.is_available() and device_name == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    metrics = engine.train(config, out, resume=(out / "checkpoint.pt").is_file(), progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [float(r["train_s"]) for r in rows]
    wait_s = sum(float(r["wait_s"]) for r in rows)
    eval_s = sum(float(r["eval_s"]) for r in rows if r.get("eval_s"))
    bench = factory.benchmark_from(config)
    per_epoch = min(len(bench.train), (tr["max_steps_per_epoch"] or 10**9) * o["batch_size"])
    evaluated = metrics["test_images"] * sum(1 for r in rows if r.get("eval_s"))
    fixed = wall - sum(train) - eval_s  # model build, loader workers, decoded-cache reads, saving the results
    steady = train[1:] or train  # epoch 1 pays cuDNN autotuning, compilation and the workers' start
    steady_epoch = sum(steady) / len(steady)
    first_extra = max(0.0, train[0] - steady_epoch) if len(train) > 1 else 0.0
    say(f"  trained in {wall:.0f} s: epoch 1 {train[0]:.1f} s, then {steady_epoch:.1f} s per epoch"
        + (f" (epochs 2-{len(train)})" if len(train) > 1 else " (one epoch: no steady rate apart from it)"))
    say(f"  steady rate: {per_epoch / steady_epoch:,.1f} training img/s; waiting for data {wait_s / sum(train):.1%} "
        "of the training time")
    say(f"  evaluation: {evaluated / max(eval_s, 1e-9):,.1f} img/s over {metrics['test_images']:,} test images "
        f"({eval_s:.1f} s)")
    say(f"  fixed per run: {fixed:.1f} s (wall {wall:.1f} - training {sum(train):.1f} - evaluation {eval_s:.1f}: "
        f"model build, loader start, saving), plus {first_extra:.1f} s of epoch 1 beyond a steady epoch")
    if device_name == "cuda":
        say(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    last = metrics["last_epoch"]["model"]
    say(f"  mAP {last['mAP']:.2f} (random weights and images: chance level; this checks speed, not accuracy)")
    cost = architecture_cost(config, len(bench.class_names))
    n_steady = len(steady)
    rate = (n_steady * per_epoch * cost["train_image"] + evaluated * cost["eval_image"]) / (sum(steady) + eval_s)
    say(f"  reached {rate / 1e12:,.3g} TFLOP/s (the FLOP count of the steady epochs and the evaluation over their time)")
    if device_name == "cuda":
        speed_levers(config, len(bench.class_names), torch.device("cuda"), say)
    else:
        say("  speed levers (fused Adam, torch.compile): measured on a GPU only")
    weights = {"semantics.weights": str(inputs["text"])} if inputs["text"] else {}  # the CLIP rows count as planned
    if not projection(inputs["user_list_dir"], rate, fixed + first_extra, device_name, say, weights):
        return ["no projection of the paper profile (said above)"]
    return [] if all(math.isfinite(last[k]) for k in ("mAP", "head", "medium", "tail")) else [
        f"the figures are not finite: {last}"]


def speed_levers(config: dict, classes: int, device, say, backend: bool | str = True) -> dict[str, float]:
    """Seconds per training step of ``config`` with each speed lever alone against neither (random data, the run's
    train state); printed as speed-ups. ``backend``: the torch.compile backend (True: inductor)."""
    from cprfl_lib.train.recipes import apply_overrides
    from cprfl_repro.plan import step_seconds

    def variant(**over) -> dict:
        return apply_overrides(json.loads(json.dumps(config)), {"model.backbone_weights": None, **over})

    base = variant(**{"optim.fused": False, "train.compile": False})
    times = {"neither": step_seconds(base, classes, device)["step_s"]}
    for name, over in (("fused Adam", {"optim.fused": True, "train.compile": False}),
                       ("torch.compile", {"optim.fused": False, "train.compile": backend})):
        try:
            times[name] = step_seconds(variant(**over), classes, device)["step_s"]
        except Exception as exc:  # a lever this machine cannot use: said, and the check goes on
            say(f"  speed lever {name}: not usable here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    for name, t in times.items():
        if name != "neither":
            say(f"  speed lever {name}: {times['neither'] / t:.2f}x ({times['neither'] * 1000:.0f} -> {t * 1000:.0f} ms "
                "per step; recipe option " + ("optim.fused" if name == "fused Adam" else "train.compile") + ")")
    return times


def projection(list_dir: str | None, rate: float, fixed_s: float, device_name: str, say,
               overrides: dict | None = None) -> bool:
    """The whole paper profile's hours at this rate plus these fixed seconds per run, on 1 and 8 such devices."""
    from cprfl_lib.errors import CprflError
    from cprfl_lib.paths import cache_dir
    from cprfl_repro.context import RunContext
    from cprfl_repro.plan import make_plan
    from cprfl_repro.reproduce import notebooks, profile_parameters

    params = profile_parameters("paper")
    overrides = {**params.pop("overrides", {}), **(overrides or {})}
    ctx = RunContext("paper", cache_dir("gpu-check", "results"), cache_dir("gpu-check", "runs"), None,
                     Path(list_dir) if list_dir else None, overrides)
    try:
        plan = make_plan(ctx, params, notebooks(Path(__file__).resolve().parents[1]))
    except CprflError as exc:
        say(f"  projection of the whole paper profile: not possible here ({exc})")
        return False
    plan.rate, plan.fixed_s = rate, fixed_s
    pflop = (sum(r.flops for r in plan.todo) + plan.extraction_flops) / 1e15
    say(f"  projection (not a measurement of the profile): its {len(plan.runs)} runs' {pflop:,.0f} PFLOP at the "
        f"{rate / 1e12:,.3g} TFLOP/s this run reached on {device_name}, plus its {fixed_s:.0f} s fixed per run")
    for gpus in (1, 8):
        say(f"  the paper profile ({len(plan.runs)} runs): about {plan.hours(gpus):,.1f} h on {gpus} device"
            f"{'s' if gpus > 1 else ''} like this one; disk about {plan.disk / 2**30:,.0f} GiB")
    for reason, runs in left_out(ctx, params, notebooks(Path(__file__).resolve().parents[1])).items():
        say(f"  not in this projection: {runs} run(s) of variants unavailable here ({reason})")
    return True


def left_out(ctx, params: dict, found: list[Path]) -> dict[str, int]:
    """{reason: runs} of the variants the plan leaves out as unavailable on this machine (an encoder's package or
    file missing): a bare image lacks what the full environment has, so its projection counts fewer runs."""
    from cprfl_repro.experiments import NOTEBOOK_STUDIES, notebook_studies
    from cprfl_repro.plan import notebook_defaults
    from cprfl_repro.studies import Unavailable

    out: dict[str, int] = {}
    for nb in found:
        if nb.stem not in NOTEBOOK_STUDIES:
            continue
        for study in notebook_studies(nb.stem, ctx, {**notebook_defaults(nb), **params.get(nb.stem, {})}).values():
            for variant in study.variants.values():
                if isinstance(variant, Unavailable):
                    out[variant.reason] = out.get(variant.reason, 0) + len(study.seeds)
    return out


def one_line(exc: BaseException) -> str:
    """An unexpected error as one line: its type, its first line and where it was raised."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}{where}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny, to test the check)")
    p.add_argument("--tiny", action="store_true", help="toy sizes: ResNet-18 at 64 px, d=64, clip-tiny, 2 short epochs")
    p.add_argument("--list-dir", help="the VOC-LT split lists (default: the cache, after `cprfl data fetch`)")
    p.add_argument("--data-root", help="an existing image tree for those lists (default: one is built)")
    p.add_argument("--work", help="scratch folder (default: $CPRFL_CACHE/gpu-check)")
    p.add_argument("--epochs", type=int, help="override the recipe's 30 epochs")
    args = p.parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731
    missing = missing_modules()
    if missing:
        say("gpu_check: missing Python modules (nothing was run):")
        for line in missing:
            say(f"  - {line}")
        say("  where there is a network, `tools/gpu_bundle.sh DIR` writes the wheels (open_clip_torch, ftfy, wcwidth) "
            "and the split lists into DIR; copy DIR beside the checkout and run DIR/run.sh")
        return 2
    import torch

    from cprfl_lib.cpus import usable_cpus
    from cprfl_lib.errors import CprflError
    from cprfl_lib.paths import cache_dir
    from cprfl_lib.runinfo import device_name

    if not args.cpu and not torch.cuda.is_available():
        say("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --cpu --tiny to test on a CPU")
        return 2
    dev = "cpu" if args.cpu else "cuda"
    work = Path(args.work) if args.work else cache_dir("gpu-check")
    import open_clip

    say(f"gpu_check on {device_name()} [{dev}], torch {torch.__version__}, python {sys.version.split()[0]}, "
        f"{usable_cpus()} usable CPUs" + (" (tiny sizes)" if args.tiny else ""))
    say(f"  open_clip {getattr(open_clip, '__version__', '?')} from {Path(open_clip.__file__).parent}")
    start = time.perf_counter()
    try:
        inputs = prepare_inputs(work, args.list_dir, args.data_root, args.tiny, say)
        failures = run_check(dev, work, inputs, args.tiny, args.epochs, say)
    except CprflError as exc:
        say(f"gpu_check: error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("gpu_check: interrupted")
        return 130
    except torch.cuda.OutOfMemoryError as exc:
        say(f"gpu_check: FAILED: out of GPU memory ({one_line(exc)}); lower optim.batch_size in the recipe")
        return 1
    except Exception as exc:  # whatever else a bare machine meets: one line, not a traceback
        say(f"gpu_check: FAILED: {one_line(exc)}")
        return 1
    say(f"gpu_check: {'FAILED' if failures else 'OK'} in {time.perf_counter() - start:.0f} s")
    for failure in failures:
        say(f"  FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
