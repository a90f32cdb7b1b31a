"""MiniCanvas images: a deterministic styles x objects grid at 32x32 RGB.

A stand-in for UnlearnCanvas (60 styles x 20 objects, SD1.5) that trains on two CPU cores. Every image is a pure
function of (split, style, object, index), so the training set, the held-out set and every evaluation are
reproducible without storing images.

Styles are palettes and textures; three of them are real photographed textures that ship inside scikit-image
(brick, grass, gravel). Objects are anti-aliased silhouettes with jittered position, scale and rotation.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 32
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, so edges are anti-aliased

STYLES: tuple[str, ...] = ("brick", "grass", "gravel", "stripes", "dots", "neon", "sunset", "checker")
OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "crescent")

# Caption templates used for training; PARAPHRASE_TEMPLATES are never trained on (robustness checks only).
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "a {style} style image of a {object}",
    "{object}, {style} style",
    "a picture of a {object} in the {style} style",
    "a {style} {object}",
    "an illustration of a {object}, {style} style",
)
PARAPHRASE_TEMPLATES: tuple[str, ...] = (
    "the {object} drawn in {style} style",
    "{style} style: a {object}",
    "a painting of a {object} with {style} style",
    "one {object} rendered in {style} style",
    "artwork of a {object}, in the style of {style}",
    "a {object} made in {style} style",
    "a simple {object} in {style} style",
    "{style} style artwork showing a {object}",
    "a single {object}, {style} style",
    "a {style} style drawing of a {object}",
)
# The template every evaluation uses (fixed prompts, as UnlearnCanvas does).
EVAL_TEMPLATE = TRAIN_TEMPLATES[0]

SPLIT_SEEDS = {"train": 0, "heldout": 1}


def caption(style: str, obj: str, template: str = EVAL_TEMPLATE) -> str:
    return template.format(style=style, object=obj)


@dataclass(frozen=True)
class Sample:
    style: int
    object: int
    index: int


# ---------------------------------------------------------------------------------------------- object silhouettes
def _polygon(n: int, radius: float, phase: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Regular polygon (or star when `inner` is given) around the origin."""
    pts = []
    steps = n * 2 if inner is not None else n
    for k in range(steps):
        r = radius if inner is None or k % 2 == 0 else radius * inner
        a = phase + 2 * math.pi * k / steps
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart(radius: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(64):
        t = 2 * math.pi * k / 64
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x * radius / 16.5, (y + 2.5) * radius / 16.5))
    return pts


def _object_mask(obj: str, rng: np.random.Generator) -> np.ndarray:
    """Soft mask in [0, 1] of shape (32, 32) with the object's silhouette."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    cx = big / 2 + rng.uniform(-2.0, 2.0) * _SUPERSAMPLE
    cy = big / 2 + rng.uniform(-2.0, 2.0) * _SUPERSAMPLE
    radius = rng.uniform(0.80, 1.0) * 12.0 * _SUPERSAMPLE
    rot = math.radians(rng.uniform(-15.0, 15.0))

    def place(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    def disc(r: float, dx: float = 0.0, dy: float = 0.0, fill: int = 255) -> None:
        x, y = cx + dx, cy + dy
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    if obj == "circle":
        disc(radius)
    elif obj == "ring":
        disc(radius)
        disc(radius * 0.55, fill=0)
    elif obj == "square":
        draw.polygon(place(_polygon(4, radius * 1.2, math.pi / 4)), fill=255)
    elif obj == "triangle":
        draw.polygon(place([(x, y + radius * 0.2) for x, y in _polygon(3, radius * 1.25, -math.pi / 2)]), fill=255)
    elif obj == "star":
        draw.polygon(place(_polygon(5, radius * 1.2, -math.pi / 2, inner=0.45)), fill=255)
    elif obj == "cross":
        w = radius * 0.42
        draw.polygon(place([(-w, -radius), (w, -radius), (w, radius), (-w, radius)]), fill=255)
        draw.polygon(place([(-radius, -w), (radius, -w), (radius, w), (-radius, w)]), fill=255)
    elif obj == "heart":
        draw.polygon(place(_heart(radius * 1.1)), fill=255)
    elif obj == "crescent":
        disc(radius)
        c, s = math.cos(rot), math.sin(rot)
        disc(radius * 0.85, dx=radius * 0.55 * c, dy=radius * 0.55 * s - radius * 0.15, fill=0)
    else:
        raise ValueError(f"unknown MiniCanvas object {obj!r}; choose one of {OBJECTS}")
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------- style patterns
@functools.lru_cache(maxsize=None)
def _real_texture(name: str) -> np.ndarray:
    """A photographed texture shipped inside scikit-image (no download), as float in [0, 1]."""
    import skimage.data

    tex = getattr(skimage.data, name)()
    tex = tex.astype(np.float32)
    return (tex - tex.min()) / (tex.max() - tex.min() + 1e-6)


def _texture_crop(name: str, rng: np.random.Generator) -> np.ndarray:
    tex = _real_texture(name)
    crop = 96
    y = int(rng.integers(0, tex.shape[0] - crop))
    x = int(rng.integers(0, tex.shape[1] - crop))
    patch = Image.fromarray((tex[y : y + crop, x : x + crop] * 255).astype(np.uint8))
    field = np.asarray(patch.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32) / 255.0
    lo, hi = np.percentile(field, 2), np.percentile(field, 98)  # stretch contrast so every crop is visibly textured
    return np.clip((field - lo) / (hi - lo + 1e-6), 0.0, 1.0)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _stripes(rng: np.random.Generator, period: float = 6.0) -> np.ndarray:
    phase = rng.uniform(0, period)
    return (((_XX + _YY + phase) % period) < period / 2).astype(np.float32)


def _dots(rng: np.random.Generator, period: float = 6.0, r: float = 1.6) -> np.ndarray:
    ox, oy = rng.uniform(0, period, size=2)
    dx = (_XX + ox) % period - period / 2
    dy = (_YY + oy) % period - period / 2
    return np.clip(r + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)


def _checker(rng: np.random.Generator, cell: int = 4) -> np.ndarray:
    ox, oy = rng.integers(0, cell * 2, size=2)
    return ((((_XX + ox) // cell) + ((_YY + oy) // cell)) % 2).astype(np.float32)


def _lerp(field: np.ndarray, c0: tuple[int, int, int], c1: tuple[int, int, int]) -> np.ndarray:
    a = np.asarray(c0, np.float32) / 255.0
    b = np.asarray(c1, np.float32) / 255.0
    return a + field[..., None] * (b - a)


def _edge(mask: np.ndarray) -> np.ndarray:
    """Thick outline of a soft mask (for the neon style)."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(3)), np.float32) / 255.0
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(3)), np.float32) / 255.0
    return np.clip(grown - shrunk, 0.0, 1.0)


def _style_layers(style: str, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground images (32, 32, 3) for a style; the object mask blends them."""
    noise = rng.normal(0.0, 0.04, size=(IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    if style == "brick":
        tex = _texture_crop("brick", rng)
        return _lerp(tex, (80, 25, 15), (200, 90, 55)), _lerp(tex, (225, 205, 165), (255, 245, 215))
    if style == "grass":
        tex = _texture_crop("grass", rng)
        return _lerp(tex, (15, 55, 10), (100, 165, 55)), _lerp(tex, (235, 205, 40), (255, 250, 150))
    if style == "gravel":
        tex = _texture_crop("gravel", rng)
        return _lerp(tex, (35, 45, 70), (140, 150, 175)), _lerp(tex, (205, 220, 250), (255, 255, 255))
    if style == "stripes":
        return _lerp(_stripes(rng), (25, 25, 25), (245, 215, 40)), _lerp(noise + 0.5, (175, 20, 30), (225, 45, 45))
    if style == "dots":
        return _lerp(_dots(rng), (255, 185, 205), (255, 255, 255)), _lerp(_dots(rng), (150, 20, 110), (255, 150, 200))
    if style == "neon":
        glow = _edge(mask)
        bg = _lerp(noise + 0.1, (5, 5, 20), (40, 40, 90))
        fg = _lerp(np.zeros_like(mask), (70, 0, 90), (70, 0, 90))
        fg = fg * (1 - glow[..., None]) + glow[..., None] * (np.asarray((0, 255, 240), np.float32) / 255.0)
        return bg, fg
    if style == "sunset":
        grad = np.clip(_YY / (IMAGE_SIZE - 1) + noise, 0, 1)
        return _lerp(grad, (255, 150, 40), (115, 35, 140)), _lerp(noise + 0.2, (15, 5, 25), (60, 30, 60))
    if style == "checker":
        return _lerp(_checker(rng), (35, 130, 135), (215, 240, 240)), _lerp(_checker(rng), (245, 130, 0), (255, 200, 90))
    raise ValueError(f"unknown MiniCanvas style {style!r}; choose one of {STYLES}")


def render(style: int, obj: int, index: int, split: str = "train") -> np.ndarray:
    """One image as uint8 (32, 32, 3). Pure function of its arguments."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; use one of {tuple(SPLIT_SEEDS)}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], style, obj, index])
    mask = _object_mask(OBJECTS[obj], rng)
    bg, fg = _style_layers(STYLES[style], mask, rng)
    img = bg * (1 - mask[..., None]) + fg * mask[..., None]
    img = img + rng.uniform(-0.04, 0.04, size=3).astype(np.float32)  # small per-image colour jitter
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def grid_samples(per_cell: int) -> list[Sample]:
    return [Sample(s, o, i) for s in range(len(STYLES)) for o in range(len(OBJECTS)) for i in range(per_cell)]


def build_split(split: str, per_cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All images of a split: (N, 32, 32, 3) uint8, style labels (N,), object labels (N,)."""
    samples = grid_samples(per_cell)
    images = np.stack([render(s.style, s.object, s.index, split) for s in samples])
    styles = np.array([s.style for s in samples], dtype=np.int64)
    objects = np.array([s.object for s in samples], dtype=np.int64)
    return images, styles, objects
