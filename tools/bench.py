"""``make bench``: loader, training-step and evaluation throughput on this machine, and the GPU projection.

    python -m tools.bench                 # everything (several minutes on a 2-core CPU: a paper step takes seconds)
    python -m tools.bench --quick         # a few iterations of everything: checks that it works
    python -m tools.bench --sections loader,projection

Sections:
  loader      images/s of the paper recipes' input pipeline at 448 px (decode + resize + augment), from JPEGs
              at VOC's size and from the decoded-image cache, with 1 and 2 DataLoader workers
  step        images/s and peak memory of one training step (the engine's train state and train_one_epoch)
              per model configuration, on random batches held in memory
  epoch       one epoch of the cpu-voc recipe on cached backbone features against the same epoch end to end
  eval        evaluation images/s over that test set, end to end and on cached features
  projection  the paper profile's work (FLOP count of the planned runs) and its hours on one H200 and on 8,
              and the loader throughput that keeps one busy
  reproduce   wall time per notebook of the last ``make reproduce`` (results/<profile>/manifest.json)
  rerun       the researcher's loop (not in the default sections: it trains): one setting of Table 2 changed
              (ASL's gamma_neg, a new value each time), notebook 05 rerun alone as a named variant on warm caches,
              ``make reproduce PROFILE=quick NAME=... ONLY=05 STUDIES=table2 SETTINGS=...`` (--rerun-profile)

Every network has random weights (nothing is downloaded, and speed does not depend on the
weights); the class embeddings are fixed random vectors of the width of the recipe's encoder.
Nothing here is a unit test: the figures are printed, never asserted.
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

from cprfl_lib.cpus import torch_threads
from cprfl_lib.errors import CprflError
from cprfl_lib.losses import build_loss
from cprfl_lib.runinfo import device_name
from cprfl_lib.train import engine, factory
from cprfl_lib.train.device import resolve_device
from cprfl_lib.train.distributed import Dist, GlobalBatchSampler
from cprfl_lib.train.loaders import RunData
from cprfl_lib.train.recipes import apply_overrides, load_recipe
from cprfl_lib.train.state import build_train_state

SECTIONS = ("loader", "step", "epoch", "eval", "projection", "reproduce", "rerun")
DEFAULT_SECTIONS = SECTIONS[:-1]  # rerun trains: asked for by name
STEP_CONFIGS = ("cpu-e2e", "cpu-head", "paper")
ENCODER_DIM = {"minilm": 384, "clip-rn50": 1024}  # the width the random class embeddings stand in for
H200_BF16 = 790e12  # dense bf16 FLOP/s of one H200 (vendor figure)
# Assumptions, stated where used (no GPU was measured here): the share of that peak eager ResNet-101 training in
# bf16 with channels-last reaches, and the seconds each run costs beyond its FLOPs (model build, loader start,
# autotuning, saving). tools/gpu_check.sh measures both on a GPU.
UTILISATION = (0.17, 0.24)
FIXED_S = (15.0, 25.0)


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the input pipeline


def section_loader(quick: bool, out=_say) -> dict[str, float]:
    """Images/s of decode + resize (+ the official augmentation) at 448 px, from JPEG and from the decoded cache."""
    from torch.utils.data import DataLoader

    from cprfl_lib.data.datasets import MultiLabelImageDataset
    from cprfl_lib.data.decoded import decoded_images
    from cprfl_lib.data.lists import SplitList
    from cprfl_lib.data.transforms import preprocessing
    from cprfl_lib.paths import cache_dir
    from tools.standin import VOC_SIZE, image_tree

    n = 64 if quick else 256
    root = cache_dir("bench", "jpegs")
    paths = [f"VOCdevkit/VOC2012/JPEGImages/bench_{i:05d}.jpg" for i in range(n)]
    image_tree(root, paths, size=VOC_SIZE)
    split = SplitList(paths, torch.zeros(n, 20, dtype=torch.uint8).numpy(), root / "bench-list.txt")
    out(f"\n== input pipeline: {n} JPEGs of {VOC_SIZE[0]}x{VOC_SIZE[1]} (random content, VOC's size) -> 448 px, "
        "the train augmentation, batches of 32, persistent workers (after one warm-up pass)")
    rates = {}
    for preset, aug in (("imagenet", "flip: paper-*"), ("official", "Cutout + RandAugment: code-*")):
        prep = preprocessing(preset, 448)
        start = time.perf_counter()
        decoded = decoded_images(root, split, prep, workers=2, progress=False, folder=cache_dir("bench", "decoded"))
        if preset == "imagenet":
            out(f"   decoded-image cache written in {time.perf_counter() - start:.1f} s "
                f"({n * 3 * 448 * 448 / 2**20:,.0f} MiB)")
        out(f"   -- {preset} preset ({aug})")
        for source, pixels in (("JPEG", None), ("decoded cache", decoded)):
            for workers in (1, 2):
                ds = MultiLabelImageDataset(root, split, prep, train=True, decoded=pixels, check=False)
                loader = DataLoader(ds, batch_sampler=GlobalBatchSampler(n, 32, 0, tag_epoch=True),
                                    num_workers=workers, persistent_workers=True)
                sum(len(x) for x, _ in loader)  # warm-up: worker start, page cache
                start = time.perf_counter()
                count = sum(len(x) for x, _ in loader)
                rates[(preset, source, workers)] = count / (time.perf_counter() - start)
            r1, r2 = rates[(preset, source, 1)], rates[(preset, source, 2)]
            out(f"   {source:14s} 1 worker {_num(r1)} img/s   2 workers {_num(r2)} img/s   ({r2 / r1:.2f}x)")
        out(f"   the decoded cache reads {rates[(preset, 'decoded cache', 1)] / rates[(preset, 'JPEG', 1)]:.1f}x "
            "faster than decoding (one worker)")
    return {"jpeg_1": rates[("imagenet", "JPEG", 1)], "decoded_1": rates[("imagenet", "decoded cache", 1)]}


# ---------------------------------------------------------------- one training step


def _step_model(name: str, device: torch.device, optimised: bool):
    """(model, config, input shape without batch, cached) of a step configuration."""
    from cprfl_lib.data.synthetic import class_names as synthetic_class_names

    if name == "paper":
        config = bench_config("paper-voc")
    else:
        config = bench_config("cpu-voc", **{"train.cache_features": name == "cpu-head"})
    apply_overrides(config, {"train.amp": optimised, "train.channels_last": optimised and name != "cpu-head"})
    classes = synthetic_class_names("synth-coco-lt" if "coco" in config["data"]["dataset"] else "synth-voc-lt")
    model = factory.model_from(config, classes).to(device)
    size = config["data"]["image_size"]
    cached = name == "cpu-head"
    shape = (3, size, size)
    if cached:  # the shape of the cached feature map
        with torch.no_grad():
            shape = tuple(model.features(torch.zeros(1, 3, size, size, device=device)).shape[1:])
    return model, config, shape, cached


def time_steps(name: str, batch: int, steps: int, warmup: int, device: torch.device, optimised: bool) -> dict:
    """Images/s and peak memory of ``steps`` training steps of one configuration at one batch size."""
    model, config, shape, cached = _step_model(name, device, optimised)
    loss_fn = build_loss(config["loss"]["name"], **(config["loss"]["params"] or {}))
    state = build_train_state(config, model, loss_fn, warmup + steps, device, cached=cached)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator) if cached else torch.randint(0, 256, (batch, *shape),
                                                                                       dtype=torch.uint8)
    y = (torch.rand(batch, model.head.num_classes, generator=generator) < 0.1).float()
    state.max_batches = None
    with torch_threads(config["train"]["num_threads"]):  # as a training run sets them
        threads = torch.get_num_threads()
        if warmup:
            engine.train_one_epoch(state, [(x, y)] * warmup, show=False)
        sync(device)
        with peak_memory(device) as mem:
            start = time.perf_counter()
            engine.train_one_epoch(state, [(x, y)] * steps, show=False)
            sync(device)
            seconds = time.perf_counter() - start
    return {"img_s": batch * steps / seconds, "ms_step": 1000 * seconds / steps, "mem": mem["bytes"],
            "mem_what": mem["what"], "threads": threads}


def section_step(device: torch.device, quick: bool, configs: list[str], out=_say) -> dict:
    cpu = device.type == "cpu"
    plan = {"cpu-e2e": [8] if quick else [16, 32], "cpu-head": [32] if quick else [32, 128],
            "paper": ([1] if quick else [1, 2]) if cpu else ([16] if quick else [16, 32])}
    cr, pr = load_recipe("cpu-voc"), load_recipe("paper-voc")
    cpu_d, cpu_px, paper_d = cr["model"]["dim"], cr["data"]["image_size"], pr["model"]["dim"]
    what = {"cpu-e2e": f"cpu-voc: frozen EfficientNet-Lite0 {cpu_px} px per step + d={cpu_d} head",
            "cpu-head": f"cpu-voc: the d={cpu_d} head on cached tokens",
            "paper": f"paper-voc: ResNet-101 448 px fine-tuned + d={paper_d} VSI, 20 classes"}
    out("\n== training step (random weights and batches in memory; the engine's train state and train_one_epoch)")
    if cpu:
        out("   CPU, fp32, with the recipe's train.num_threads (as a training run). AMP and channels_last are "
            "measured on a GPU only; a paper step takes seconds here, so it runs at batch 1-2 for one timed step.")
    out(f"   {'config':11s} {'batch':>5s} {'mode':6s} {'threads':>7s} {'img/s':>9s} {'ms/step':>9s}  peak memory")
    found = {}
    for name in configs:
        out(f"   -- {name}: {what[name]}")
        for batch in plan[name]:
            if name == "paper" and cpu:  # seconds per step: the first one is the warm-up, or nothing in --quick
                steps, warmup = (1, 0) if quick else (2, 1)
            else:
                steps, warmup = (3, 1) if quick else (20, 3)
            modes = [False] if cpu else [False, True]
            results = {opt: time_steps(name, batch, steps, warmup, device, opt) for opt in modes}
            for opt, r in results.items():
                mode = "amp+cl" if opt else "fp32"
                threads = r["threads"] if cpu else "-"
                out(f"   {name:11s} {batch:5d} {mode:6s} {threads:>7} {_num(r['img_s'])} {_num(r['ms_step'])}  "
                    f"{r['mem'] / 2**20:,.0f} MiB ({r['mem_what']})")
                found[(name, batch, opt)] = r
            if len(results) == 2:
                speedup = results[True]["img_s"] / results[False]["img_s"]
                out(f"   {name:11s} {batch:5d} speed-up of AMP + channels_last: {speedup:.2f}x")
    return found


# ---------------------------------------------------------------- epochs and evaluation of the cpu-voc recipe


def _epoch_data(device: torch.device, quick: bool):
    """The cpu-voc recipe's benchmark, model and both kinds of data, with the feature extraction timed."""
    from cprfl_lib.data.datasets import MultiLabelImageDataset
    from cprfl_lib.train.features import extract_features

    overrides = {"data.synthetic_limit": 128 if quick else None, "data.decoded_cache": False}
    config = bench_config("cpu-voc", **overrides, **{"train.cache_features": False})
    bench = factory.benchmark_from(config)
    model = factory.model_from(config, bench.class_names).to(device)
    images = RunData(config, bench, model, device, Dist(), progress=False)  # end-to-end data
    prep = factory.preprocessing_from(config, model.backbone)
    start = time.perf_counter()  # what the cache holds: test-time features of both splits
    tensors = {}
    for split, targets in (("train", bench.train), ("test", bench.test)):
        ds = MultiLabelImageDataset(bench.image_root, targets, prep, check=False)
        feats = extract_features(model, ds, config["train"]["eval_batch_size"], device, progress=False)
        tensors[split] = torch.utils.data.TensorDataset(feats, torch.from_numpy(ds.targets.astype("float32")))
    extract_s = time.perf_counter() - start
    return config, bench, model, images, tensors, extract_s


def time_epoch(config, bench, model, dataset, cached: bool, device: torch.device) -> float:
    """Seconds for one training epoch over ``dataset`` as the engine runs it."""
    tr, oc = config["train"], config["optim"]
    sampler = GlobalBatchSampler(len(dataset), oc["batch_size"], tr["seed"], True, 0, 1, tag_epoch=not cached)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    state = build_train_state(config, model, factory.loss_from(config, bench), len(loader), device, cached=cached)
    with torch_threads(tr["num_threads"]):
        start = time.perf_counter()
        engine.train_one_epoch(state, loader, show=False)
        sync(device)
        return time.perf_counter() - start


def time_eval(config, model, dataset, cached: bool, device: torch.device) -> float:
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, list(range(len(dataset)))), batch_size=config["train"]["eval_batch_size"])
    with torch_threads(config["train"]["num_threads"]):  # a run evaluates inside its training threads
        start = time.perf_counter()
        engine.evaluate({"model": model}, loader, len(dataset), device, cached=cached)
        sync(device)
        return time.perf_counter() - start


def section_epoch_eval(device: torch.device, quick: bool, sections: list[str], out=_say) -> None:
    config, bench, model, images, tensors, extract_s = _epoch_data(device, quick)
    n_train, n_test = len(bench.train), len(bench.test)
    threads = config["train"]["num_threads"] or torch.get_num_threads()
    out(f"\n   data: {bench.name} ({n_train} train / {n_test} test images, {config['data']['image_size']} px, "
        "generated)" + ("  [--quick: a 128-image subset]" if quick else ""))
    t: dict[str, float] = {}
    if "epoch" in sections:
        t["head"] = time_epoch(config, bench, model, tensors["train"], True, device)
        t["e2e"] = time_epoch(config, bench, model, images.train, False, device)
        out(f"\n== one epoch of cpu-voc: head on cached features vs end-to-end (train.cache_features=false); "
            f"{threads} training thread(s) as the recipe says")
        out(f"   end-to-end epoch       {t['e2e']:8.2f} s  ({n_train / t['e2e']:8.1f} img/s; JPEG decoding + frozen "
            "backbone + head)")
        out(f"   cached-features epoch  {t['head']:8.2f} s  ({n_train / t['head']:8.1f} img/s)")
        out(f"   ratio                  {t['e2e'] / t['head']:8.1f}x  (goal >= 10x)")
        out(f"   one-time extraction    {extract_s:8.2f} s  (train + test features, {torch.get_num_threads()} threads)")
    if "eval" in sections:
        t["eval_e2e"] = time_eval(config, model, images.eval["test"], False, device)
        t["eval_head"] = time_eval(config, model, tensors["test"], True, device)
        out(f"\n== evaluation over the test set ({n_test} images, batch {config['train']['eval_batch_size']}, "
            f"{threads} thread(s))")
        out(f"   end-to-end               {_num(n_test / t['eval_e2e'])} img/s  ({t['eval_e2e']:.2f} s)")
        out(f"   head on cached features  {_num(n_test / t['eval_head'])} img/s  ({t['eval_head']:.2f} s)")


# ---------------------------------------------------------------- the projection to GPUs


def section_projection(loader_rates: dict | None, out=_say) -> None:
    """The paper profile's FLOP count (its planned runs) on one H200 and on 8, at a stated utilisation."""
    from cprfl_repro.plan import architecture_cost

    config = load_recipe("paper-voc")
    cost = architecture_cost(config, 20)
    per_image = cost["train_image"]
    n_train, n_test, epochs = 1142, 4952, config["optim"]["epochs"]
    run_flops = epochs * n_train * per_image + n_test * cost["eval_image"]
    low, high = (H200_BF16 * u for u in UTILISATION)
    out("\n== projection to GPUs (FLOPs counted by torch on the meta device; nothing measured on a GPU: the utilisation"
        f" {UTILISATION[0]:.0%}-{UTILISATION[1]:.0%} of {H200_BF16 / 1e12:,.0f} TFLOP/s bf16 and {FIXED_S[0]:.0f}-"
        f"{FIXED_S[1]:.0f} s fixed per run are assumptions; tools/gpu_check.sh measures both)")
    out(f"   paper-voc image: {per_image / 1e9:,.0f} GFLOP forward + backward, {cost['eval_image'] / 1e9:,.0f} GFLOP "
        f"forward; one run ({epochs} epochs, evaluated after the last): {run_flops / 1e15:,.1f} PFLOP")
    out(f"   one H200: a paper-voc run {run_flops / high / 60:,.1f}-{run_flops / low / 60:,.1f} min of compute plus "
        f"{FIXED_S[0]:.0f}-{FIXED_S[1]:.0f} s fixed, {n_train * epochs / (run_flops / low):,.0f}-"
        f"{n_train * epochs / (run_flops / high):,.0f} training img/s")
    plan = _paper_plan_flops()
    if plan is not None:
        total, runs = plan
        out(f"   the paper profile ({runs} runs, {total / 1e18:,.2f} EFLOP): at least {total / H200_BF16 / 60:,.0f} min "
            "on one H200 (the FLOP count at 100 % of its peak: the physical floor)")
        for gpus in (1, 8):
            fast = (total / high + runs * FIXED_S[0]) / 3600 / gpus
            slow = (total / low + runs * FIXED_S[1]) / 3600 / gpus
            out(f"   the paper profile: about {fast:,.1f}-{slow:,.1f} h on {gpus} H200 (a projection)"
                + ("" if gpus == 1 else " (runs spread over the GPUs, one worker each)"))
    rate = high  # the faster end: the loader must keep up with it
    if loader_rates:
        need = n_train * epochs / (run_flops / rate)
        per_worker = loader_rates["decoded_1"]
        out(f"   to keep one H200 fed: {need:,.0f} img/s; this CPU's decoded-cache pipeline gives {per_worker:,.0f} "
            f"img/s per worker (JPEG decoding {loader_rates['jpeg_1']:,.0f}): about {need / per_worker:,.1f} workers "
            "of this CPU's speed")


def _paper_plan_flops():
    """(FLOPs, runs) of the whole paper profile, from its planned runs, when the split lists are at hand."""
    from cprfl_lib.data.lists import fetch_split_lists
    from cprfl_lib.paths import cache_dir
    from cprfl_repro.context import RunContext
    from cprfl_repro.plan import make_plan
    from cprfl_repro.reproduce import notebooks, profile_parameters

    try:
        for name in ("voc-lt", "coco-lt"):
            fetch_split_lists(name, download=False)
    except CprflError:
        _say("   (the whole-profile figure needs the VOC-LT and COCO-LT lists in the cache: `cprfl data fetch`)")
        return None
    params = profile_parameters("paper")
    overrides = params.pop("overrides", {})
    root = Path(__file__).resolve().parents[1]
    ctx = RunContext("paper", cache_dir("bench", "results"), cache_dir("bench", "runs"), None, None, overrides)
    plan = make_plan(ctx, params, notebooks(root))
    return sum(r.flops for r in plan.runs) + plan.extraction_flops, len(plan.runs)


# ---------------------------------------------------------------- make reproduce


def section_reproduce(out=_say) -> None:
    root = Path(__file__).resolve().parents[1]
    out("\n== make reproduce: wall time per notebook (from the last manifest)")
    found = False
    for profile in ("quick", "paper-check", "paper", "smoke"):
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


def _make_reproduce(root: Path, env: dict, *variables: str) -> tuple[float, str]:
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(["make", "--no-print-directory", "reproduce", *variables], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise CprflError(f"make reproduce {' '.join(variables)} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return time.perf_counter() - start, done.stdout


def _trained(stdout: str) -> str:
    import re

    found = re.search(r"(\d+) distinct runs, (\d+) finished earlier, (\d+) to train", stdout)
    return f"{found.group(3)} of {found.group(1)} runs trained" if found else "runs: not reported"


def section_rerun(profile: str = "quick", out=_say) -> dict[str, float]:
    """Change one setting of Table 2 and rerun notebook 05 alone, through make, on warm caches (results in a temporary
    folder; the runs stay in the profile's run store)."""
    import os
    import tempfile

    root = Path(__file__).resolve().parents[1]
    out(f"\n== the researcher's loop ({profile}): one setting of Table 2 changed, notebook 05 rerun alone")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "CPRFL_RESULTS_DIR"} | {"CPRFL_RESULTS_ROOT": tmp}
        base = (f"PROFILE={profile}", "ONLY=05", "STUDIES=table2")
        seconds, stdout = _make_reproduce(root, env, *base, "NAME=bench-reference")
        out(f"   warm-up, the profile's own Table 2 (what the store lacked trains): {seconds:6.1f} s, {_trained(stdout)}")
        settings = Path(tmp) / "gamma.yaml"
        value = 2 + (time.time_ns() // 1000) % 997 / 1000  # a value no earlier bench trained: a real change
        settings.write_text(f"loss:\n  params: {{gamma_neg: {value}}}\n")
        seconds, stdout = _make_reproduce(root, env, *base, "NAME=bench-change", f"SETTINGS={settings}")
        out(f"   loss.params.gamma_neg: {value} for every run, notebook 05 rerun:      {seconds:6.1f} s, "
            f"{_trained(stdout)}  (goal: <= 180 s on 2 cores)")
        again, stdout = _make_reproduce(root, env, *base, "NAME=bench-change", f"SETTINGS={settings}")
        out(f"   the same again (nothing changed):                        {again:6.1f} s, {_trained(stdout)}")
    return {"change_s": seconds, "again_s": again}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few iterations and small batches: checks that it works")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default: all but rerun)")
    p.add_argument("--rerun-profile", default="quick", help="the profile the rerun section changes (smoke: seconds)")
    p.add_argument("--configs", default=",".join(STEP_CONFIGS), help=f"step configurations: {', '.join(STEP_CONFIGS)}")
    args = p.parse_args(argv)
    sections, configs = args.sections.split(","), args.configs.split(",")
    for given, known, flag in ((sections, SECTIONS, "--sections"), (configs, STEP_CONFIGS, "--configs")):
        if set(given) - set(known):
            p.error(f"{flag}: unknown {sorted(set(given) - set(known))}; choose from {', '.join(known)}")
    try:
        device = resolve_device(args.device)
    except CprflError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print(f"cprfl bench on {device_name()} [{device}], torch {torch.__version__}"
          + ("  (--quick: few iterations, rough figures)" if args.quick else ""), flush=True)
    rates = section_loader(args.quick) if "loader" in sections else None
    if "step" in sections:
        section_step(device, args.quick, configs)
    if {"epoch", "eval"} & set(sections):
        section_epoch_eval(device, args.quick, sections)
    if "projection" in sections:
        section_projection(rates)
    if "reproduce" in sections:
        section_reproduce()
    if "rerun" in sections:
        try:
            section_rerun(args.rerun_profile)
        except CprflError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
