"""Trained runs seen up close (notebook 06): the paper's Fig. 4, per-class AP, attention, group mAP.

Runs come from :func:`cprfl_lib.studies.run_study` (the study "table1" of notebook 04, so the
same runs are reused, not retrained): each run folder holds ``predictions.npz`` (test logits, targets, class
names, training counts) and ``metrics.json``. Nothing here trains. Colours: head / medium /
tail for a correct class, red for a predicted class that is not in the image.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cprfl_lib.errors import CprflError
from cprfl_repro.figures import GROUP_COLORS
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

    @property
    def groups(self) -> np.ndarray:
        return class_groups(self.train_counts)

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
                             d["train_counts"])
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


def finished_seed_runs(work_dir: str | Path, recipe: str | dict, overrides: dict | None = None) -> list[Path]:
    """Every seed's run folder of this configuration that finished with the current library code.

    The folders are where :func:`cprfl_lib.studies.run_studies` puts them, and a folder counts on
    the test :func:`cprfl_lib.studies.finished` that decides whether a run is reused, so the seeds notebook 04
    trained are averaged in and stale ones (older code) are not.
    """
    from cprfl_repro.studies import finished, run_config, run_dir_for

    parent = run_dir_for(run_config(recipe, overrides, 0), work_dir).parent
    found = []
    for folder in parent.glob("seed*-*"):
        seed = folder.name.split("-", 1)[0][4:]
        if not seed.isdigit():
            continue
        config = run_config(recipe, overrides, int(seed))
        if run_dir_for(config, work_dir) == folder and finished(config, folder) is not None:
            found.append(folder)
    return sorted(found, key=_seed_of)


def _seed_of(folder: Path) -> int:
    head = folder.name.split("-", 1)[0][4:]
    return int(head) if head.isdigit() else -1


def seed_runs(runs: pd.DataFrame, work_dir: str | Path, recipe: str | dict, variants: Mapping[str, dict],
              overrides: dict | None = None) -> dict[str, list[Path]]:
    """Per variant: its run folders in the study table plus every other finished seed of the same configuration."""
    shown = study_runs(runs)
    return {label: sorted({shown[label], *finished_seed_runs(work_dir, recipe, {**(overrides or {}), **variant})},
                          key=_seed_of)
            for label, variant in variants.items()}


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


def _category_legend(fig: Figure, **kw) -> None:
    labels = {"head": "head (correct)", "medium": "medium (correct)", "tail": "tail (correct)", "incorrect": "incorrect"}
    fig.legend(handles=[Patch(color=GROUP_COLORS[c], label=labels[c]) for c in CATEGORIES], ncols=4, fontsize=8, **kw)


def figure4_predictions(images: Sequence[Image.Image], image_ids: Sequence[int], targets: np.ndarray,
                        class_names: Sequence[str], groups: np.ndarray,
                        columns: Mapping[str, np.ndarray | str], k: int = 3, title: str = "") -> Figure:
    """Fig. 4: each image beside the top-``k`` classes of each method.

    ``columns`` maps a method's label to its scores for these images (n, C), or to a string
    that says why it is not available (shown in its panel, never dropped).
    """
    n, m = len(images), len(columns)
    fig, axes = plt.subplots(n, m + 1, figsize=(2.2 + 2.3 * m, 2.0 * n + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] + [1.1] * m})
    for r, (img, i) in enumerate(zip(images, image_ids)):
        ax = axes[r, 0]
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        truth = [c for c in np.flatnonzero(targets[r])]
        ax.set_ylabel(f"test image {i}", fontsize=7)
        ax.set_xlabel(textwrap.fill("labels: " + ", ".join(class_names[c] for c in truth), 30), fontsize=6)
        for c_ax, (label, scores) in zip(axes[r, 1:], columns.items()):
            c_ax.axis("off")
            if r == 0:
                c_ax.set_title(label, fontsize=8)
            if isinstance(scores, str):
                c_ax.text(0.02, 0.5, textwrap.fill(f"{label}: not available ({scores})", 34), fontsize=6,
                          color="0.4", va="center", transform=c_ax.transAxes)
                continue
            for j, (name, s, cat) in enumerate(top_k(scores[r], targets[r], groups, class_names, k)):
                c_ax.text(0.02, 0.8 - 0.25 * j, f"{j + 1}. {name}  {s:.2f}", fontsize=8, color=GROUP_COLORS[cat],
                          va="center", transform=c_ax.transAxes, fontweight="bold" if cat != "incorrect" else None)
    _category_legend(fig, loc="lower center")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    return fig


def per_class_ap_vs_count(runs: Sequence[RunPredictions], title: str = "") -> Figure:
    """Per-class AP against the class's training images (log), one marker per run, colour by group."""
    base = runs[0]
    counts, groups = base.train_counts, base.groups
    markers = ("o", "^", "s", "D")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    aps = [r.ap() * 100 for r in runs]
    for a, b in zip(aps[:-1], aps[1:]):  # a segment from the first run's AP to the next one's, per class
        for x, y0, y1 in zip(counts, a, b):
            ax.plot([x, x], [y0, y1], color="0.75", lw=0.8, zorder=1)
    for run, ap, marker in zip(runs, aps, markers):
        ax.scatter(counts, ap, c=[GROUP_COLORS[g] for g in groups], marker=marker, s=28, edgecolor="0.2",
                   linewidth=0.4, zorder=2, label=run.label)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("test AP (%)")
    handles = [plt.Line2D([], [], marker=mk, ls="", color="0.5", label=r.label) for r, mk in zip(runs, markers)]
    handles += [Patch(color=GROUP_COLORS[g], label=g) for g in GROUPS]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def attention_maps(images: Sequence[Image.Image], image_ids: Sequence[int], attention: torch.Tensor,
                   targets: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], groups: np.ndarray,
                   max_classes: int = 4, title: str = "") -> Figure:
    """For each image, the attention (h, w) of its positive classes' prompts over it (each on its own scale)."""
    from cprfl_lib.model_analysis import plot_attention

    per_row = [list(np.flatnonzero(t)[:max_classes]) for t in targets]
    ncols = 1 + max(len(c) for c in per_row)
    fig, axes = plt.subplots(len(images), ncols, figsize=(2.1 * ncols, 2.3 * len(images)), squeeze=False)
    for r, (img, i, classes) in enumerate(zip(images, image_ids, per_row)):
        plot_attention(img, attention[r], list(class_names), classes, groups, scores=probabilities[r],
                       ax_row=axes[r], title=f"test image {i}")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def group_map_vs_paper(table: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bars of mAP / head / medium / tail: ours (solid, ± std over seeds) and the paper's (hatched)."""
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    n = len(table)
    width = 0.8 / n
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = list(dict.fromkeys(table["variant"]))
    x = np.arange(len(COLUMNS))
    for j, (_, row) in enumerate(table.iterrows()):
        paper = row["source"].startswith("paper")
        err = [row.get(f"{c} std", np.nan) for c in COLUMNS] if not paper else None
        err = None if err is None or np.all(np.isnan(err)) else err
        bars = ax.bar(x - 0.4 + width * (j + 0.5), [row[c] for c in COLUMNS], width, yerr=err, capsize=2,
                      color=colors[variants.index(row["variant"]) % len(colors)], alpha=0.45 if paper else 1.0,
                      hatch="//" if paper else None, edgecolor="0.2", linewidth=0.4,
                      label=f"{row['variant']} — {row['source']}")
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, ["mAP", "head", "medium", "tail"])
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
