"""The ``cprfl`` command. Errors from bad input are one line and exit code 2, never a traceback wall."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cprfl_lib.cpus import usable_cpus
from cprfl_lib.data.names import BENCHMARKS
from cprfl_lib.errors import CprflError, run_command


def _cmd_recipes(args) -> None:
    from cprfl_lib.train.recipes import available_recipes, dump, load_recipe

    if args.name:
        print(dump(load_recipe(args.name, args.overrides)), end="")
    else:
        for name in available_recipes():
            print(f"{name:12s} {load_recipe(name)['description'].strip().splitlines()[0]}")


def _cmd_data(args) -> None:
    from cprfl_lib.data.benchmarks import load_benchmark
    from cprfl_lib.data.lists import fetch_split_lists, install_split_lists
    from cprfl_lib.data.names import SYNTHETIC

    if args.action == "fetch":
        if args.dataset in SYNTHETIC:
            raise CprflError(f"{args.dataset} is generated, not fetched; `cprfl data info --dataset {args.dataset}`")
        if args.dataset == "own":
            raise CprflError("own is read from its folder, never fetched or copied; `cprfl data check --dataset own "
                             "--data-root DIR`")
        if args.list_dir:  # a user's copy: verified, then copied into the cache for later runs
            files = install_split_lists(args.dataset, args.list_dir)
        else:
            files = fetch_split_lists(args.dataset)
        for role, path in files.items():
            print(f"{role:6s} {path}")
        return
    bench = load_benchmark(args.dataset, list_dir=args.list_dir, data_root=args.data_root,
                           group_thresholds=args.group_thresholds)
    if args.action == "info":
        from cprfl_lib.metrics import group_thresholds

        groups = bench.groups
        print(f"{bench.name}: {bench.num_classes} classes, {len(bench.train)} train / {len(bench.test)} test images"
              + ("  [generated data, not a real benchmark]" if bench.is_synthetic else "")
              + (f"  [your dataset, {bench.image_root}]" if bench.is_own else ""))
        if bench.is_own:
            from cprfl_lib.data.own import unlabelled

            print(f"lists: {', '.join(str(p) for p in bench.list_files.values())}")
            print("validation split: " + (f"{len(bench.val)} images" if bench.val is not None else
                                          "none (choices made on the test split are optimistic)"))
            print("images with no label: " + ", ".join(f"{s} {unlabelled(getattr(bench, s))}"
                                                       for s in ("train", "val", "test") if getattr(bench, s)))
        head, medium = group_thresholds(bench.thresholds)
        print(f"groups: head {sum(groups == 'head')}, medium {sum(groups == 'medium')}, tail {sum(groups == 'tail')}"
              f" (head >= {head}, tail < {medium} training images)")
        for name, count, group in sorted(zip(bench.class_names, bench.train_counts, groups), key=lambda t: -t[1]):
            print(f"  {name:16s} {count:5d}  {group}")
    elif args.action == "check":
        from cprfl_lib.data.datasets import check_images, find_unreadable

        if bench.image_root is None:
            raise CprflError(f"{bench.name}: give --data-root, the folder that holds the images")
        paths = [p for split in (bench.train, *bench.eval_splits.values()) for p in split.paths]
        if bench.is_own:  # every missing image listed, one a line, before the one-line error
            missing = [p for p in paths if not (bench.image_root / p).is_file()]
            for path in missing:
                print(f"{bench.image_root / path}: missing")
            if missing:
                raise CprflError(f"{len(missing)} of {len(paths)} images of {bench.name} are missing under "
                                 f"{bench.image_root} (listed above)")
        check_images(bench.image_root, paths)
        if not args.deep:
            print(f"all {len(paths)} images of {bench.name} are present under {bench.image_root} "
                  "(--deep also decodes every one)")
            return
        bad = find_unreadable(bench.image_root, paths, workers=args.workers, progress=sys.stderr.isatty())
        for path, why in bad:
            print(f"{bench.image_root / path}: {why}")
        if bad:
            raise CprflError(f"{len(bad)} of {len(paths)} images of {bench.name} under {bench.image_root} cannot be "
                             "decoded (listed above); replace each with the readable original")
        print(f"all {len(paths)} images of {bench.name} under {bench.image_root} decode")


def _cmd_embed(args) -> None:
    from cprfl_lib.data.benchmarks import benchmark_class_names
    from cprfl_lib.semantics import encode_classes

    names = benchmark_class_names(args.dataset, list_dir=args.list_dir)
    emb = encode_classes(args.encoder, names, weights=args.weights, path=args.path, dim=args.dim)
    print(f"{args.encoder}: {tuple(emb.shape)} embeddings for {args.dataset} (cached)")


def _cmd_train(args) -> None:
    from cprfl_lib.train.recipes import load_recipe, parse_overrides

    paths = {k: v for k, v in (("data.data_root", args.data_root), ("data.list_dir", args.list_dir)) if v is not None}
    config = load_recipe(args.recipe, {**parse_overrides(args.overrides), **paths})  # validated once, here
    from cprfl_lib.train.device import resolve_device
    from cprfl_lib.train.distributed import from_rank0, is_main_process
    from cprfl_lib.train.engine import train  # after the recipe check: a mistyped recipe fails
    # without importing torch

    out = Path(args.output_dir or from_rank0(  # one folder for all ranks under torchrun: rank 0 names it
        lambda: f"runs/{config['recipe']}-{time.strftime('%Y%m%d-%H%M%S')}",
        resolve_device(config["train"]["device"]).type)).resolve()
    metrics = train(config, out, resume=args.resume, progress=sys.stderr.isatty())  # bars on a terminal only
    if not is_main_process():  # every rank holds the same figures; rank 0 prints them
        return
    kind = "generated data" if metrics["synthetic"] else "your data" if metrics["dataset"].startswith("own:") \
        else "real data"
    for split, key in (("validation", "val_last_epoch"), ("test", "last_epoch")):
        if key in metrics:
            last = metrics[key]["model"]
            print(f"{metrics['dataset']} ({kind}), {split} split, last epoch: mAP {last['mAP']:.2f}  "
                  f"head {last['head']:.2f}  medium {last['medium']:.2f}  tail {last['tail']:.2f}")
    print(f"{metrics['wall_s']:.0f} s")
    print(f"outputs in {out}")


def _cmd_evaluate(args) -> None:
    from cprfl_lib.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)  # a bad file fails here, before the model stack is imported
    from cprfl_lib.inference import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data_root=args.data_root, list_dir=args.list_dir,
                                 device=args.device, use_ema=args.ema, ckpt=ckpt)
    print(json.dumps(result, indent=2))


def _cmd_predict(args) -> None:
    from cprfl_lib.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)  # a bad file fails here, before the model stack is imported
    classes = len(ckpt["class_names"])
    if args.top_k > classes:  # said, not clamped in silence
        print(f"cprfl: note: --top-k {args.top_k} is more than the model's {classes} classes; all {classes} are listed",
              file=sys.stderr)
    from cprfl_lib.inference import predict

    for image, top in zip(args.images, predict(args.checkpoint, args.images, args.top_k, args.device, args.ema, ckpt)):
        print(image)
        for name, prob in top:
            print(f"  {prob:6.3f}  {name}")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument as one line (no usage block) and exit code 2, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cprfl", description="CPRFL: category-prompt refined feature learning "
                                "for long-tailed multi-label classification (reproducibility package).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("recipes", help="list the recipes, or print one resolved")
    r.add_argument("name", nargs="?")
    r.add_argument("overrides", nargs="*", help="section.key=value")
    r.set_defaults(func=_cmd_recipes)

    d = sub.add_parser("data", help="fetch split lists, show a benchmark, check that its images are present "
                       "(--dataset own --data-root DIR: your dataset)")
    d.add_argument("action", choices=("fetch", "info", "check"))
    d.add_argument("--dataset", choices=BENCHMARKS, default="synth-voc-lt")
    d.add_argument("--list-dir", help="the split lists: one benchmark's folder or a parent with voc_lt/ and coco_lt/ "
                   "(fetch: verified and copied into the cache)")
    d.add_argument("--data-root", help="the image root (VOCdevkit/, train2017/, val2017/ inside it; own: your "
                   "dataset's folder)")
    d.add_argument("--group-thresholds", nargs=2, type=_positive, metavar=("HEAD", "MEDIUM"),
                   help="training images per class from which a class is head / medium (default: 100 20)")
    d.add_argument("--deep", action="store_true", help="check: decode every image and list the unreadable ones")
    d.add_argument("--workers", type=_count, default=usable_cpus(at_most=8), help="check --deep: processes")
    d.set_defaults(func=_cmd_data)

    e = sub.add_parser("embed", help="compute and cache class-name embeddings")
    e.add_argument("--dataset", choices=BENCHMARKS, default="synth-voc-lt")
    e.add_argument("--encoder", default="minilm")
    e.add_argument("--weights", help="CLIP pretrained tag or local checkpoint")
    e.add_argument("--path", help="GloVe / Word2Vec text file")
    e.add_argument("--dim", type=int)
    e.add_argument("--list-dir")
    e.set_defaults(func=_cmd_embed)

    t = sub.add_parser("train", help="train and evaluate a recipe")
    t.add_argument("--recipe", required=True, help="recipe name (see `cprfl recipes`) or a YAML file")
    t.add_argument("--data-root")
    t.add_argument("--list-dir")
    t.add_argument("--output-dir", help="default: runs/<recipe>-<time>")
    t.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=1e-4 train.seed=2")
    t.set_defaults(func=_cmd_train)

    for name, func, helptext in (("evaluate", _cmd_evaluate, "evaluate a checkpoint on its test set"),
                                 ("predict", _cmd_predict, "top-k classes of images")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("checkpoint", help="a run folder, or its weights.pt / checkpoint.pt")
        if name == "predict":
            c.add_argument("images", nargs="+")
            c.add_argument("--top-k", type=_positive, default=5)
        else:
            c.add_argument("--data-root")
            c.add_argument("--list-dir")
        c.add_argument("--device", default="auto")
        c.add_argument("--ema", action="store_true", help="use the EMA weights")
        c.set_defaults(func=func)
    return p


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    # overrides may stand on both sides of an option: `cprfl train optim.lr=1e-4 --recipe cpu-voc train.seed=1`
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    hint = "; the run continues from its last checkpoint with --resume" if args.command == "train" else ""
    return run_command("cprfl", lambda: args.func(args), interrupted=f"interrupted{hint}")


if __name__ == "__main__":
    sys.exit(main())
