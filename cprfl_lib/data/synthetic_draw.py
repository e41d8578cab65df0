"""Drawing the generated scenes of :mod:`cprfl_lib.data.synthetic`: one or more objects per label.

Appearance model, chosen so that semantic neighbours look alike:
- a super-category owns a body template (person figure, four-legged animal, wheeled
  vehicle, cup, screen, ...), a palette hue and a second colour for its shared parts
  (wheels, legs, rims, frames);
- each class adds a distinguishing part (a glyph at a class-specific place on the body),
  a texture (stripes, checks, dots, rings, waves, blotches at a class-specific angle and
  frequency) in a class-specific colour, and a small hue shift of the body.

Scene model (:class:`SceneParams`, one per benchmark): every label gets one instance whose size
(the square root of its pixel area over the image side) is log-normal, plus a Poisson number of
smaller instances, so that many objects are small, as in COCO. Instances are jittered (aspect,
colours, texture angle and frequency, tilt, mirror), placed anywhere, partly out of the frame,
over a cluttered background (random shapes, stray glyphs, textured patches and *decoys*: bodies of
a random super-category with a random texture and no distinguishing part, so that a body alone
never names a class), partly hidden by one another and by occluders, then globally jittered in
contrast and noised. :func:`render_scene` returns each instance's pixel area, which the dataset's
GENERATOR.json summarises.

Everything random comes from the ``numpy`` Generator passed in, so an image depends only
on its seed; PIL's JPEG encoder at a fixed quality is deterministic.
"""

from __future__ import annotations

import colorsys
import functools
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from cprfl_lib.cpus import usable_cpus

JPEG_QUALITY = 90
# COCO's size classes (area < 32² and < 96² pixels in images of about 640 x 480), as fractions of the image area
SMALL_AREA, MEDIUM_AREA = 32**2 / (640 * 480), 96**2 / (640 * 480)
Shape = tuple  # ("ellipse"|"rect", x0, y0, x1, y1) | ("ring"|"frame", x0, y0, x1, y1, width) | ("poly", pts)


@dataclass(frozen=True)
class SceneParams:
    """How a benchmark's scenes are composed. Sizes are fractions of the image side: an instance's size is the
    square root of the pixel area of its body and shared parts (before occlusion) over the side; the class's
    distinguishing part adds to that, and the areas GENERATOR.json records are measured with it."""

    object_median: float  # the labelled instance: log-normal size with this median ...
    object_sigma: float  # ... and this log-standard deviation,
    object_range: tuple[float, float]  # clipped to this range
    extra_instances: float  # mean number (Poisson) of further, smaller instances per label
    extra_scale: float  # their median size relative to the labelled instance's
    clutter: tuple[int, int]  # background shapes per image: uniform in [low, high)
    decoys: float  # mean number (Poisson) of decoy bodies per image
    occluders: float  # probability of occluding shapes in front of the objects

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Template:
    """A super-category's body in unit coordinates of its box (x right, y down)."""

    aspect: float  # width / height
    tilt: float  # std of the random rotation, degrees
    body: tuple[Shape, ...]  # filled with the class texture
    shared: tuple[Shape, ...]  # drawn in the super-category's second colour


def _rect(x0, y0, x1, y1):
    return ("rect", x0, y0, x1, y1)


def _ell(x0, y0, x1, y1):
    return ("ellipse", x0, y0, x1, y1)


TEMPLATES: dict[str, Template] = {
    "person": Template(0.45, 6, (_ell(.3, 0, .7, .2), ("poly", ((.12, .22), (.88, .22), (.75, .6), (.25, .6))),
                                 _rect(.25, .58, .46, 1), _rect(.54, .58, .75, 1)),
                       (_rect(0, .24, .13, .56), _rect(.87, .24, 1, .56))),
    "animal": Template(1.5, 8, (_ell(.08, .3, .78, .72), _ell(.68, .08, .98, .42), _rect(.15, .6, .24, 1),
                                _rect(.3, .6, .39, 1), _rect(.52, .6, .61, 1), _rect(.66, .6, .75, 1)),
                       (("poly", ((.1, .4), (0, .22), (.03, .5))), ("poly", ((.75, .14), (.8, 0), (.86, .12))))),
    "vehicle": Template(1.9, 5, (_rect(0, .3, 1, .78), ("poly", ((.18, .3), (.3, .05), (.72, .05), (.84, .3)))),
                        (_ell(.08, .6, .3, 1), _ell(.7, .6, .92, 1))),
    "outdoor": Template(0.55, 4, (_ell(.05, 0, .95, .5),), (_rect(.42, .45, .58, .95), _rect(.2, .92, .8, 1))),
    "accessory": Template(0.9, 10, (_rect(.05, .32, .95, 1),),
                          (("ring", .25, 0, .75, .55, .07), _rect(.05, .55, .95, .62))),
    "sports": Template(1.0, 35, (("poly", ((0, .82), (.18, 1), (1, .18), (.82, 0))),), (_ell(0, .7, .3, 1),)),
    "kitchen": Template(0.6, 6, (("poly", ((.12, .15), (.88, .15), (.75, 1), (.25, 1))),), (_ell(.08, .05, .92, .27),)),
    "food": Template(1.3, 15, (_ell(0, .15, 1, .95), _ell(.2, 0, .75, .5)),
                     (_ell(.25, .45, .35, .58), _ell(.6, .6, .7, .72), _ell(.45, .25, .55, .37))),
    "furniture": Template(1.3, 4, (_rect(0, .38, 1, .62), _rect(0, 0, .16, .4)),
                          (_rect(.04, .6, .13, 1), _rect(.87, .6, .96, 1))),
    "electronic": Template(1.35, 4, (_rect(.08, .07, .92, .7),),
                           (("frame", 0, 0, 1, .77, .08), _rect(.42, .77, .58, .92), _rect(.25, .92, .75, 1))),
    "appliance": Template(0.9, 3, (_rect(0, 0, 1, 1),),
                          (("frame", .1, .1, .9, .62, .05), _rect(.78, .22, .85, .5), _rect(.1, .7, .9, .76))),
    "indoor": Template(0.8, 12, (("poly", ((.5, 0), (1, .25), (1, .75), (.5, 1), (0, .75), (0, .25))),),
                       (_ell(.36, .36, .64, .64),)),
}

_STAR = tuple((math.sin(k * math.pi / 5) * r, -math.cos(k * math.pi / 5) * r)
              for k in range(10) for r in [(1.0, 0.45)[k % 2]])
# The distinguishing parts, in [-1, 1]^2; ten, one per class of the largest super-category.
GLYPHS: tuple[Shape, ...] = (
    ("poly", ((0, -1), (.95, .8), (-.95, .8))), _ell(-1, -1, 1, 1), _rect(-.8, -.8, .8, .8),
    ("poly", ((0, -1), (.7, 0), (0, 1), (-.7, 0))),
    ("poly", ((-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
              (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3))),
    ("ring", -1, -1, 1, 1, .35), ("poly", _STAR),
    ("poly", ((-1, -.6), (0, .2), (1, -.6), (1, .2), (0, 1), (-1, .2))), _rect(-1, -.3, 1, .3),
    ("poly", ((-1, 0), (-.7, -.7), (0, -1), (.7, -.7), (1, 0))),
)
ANCHORS = ((.5, -.05), (1.0, .3), (0.0, .3), (.85, .05), (.15, .05), (.5, .45), (.5, 1.0), (1.0, .8), (0.0, .8))
NUM_PATTERNS = 6


@dataclass(frozen=True)
class ClassLook:
    """How one class is drawn (fixed per class, independent of the seed)."""

    template: Template
    colours: tuple[tuple[int, int, int], ...]  # RGB of body, texture, shared parts, glyph
    pattern: int
    angle: float  # degrees
    freq: float  # texture cycles per object size
    glyph: int
    anchor: tuple[float, float]


def class_looks(super_categories: Sequence[str], templates: Mapping[str, str]) -> list[ClassLook]:
    """One look per class: shared per super-category, distinct per class within it."""
    supers = list(dict.fromkeys(super_categories))
    looks = []
    for c, sc in enumerate(super_categories):
        s, members = supers.index(sc), [i for i, x in enumerate(super_categories) if x == sc]
        j, n = members.index(c), len(members)
        hue = (s / len(supers) + 0.07) % 1.0
        hsv = (((hue + 0.06 * (j - (n - 1) / 2) / n) % 1.0, 0.55, 0.78),  # body: super's palette
               ((0.618034 * c) % 1.0, 0.6, 0.45),  # texture: the class's own colour
               ((hue + 0.5) % 1.0, 0.35, 0.3),  # shared parts: the super's second colour
               ((0.618034 * c + 0.3) % 1.0, 0.85, 0.92))  # distinguishing part
        looks.append(ClassLook(
            template=TEMPLATES[templates[sc]],
            colours=tuple(tuple(round(255 * x) for x in colorsys.hsv_to_rgb(*v)) for v in hsv),
            pattern=(j + s) % NUM_PATTERNS, angle=float((47 * j + 23 * s) % 180),
            freq=3.0 + (3 * j + s) % 5, glyph=(j + 3 * s) % len(GLYPHS),
            anchor=ANCHORS[(4 * j + s) % len(ANCHORS)]))
    return looks


def _jitter(colours: Sequence[Sequence[int]], rng: np.random.Generator) -> np.ndarray:
    """Per-instance colour change: a brightness factor and a small shift per channel."""
    rgb = np.asarray(colours, np.float32)
    rgb = rgb * np.exp(rng.normal(0, 0.15, (len(rgb), 1))) + rng.normal(0, 12, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, box: Sequence[float], fill, flip: bool) -> None:
    """Draw a unit-coordinate shape into the pixel box (x0, y0, w, h), mirrored if ``flip``."""
    x0, y0, w, h = box

    def px(u: float, v: float) -> tuple[float, float]:
        return x0 + (1 - u if flip else u) * w, y0 + v * h

    kind = shape[0]
    if kind == "poly":
        draw.polygon([px(u, v) for u, v in shape[1]], fill=fill)
        return
    (ax, ay), (bx, by) = px(*shape[1:3]), px(*shape[3:5])
    xy = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
    if kind == "ellipse":
        draw.ellipse(xy, fill=fill)
    elif kind == "rect":
        draw.rectangle(xy, fill=fill)
    else:  # ring / frame: outlines whose width is relative to the box
        width = max(1, round(shape[5] * min(w, h)))
        (draw.ellipse if kind == "ring" else draw.rectangle)(xy, outline=fill, width=width)


def _pattern(kind: int, h: int, w: int, angle: float, freq: float, rng: np.random.Generator) -> np.ndarray:
    """A (h, w) boolean texture; ``freq`` cycles across the tile's longer side."""
    side = np.float32(max(h, w))
    yy, xx = np.arange(h, dtype=np.float32)[:, None] / side, np.arange(w, dtype=np.float32) / side
    a = math.radians(angle)
    ca, sa, ph = np.float32(math.cos(a)), np.float32(math.sin(a)), np.float32(rng.random())
    t, o = xx * ca + yy * sa, yy * ca - xx * sa
    if kind == 0:  # stripes
        p = (t * freq + ph) % 1 < 0.5
    elif kind == 1:  # checks
        p = (np.floor(t * freq + ph) + np.floor(o * freq)) % 2 == 1
    elif kind == 2:  # dots
        p = ((t * freq + ph) % 1 - 0.5) ** 2 + ((o * freq) % 1 - 0.5) ** 2 < 0.09
    elif kind == 3:  # rings around an off-centre point
        p = (np.hypot(xx - 0.3 - 0.4 * ph, yy - 0.5) * freq * 1.5) % 1 < 0.5
    elif kind == 4:  # waves
        p = (t * freq + 0.3 * np.sin(2 * np.pi * o * freq * 0.6) + ph) % 1 < 0.5
    else:  # blotches: thresholded smooth noise
        grid = Image.fromarray((rng.random((3 + int(freq) // 2,) * 2) * 255).astype(np.uint8))
        p = np.asarray(grid.resize((w, h), Image.BICUBIC)) > 128
    return np.broadcast_to(p, (h, w))


def _object(look: ClassLook | None, size_px: float, rng: np.random.Generator,
            template: Template | None = None) -> tuple[Image.Image, int]:
    """One jittered instance of a class as an RGBA tile (transparent outside the object), and its pixel area.

    ``size_px`` is the side of the body's box of the same area. ``look`` None draws a decoy: ``template``'s body
    with a random texture and colours and no distinguishing part.
    """
    if look is None:
        look = ClassLook(template, tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)),
                         int(rng.integers(NUM_PATTERNS)), float(rng.uniform(0, 180)), float(rng.uniform(3, 7)),
                         -1, (0.5, 0.5))
    tpl = look.template
    aspect = tpl.aspect * math.exp(rng.normal(0, 0.1))
    bw, bh = max(4, round(size_px * math.sqrt(aspect))), max(4, round(size_px / math.sqrt(aspect)))
    m = round(0.25 * max(bw, bh)) + 2  # room for parts that stick out of the body box
    W, H, box, flip = bw + 2 * m, bh + 2 * m, (m, m, bw, bh), bool(rng.random() < 0.5)
    mask = Image.new("L", (W, H), 0)
    mdraw = ImageDraw.Draw(mask)
    for shape in tpl.body:
        _draw_shape(mdraw, shape, box, 255, flip)
    p = _pattern(look.pattern, H, W, look.angle + rng.normal(0, 12),
                 look.freq * math.exp(rng.normal(0, 0.15)), rng)
    body, texture, shared, part = (tuple(int(v) for v in c) + (255,) for c in _jitter(look.colours, rng))
    lut = np.array([body[:3], texture[:3]], np.float32)
    lut[1] = lut[0] + rng.uniform(0.55, 1.0) * (lut[1] - lut[0])  # texture contrast varies
    tile = Image.fromarray(lut.astype(np.uint8)[np.ascontiguousarray(p).view(np.uint8)], "RGB")
    tile.putalpha(mask)
    draw = ImageDraw.Draw(tile)
    for shape in tpl.shared:
        _draw_shape(draw, shape, box, shared, flip)
    if look.glyph >= 0:
        ax, ay = look.anchor
        r = 0.27 * (bw + bh) / 2 * math.exp(rng.normal(0, 0.12))
        cx, cy = m + (1 - ax if flip else ax) * bw, m + ay * bh
        _draw_shape(draw, GLYPHS[look.glyph], (cx - r, cy - r, 2 * r, 2 * r), part, False)
    angle = rng.normal(0, tpl.tilt)
    if abs(angle) > 2:
        tile = tile.rotate(angle, resample=Image.NEAREST, expand=True)
    return tile, int(np.count_nonzero(np.asarray(tile.getchannel("A"))))


def _clutter(canvas: Image.Image, n: int, lo: float, hi: float, rng: np.random.Generator) -> None:
    """Random shapes and stray glyphs, in random colours."""
    S = canvas.size[0]
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        r = S * rng.uniform(lo, hi)
        x, y = rng.uniform(0, S, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.choice(4, p=(0.3, 0.3, 0.3, 0.1))  # few stray glyphs
        if kind == 0:
            a = rng.uniform(0, np.pi)
            draw.line((x, y, x + 2 * r * np.cos(a), y + 2 * r * np.sin(a)), fill=colour,
                      width=int(rng.integers(1, max(2, S // 40) + 1)))
        elif kind == 3:
            _draw_shape(draw, GLYPHS[rng.integers(len(GLYPHS))], (x - r / 2, y - r / 2, r, r), colour, False)
        else:
            _draw_shape(draw, ("ellipse" if kind == 1 else "rect", 0, 0, 1, 1),
                        (x - r, y - r * rng.uniform(0.4, 1), 2 * r, 2 * r * rng.uniform(0.4, 1)), colour, False)


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed Gaussian noise that images crop at random (cheaper than fresh noise each)."""
    side = max(512, 2 * size)
    return np.random.default_rng(20241115).standard_normal((side, side, 3), dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _fill(template: Template) -> float:
    """The fraction of a template's box its body and shared parts cover (so that sizes can be asked for as areas).
    Keyed by the template's value: the same in every process."""
    mask = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(mask)
    for shape in (*template.body, *template.shared):
        _draw_shape(draw, shape, (0, 0, 200, 200), 255, False)
    return max(0.2, np.count_nonzero(np.asarray(mask)) / 200**2)


def render_scene(labels: Sequence[int], looks: Sequence[ClassLook], size: int, rng: np.random.Generator,
                 params: SceneParams) -> tuple[Image.Image, list[float]]:
    """An RGB ``size`` x ``size`` scene showing every class in ``labels`` at least once, and the area of each
    instance drawn (pixels over the image's, before occlusion and cropping by the frame)."""
    grey = rng.uniform(70, 190)
    grid = (grey + rng.uniform(-45, 45, (3, 3, 3))).astype(np.uint8)  # muted, so objects stand out
    canvas = Image.fromarray(grid, "RGB").resize((size, size), Image.BICUBIC)
    _clutter(canvas, int(rng.integers(*params.clutter)), 0.02, 0.10, rng)
    for _ in range(int(rng.random() < 0.3) + int(rng.random() < 0.3)):  # textured patches: texture alone names nothing
        s = max(4, int(size * rng.uniform(0.08, 0.2)))
        p = _pattern(int(rng.integers(NUM_PATTERNS)), s, s, rng.uniform(0, 180), rng.uniform(3, 7), rng)
        colours = rng.integers(0, 256, (2, 3)).astype(np.uint8)
        patch = Image.fromarray(colours[p.astype(np.intp)], "RGB")
        canvas.paste(patch, tuple(int(v) for v in rng.integers(0, size - s + 1, 2)))
    lo, hi = params.object_range
    objects = []  # (class or None for a decoy, size as a fraction of the side)
    for c in labels:
        main = float(np.clip(params.object_median * math.exp(rng.normal(0, params.object_sigma)), lo, hi))
        objects.append((c, main))
        for _ in range(rng.poisson(params.extra_instances)):
            extra = main * params.extra_scale * math.exp(rng.normal(0, params.object_sigma))
            objects.append((c, float(np.clip(extra, lo / 2, main))))
    templates = list({id(look.template): look.template for look in looks}.values())  # in class order
    for _ in range(rng.poisson(params.decoys)):
        size_frac = params.object_median * math.exp(rng.normal(0, params.object_sigma))
        objects.append((None, float(np.clip(size_frac, lo, hi))))
    objects = [objects[i] for i in rng.permutation(len(objects))]  # draw order = occlusion order
    areas = []
    for c, frac in objects:
        template = looks[c].template if c is not None else templates[int(rng.integers(len(templates)))]
        tile, area = _object(looks[c] if c is not None else None, size * frac / math.sqrt(_fill(template)), rng,
                             template)
        cx, cy = rng.uniform(0.05 * size, 0.95 * size, 2)  # large objects near an edge are cut by the frame
        canvas.paste(tile, (round(cx - tile.width / 2), round(cy - tile.height / 2)), tile)
        if c is not None:
            areas.append(area / size**2)
    if rng.random() < params.occluders:  # occluders in front of the objects
        _clutter(canvas, int(rng.integers(1, 4)), 0.04, 0.12, rng)
    arr = np.asarray(canvas, dtype=np.float32)
    arr = (arr - 128) * rng.uniform(0.75, 1.2) + 128 + rng.uniform(-20, 20)
    bank = _noise_bank(size)
    y, x = rng.integers(0, len(bank) - size + 1, 2)
    arr += bank[y:y + size, x:x + size] * np.float32(rng.uniform(2, 6))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), areas


def _render_chunk(jobs: Sequence[tuple[str, Sequence[int], Sequence[int]]], looks: Sequence[ClassLook], size: int,
                  params: SceneParams) -> list[list[float]]:
    areas = []
    for path, labels, seed in jobs:
        image, a = render_scene(labels, looks, size, np.random.default_rng(seed), params)
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
        areas.append(a)
    return areas


def render_split(root: Path, rel_paths: Sequence[str], label_sets: Sequence[Sequence[int]],
                 seeds: Sequence[Sequence[int]], super_categories: Sequence[str],
                 templates: Mapping[str, str], size: int, params: SceneParams,
                 workers: int | None = None) -> list[list[float]]:
    """Draw and save ``root / rel_paths[i]`` for every image (in ``workers`` processes); each image's instance
    areas (fractions of the image), in list order."""
    looks = class_looks(super_categories, templates)
    jobs = [(str(root / p), s, seed) for p, s, seed in zip(rel_paths, label_sets, seeds)]
    workers = usable_cpus(at_most=2) if workers is None else workers
    # Forked workers inherit the imports (spawn would re-import torch via the package).
    if workers <= 1 or len(jobs) < 64 or "fork" not in mp.get_all_start_methods():
        return _render_chunk(jobs, looks, size, params)
    k = workers * 4
    chunks = [jobs[i::k] for i in range(k)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        parts = list(pool.map(_render_chunk, chunks, [looks] * k, [size] * k, [params] * k))
    areas: list[list[float]] = [[] for _ in jobs]
    for i, part in enumerate(parts):
        areas[i::k] = part
    return areas


def area_summary(areas: Sequence[Sequence[float]]) -> dict:
    """The instances' sizes in COCO's classes (small < 32², medium < 96² pixels of 640 x 480), and per image."""
    flat = np.array([a for image in areas for a in image], dtype=np.float64)
    if not flat.size:
        return {"instances": 0}
    return {"instances": int(flat.size), "instances_per_image": round(flat.size / len(areas), 3),
            "small": round(float((flat < SMALL_AREA).mean()), 4),
            "medium": round(float(((flat >= SMALL_AREA) & (flat < MEDIUM_AREA)).mean()), 4),
            "large": round(float((flat >= MEDIUM_AREA).mean()), 4),
            "median_area": round(float(np.median(flat)), 5)}
