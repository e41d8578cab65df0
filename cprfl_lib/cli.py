"""The ``cprfl`` command. Errors from bad input are one line and exit code 2, never a traceback wall."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cprfl_lib.errors import CprflError, run_command

BENCHMARKS = ("voc-lt", "coco-lt", "synth-voc-lt", "synth-coco-lt")  # splits.known_benchmarks(), without importing torch for --help


def _cmd_recipes(args) -> None:
    from cprfl_lib.train.recipes import available_recipes, dump, load_recipe

    if args.name:
        print(dump(load_recipe(args.name, args.overrides)), end="")
    else:
        for name in available_recipes():
            print(f"{name:12s} {load_recipe(name)['description'].strip().splitlines()[0]}")


def _cmd_data(args) -> None:
    from cprfl_lib.data.lists import fetch_split_lists, load_benchmark

    if args.action == "fetch":
        for role, path in fetch_split_lists(args.dataset, list_dir=args.list_dir).items():
            print(f"{role:6s} {path}")
        return
    bench = load_benchmark(args.dataset, list_dir=args.list_dir, data_root=args.data_root)
    if args.action == "info":
        groups = bench.groups
        print(f"{bench.name}: {bench.num_classes} classes, {len(bench.train)} train / {len(bench.test)} test images"
              + ("  [generated data, not a real benchmark]" if bench.is_synthetic else ""))
        print(f"groups: head {sum(groups == 'head')}, medium {sum(groups == 'medium')}, tail {sum(groups == 'tail')}")
        for name, count, group in sorted(zip(bench.class_names, bench.train_counts, groups), key=lambda t: -t[1]):
            print(f"  {name:16s} {count:5d}  {group}")
    elif args.action == "check":
        from cprfl_lib.data.datasets import check_images

        if bench.image_root is None:
            raise CprflError(f"{bench.name}: give --data-root, the folder that holds the images")
        for split in (bench.train, bench.test):
            check_images(bench.image_root, split.paths)
        print(f"all {len(bench.train) + len(bench.test)} images of {bench.name} are present under {bench.image_root}")


def _cmd_embed(args) -> None:
    from cprfl_lib.semantics import encode_classes
    from cprfl_lib.data.lists import benchmark_class_names

    names = benchmark_class_names(args.dataset, list_dir=args.list_dir)
    emb = encode_classes(args.encoder, names, weights=args.weights, path=args.path, dim=args.dim)
    print(f"{args.encoder}: {tuple(emb.shape)} embeddings for {args.dataset} (cached)")


def _cmd_train(args) -> None:
    from cprfl_lib.train.recipes import apply_overrides, load_recipe

    config = load_recipe(args.recipe, args.overrides)
    from cprfl_lib.train.engine import train  # after the recipe check: a mistyped recipe fails without importing torch
    apply_overrides(config, {k: v for k, v in (("data.data_root", args.data_root), ("data.list_dir", args.list_dir))
                             if v is not None})
    out = Path(args.output_dir or f"runs/{config['recipe']}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    metrics = train(config, out, resume=args.resume)
    last = metrics["last_epoch"]["model"]
    kind = "generated data" if metrics["synthetic"] else "real data"
    print(f"{metrics['dataset']} ({kind}), last epoch: mAP {last['mAP']:.2f}  head {last['head']:.2f}  "
          f"medium {last['medium']:.2f}  tail {last['tail']:.2f}   [{metrics['wall_s']:.0f} s]")
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
    from cprfl_lib.inference import predict

    for image, top in zip(args.images, predict(args.checkpoint, args.images, args.top_k, args.device, args.ema, ckpt)):
        print(image)
        for name, prob in top:
            print(f"  {prob:6.3f}  {name}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cprfl", description="CPRFL: category-prompt refined feature learning "
                                "for long-tailed multi-label classification (reproducibility package).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("recipes", help="list the recipes, or print one resolved")
    r.add_argument("name", nargs="?")
    r.add_argument("overrides", nargs="*", help="section.key=value")
    r.set_defaults(func=_cmd_recipes)

    d = sub.add_parser("data", help="fetch split lists, show a benchmark, check that its images are present")
    d.add_argument("action", choices=("fetch", "info", "check"))
    d.add_argument("--dataset", choices=BENCHMARKS, default="synth-voc-lt")
    d.add_argument("--list-dir", help="folder with the split lists (default: fetched into the cache)")
    d.add_argument("--data-root", help="image root (real) or folder of the generated data")
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
        c.add_argument("checkpoint")
        if name == "predict":
            c.add_argument("images", nargs="+")
            c.add_argument("--top-k", type=int, default=5)
        else:
            c.add_argument("--data-root")
            c.add_argument("--list-dir")
        c.add_argument("--device", default="auto")
        c.add_argument("--ema", action="store_true", help="use the EMA weights")
        c.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("cprfl", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
