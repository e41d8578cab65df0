"""The paper's reported numbers (arXiv 2408.08125v1), as data for the tables' "paper" columns.

mAP in %, as (total, head, medium, tail). Sources: Table 1, Table 2, Table 3 and Fig. 3
(read off the bar labels), transcribed in ../shared/docs/method.md §7. Nothing here is a
measurement of ours.
"""

from __future__ import annotations

from cprfl_lib.metrics import COLUMNS  # noqa: E402 - the four figures of every row

# Table 1: (VOC-LT, COCO-LT). Rows other than ours were copied by the paper from earlier work.
TABLE1 = {
    "ERM": ((70.86, 68.91, 80.20, 65.31), (41.27, 48.48, 49.06, 24.25)),
    "RW": ((74.70, 67.58, 82.81, 73.96), (42.27, 48.62, 45.80, 32.02)),
    "ML-GCN": ((68.92, 70.14, 76.41, 62.39), (44.24, 44.04, 48.36, 38.96)),
    "OLTR": ((71.02, 70.31, 79.80, 64.95), (45.83, 47.45, 50.63, 38.05)),
    "LDAM": ((70.73, 68.73, 80.38, 69.09), (40.53, 48.77, 48.38, 22.92)),
    "CB Focal": ((75.24, 70.30, 83.53, 72.74), (49.06, 47.91, 53.01, 44.85)),
    "BBN": ((73.37, 71.31, 81.76, 68.62), (50.00, 49.79, 53.99, 44.91)),
    "DB Focal": ((78.94, 73.22, 84.18, 79.30), (53.55, 51.13, 57.05, 51.06)),
    "ASL": ((76.40, 70.70, 82.26, 76.29), (50.21, 49.05, 53.65, 46.68)),
    "LTML": ((81.44, 75.68, 85.53, 82.69), (56.90, 54.13, 60.59, 54.47)),
    "CDRS+AFL": ((78.96, 73.35, 85.03, 78.63), (55.35, 52.45, 59.48, 52.46)),
    "Bilateral-TPS": ((81.58, 75.88, 84.11, 83.95), (56.38, 55.93, 58.26, 54.29)),
    "PG Loss": ((80.37, 73.67, 83.83, 82.88), (54.43, 51.23, 57.42, 53.40)),
    "COMIC": ((81.53, 73.10, 89.18, 84.53), (55.08, 49.21, 60.08, 55.36)),
    "CAE-Net": ((81.61, 74.00, 85.35, 85.28), (57.64, 52.37, 61.18, 57.63)),
    "CPRFL-GloVe": ((85.14, 82.50, 90.42, 83.17), (65.18, 65.12, 69.97, 58.91)),
    "CPRFL-CLIP (RN50)": ((86.28, 81.84, 90.51, 86.43), (66.69, 66.35, 70.99, 61.33)),
}

# Table 2: CPRFL (CLIP-RN50) trained with different losses.
TABLE2 = {
    "BCE": ((79.60, 82.37, 88.95, 70.52), (59.62, 61.48, 66.09, 49.47)),
    "MLS": ((80.75, 82.44, 90.37, 72.26), (59.91, 63.36, 66.19, 48.59)),
    "CB Focal": ((83.87, 80.32, 90.48, 81.54), (64.20, 64.50, 69.36, 57.12)),
    "DB No-Focal": ((84.27, 82.64, 89.06, 81.89), (64.28, 64.31, 69.62, 57.21)),
    "DB Focal": ((86.18, 81.81, 90.01, 86.30), (65.12, 63.74, 69.97, 59.91)),
    "ASL": ((86.28, 81.84, 90.51, 86.43), (66.69, 66.35, 70.99, 61.33)),
}

# Table 3: cumulative component ablation; avg.Δ is the mean of the four column gains over the baseline.
TABLE3 = {
    "Baseline": ((73.88, 69.41, 81.43, 71.56), (49.46, 49.80, 54.77, 42.14)),
    "+VSI": ((83.87, 80.32, 90.53, 81.54), (63.87, 63.55, 69.01, 57.36)),
    "+VSI+PI": ((84.24, 80.78, 90.47, 82.16), (64.27, 64.30, 69.62, 57.20)),
    "CPRFL (+VSI+PI+RW)": ((86.28, 81.84, 90.51, 86.43), (66.69, 66.35, 70.99, 61.33)),
}
# Table 3 prints avg.Δ too; tests/test_reported.py checks that avg_delta reproduces these values.
TABLE3_AVG_DELTA = {"+VSI": (9.99, 14.40), "+VSI+PI": (10.34, 14.80), "CPRFL (+VSI+PI+RW)": (12.20, 17.30)}

# Fig. 3: COCO-LT only (no VOC-LT figure), read off the bar labels (one decimal).
FIGURE3 = {
    "Randn": (None, (63.9, 63.9, 68.8, 57.4)),
    "Word2Vec": (None, (65.3, 64.8, 70.3, 59.2)),
    "GloVe": (None, (65.6, 65.0, 70.6, 59.5)),
    "CLIP-RN50": (None, (66.7, 66.4, 71.0, 61.3)),
    "CLIP-ViT-B/16": (None, (66.8, 66.6, 71.5, 61.0)),
}

BENCHMARK_INDEX = {"voc": 0, "coco": 1}


def paper_row(table: dict, row: str, family: str) -> dict[str, float] | None:
    """One reported row as {mAP, head, medium, tail} for 'voc' or 'coco', or None if the paper has none."""
    values = table[row][BENCHMARK_INDEX[family]] if row in table else None
    return dict(zip(COLUMNS, values)) if values is not None else None


def avg_delta(row: dict[str, float], baseline: dict[str, float]) -> float:
    """The paper's avg.Δ: the mean of the gains over the baseline in the four columns."""
    return sum(row[c] - baseline[c] for c in COLUMNS) / len(COLUMNS)
