"""Category embeddings compared across text encoders (notebook 02).

CPRFL's premise is that a tail class borrows from the head classes its name is close to.
This module measures that link for each encoder: the cosine similarity of the class-name
embeddings, each tail class's nearest head classes, and how often a nearest neighbour
shares the class's super-category (``cprfl_lib.synthetic.super_categories``; VOC-LT and
COCO-LT use the same names in the same order), next to the agreement chance would give.
Encoders that cannot run here are kept, with the reason, never dropped silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cprfl_lib import semantics
from cprfl_lib.data import synthetic
from cprfl_lib.errors import CprflError
from cprfl_lib.metrics import class_groups  # GROUPS: notebook 02 reads it as vs.GROUPS
from cprfl_lib.semantics.clip import CLIP_MODELS


@dataclass
class ClassInfo:
    """The class names of a dataset and what the analysis needs about them."""

    dataset: str
    names: list[str]
    train_counts: np.ndarray  # (C,) training images per class: decides the groups
    groups: np.ndarray  # (C,) "head" / "medium" / "tail"
    super_categories: list[str] | None  # None where unknown


@dataclass
class EncoderResult:
    encoder: str
    available: bool
    reason: str  # why (not) available
    dim: int | None  # m, where known
    embeddings: np.ndarray | None  # (C, m) float64, when available


def class_info(dataset: str, list_dir: str | Path | None = None, data_root: str | Path | None = None,
               group_thresholds=None) -> ClassInfo:
    """Names, train counts, groups and super-categories; generated names need no images.

    ``own``: a user's dataset, its folder ``data_root`` (lists there or in ``list_dir``); named ``own:<folder>``.
    """
    if dataset == "own":
        from cprfl_lib.data.benchmarks import load_benchmark

        bench = load_benchmark("own", list_dir=list_dir, data_root=data_root, group_thresholds=group_thresholds)
        return ClassInfo(bench.name, bench.class_names, bench.train_counts, bench.groups, None)
    if dataset in synthetic.SYNTHETIC_DATASETS:
        names, counts = synthetic.class_names(dataset), np.array(synthetic.target_train_counts(dataset))
    else:
        from cprfl_lib.data.benchmarks import load_benchmark
        from cprfl_lib.data.lists import SPECS

        if dataset not in SPECS:
            raise CprflError(f"unknown dataset {dataset!r}; choose one of "
                             f"{sorted((*SPECS, *synthetic.SYNTHETIC_DATASETS))}")
        bench = load_benchmark(dataset, list_dir=list_dir, download=False)
        names, counts = bench.class_names, bench.train_counts
    supers = None
    for spec in synthetic.SYNTHETIC_DATASETS.values():  # the real benchmarks share the synth names
        if list(spec.class_names) == names:
            supers = list(spec.super_categories)
    return ClassInfo(dataset, names, counts, class_groups(counts), supers)


def _options(encoder: str, clip_weights: object, encoder_options: Mapping[str, Mapping]) -> dict:
    opts = {"weights": clip_weights} if encoder in CLIP_MODELS else {}
    return {**opts, **encoder_options.get(encoder, {})}


def _dim(encoder: str, opts: Mapping, num_classes: int) -> int | None:
    try:
        return semantics.embedding_dim(encoder, path=opts.get("path"), dim=opts.get("dim"), num_classes=num_classes)
    except (CprflError, OSError):
        return None


def encode_all(encoders: Sequence[str], class_names: Sequence[str], clip_weights: object = "openai",
               encoder_options: Mapping[str, Mapping] | None = None) -> dict[str, EncoderResult]:
    """Embed the class names with each encoder that can run here; the others get the reason.

    ``clip_weights`` is the CLIP weights (tag, file, or None = random) unless
    ``encoder_options[encoder]["weights"]`` says otherwise; ``encoder_options`` holds per-encoder
    keyword arguments of :func:`cprfl_lib.semantics.encode_classes` (weights, path, dim, seed).
    """
    encoder_options = dict(encoder_options or {})
    for name in (*encoders, *encoder_options):
        if name not in semantics.ENCODERS:
            raise CprflError(f"unknown text encoder {name!r}; choose from {list(semantics.ENCODERS)}")
    results = {}
    with warnings.catch_warnings():  # importing sentence-transformers warns about tqdm widgets in notebooks
        warnings.filterwarnings("ignore", message="IProgress not found")
        for enc in encoders:
            opts = _options(enc, clip_weights, encoder_options)
            ok, reason = semantics.encoder_status(enc, **opts)
            emb = None
            if ok:
                try:
                    emb = semantics.encode_classes(enc, list(class_names), **opts).double().numpy()
                except CprflError as err:  # e.g. a word without a vector
                    ok, reason = False, str(err)
            dim = int(emb.shape[1]) if emb is not None else _dim(enc, opts, len(class_names))
            results[enc] = EncoderResult(enc, ok, reason, dim, emb)
    return results


def availability_table(results: Mapping[str, EncoderResult]) -> pd.DataFrame:
    return pd.DataFrame({"encoder": [r.encoder for r in results.values()],
                         "available": [r.available for r in results.values()],
                         "dimension": pd.array([r.dim for r in results.values()], dtype="Int64"),
                         "reason": [r.reason for r in results.values()]})


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """(C, C) cosine similarity of the rows."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e @ e.T


def nearest_heads(sim: np.ndarray, groups: np.ndarray, k: int) -> dict[int, list[tuple[int, float]]]:
    """For every tail class index: its ``k`` most similar head classes, (index, cosine), best first."""
    heads = np.flatnonzero(groups == "head")
    if heads.size == 0:
        raise CprflError("no head class (>= 100 training images): nothing to link the tail classes to")
    out = {}
    for t in np.flatnonzero(groups == "tail"):
        order = heads[np.argsort(-sim[t, heads], kind="stable")][:k]
        out[int(t)] = [(int(h), float(sim[t, h])) for h in order]
    return out


def tail_neighbours_table(results: Mapping[str, EncoderResult], info: ClassInfo, k: int = 3) -> pd.DataFrame:
    """Per available encoder and tail class: its ``k`` nearest head classes and their cosines."""
    rows = []
    for r in (r for r in results.values() if r.available):
        for t, near in nearest_heads(cosine_matrix(r.embeddings), info.groups, k).items():
            row = {"encoder": r.encoder, "tail class": info.names[t], "train": int(info.train_counts[t])}
            for rank, (h, cos) in enumerate(near, start=1):
                row[f"head {rank}"], row[f"cos {rank}"] = info.names[h], round(cos, 3)
            if info.super_categories is not None:  # None where no head class shares its super-category
                supers = np.asarray(info.super_categories)
                eligible = (supers[info.groups == "head"] == supers[t]).any()
                row["same super-category"] = bool(supers[near[0][0]] == supers[t]) if eligible else None
            rows.append(row)
    return pd.DataFrame(rows)


def nearest_head_overview(table: pd.DataFrame) -> pd.DataFrame:
    """Tail classes × encoders, each cell "nearest head (cosine)": the encoders side by side."""
    if table.empty:
        return pd.DataFrame()
    cells = table.assign(nearest=table["head 1"] + " (" + table["cos 1"].map("{:.2f}".format) + ")")
    wide = cells.pivot(index="tail class", columns="encoder", values="nearest")
    return wide.loc[table["tail class"].drop_duplicates(), table["encoder"].drop_duplicates()]


def _agreement(sim: np.ndarray, supers: np.ndarray, queries: np.ndarray, pool: np.ndarray) -> tuple[float, float]:
    """Share of queries whose nearest pool class (itself excluded) shares its super-category, and chance.

    Ties are broken at random, in expectation: with One-hot every class is equally near, so it
    scores exactly chance instead of whatever class happens to come first.
    """
    hits, chance = [], []
    for q in queries:
        cand = pool[pool != q]
        same = supers[cand] == supers[q]
        if same.any():  # only classes that could agree are counted
            s = sim[q, cand]
            hits.append(same[s >= s.max() - 1e-9].mean())
            chance.append(same.mean())
    return (float(np.mean(hits)), float(np.mean(chance))) if hits else (float("nan"), float("nan"))


def neighbour_summary(results: Mapping[str, EncoderResult], info: ClassInfo) -> pd.DataFrame:
    """Per available encoder: dimension, cosines, and super-category agreement of nearest neighbours.

    ``mean cos`` (all distinct pairs) is the baseline that makes the tail→head cosine
    comparable across encoders; the ``chance`` columns are the agreement a random
    nearest neighbour would give.
    """
    rows = []
    tails, heads = np.flatnonzero(info.groups == "tail"), np.flatnonzero(info.groups == "head")
    everyone = np.arange(len(info.names))
    for r in (r for r in results.values() if r.available):
        sim = cosine_matrix(r.embeddings)
        near = nearest_heads(sim, info.groups, 1)
        row = {"encoder": r.encoder, "dim": r.dim,
               "mean cos": float(sim[~np.eye(len(sim), dtype=bool)].mean()),
               "mean tail→nearest-head cos": float(np.mean([v[0][1] for v in near.values()])) if near else np.nan}
        if info.super_categories is not None:
            supers = np.asarray(info.super_categories)
            row["tail→head agreement"], row["tail→head chance"] = _agreement(sim, supers, tails, heads)
            row["neighbour agreement"], row["neighbour chance"] = _agreement(sim, supers, everyone, everyone)
        else:
            row.update(dict.fromkeys(("tail→head agreement", "tail→head chance", "neighbour agreement",
                                      "neighbour chance"), np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


_METRIC_KEYS = {"dim": "dim", "mean cos": "mean_cos", "mean tail→nearest-head cos": "tail_nearest_head_cos",
                "tail→head agreement": "tail_head_agreement", "tail→head chance": "tail_head_chance",
                "neighbour agreement": "neighbour_agreement", "neighbour chance": "neighbour_chance"}


def semantics_metrics(results: Mapping[str, EncoderResult], summary: pd.DataFrame) -> dict:
    """What notebook 02 records: per available encoder its summary row; the others with their reason."""
    encoders = {}
    for row in summary.to_dict("records"):
        name = row.pop("encoder")
        encoders[name] = {_METRIC_KEYS[k]: (None if isinstance(v, float) and np.isnan(v) else
                                            round(float(v), 4) if isinstance(v, float) else int(v))
                          for k, v in row.items()}
    unavailable = {r.encoder: r.reason for r in results.values() if not r.available}
    return {"encoders": encoders, "unavailable": unavailable}


# ---------------------------------------------------------------- plots
