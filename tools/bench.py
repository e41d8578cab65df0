"""``make bench``: training and evaluation throughput and peak memory on this machine.

    python -m cprfl_lib.bench                 # everything (10+ min on a busy 2-core CPU: a paper step is 15-60 s)
    python -m cprfl_lib.bench --quick         # a few iterations of everything: checks that it works
    python -m cprfl_lib.bench --sections step --configs quick-head --device cpu

Sections:
  step       images/s and peak memory of one training step (the engine's ``train_one_epoch``) per
             model configuration and batch size, on random batches held in memory
  epoch      one epoch of the quick recipe on cached backbone features against the same epoch
             end-to-end (``train.cache_features=false``), on the same generated data
  eval       evaluation images/s over that test set, end-to-end and on cached features
  reproduce  wall time per notebook of the last ``make reproduce`` (results/<profile>/manifest.json)

Every network has random weights (weights=None): nothing is downloaded, and speed does not
depend on the weights. The class embeddings are fixed random vectors of the width of the
recipe's encoder (MiniLM 384, CLIP-RN50 1024). On a GPU each step is measured twice, plain
(fp32) and optimised (bf16 autocast + channels_last), and the speed-up is their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from cprfl_lib.train import engine, factory
from cprfl_lib.train.distributed import Dist, GlobalBatchSampler
from cprfl_lib.errors import CprflError
from cprfl_lib.losses import build_loss
from cprfl_lib.train.optim import build_optimizer, build_scheduler
from cprfl_lib.train.recipes import apply_overrides, load_recipe
from cprfl_lib.runinfo import device_name
from cprfl_lib.data.synthetic import class_names as synthetic_class_names

SECTIONS = ("step", "epoch", "eval", "reproduce")
STEP_CONFIGS = ("quick-e2e", "quick-head", "paper")
ENCODER_DIM = {"minilm": 384, "clip-rn50": 1024}  # the width the random class embeddings stand in for


def bench_config(recipe: str, **overrides) -> dict:
    """The recipe with random weights everywhere and fixed random class embeddings of the encoder's width."""
    config = load_recipe(recipe)
    m = ENCODER_DIM.get(config["semantics"]["encoder"], 1024)
    return apply_overrides(config, {"model.backbone_weights": None, "semantics.encoder": "randn",
                                    "semantics.weights": None, "semantics.trainable": False, "semantics.dim": m,
                                    **overrides})


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "bytes" is the peak memory of the block: CUDA allocations, or the process RSS."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"], result["what"] = torch.cuda.max_memory_allocated(device), "CUDA allocated"
        return
    try:
        import psutil
    except ImportError:  # the lifetime high-water mark: a lower bound of the block's own peak
        yield result
        result["bytes"], result["what"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "max RSS"
        return
    proc, stop = psutil.Process(), threading.Event()
    before = proc.memory_info().rss
    peak = [before]

    def sample() -> None:  # torch allocates outside Python: sample the RSS
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        top = max(peak[0], proc.memory_info().rss)
        result["bytes"], result["what"] = top, f"process peak RSS, +{(top - before) / 2**20:,.0f} MiB in the block"


def _say(line: str) -> None:
    print(line, flush=True)


def _num(value: float) -> str:
    return f"{value:9.1f}" if value >= 10 else f"{value:9.3f}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_setup(name: str, device: torch.device, optimised: bool):
    """(model, trainable, config, input shape without batch, cached) of a step configuration."""
    if name == "paper":
        config = bench_config("paper-coco")
    else:
        config = bench_config("quick-voc", **{"train.cache_features": name == "quick-head"})
    apply_overrides(config, {"train.amp": optimised, "train.channels_last": optimised and name != "quick-head"})
    classes = synthetic_class_names("synth-coco-lt" if "coco" in config["data"]["dataset"] else "synth-voc-lt")
    model = factory.model_from(config, classes).to(device)
    size = config["data"]["image_size"]
    if config["train"]["channels_last"]:
        model.to(memory_format=torch.channels_last)
    cached = name == "quick-head"
    shape = (3, size, size)
    if cached:  # the shape of the cached feature map
        with torch.no_grad():
            shape = tuple(model.backbone(torch.zeros(1, 3, size, size, device=device)).shape[1:])
    return model, (model.head if cached else model), config, shape, cached


def time_steps(name: str, batch: int, steps: int, warmup: int, device: torch.device, optimised: bool) -> dict:
    """Images/s and peak memory of ``steps`` training steps of one configuration at one batch size."""
    model, trainable, config, shape, cached = _step_setup(name, device, optimised)
    num_classes = model.head.num_classes
    loss_fn = build_loss(config["loss"]["name"], train_counts=[1] * num_classes, num_train=1,
                         family=factory.dataset_family(config), **(config["loss"]["params"] or {})).to(device)
    optimizer = build_optimizer(trainable, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"], warmup + steps)
    autocast, amp_on, amp_dtype = engine.autocast_for(device, config["train"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_on and amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator).to(device)
    y = (torch.rand(batch, num_classes, generator=generator) < 0.1).float().to(device)
    config["train"]["max_steps_per_epoch"] = None

    def run(n: int) -> None:
        engine.train_one_epoch(model, trainable, [(x, y)] * n, loss_fn, optimizer, scheduler, scaler, autocast,
                               device, config, cached, show=False)

    with engine.cpu_threads(config["train"]["num_threads"]):  # as a training run sets them
        threads = torch.get_num_threads()
        run(warmup)
        _sync(device)
        with peak_memory(device) as mem:
            start = time.perf_counter()
            run(steps)
            _sync(device)
            seconds = time.perf_counter() - start
    return {"img_s": batch * steps / seconds, "ms_step": 1000 * seconds / steps, "mem": mem["bytes"],
            "mem_what": mem["what"], "threads": threads}


def section_step(device: torch.device, quick: bool, configs: list[str], out=None) -> None:
    out = out or _say
    cpu = device.type == "cpu"
    plan = {"quick-e2e": [8] if quick else [16, 32, 64], "quick-head": [32] if quick else [32, 128],
            "paper": ([1] if quick else [1, 2]) if cpu else ([16] if quick else [8, 16, 32])}
    quick_d, paper_d = load_recipe("quick-voc")["model"]["dim"], load_recipe("paper-coco")["model"]["dim"]
    what = {"quick-e2e": f"quick-voc: frozen EfficientNet-Lite0 128 px per step + d={quick_d} head",
            "quick-head": f"quick-voc: the d={quick_d} head on cached tokens",
            "paper": f"paper-coco: ResNet-101 448 px fine-tuned + d={paper_d} VSI, 80 classes"}
    out("\n== training step (random weights and batches in memory; the engine's train_one_epoch)")
    if cpu:
        out("   CPU, fp32, with the recipe's train.num_threads (as a training run). AMP and channels_last are "
            "measured on a GPU only; a paper step takes seconds here, so it runs at batch 1-2 for one timed step.")
    out(f"   {'config':11s} {'batch':>5s} {'mode':6s} {'threads':>7s} {'img/s':>9s} {'ms/step':>9s}  peak memory")
    for name in configs:
        out(f"   -- {name}: {what[name]}")
        for batch in plan[name]:
            if name == "paper" and cpu:  # seconds per step: the first one is the warm-up, or nothing in --quick
                steps, warmup = (1, 0) if quick else (1, 1)
            else:
                steps, warmup = (3, 1) if quick else (20, 3)
            modes = [False] if cpu else [False, True]
            results = {opt: time_steps(name, batch, steps, warmup, device, opt) for opt in modes}
            for opt, r in results.items():
                mode = "amp+cl" if opt else "fp32"
                threads = r["threads"] if cpu else "-"
                out(f"   {name:11s} {batch:5d} {mode:6s} {threads:>7} {_num(r['img_s'])} {_num(r['ms_step'])}  "
                    f"{r['mem'] / 2**20:,.0f} MiB ({r['mem_what']})")
            if len(results) == 2:
                speedup = results[True]["img_s"] / results[False]["img_s"]
                out(f"   {name:11s} {batch:5d} speed-up of AMP + channels_last: {speedup:.2f}x")


def _epoch_data(device: torch.device, quick: bool):
    """The quick recipe's benchmark, model and both kinds of data, with the feature extraction timed."""
    from cprfl_lib.data.datasets import MultiLabelImageDataset
    from cprfl_lib.train.features import extract_features
    from cprfl_lib.data.transforms import build_transform

    overrides = {"train.cache_features": False, "data.synthetic_limit": 128 if quick else None}
    config = bench_config("quick-voc", **overrides)
    bench = factory.benchmark_from(config)
    model = factory.model_from(config, bench.class_names).to(device)
    images = engine.Data(config, bench, model.backbone, device, Dist(), progress=False)  # end-to-end data
    data = config["data"]
    test_tf = build_transform(data["transform"], data["image_size"], train=False,
                              mean=model.backbone.input_mean, std=model.backbone.input_std)
    start = time.perf_counter()  # what the cache holds: test-transform features of both splits
    tensors = {}
    for split, targets in (("train", bench.train), ("test", bench.test)):
        ds = MultiLabelImageDataset(bench.image_root, targets, test_tf, check=False)
        feats = extract_features(model.backbone, ds, config["train"]["eval_batch_size"], device, progress=False)
        tensors[split] = torch.utils.data.TensorDataset(feats, torch.from_numpy(ds.targets.astype("float32")))
    extract_s = time.perf_counter() - start
    return config, bench, model, images, tensors, extract_s


def time_epoch(config, bench, model, dataset, cached: bool, device: torch.device) -> float:
    """Seconds for one training epoch over ``dataset`` as the engine runs it."""
    tr, oc = config["train"], config["optim"]
    trainable = model.head if cached else model
    sampler = GlobalBatchSampler(len(dataset), oc["batch_size"], tr["seed"], True, 0, 1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config["data"]["num_workers"])
    optimizer = build_optimizer(trainable, oc)
    scheduler = build_scheduler(optimizer, oc, len(loader))
    autocast, _, _ = engine.autocast_for(device, tr)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss_fn = factory.loss_from(config, bench).to(device)
    with engine.cpu_threads(tr["num_threads"]):
        start = time.perf_counter()
        engine.train_one_epoch(model, trainable, loader, loss_fn, optimizer, scheduler, scaler, autocast, device,
                               config, cached, show=False)
        _sync(device)
        return time.perf_counter() - start


def time_eval(config, model, dataset, cached: bool, device: torch.device) -> float:
    autocast, _, _ = engine.autocast_for(device, config["train"])
    with engine.cpu_threads(config["train"]["num_threads"]):  # a run evaluates inside its training threads
        start = time.perf_counter()
        engine.evaluate(model, dataset, device, autocast, cached, config["train"]["eval_batch_size"], show=False)
        _sync(device)
        return time.perf_counter() - start


def section_epoch_eval(device: torch.device, quick: bool, sections: list[str], out=None) -> None:
    out = out or _say
    config, bench, model, images, tensors, extract_s = _epoch_data(device, quick)
    n_train, n_test = len(bench.train), len(bench.test)
    threads = config["train"]["num_threads"] or torch.get_num_threads()
    out(f"\n   data: {bench.name} ({n_train} train / {n_test} test images, {config['data']['image_size']} px, "
        "generated)" + ("  [--quick: a 128-image subset]" if quick else ""))
    t: dict[str, float] = {}
    if "epoch" in sections:
        t["head"] = time_epoch(config, bench, model, tensors["train"], True, device)
        t["e2e"] = time_epoch(config, bench, model, images.train, False, device)
        out(f"\n== one epoch of quick-voc: head on cached features vs end-to-end (train.cache_features=false); "
            f"{threads} training thread(s) as the recipe says")
        out(f"   end-to-end epoch       {t['e2e']:8.2f} s  ({n_train / t['e2e']:8.1f} img/s; JPEG decoding + frozen "
            "backbone + head)")
        out(f"   cached-features epoch  {t['head']:8.2f} s  ({n_train / t['head']:8.1f} img/s)")
        out(f"   ratio                  {t['e2e'] / t['head']:8.1f}x  (goal >= 10x)")
        out(f"   one-time extraction    {extract_s:8.2f} s  (train + test features, {torch.get_num_threads()} threads, "
            "outside the recipe's thread setting)")
    if "eval" in sections:
        t["eval_e2e"] = time_eval(config, model, images.test, False, device)
        t["eval_head"] = time_eval(config, model, tensors["test"], True, device)
        out(f"\n== evaluation over the test set ({n_test} images, batch {config['train']['eval_batch_size']}, "
            f"{threads} thread(s))")
        out(f"   end-to-end               {_num(n_test / t['eval_e2e'])} img/s  ({t['eval_e2e']:.2f} s)")
        out(f"   head on cached features  {_num(n_test / t['eval_head'])} img/s  ({t['eval_head']:.2f} s)")
    if len(t) == 4:  # a whole run: every epoch, every evaluation the recipe makes, and the extraction once
        epochs = config["optim"]["epochs"]
        evals = sum(engine.is_eval_epoch(e, config) for e in range(1, epochs + 1))
        e2e = epochs * t["e2e"] + evals * t["eval_e2e"]
        cached = extract_s + epochs * t["head"] + evals * t["eval_head"]
        out(f"\n== a whole quick-voc run ({epochs} epochs, {evals} evaluations)")
        out(f"   end-to-end {e2e:.1f} s, on cached features {cached:.1f} s including the extraction: "
            f"{e2e / cached:.1f}x; a second run with the same backbone (an ablation) reuses the features: "
            f"{e2e / (cached - extract_s):.1f}x")


def section_reproduce(out=None) -> None:
    out = out or _say
    root = Path(__file__).resolve().parents[1]
    out("\n== make reproduce: wall time per notebook (from the last manifest)")
    found = False
    for profile in ("quick", "paper", "smoke"):
        manifest = root / "results" / profile / "manifest.json"
        if not manifest.is_file():
            continue
        found = True
        m = json.loads(manifest.read_text())
        out(f"   {manifest.relative_to(root)}  (started {m.get('started', '?')}, device {m.get('device', '?')})")
        for stem, info in m.get("notebooks", {}).items():
            out(f"   {stem:28s} {info.get('wall_s', float('nan')):8.1f} s")
        out(f"   {'total':28s} {m.get('wall_s', float('nan')):8.1f} s")
    if not found:
        out(f"   no manifest yet (run `make reproduce`; it writes {root / 'results' / '<profile>' / 'manifest.json'})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cprfl_lib.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few iterations and small batches: checks that it works")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--configs", default=",".join(STEP_CONFIGS), help=f"step configurations: {', '.join(STEP_CONFIGS)}")
    args = p.parse_args(argv)
    sections, configs = args.sections.split(","), args.configs.split(",")
    for given, known, flag in ((sections, SECTIONS, "--sections"), (configs, STEP_CONFIGS, "--configs")):
        if set(given) - set(known):
            p.error(f"{flag}: unknown {sorted(set(given) - set(known))}; choose from {', '.join(known)}")
    try:
        device = engine.resolve_device(args.device)
    except CprflError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print(f"cprfl bench on {device_name()} [{device}], torch {torch.__version__}"
          + ("  (--quick: few iterations, rough figures)" if args.quick else ""), flush=True)
    if "step" in sections:
        section_step(device, args.quick, configs)
    if {"epoch", "eval"} & set(sections):
        section_epoch_eval(device, args.quick, sections)
    if "reproduce" in sections:
        section_reproduce()
    return 0


if __name__ == "__main__":
    sys.exit(main())
