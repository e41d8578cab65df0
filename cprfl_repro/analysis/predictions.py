"""Trained runs seen up close (notebook 06): the paper's Fig. 4, per-class AP, attention, group mAP.

Runs come from :func:`cprfl_lib.studies.run_study` (the study "table1" of notebook 04, so the
same runs are reused, not retrained): each run folder holds ``predictions.npz`` (test logits, targets, class
names, training counts) and ``metrics.json``. Nothing here trains. Colours: head / medium /
tail for a correct class, red for a predicted class that is not in the image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cprfl_lib.errors import CprflError
from cprfl_lib.metrics import GROUPS, average_precision, class_groups
from cprfl_repro.reported import COLUMNS

CATEGORIES = (*GROUPS, "incorrect")


@dataclass
class RunPredictions:
    """The test-set predictions of one run (``predictions.npz``)."""

    label: str
    run_dir: Path
    logits: np.ndarray  # (N, C)
    targets: np.ndarray  # (N, C) 0/1
    class_names: list[str]
    train_counts: np.ndarray  # (C,)
    thresholds: list[int] | None = None  # the run's group thresholds (None: the paper's 100 / 20)

    @property
    def groups(self) -> np.ndarray:
        return class_groups(self.train_counts, self.thresholds)

    @property
    def probabilities(self) -> np.ndarray:
        return 1 / (1 + np.exp(-self.logits.astype(np.float64)))

    def ap(self) -> np.ndarray:
        return average_precision(self.logits, self.targets)


def load_predictions(run_dir: str | Path, label: str, benchmark=None) -> RunPredictions:
    """A run's test predictions; with ``benchmark``, checked to be of its test split (same classes, same images)."""
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        raise CprflError(f"{path} does not exist: run the study first (notebook 04 or studies.run_study)")
    with np.load(path) as d:
        run = RunPredictions(label, Path(run_dir), d["model"], d["targets"], [str(n) for n in d["class_names"]],
                             d["train_counts"], d["group_thresholds"].tolist() if "group_thresholds" in d else None)
    if benchmark is not None and (run.class_names != list(benchmark.class_names)
                                  or not np.array_equal(run.targets, benchmark.test.targets)):
        raise CprflError(f"{path} holds predictions for other classes or test images than {benchmark.name}")
    return run


def study_runs(runs: pd.DataFrame) -> dict[str, Path]:
    """The run folder of each finished variant of a study table (one seed each)."""
    ok = runs[runs["status"] == "ok"]
    missing = sorted(set(runs["variant"]) - set(ok["variant"]))
    if missing:
        reasons = runs[runs["variant"].isin(missing)]["status"].tolist()
        raise CprflError(f"runs not available: {dict(zip(missing, reasons))}")
    return {v: Path(d) for v, d in zip(ok["variant"], ok["run_dir"])}


def group_map_table(runs_by_variant: Mapping[str, Sequence[Path]], paper_rows: Mapping[str, tuple[str, Mapping | None]],
                    ours: str, theirs: str) -> pd.DataFrame:
    """Last-epoch mAP and group mAPs per variant (mean ± std over the seeds found) beside the paper's row.

    ``paper_rows`` maps our variant to (the paper's row name, its numbers or None).
    """
    rows = []
    for label, folders in runs_by_variant.items():
        values = np.array([[json.loads((Path(f) / "metrics.json").read_text())["last_epoch"]["model"][c]
                            for c in COLUMNS] for f in folders], dtype=float)
        if not len(values):
            raise CprflError(f"no finished run of {label!r} to average")
        std = values.std(0, ddof=1) if len(values) > 1 else np.full(len(COLUMNS), np.nan)
        rows.append({"variant": label, "source": f"ours, {ours}", "seeds": len(values),
                     **dict(zip(COLUMNS, values.mean(0))), **{f"{c} std": s for c, s in zip(COLUMNS, std)}})
        name, paper = paper_rows.get(label, (None, None))
        if paper is not None:
            rows.append({"variant": label, "source": f"paper ({name}), {theirs}", "seeds": None, **paper})
    return pd.DataFrame(rows)


def group_map_metrics(table: pd.DataFrame) -> dict:
    """{variant: {"ours": {mAP, head, medium, tail, seeds}, "paper": {...}}} from :func:`group_map_table`."""
    out: dict = {}
    for _, row in table.iterrows():
        key = "paper" if row["source"].startswith("paper") else "ours"
        entry = {c: float(row[c]) for c in COLUMNS}
        if key == "ours":
            entry["seeds"] = int(row["seeds"])
        out.setdefault(row["variant"], {})[key] = entry
    return out


@dataclass
class ZeroShotColumn:
    """Zero-shot CLIP scores of the chosen images, or why there are none."""

    available: bool
    reason: str
    scores: np.ndarray | None  # (n, C) softmax over the classes

    @property
    def column(self) -> np.ndarray | str:
        """What :func:`figure4_predictions` takes: the scores, or the reason."""
        return self.scores if self.available else self.reason


def zero_shot_column(class_names: Sequence[str], images: Sequence[Image.Image], weights, encoder: str = "clip-rn50",
                     device: str = "cpu") -> ZeroShotColumn:
    """Zero-shot CLIP over the images when its weights can be had here, else the reason."""
    from cprfl_lib import zero_shot

    ok, reason = zero_shot.status(encoder, weights)
    if not ok:
        return ZeroShotColumn(False, reason, None)
    model = zero_shot.load_zero_shot(class_names, encoder, weights, device=device)
    return ZeroShotColumn(True, reason, model.predict(images, "softmax").numpy())


# ---------------------------------------------------------------- choosing images and top-k


def choose_images(targets: np.ndarray, groups: np.ndarray, n: int, image_ids: Sequence[int] | None = None) -> list[int]:
    """Explicit test indices (checked), or ``n`` images with ≥ 2 labels including a tail class.

    Automatic choice, in test order: first images that add a tail class not shown yet, then other
    images with ≥ 2 labels and a tail class, then any image with ≥ 2 labels, then any image.
    """
    count = len(targets)
    if image_ids is not None:
        ids = [int(i) for i in image_ids]
        bad = [i for i in ids if not 0 <= i < count]
        if bad or not ids:
            raise CprflError(f"image_ids must be test indices in 0..{count - 1}, got {list(image_ids)!r}")
        return ids
    if n < 1:
        raise CprflError(f"n_images must be at least 1, got {n}")
    tail = targets[:, groups == "tail"].astype(bool)
    many = targets.sum(1) >= 2
    with_tail = np.flatnonzero(many & tail.any(1))
    chosen, seen = [], np.zeros(tail.shape[1], bool)
    for i in with_tail:
        if len(chosen) < n and (tail[i] & ~seen).any():
            chosen.append(int(i))
            seen |= tail[i]
    for pool in (with_tail, np.flatnonzero(many), np.arange(count)):
        chosen += [int(i) for i in pool if int(i) not in chosen][: n - len(chosen)]
    return chosen[:n]


def top_k(scores: np.ndarray, target: np.ndarray, groups: np.ndarray, class_names: Sequence[str],
          k: int = 3) -> list[tuple[str, float, str]]:
    """The ``k`` highest-scoring classes of one image: (name, score, head|medium|tail|incorrect)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [(class_names[c], float(scores[c]), str(groups[c]) if target[c] else "incorrect") for c in order]


# ---------------------------------------------------------------- figures
