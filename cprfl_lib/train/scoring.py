"""The figures of a run: which epochs are evaluated, a split's figures, the best epoch, and metrics.json.

:func:`split_figures` turns one split's logits into mAP, group mAPs and the OP/OR/OF1/CP/CR/CF1 family
(``cprfl evaluate`` reports a finished run's weights with it too); :func:`final_metrics` gathers a run's
record: the last epoch's figures of every evaluated split, the best epoch selected on the test set (what
the official code reported, labelled as such) and the one selected on the validation split.
"""

from __future__ import annotations

from cprfl_lib.metrics import map_report, threshold_metrics, topk_metrics
from cprfl_lib.runinfo import provenance


def is_eval_epoch(epoch: int, config: dict) -> bool:
    """Whether the evaluated splits are scored after ``epoch``: always the last, and from eval_start every
    eval_every epochs when the recipe asks for it (for the best-epoch column)."""
    tr, last = config["train"], config["optim"]["epochs"]
    every = tr["eval_every"]
    return epoch == last or (every is not None and epoch >= tr["eval_start"] and (epoch - tr["eval_start"]) % every == 0)


def split_figures(scores, benchmark, threshold: float, split: str = "test") -> dict:
    """mAP and group mAPs, and the OP/OR/OF1/CP/CR/CF1 family: at ``threshold``, for the top 3 classes, and for
    the top 3 that also pass ``threshold`` (the official code's top-3 figures; docs/DIFFERENCES.md)."""
    targets = getattr(benchmark, split).targets
    r = map_report(scores, targets, benchmark.train_counts, benchmark.class_names, benchmark.thresholds)
    k = min(3, scores.shape[1])
    at = threshold_metrics(scores, targets, threshold)
    top = topk_metrics(scores, targets, k)
    official = topk_metrics(scores, targets, k, threshold)
    return {**r.as_dict(), **{f"{key}@{threshold}": v for key, v in at.items()},
            **{f"{key}@top3": v for key, v in top.items()},
            **{f"{key}@top3>={threshold}": v for key, v in official.items()}}


def best_epoch(history: list[dict], split: str) -> tuple[int, str, dict] | None:
    """(epoch, "model" | "ema", that row) of the best mAP on ``split``, where it was evaluated after several epochs."""
    where = "" if split == "test" else f"{split}_"
    evaluated = [(row["epoch"], tag, row[f"{p}{where}mAP"]) for row in history
                 for tag, p in (("model", ""), ("ema", "ema_")) if f"{p}{where}mAP" in row]
    if len({e for e, _, _ in evaluated}) < 2:
        return None
    epoch, tag, _ = max(evaluated, key=lambda t: t[2])
    return epoch, tag, next(r for r in history if r["epoch"] == epoch)


def row_figures(row: dict, tag: str, split: str) -> dict:
    """The mAP and group mAPs of ``tag`` ("model" or "ema") on ``split`` in a summary row."""
    p = ("" if tag == "model" else "ema_") + ("" if split == "test" else f"{split}_")
    return {k: row[f"{p}{k}"] for k in ("mAP", "head", "medium", "tail") if f"{p}{k}" in row}


def final_metrics(config, benchmark, history, scores, seconds, device) -> dict:
    """The content of metrics.json: ``scores`` ({split: {model tag: logits}}) of the last epoch, ``history`` the
    summary rows."""
    thr = config["train"]["threshold"]
    splits = {split: {tag: split_figures(s, benchmark, thr, split) for tag, s in by_tag.items()}
              for split, by_tag in scores.items()}
    out = {"dataset": benchmark.name, "synthetic": benchmark.is_synthetic, "recipe": config["recipe"],
           "seed": config["train"]["seed"], "epochs": len(history), "wall_s": round(seconds, 1), "device": str(device)}
    if "test" in splits:
        out.update(test_images=len(benchmark.test), test_subset=benchmark.test.subset, last_epoch=splits["test"])
    if "val" in splits:
        out.update(val_images=len(benchmark.val), val_last_epoch=splits["val"])
    best = best_epoch(history, "test")
    if "test" in splits:
        out["best_on_test"] = None if not best else {
            "epoch": best[0], "model": best[1], **row_figures(best[2], best[1], "test"),
            "note": "epoch selected on the test set, as the official code reported; optimistic, not a held-out estimate"}
    best = best_epoch(history, "val")
    if best:  # a held-out choice of the epoch: the validation split's best, with the test figures of that epoch
        out["best_on_val"] = {"epoch": best[0], "model": best[1], "val": row_figures(best[2], best[1], "val"),
                              **({"test": row_figures(best[2], best[1], "test")} if "test" in splits else {})}
    out["provenance"] = provenance(config)
    return out
