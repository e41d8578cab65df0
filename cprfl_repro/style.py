"""The figures' style in one place: widths, fonts, colours and resolution, read from ``style.yaml``.

Every plot function of :mod:`cprfl_repro.plots` is decorated with :func:`styled` (it draws under
:meth:`Style.rc`) and takes its figure size from :meth:`Style.subplots` (a column or a page wide),
its colours from :attr:`Style.palette` and its legend from :func:`legend_below`, which puts it
under the axes, outside the data. The packaged ``style.yaml`` holds the defaults; a user's YAML
file named by ``$CPRFL_STYLE`` (``make reproduce STYLE=my-style.yaml``) changes any of its keys
without editing the package. A key the packaged file does not have, or a value matplotlib cannot
use, is refused in one line naming the file and the key.
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cprfl_lib.errors import CprflError

STYLE_ENV = "CPRFL_STYLE"
WIDTHS = ("column", "page")
GROUP_KEYS = ("head", "medium", "tail", "incorrect")


def defaults() -> dict:
    """The packaged style.yaml."""
    return yaml.safe_load((resources.files("cprfl_repro") / "style.yaml").read_text())


def _merge(base: dict, user: Any, where: str, prefix: str = "") -> dict:
    if not isinstance(user, dict):
        raise CprflError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {user!r}")
    merged = dict(base)
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise CprflError(f"{where}: unknown style key {dotted!r} (known: {', '.join(prefix + k for k in base)})")
        merged[key] = _merge(base[key], value, where, f"{dotted}.") if isinstance(base[key], dict) else value
    return merged


def _check(values: dict, where: str) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import is_color_like
    from matplotlib.font_manager import FontProperties, findfont

    def positive(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CprflError(f"{where}: style key {key!r} must be a positive number, got {value!r}")

    for kind in WIDTHS:
        positive(f"width.{kind}", values["width"][kind])
    for key in ("size", "small"):
        positive(f"font.{key}", values["font"][key])
    positive("dpi", values["dpi"])
    family = values["font"]["family"]
    families = [family] if isinstance(family, str) else family
    if not isinstance(families, list) or not families or not all(isinstance(f, str) for f in families):
        raise CprflError(f"{where}: style key 'font.family' must be a font family or a list of them, got {family!r}")
    try:
        findfont(FontProperties(family=families), fallback_to_default=False)
    except ValueError:
        raise CprflError(f"{where}: style key 'font.family': matplotlib finds no font of {family!r}") from None
    palette = values["palette"]
    for key in (*GROUP_KEYS, "overall"):
        if not is_color_like(palette[key]):
            raise CprflError(f"{where}: style key 'palette.{key}' is not a colour: {palette[key]!r}")
    series = palette["series"]
    if not isinstance(series, list) or not series or not all(is_color_like(c) for c in series):
        raise CprflError(f"{where}: style key 'palette.series' must be a list of colours, got {series!r}")
    for key in ("sequential", "diverging"):
        if palette[key] not in colormaps:
            raise CprflError(f"{where}: style key 'palette.{key}': no colour map named {palette[key]!r}")


@dataclass(frozen=True)
class Style:
    """One resolved style (the packaged defaults with a user's file over them)."""

    values: dict
    source: str  # "default", or the user's file

    @property
    def palette(self) -> dict:
        return self.values["palette"]

    @property
    def groups(self) -> dict[str, str]:
        """Colour of each class group (and of a wrong prediction)."""
        return {k: self.palette[k] for k in GROUP_KEYS}

    @property
    def size(self) -> float:
        return float(self.values["font"]["size"])

    @property
    def small(self) -> float:
        return float(self.values["font"]["small"])

    @property
    def dpi(self) -> float:
        return float(self.values["dpi"])

    def width(self, kind: str) -> float:
        if kind not in WIDTHS:
            raise CprflError(f"figure width {kind!r}: choose one of {WIDTHS}")
        return float(self.values["width"][kind])

    def rc(self) -> dict:
        """matplotlib rcParams of this style."""
        from cycler import cycler

        family = self.values["font"]["family"]
        return {"font.family": [family] if isinstance(family, str) else family, "font.size": self.size,
                "axes.titlesize": self.size, "axes.labelsize": self.size, "figure.titlesize": self.size,
                "xtick.labelsize": self.small, "ytick.labelsize": self.small, "legend.fontsize": self.small,
                "legend.title_fontsize": self.small, "legend.frameon": False, "savefig.dpi": self.dpi,
                "axes.prop_cycle": cycler(color=self.palette["series"]), "image.cmap": self.palette["sequential"],
                "axes.linewidth": 0.6, "lines.linewidth": 1.0, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
                "pdf.fonttype": 42}  # TrueType in the PDFs: editable text in a write-up

    def subplots(self, kind: str, height: float, nrows: int = 1, ncols: int = 1, **kw):
        """``plt.subplots`` a column or a page wide and ``height`` inches high, with constrained layout."""
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=(self.width(kind), height), layout="constrained", **kw)

    def wrap(self, text: str, width_in: float, fontsize: float | None = None, max_lines: int | None = None) -> str:
        """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` (default: the title size); past
        ``max_lines`` lines, cut with '…'."""
        chars = max(12, int(width_in * 72 / (0.66 * (fontsize or self.size))))  # a wide font's mean glyph: 0.66 em
        lines = [part for line in text.split("\n") for part in textwrap.wrap(line, chars) or [""]]
        if max_lines and len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1][:chars - 1] + "…"
        return "\n".join(lines)


_cache: dict[tuple, Style] = {}


def load_style(path: str | os.PathLike | None = None) -> Style:
    """The packaged style with the YAML file ``path`` over it (checked: one line naming the file and key)."""
    values = defaults()
    if path is None:
        _check(values, "cprfl_repro/style.yaml")
        return Style(values, "default")
    file = Path(path).expanduser()
    where = f"style file {file}"
    if not file.is_file():
        raise CprflError(f"{where}: no such file ({STYLE_ENV} / STYLE names it)")
    try:
        user = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise CprflError(f"{where}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    values = _merge(values, user or {}, where)
    _check(values, where)
    return Style(values, str(file.resolve()))


def current() -> Style:
    """The style in force: ``$CPRFL_STYLE`` over the packaged one (re-read when the file changes)."""
    path = os.environ.get(STYLE_ENV) or None
    key = (path, Path(path).expanduser().stat().st_mtime_ns if path and Path(path).expanduser().is_file() else None)
    if key not in _cache:
        _cache[key] = load_style(path)
    return _cache[key]


def styled(plot):
    """A plot function drawn under the current style; every tick label at the style's small size."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib.pyplot as plt

        style = current()
        with plt.rc_context(style.rc()):
            fig = plot(*args, **kwargs)
            for ax in fig.axes:  # ticks made later (at draw time, outside this context) keep the size too
                ax.tick_params(labelsize=style.small)
        return fig

    return wrapper


def legend_below(fig, handles, ncols: int | None = None, **kw):
    """The figure's legend under its axes, outside every plotted value, in as many columns (at most ``ncols``)
    as the figure's width holds."""
    small = current().small
    entry = max(len(h.get_label()) for h in handles) * 0.6 * small / 72 + 0.45  # inches: handle, gap, text
    fits = max(1, int(fig.get_figwidth() // entry))
    return fig.legend(handles=handles, loc="outside lower center", ncols=min(ncols or len(handles), fits, len(handles)),
                      frameon=False, **kw)


def group_handles(groups=None, with_counts: bool = True, keys=("head", "medium", "tail")) -> list:
    """Patches of the class groups' colours (with each group's class count when ``groups`` is given)."""
    from matplotlib.patches import Patch

    colors = current().groups
    return [Patch(color=colors[g], label=f"{g} ({int((groups == g).sum())})" if groups is not None and with_counts
                  else g) for g in keys]


def class_ticks(ax, names, span_in: float, axis: str = "x", colors=None) -> int:
    """Name the classes along ``axis`` (``span_in`` inches long) at the style's small size; where they would
    overlap, every k-th class is named. Returns k (say so in the axis label: :func:`named_note`)."""
    style = current()
    n = len(names)
    step = max(1, math.ceil(1.25 * style.small / 72 / (span_in / max(n, 1))))
    ticks = list(range(0, n, step))
    labels = [names[i] for i in ticks]
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=90, fontsize=style.small)
        texts = ax.get_xticklabels()
    else:
        ax.set_yticks(ticks, labels, fontsize=style.small)
        texts = ax.get_yticklabels()
    if colors is not None:
        for text, i in zip(texts, ticks):
            text.set_color(colors[i])
    return step


def named_note(step: int) -> str:
    """'' or ' (every 2nd class named)'."""
    if step <= 1:
        return ""
    suffix = {2: "nd", 3: "rd"}.get(step, "th")
    return f" (every {step}{suffix} class named)"
