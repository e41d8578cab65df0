"""Every figure of the plots modules, drawn from small synthetic inputs: its legend covers no data, it is a column or
a page wide, its text is readable at that size; the style is one YAML a user changes; INDEX.md lists every table
and figure with its caption."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from cprfl_lib.metrics import class_groups
from cprfl_lib.model_analysis import PATHS, DualPath, Trace
from cprfl_repro.analysis.data import DataChoice
from cprfl_repro.analysis.predictions import RunPredictions
from cprfl_repro.analysis.semantics import ClassInfo, EncoderResult
from cprfl_repro.context import CHECK_LABEL, RunContext
from cprfl_repro.figures import save_figure
from cprfl_repro.index import NO_CAPTION, write_index
from cprfl_repro.plots import data as pd_data
from cprfl_repro.plots import model as pm
from cprfl_repro.plots import predictions as pp
from cprfl_repro.plots import semantics as ps
from cprfl_repro.plots import training as pt
from cprfl_repro.reported import COLUMNS
from cprfl_repro.reproduce import _swap_in, main
from cprfl_repro.style import STYLE_ENV, WIDTHS, Style, current, load_style
from cprfl_repro.tables import write_table

pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture(autouse=True)
def default_style(monkeypatch):
    monkeypatch.delenv(STYLE_ENV, raising=False)


# ---------------------------------------------------------------- synthetic inputs


LONG = ("dining table", "potted plant", "tennis racket", "baseball glove", "motorbike", "fire hydrant", "cow")


def _names(c: int) -> list[str]:
    return [f"{LONG[i % len(LONG)]} {i}" for i in range(c)]


def _counts(c: int) -> np.ndarray:
    return np.round(400 * np.exp(-np.arange(c) / (c / 5))).astype(int) + 2  # head, medium and tail classes


def _bench(tmp_path: Path, c: int, name: str = "synth-voc-lt") -> SimpleNamespace:
    rng = np.random.default_rng(c)
    counts = _counts(c)
    targets = (rng.random((40, c)) < 0.15).astype(np.uint8)
    targets[np.arange(40), rng.integers(0, c, 40)] = 1
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(8):
        Image.new("RGB", (24, 20), (30 * i, 100, 200)).save(folder / f"{i}.png")
        paths.append(f"{i}.png")
    split = SimpleNamespace(targets=targets, paths=paths + [paths[0]] * 32)
    return SimpleNamespace(name=name, class_names=_names(c), train_counts=counts, groups=class_groups(counts),
                           train=split, test=SimpleNamespace(targets=targets[:20]), image_root=folder, thresholds=None,
                           is_own=False)


def _runs_table(variants: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"variant": v, "seed": s, "status": "ok", **{c: float(x) for c, x in zip(COLUMNS, 20 + 40 * rng.random(4))}}
            for v in variants for s in (0, 1, 2)]
    return pd.DataFrame(rows)


def _predictions(label: str, c: int, seed: int) -> RunPredictions:
    rng = np.random.default_rng(seed)
    targets = (rng.random((60, c)) < 0.2).astype(np.uint8)
    targets[0] = 1
    return RunPredictions(label, Path("."), rng.normal(size=(60, c)).astype(np.float32), targets, _names(c), _counts(c))


def every_figure(tmp_path: Path):
    """(name, Figure) for every plot function, on the VOC and COCO class counts where the count matters."""
    for c in (20, 80):
        bench = _bench(tmp_path, c)
        choice = DataChoice("voc", bench, "generated", "test", True, "test")
        yield f"longtail{c}", pd_data.plot_longtail(bench)
        yield f"cooccurrence{c}", pd_data.plot_cooccurrence(bench)
        emb = np.random.default_rng(c).normal(size=(c, 16))
        info = ClassInfo("synth-voc-lt", _names(c), _counts(c), class_groups(_counts(c)), None)
        result = EncoderResult("randn", True, "given", 16, emb)
        yield f"similarity{c}", ps.plot_similarity(result, info)
        results = {k: EncoderResult(k, True, "given", 16, emb + i) for i, k in enumerate(("a", "b", "c", "d"))}
        yield f"projection{c}", ps.plot_projection(results, info)
        w, p = torch.randn(c, 16, dtype=torch.float64), torch.randn(c, 32, dtype=torch.float64)
        trace = Trace(*[torch.zeros(1)] * 3, w, p, *[torch.zeros(1)] * 5)
        groups = class_groups(_counts(c))
        yield f"prompt_init{c}", pm.plot_prompt_init(trace, _names(c), groups, title="prompts at initialisation")
        grads = {k: torch.rand(c, 8) for k in PATHS}
        yield f"dual_path{c}", pm.plot_dual_path(DualPath(grads, grads, 0.0, 0.0, 0.0), _names(c), groups, title="x")
        runs = [_predictions("ERM", c, 1), _predictions("CPRFL", c, 2)]
        yield f"ap_vs_count{c}", pp.per_class_ap_vs_count(runs, title=f"per-class test AP, seed 0; {c} classes")
    yield "labels_per_image", pd_data.plot_labels_per_image({"voc": choice, "coco": choice})
    yield "labels_per_image_one", pd_data.plot_labels_per_image({"voc": choice})
    yield "samples", pd_data.plot_samples(bench, list(range(8)))
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    targets = np.zeros((3, 5), dtype=np.uint8)
    targets[0, [0, 3]] = targets[1, 1] = targets[2, [2, 3, 4]] = 1
    groups5 = np.array(["head", "head", "medium", "tail", "tail"])
    scores = np.random.default_rng(0).random((3, 5))
    yield "figure4", pp.figure4_predictions(images, [2, 4, 7], targets, _names(5), groups5,
                                            {"ERM (baseline)": scores, "zero-shot CLIP (RN50)": "no weights here",
                                             "CPRFL": scores}, title="Fig. 4 on generated data")
    yield "attention_maps", pp.attention_maps(images, [2, 4, 7], torch.rand(3, 5, 4, 4), targets, scores, _names(5),
                                              groups5, title="attention")
    yield "attention_one", pm.plot_attention(images[0], torch.rand(5, 4, 4), _names(5), [0, 3], groups5,
                                             scores=np.ones(5))
    table = pd.DataFrame([{"variant": v, "source": src, **{c: 30.0 + 10 * j for j, c in enumerate(COLUMNS)},
                           **{f"{c} std": 1.0 for c in COLUMNS}} for v in ("ERM", "CPRFL")
                          for src in ("ours, synth", "paper (x), VOC-LT")])
    yield "group_map", pp.group_map_vs_paper(table, title="ours on generated data\nvs the paper on VOC-LT")
    six = ["Randn · raw", "Randn · centred", "Randn · centred, norm √m", "MiniLM · raw", "MiniLM · centred",
           "MiniLM · centred, norm √m"]
    yield "study_bars6", pt.study_bars(_runs_table(six), title="embedding scale on synth-voc-lt")
    marks = {"Randn": {"mAP": 63.8, "head": 63.8, "medium": 69.0, "tail": 57.5}, "MiniLM": {"mAP": 65.0}}
    yield "study_bars2", pt.study_bars(_runs_table(["Randn", "MiniLM"]), title="Figure 3 (bars); paper (marks)",
                                       paper=marks)
    dirs = {}
    for v in ("ERM", "CPRFL-Randn"):
        for seed in (0, 1):
            d = tmp_path / f"{v}-{seed}"
            d.mkdir()
            pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.3], "mAP": [10.0, np.nan, 30.0 + seed]}).to_csv(
                d / "summary.csv", index=False)
            dirs.setdefault(v, []).append(str(d))
    yield "learning_curves", pt.learning_curves(dirs, title="synth-voc-lt: generated data")


# ---------------------------------------------------------------- what every figure must satisfy


def _points(transform, xy: np.ndarray, between: int = 0) -> np.ndarray:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if between and len(xy) > 1:  # points along each segment too
        t = np.linspace(0, 1, between + 2)[:, None, None]
        xy = (xy[:-1] * (1 - t) + xy[1:] * t).reshape(-1, 2)
    xy = transform.transform(xy)
    return xy[np.isfinite(xy).all(1)]


def data_extents(fig) -> list[tuple[str, Bbox]]:
    """Display-space boxes of every plotted value: bars and patches, line points, markers, error bars, images,
    texts placed in the axes (annotations, bar labels, Fig. 4's predictions)."""
    renderer = fig.canvas.get_renderer()
    boxes: list[tuple[str, Bbox]] = []

    def point_boxes(kind, pts, r=1.5):
        boxes.extend((kind, Bbox.from_extents(x - r, y - r, x + r, y + r)) for x, y in pts)

    for ax in fig.axes:
        start = len(boxes)
        for patch in ax.patches:
            if patch.get_visible():
                boxes.append(("patch", patch.get_window_extent(renderer)))
        for line in ax.lines:
            if line.get_visible():
                point_boxes("line", _points(line.get_transform(), line.get_xydata(), between=8))
        for coll in ax.collections:
            if not coll.get_visible():
                continue
            if isinstance(coll, PathCollection):
                point_boxes("marker", _points(coll.get_offset_transform(), coll.get_offsets()), r=3)
            elif isinstance(coll, LineCollection):
                for seg in coll.get_segments():
                    point_boxes("segment", _points(coll.get_transform(), seg, between=8))
            else:
                boxes.append(("collection", coll.get_window_extent(renderer)))
        for image in ax.images:
            boxes.append(("image", image.get_window_extent(renderer)))
        # what is drawn of them: clipped to the axes (a bar from 0 on a log scale reaches far below it)
        boxes[start:] = [(k, Bbox.intersection(b, ax.bbox) or Bbox.null()) for k, b in boxes[start:]]
        for text in ax.texts:
            if text.get_visible() and text.get_text().strip():
                boxes.append((f"text {text.get_text()!r}", text.get_window_extent(renderer)))
    return [(k, b) for k, b in boxes if np.isfinite(b.extents).all() and (b.width > 0 or b.height > 0)]


def legends(fig) -> list:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def check_figure(name: str, fig, style: Style) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*constrained_layout not applied.*")  # text crowds the axes out
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for legend in legends(fig):
        box = legend.get_window_extent(renderer)
        for kind, data in data_extents(fig):
            inter = Bbox.intersection(box, data)
            assert inter is None or inter.width * inter.height <= 0, f"{name}: the legend covers a {kind} at {data}"
    width = fig.get_figwidth()
    assert any(abs(width - style.width(k)) < 1e-6 for k in WIDTHS), f"{name}: {width} in, not a column or a page"
    tight = fig.get_tightbbox(renderer)
    assert tight.width <= width + 0.05, f"{name}: drawn {tight.width:.2f} in wide in a {width} in figure"
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip() and text.get_window_extent(renderer).width > 0:
            assert text.get_fontsize() >= style.small - 1e-6, f"{name}: {text.get_text()!r} at {text.get_fontsize()} pt"


@pytest.mark.parametrize("user_style", [None, "font: {family: serif, size: 9, small: 8}\nwidth: {page: 6.5}\n"],
                         ids=["default", "serif-9pt"])
def test_every_figure_keeps_its_legend_off_the_data_and_fits_its_width(tmp_path, monkeypatch, user_style) -> None:
    if user_style:
        (tmp_path / "style.yaml").write_text(user_style)
        monkeypatch.setenv(STYLE_ENV, str(tmp_path / "style.yaml"))
    style = current()
    names = []
    for name, fig in every_figure(tmp_path):
        check_figure(name, fig, style)
        names.append(name)
        plt.close(fig)
    assert len(names) == 24


def test_the_overlap_check_sees_a_legend_on_the_bars() -> None:
    """The check itself fails on the old placement (a legend inside the axes over the bars)."""
    fig, ax = plt.subplots(figsize=(3.3, 2))
    ax.bar(range(4), [1, 1, 1, 1], label="bars")
    ax.legend(loc="center")
    with pytest.raises(AssertionError, match="legend covers a patch"):
        check_figure("inside", fig, current())


# ---------------------------------------------------------------- the style as a user's file


def test_a_users_style_changes_widths_fonts_and_colours(tmp_path, monkeypatch) -> None:
    path = tmp_path / "my style.yaml"
    path.write_text("font: {family: serif, size: 9, small: 8}\nwidth: {page: 6.0}\n"
                    "palette: {head: '#000000', series: ['#111111', '#222222']}\n")
    monkeypatch.setenv(STYLE_ENV, str(path))
    style = current()
    assert style.source == str(path.resolve()) and style.small == 8 and style.width("column") == 3.3
    fig = pt.study_bars(_runs_table([f"v{i}" for i in range(5)]), title="t")
    check_figure("restyled", fig, style)
    assert fig.get_figwidth() == 6.0
    texts = [t for t in fig.findobj(Text) if t.get_text().strip()]
    assert min(t.get_fontsize() for t in texts) == 8 and "serif" in texts[0].get_family()[0]
    heads = [p for p in fig.axes[0].patches if matplotlib.colors.to_hex(p.get_facecolor()) == "#000000"]
    assert len(heads) == 5  # one head bar per variant, in the user's colour
    monkeypatch.delenv(STYLE_ENV)
    assert current().source == "default"


@pytest.mark.parametrize("text, message", [
    ("fonts: {size: 9}\n", "unknown style key 'fonts'"),
    ("font: {sise: 9}\n", "unknown style key 'font.sise'"),
    ("font: {size: -1}\n", "'font.size' must be a positive number"),
    ("palette: {tail: notacolour}\n", "'palette.tail' is not a colour"),
    ("palette: {sequential: nomap}\n", "no colour map named 'nomap'"),
    ("font: {family: No Such Font Family}\n", "finds no font"),
    ("width: 3\n", "width must be a mapping"),
    ("font: [\n", "not valid YAML"),
])
def test_a_bad_style_file_is_refused_in_one_line_naming_it(tmp_path, text, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    one_line_error(lambda: load_style(path), path, message)


def test_reproduce_refuses_a_bad_style_before_anything_runs(tmp_path, monkeypatch, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("colours: {head: red}\n")
    monkeypatch.setenv(STYLE_ENV, str(bad))
    monkeypatch.setenv("CPRFL_RESULTS_ROOT", str(tmp_path / "results"))
    assert main(["--profile", "smoke"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"reproduce: error: style file {bad}: unknown style key 'colours' (known: width, font, dpi, palette)"]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# ---------------------------------------------------------------- captions and INDEX.md


def test_index_lists_every_table_and_figure_with_its_caption(tmp_path) -> None:
    ctx = RunContext("smoke", tmp_path, tmp_path / "runs")
    ctx.table(pd.DataFrame({"a": [1.0]}), "table2_losses", caption="Table 2: six losses | on generated data")
    fig, _ = plt.subplots()
    paths = ctx.figure(fig, "embedding_scale", caption="The embedding scale, bars by group")
    assert json.loads(paths["json"].read_text()) == {"caption": "The embedding scale, bars by group",
                                                     "style": "default"}
    ctx.figure(fig, "old_call")  # a notebook that passes no caption still saves; the index says so
    index = (tmp_path / "INDEX.md").read_text()  # kept current by every table and figure written
    assert write_index(tmp_path).read_text() == index
    assert index.count("\n| `") == 3
    assert "| `table2_losses` | Table 2: six losses \\| on generated data | [md](tables/table2_losses.md) · " \
           "[csv](tables/table2_losses.csv) · [tex](tables/table2_losses.tex) |" in index
    assert "| `embedding_scale` | The embedding scale, bars by group | [png](figures/embedding_scale.png) · " \
           "[pdf](figures/embedding_scale.pdf) |" in index
    assert f"| `old_call` | {NO_CAPTION} |" in index


def test_every_figure_call_of_the_notebooks_gives_a_caption() -> None:
    import ast

    import nbformat

    root = Path(__file__).resolve().parents[1]
    calls = 0
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(nb, as_version=4).cells:
            if cell.cell_type != "code" or "ctx.figure(" not in cell.source:
                continue
            tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith(("%", "!"))))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "figure" \
                        and getattr(node.func.value, "id", None) == "ctx":
                    calls += 1
                    assert any(k.arg == "caption" for k in node.keywords), f"{nb.name}: {ast.unparse(node)[:80]}"
    assert calls >= 18  # every figure of notebooks 01-06


# ---------------------------------------------------------------- the README's restyle, as written


@pytest.mark.slow
def test_the_readme_restyles_every_figure_from_the_stored_runs(tmp_path) -> None:
    """The README's style file and `make reproduce STYLE=...` line as written, on the smoke profile (PROFILE from the
    environment): run twice where the run store is cold; on a warm store it trains nothing and redraws every figure
    in the user's style, each listed in INDEX.md with its caption."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    section = text[text.index("## Figures for a write-up"):]
    section = section[:section.index("\n## ")]
    style_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (command,) = [line.split("  #")[0].strip() for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1)
                  .splitlines() if line.strip()]
    name = re.search(r"STYLE=(\S+)", command).group(1)
    style_file = root / name  # make runs in the checkout: a relative STYLE is read from there
    if style_file.exists():
        pytest.skip(f"{style_file} exists already (a user's own file: left alone)")
    env = {**os.environ, "PROFILE": "smoke", "CPRFL_RESULTS_ROOT": str(tmp_path / "results"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop(STYLE_ENV, None)
    style_file.write_text(style_text)
    try:
        style = load_style(style_file)
        for attempt in (1, 2):
            done = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
            trained = [int(n) for n in re.findall(r"finished earlier, (\d+) to train", done.stdout)]
            assert len(trained) >= 2, done.stdout  # notebooks 04 and 05 train
            if not any(trained):
                break
            assert attempt == 1, f"the second run trained again: {done.stdout}"
    finally:
        style_file.unlink()
    out = tmp_path / "results" / "smoke"
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 18
    for png in pngs:
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["style"] == str(style_file.resolve()) and meta["caption"], (png.name, meta)
        width = Image.open(png).size[0] / style.dpi
        assert width <= style.width("page") + 0.05, (png.name, width)
        assert b"DejaVuSerif" in png.with_suffix(".pdf").read_bytes(), png.name  # the user's font family
    column = Image.open(out / "figures" / "per_class_ap_vs_count.png").size[0] / style.dpi
    assert style.width("column") - 0.3 <= column <= style.width("column") + 0.05
    index = (out / "INDEX.md").read_text()
    for png in pngs:
        assert f"| `{png.stem}` | " in index
    for md in (out / "tables").glob("*.md"):
        assert f"| `{md.stem}` | " in index
    assert "(no caption)" not in index


def test_a_pipeline_check_says_so_in_its_figures_within_their_width_and_in_its_index(tmp_path) -> None:
    check = RunContext("paper-check", tmp_path / "check", tmp_path / "runs")
    for name, variants in (("column", ["a", "b"]), ("page", list("abcde"))):
        fig = pt.study_bars(_runs_table(variants), title="t")
        check.figure(fig, name, caption="a figure")
        texts = [t.get_text() for t in fig.texts]
        assert CHECK_LABEL in texts and any(t.startswith("pipeline check, not results") for t in texts)
        check_figure(name, fig, current())  # the label fits the column or page width, at a readable size
    check.table(pd.DataFrame({"a": [1.0]}), "t", caption="a table")
    index = write_index(tmp_path / "check").read_text()
    assert index.startswith("# Tables and figures of results/check\n")
    assert f"| `page` | {CHECK_LABEL}: a figure |" in index and f"| `t` | {CHECK_LABEL}: a table |" in index


def test_a_subset_merged_into_earlier_results_is_indexed_whole(tmp_path) -> None:
    """`make reproduce` with a subset of notebooks merges into the folder: INDEX.md lists the old and new files."""
    final, staging = tmp_path / "quick", tmp_path / "staging"
    write_table(pd.DataFrame({"a": [1.0]}), "table2_losses", final, caption="Table 2")
    write_index(final)
    fig, _ = plt.subplots()
    save_figure(fig, "embedding_scale", staging, caption="The embedding scale")
    write_index(staging, final.name)
    _swap_in(staging, final, keep_old=True)
    index = (final / "INDEX.md").read_text()
    assert index.startswith("# Tables and figures of results/quick\n")
    assert "| `table2_losses` | Table 2 |" in index and "| `embedding_scale` | The embedding scale |" in index
