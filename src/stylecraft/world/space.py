"""The shapes world's style space: 11,520 styles composed from five independent factors, and its held-out split.

A style is one value of each factor plus continuous parameters (angles, periods, widths, strengths, tints) that
its integer id fixes::

    fill     flat, shaded, hatched, dotted, checkered, mottled, hollow
    outline  no, thin, thick, double, glowing, dashed, sketchy
    ground   plain, gradient, striped, paper, cloudy, vignette
    effect   none, pixelated, blurred, posterized, halftone, grainy, shifted, wobbly
    palette  natural, pastel, duotone, inverted, neon

Every combination is a style except a hollow fill without an outline (nothing would draw the shape). Its
descriptor names the factors in a fixed order, leaving out ``none`` and ``natural``, and a caption keeps the
world's grammar::

    a {size} {colour} {shape} [{position}] in {descriptor} style
    a large red star in hatched fill, glowing outline, striped ground, pixelated, pastel style

``HELD_OUT_FAMILIES`` are never shown to a trained component: four whole factor values and five combinations of
values that are each seen on their own. A style belongs to the first family it matches, or to none (seen).
The 14 named styles of ``renderer.STYLES`` stay what they were: ``render_captions`` draws their captions with the
renderer itself.

Rendering is the renderer's distance fields (the same content, jitter and colours), then per factor one
vectorised function over the images that have that value: ground, fill, outline, effect, with the palette
choosing the ground, ink and shape colours. The same style ids, scenes and seed give the same pixels.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StylecraftError
from .renderer import (
    COLOUR_NAMES,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZE,
    SIZES,
    STYLES,
    Scenes,
    _distance_fields,
    _fill,
    _stroke,
    caption,
    render_prompts,
    sample_scenes,
)
from .renderer import (
    parse_caption as parse_named_caption,
)

FILLS = ("flat", "shaded", "hatched", "dotted", "checkered", "mottled", "hollow")
OUTLINES = ("no", "thin", "thick", "double", "glowing", "dashed", "sketchy")
GROUNDS = ("plain", "gradient", "striped", "paper", "cloudy", "vignette")
EFFECTS = ("none", "pixelated", "blurred", "posterized", "halftone", "grainy", "shifted", "wobbly")
PALETTES = ("natural", "pastel", "duotone", "inverted", "neon")
FACTORS = {"fill": FILLS, "outline": OUTLINES, "ground": GROUNDS, "effect": EFFECTS, "palette": PALETTES}

# Held-out families, in matching order: whole values first, then combinations of values seen on their own.
HELD_OUT_FAMILIES = {
    "dotted fill": {"fill": "dotted"},
    "dashed outline": {"outline": "dashed"},
    "halftone": {"effect": "halftone"},
    "duotone": {"palette": "duotone"},
    "hatched glowing": {"fill": "hatched", "outline": "glowing"},
    "pixelated stripes": {"ground": "striped", "effect": "pixelated"},
    "neon checkers": {"fill": "checkered", "palette": "neon"},
    "sketchy mottled": {"fill": "mottled", "outline": "sketchy"},
    "inverted clouds": {"ground": "cloudy", "palette": "inverted"},
}
SEEN = "seen"

# Every word a descriptor can contain (plus the comma between its parts): the mini CLIP's tokenizer is built
# from these and the renderer's caption words.
VOCABULARY = tuple(sorted({"fill", "outline", "ground", *itertools.chain(*FACTORS.values())} - {"none", "natural"}))

# The styles, id = row: factor value indices [n_styles, 5] in FACTORS' order, hollow fill without outline left out.
_TABLE = np.array(
    [
        combo
        for combo in itertools.product(*(range(len(values)) for values in FACTORS.values()))
        if not (FILLS[combo[0]] == "hollow" and OUTLINES[combo[1]] == "no")
    ],
    dtype=np.int64,
)
NUM_STYLES = len(_TABLE)
# Each style's continuous parameters in [0, 1), fixed by its id; the painting functions map them to ranges.
_PARAMS = np.random.default_rng(28).uniform(size=(NUM_STYLES, 8)).astype(np.float32)
# Columns of _PARAMS: the ground (direction or strength; stripe period), the fill (angle, period, cell or strength),
# outline width, effect strength, the palette (hue, lightness), the fill again (hatch period, dot radius).
_GROUND_A, _GROUND_B, _FILL_A, _OUTLINE_WIDTH, _EFFECT_STRENGTH, _PALETTE_HUE, _PALETTE_LIGHT, _FILL_B = range(8)


def _family_index(table: np.ndarray) -> np.ndarray:
    """Index into HELD_OUT_FAMILIES of each row's first matching family, -1 when it matches none (seen)."""
    family = np.full(len(table), -1)
    for k, rule in reversed(list(enumerate(HELD_OUT_FAMILIES.values()))):
        match = np.ones(len(table), dtype=bool)
        for factor, value in rule.items():
            match &= table[:, list(FACTORS).index(factor)] == FACTORS[factor].index(value)
        family[match] = k
    return family


_FAMILY = _family_index(_TABLE)
SEEN_IDS = np.flatnonzero(_FAMILY < 0)
HELD_OUT_IDS = np.flatnonzero(_FAMILY >= 0)


def factors(style_id: int) -> dict[str, str]:
    """A style's factor values, e.g. {"fill": "hatched", "outline": "glowing", ...}."""
    return {name: values[i] for (name, values), i in zip(FACTORS.items(), _TABLE[style_id], strict=True)}


def describe(style_id: int) -> str:
    """A style's descriptor phrase, e.g. "hatched fill, glowing outline, striped ground, pixelated, pastel"."""
    f = factors(style_id)
    parts = [f"{f['fill']} fill", f"{f['outline']} outline", f"{f['ground']} ground"]
    return ", ".join(parts + [f[k] for k in ("effect", "palette") if f[k] not in ("none", "natural")])


_DESCRIPTORS = tuple(describe(i) for i in range(NUM_STYLES))
_IDS = {text: i for i, text in enumerate(_DESCRIPTORS)}


def style_id(descriptor: str) -> int:
    """The id of a descriptor phrase (``describe``'s inverse); ``ValueError`` for a phrase outside the space."""
    if descriptor not in _IDS:
        raise ValueError(
            f"{descriptor!r} is not a style of the space; expected '{{fill}} fill, {{outline}} outline, {{ground}} "
            f"ground[, {{effect}}][, {{palette}}]' with words from {', '.join(VOCABULARY)}"
        )
    return _IDS[descriptor]


def family(style_id: int) -> str:
    """The held-out family a style belongs to, or ``SEEN``."""
    k = _FAMILY[style_id]
    return SEEN if k < 0 else list(HELD_OUT_FAMILIES)[k]


def family_ids(name: str) -> np.ndarray:
    """The ids of one held-out family (or of every seen style for ``SEEN``)."""
    if name == SEEN:
        return SEEN_IDS
    if name not in HELD_OUT_FAMILIES:
        raise ValueError(f"unknown style family {name!r}; choose one of {[SEEN, *HELD_OUT_FAMILIES]}")
    return np.flatnonzero(_FAMILY == list(HELD_OUT_FAMILIES).index(name))


def sample_styles(n: int, rng: np.random.Generator, held_out: bool = False) -> np.ndarray:
    """``n`` style ids drawn uniformly from the seen styles (or from the held-out families)."""
    ids = HELD_OUT_IDS if held_out else SEEN_IDS
    return ids[rng.integers(len(ids), size=n)]


# ---- painting: each factor's functions map a subset of images to pixels ------------------------------------------
def _centred() -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2
    return grid[None, None, :], grid[None, :, None]


def _along(angle: np.ndarray) -> np.ndarray:
    """Distance in px from the image centre along each image's direction ``angle`` [m] -> [m, H, W]."""
    x, y = _centred()
    return x * np.cos(angle)[:, None, None] + y * np.sin(angle)[:, None, None]


def _noise(m: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise [m, H, W] in about [-1, 1]: a random cells×cells grid, bilinearly upsampled by two matrix
    products (the renderer's einsum does the same sum far slower)."""
    pos = np.linspace(0, cells - 1, SIZE, dtype=np.float32)
    lower = np.minimum(pos.astype(int), cells - 2)
    interp = np.zeros((SIZE, cells), dtype=np.float32)
    interp[np.arange(SIZE), lower] = 1 - (pos - lower)
    interp[np.arange(SIZE), lower + 1] = pos - lower
    return interp @ rng.uniform(-1, 1, (m, cells, cells)).astype(np.float32) @ interp.T


def _frac(a: np.ndarray) -> np.ndarray:
    """``a % 1.0``, several times faster for floats."""
    return a - np.floor(a)


def _hue(h: np.ndarray) -> np.ndarray:
    """Fully saturated RGB of hues ``h`` in [0, 1) [m] -> [m, 3]."""
    return np.clip(np.abs((h[:, None] * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1).astype(np.float32)


def _palette(palette: np.ndarray, colour: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ground, second ground tone, ink and shape colours [n, 3] each. Grounds keep little chroma and the shape keeps
    its hue in every palette, so its colour stays readable."""
    hue = _hue(u[:, _PALETTE_HUE])
    tint = 0.08 * (hue - hue.mean(axis=1, keepdims=True))  # a faint cast of the style's hue
    light = (0.9 + 0.08 * u[:, _PALETTE_LIGHT])[:, None] + tint
    dark = (0.05 + 0.12 * u[:, _PALETTE_LIGHT])[:, None] + tint
    duo_light, duo_dark = 0.82 + 0.16 * hue, 0.06 + 0.3 * hue  # duotone: two tones of one hue
    choice = [palette == PALETTES.index(p) for p in PALETTES]
    paper = np.select([c[:, None] for c in choice], [light, light, duo_light, dark, dark * 0.4])
    second = np.select(
        [c[:, None] for c in choice], [light * 0.7, light * 0.85, 0.75 * duo_light + 0.25 * duo_dark, dark + 0.2, dark]
    )
    ink = np.select([c[:, None] for c in choice], [0.1 + tint, 0.4 + tint, duo_dark, 0.92 + tint, 0.85 + tint])
    neon = colour / colour.max(axis=1, keepdims=True)
    shape = np.select(
        [choice[PALETTES.index("pastel")][:, None], choice[PALETTES.index("neon")][:, None]],
        [0.6 * colour + 0.4, neon],
        colour,
    )
    return tuple(np.clip(a, 0, 1).astype(np.float32) for a in (paper, second, ink, shape))


def _ground(kind: str, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How far each pixel is from the ground's first tone toward its second, in [0, 1] [m, H, W] (not plain)."""
    m = len(u)
    shape = u[:, _GROUND_A]
    if kind == "gradient":
        return np.clip(0.5 + _along(2 * np.pi * shape) / 60, 0, 1)
    if kind == "striped":
        period = (5 + 7 * u[:, _GROUND_B])[:, None, None]
        phase = _along(np.pi * shape) / period + rng.uniform(0, 1, (m, 1, 1)).astype(np.float32)
        return np.clip(0.5 + 2 * np.sin(2 * np.pi * phase), 0, 1)
    if kind == "paper":  # laid lines across or down the sheet, and grain
        lines = rng.uniform(0, 1, (m, SIZE, 1)).astype(np.float32)
        lines = np.where((shape < 0.5)[:, None, None], lines, lines.transpose(0, 2, 1))
        return np.clip(0.15 + 0.5 * lines + 0.2 * rng.standard_normal((m, SIZE, SIZE), dtype=np.float32), 0, 1)
    if kind == "cloudy":
        return np.clip(0.5 + (0.5 + 0.4 * shape)[:, None, None] * _noise(m, rng, 5), 0, 1)
    x, y = _centred()  # vignette: the second tone toward the corners
    return np.clip((x**2 + y**2) / (2 * 32**2) * (1.2 + 1.2 * shape)[:, None, None], 0, 1)


def _fill_colours(kind: str, colour: np.ndarray, ground: np.ndarray, ink: np.ndarray, u: np.ndarray, rng):
    """The colour inside the shape [m, H, W, 3] (before coverage; hollow shows the ground)."""
    m = len(u)
    c = colour[:, None, None]
    shape = u[:, _FILL_A]
    if kind == "flat":
        return c
    if kind == "shaded":  # light to dark across the image
        s = np.clip(0.5 + _along(2 * np.pi * shape) / 50, 0, 1)[..., None]
        return (0.6 * c + 0.4) * (1 - s) + 0.6 * c * s
    if kind == "hatched":
        period = (3 + 2 * u[:, _FILL_B])[:, None, None]
        phase = _along(np.pi * shape) / period + rng.uniform(0, 1, (m, 1, 1)).astype(np.float32)
        return np.where((_frac(phase) < 0.6)[..., None], c, 0.7 * ground + 0.3 * c)  # gaps tinted: the silhouette stays
    if kind == "dotted":
        period = (5 + 3 * shape)[:, None, None]
        x, y = _centred()
        ox, oy = rng.uniform(0, 8, (2, m, 1, 1)).astype(np.float32)
        fx, fy = _frac((x + ox) / period) - 0.5, _frac((y + oy) / period) - 0.5
        dots = np.hypot(fx, fy) * period < (1.2 + 0.8 * u[:, _FILL_B])[:, None, None]
        return np.where(dots[..., None], 0.15 * c + 0.85, c)
    if kind == "checkered":
        cell = (3 + 3 * shape)[:, None, None]
        x, y = _centred()
        ox, oy = rng.uniform(0, 6, (2, m, 1, 1)).astype(np.float32)
        checks = (np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2 == 0
        return np.where(checks[..., None], c, 0.35 * c + 0.65 * ink[:, None, None])
    return c * (1 + (0.2 + 0.2 * shape)[:, None, None, None] * _noise(m, rng, 9)[..., None])  # mottled


def _outline_alpha(kind: str, sdf: np.ndarray, u: np.ndarray, boost: np.ndarray, rng) -> np.ndarray:
    """The outline's coverage [m, H, W, 1]; ``boost`` [m] widens the lines that alone draw a hollow shape."""
    m = len(u)
    width = u[:, _OUTLINE_WIDTH]
    if kind == "thin":
        return _stroke(sdf, 1.0 + 0.6 * width + boost)
    if kind == "thick":
        return _stroke(sdf, 2.5 + 1.5 * width + boost)
    if kind == "double":
        gap = (2.5 + 1.5 * width)[:, None, None]
        return np.maximum(_stroke(sdf, 1.0 + 0.5 * boost), _stroke(sdf + gap, 1.0 + 0.5 * boost))
    if kind == "glowing":  # a core line and a halo outside the shape
        halo = np.exp(-np.maximum(sdf, 0) / (2 + 2 * width)[:, None, None]) * (sdf > 0)
        return np.maximum(_stroke(sdf, 1.2 + boost), 0.8 * halo[..., None])
    if kind == "dashed":
        period = (3 + 3 * width)[:, None, None]
        x, y = _centred()
        ox, oy = rng.uniform(0, 6, (2, m, 1, 1)).astype(np.float32)
        dashes = (np.floor((x + ox) / period) + np.floor((y + oy) / period)) % 2 == 0
        return _stroke(sdf, 1.8 + 1.2 * width + boost) * dashes[..., None]
    # sketchy: two strokes, each along its own wobbly copy of the edge
    first = _stroke(sdf + 1.2 * _noise(m, rng, 12), 1.0 + 0.5 * width + boost)
    return np.maximum(first, _stroke(sdf + 1.2 * _noise(m, rng, 12), 1.0 + 0.5 * width + boost))


def _effect(kind: str, image: np.ndarray, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A whole-image effect on ``image`` [m, H, W, 3]."""
    m = len(u)
    strength = u[:, _EFFECT_STRENGTH]
    if kind == "pixelated":  # the mean of each block of 2-4 px (the last row and column of blocks may be narrower)
        out = np.empty_like(image)
        block = 2 + (3 * strength).astype(int)
        for b in np.unique(block):
            starts = np.arange(0, SIZE, b)
            counts = np.diff(np.append(starts, SIZE))
            sums = np.add.reduceat(np.add.reduceat(image[block == b], starts, axis=1), starts, axis=2)
            means = sums / (counts[:, None, None] * counts[None, :, None]).astype(np.float32)
            out[block == b] = means.repeat(counts, axis=1).repeat(counts, axis=2)
        return out
    if kind == "blurred":  # separable Gaussian, sigma 0.7-1.5 px
        offsets = np.arange(-3, 4)
        weights = np.exp(-(offsets[None] ** 2) / (2 * (0.7 + 0.8 * strength[:, None]) ** 2)).astype(np.float32)
        weights /= weights.sum(axis=1, keepdims=True)  # [m, 7]
        for axis in (1, 2):
            padded = np.pad(image, [(0, 0)] + [(3, 3) if a == axis else (0, 0) for a in (1, 2)] + [(0, 0)], "edge")
            image = sum(
                weights[:, k, None, None, None] * np.take(padded, np.arange(k, k + SIZE), axis=axis) for k in range(7)
            )
        return image
    if kind == "posterized":  # brightness in 4-6 levels (0 and 3-5 steps up to 1), hue kept
        levels = (3 + np.floor(3 * strength))[:, None, None, None]
        value = image.max(axis=3, keepdims=True)
        return image * (np.round(value * levels) / levels) / np.maximum(value, 1e-3)
    if kind == "halftone":  # dots on a 45° screen, larger where the colour is far from the paper
        cell = (3 + 2 * strength)[:, None, None]
        x, y = _centred()
        a, b = (x + y) / np.sqrt(2) / cell, (x - y) / np.sqrt(2) / cell
        distance = np.hypot(_frac(a) - 0.5, _frac(b) - 0.5)  # in cells, [m, H, W]
        paper = np.where(image.mean(axis=(1, 2, 3)) > 0.45, 1.0, 0.04).astype(np.float32)[:, None, None, None]
        ink = np.abs(image - paper).max(axis=3)
        return np.where((distance < 0.28 + 0.4 * ink)[..., None], image, paper)
    if kind == "grainy":
        noise = rng.standard_normal((m, SIZE, SIZE, 1), dtype=np.float32)
        return image + (0.05 + 0.07 * strength)[:, None, None, None] * noise
    if kind == "shifted":  # chromatic offset: red one way, blue the other, 1-2 px
        out = image.copy()
        shift = 1 + np.round(strength).astype(int)
        for s in np.unique(shift):
            out[shift == s, :, :, 0] = np.roll(image[shift == s, :, :, 0], s, axis=2)
            out[shift == s, :, :, 2] = np.roll(image[shift == s, :, :, 2], -s, axis=2)
        return out
    # wobbly: sample the image at smoothly displaced points (bilinear), 1.2-2.5 px
    amplitude = (1.2 + 1.3 * strength)[:, None, None]
    grid = np.arange(SIZE, dtype=np.float32)
    sx = np.clip(grid[None, None, :] + amplitude * _noise(m, rng, 5), 0, SIZE - 1.001)
    sy = np.clip(grid[None, :, None] + amplitude * _noise(m, rng, 5), 0, SIZE - 1.001)
    x0, y0 = sx.astype(int), sy.astype(int)
    fx, fy = _frac(sx)[..., None], _frac(sy)[..., None]
    pixels = image.reshape(-1, 3)  # [m * H * W, 3]: one take per corner
    corner = (np.arange(m)[:, None, None] * SIZE + y0) * SIZE + x0  # [m, H, W] index of the top-left corner
    top = pixels[corner] * (1 - fx) + pixels[corner + 1] * fx
    bottom = pixels[corner + SIZE] * (1 - fx) + pixels[corner + SIZE + 1] * fx
    return top * (1 - fy) + bottom * fy


def _each(values: tuple[str, ...], column: np.ndarray):
    """(value, indices of the images that have it) for each value present in ``column``."""
    for k, name in enumerate(values):
        idx = np.flatnonzero(column == k)
        if len(idx):
            yield name, idx


def render_styles(scenes: Scenes, style_ids: np.ndarray, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Draw ``scenes``' content (shape, colour, size, position; their ``style`` is ignored) in the space's styles
    ``style_ids`` [n] as uint8 images [n, 64, 64, 3]; the same scenes, ids and seed give the same pixels."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ids = np.asarray(style_ids, dtype=np.int64)
    if len(ids) != len(scenes) or ids.min(initial=0) < 0 or ids.max(initial=0) >= NUM_STYLES:
        raise ValueError(f"need one style id in [0, {NUM_STYLES}) per scene, got {len(ids)} ids for {len(scenes)}")
    sdf = _distance_fields(scenes, rng)  # [n, H, W] px, the renderer's content and jitter
    n = len(ids)
    base = np.asarray(list(COLOURS.values()), dtype=np.float32)[scenes.colour]
    colour = np.clip(base + rng.uniform(-0.04, 0.04, (n, 3)), 0, 1).astype(np.float32)  # [n, 3]
    fill, outline, ground, effect, palette = _TABLE[ids].T
    u = _PARAMS[ids]  # [n, 8]
    paper, second, ink, colour = _palette(palette, colour, u)

    # Each layer is gathered per factor value, then laid over the whole batch at once.
    tone = np.zeros((n, SIZE, SIZE, 1), dtype=np.float32)  # plain: the ground's first tone everywhere
    for name, idx in _each(GROUNDS, ground):
        if name != "plain":
            tone[idx] = _ground(name, u[idx], rng)[..., None]
    # In-place arithmetic from here on: fresh arrays of the batch's size cost as much as the arithmetic.
    image = tone * (second - paper)[:, None, None]
    image += paper[:, None, None]
    inside = image.copy()  # hollow: the ground shows through
    for name, idx in _each(FILLS, fill):
        if name != "hollow":
            inside[idx] = _fill_colours(name, colour[idx], image[idx], ink[idx], u[idx], rng)
    inside -= image
    inside *= _fill(sdf)
    image += inside
    # A hollow shape's outline and any glow carry the shape's colour; other outlines are ink.
    hollow = fill == FILLS.index("hollow")
    line = np.where((hollow | (outline == OUTLINES.index("glowing")))[:, None], colour, ink)
    alpha = np.zeros((n, SIZE, SIZE, 1), dtype=np.float32)
    for name, idx in _each(OUTLINES, outline):
        if name != "no":
            alpha[idx] = _outline_alpha(name, sdf[idx], u[idx], np.float32(1.5) * hollow[idx], rng)
    towards_line = np.subtract(line[:, None, None], image, out=inside)
    towards_line *= alpha
    image += towards_line
    for name, idx in _each(EFFECTS, effect):
        if name != "none":
            image[idx] = _effect(name, image[idx], u[idx], rng)
    np.clip(image, 0, 1, out=image)
    image *= 255
    image += 0.5
    return image.astype(np.uint8)


# ---- batches, captions, prompts ---------------------------------------------------------------------------------
def render_batch(n: int, seed: int, held_out: bool = False) -> tuple[np.ndarray, Scenes, np.ndarray]:
    """``n`` random scenes in random seen (or held-out) styles: uint8 images [n, 64, 64, 3], scenes, style ids."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng)
    ids = sample_styles(n, rng, held_out)
    return render_styles(scenes, ids, rng), scenes, ids


@dataclass
class WorldBatch:
    """A training batch of the world v2 (``mixed_batch``): the named styles and the space's styles together."""

    images: np.ndarray  # uint8 [n, 64, 64, 3]
    scenes: Scenes  # content; ``style`` is the named style's index, -1 where the style is the space's
    style_ids: np.ndarray  # the space's style id, -1 where the style is a named one
    captions: list[str]


def mixed_batch(
    n: int,
    seed,
    named_fraction: float = 0.25,
    named_styles: tuple[str, ...] | None = None,
    held_out: bool = False,
) -> WorldBatch:
    """``n`` random scenes, a share ``named_fraction`` of them in the named styles ``named_styles`` (default: the
    seen ones) and the rest in the space's seen styles (or held-out families); ``seed`` may be ``(seed, step)``,
    so a training stream's batch ``step`` is drawn directly (a resumed run continues the stream)."""
    from .renderer import SEEN_STYLES, render

    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, named_styles or SEEN_STYLES)
    named = rng.random(n) < named_fraction
    ids = sample_styles(n, rng, held_out)
    ids[named] = -1
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    texts = scenes.captions()
    if named.any():
        images[named] = render(_subset(scenes, named), rng)
    if (~named).any():
        spaced = _subset(scenes, ~named)
        images[~named] = render_styles(spaced, ids[~named], rng)
        for k, text in zip(np.flatnonzero(~named), captions(spaced, ids[~named]), strict=True):
            texts[k] = text
    scenes.style = np.where(named, scenes.style, -1)
    return WorldBatch(images, scenes, ids, texts)


def on_space(extra: dict) -> bool:
    """Whether a recipe's ``extra.data`` is ``"space"`` (world v2) rather than ``"named"`` (the default, v1)."""
    data = extra.get("data", "named")
    if data not in ("named", "space"):
        raise StylecraftError(f"extra.data must be 'named' or 'space', got {data!r}")
    return data == "space"


def recipe_batch(extra: dict, n: int, seed: int, step: int, named_styles: tuple[str, ...] | None = None) -> WorldBatch:
    """Batch ``step`` of a training stream, by the recipe's ``extra.data``: ``"space"`` draws ``mixed_batch``
    (``extra.named_fraction`` of it in the named styles ``named_styles``), ``"named"`` (the default, the world
    v1 chain) only the named styles ``named_styles`` (default: all), as ``renderer.render_batch`` draws them."""
    from .renderer import render

    if on_space(extra):
        return mixed_batch(n, [seed, step], extra.get("named_fraction", 0.25), named_styles)
    rng = np.random.default_rng([seed, step])
    scenes = sample_scenes(n, rng, named_styles)
    return WorldBatch(render(scenes, rng), scenes, np.full(n, -1), scenes.captions())


def vocabulary() -> list[str]:
    """Every word a world v2 caption can contain: the named styles' captions and the space's descriptors."""
    from .renderer import vocabulary as named_vocabulary

    return sorted({*named_vocabulary(), *VOCABULARY})


def _subset(scenes: Scenes, mask: np.ndarray) -> Scenes:
    return Scenes(**{key: value[mask] for key, value in scenes.labels().items()})


def captions(scenes: Scenes, style_ids: np.ndarray) -> list[str]:
    """One caption per scene, naming its space style by descriptor."""
    return [
        caption(SHAPES[s], COLOUR_NAMES[c], SIZES[z], POSITIONS[p], _DESCRIPTORS[i])
        for s, c, z, p, i in zip(scenes.shape, scenes.colour, scenes.size, scenes.position, style_ids, strict=True)
    ]


def parse_caption(text: str) -> dict[str, str | int | None]:
    """Parse a caption whose style is a named style or a descriptor: the renderer's fields plus ``style_id`` (the
    space's id, ``None`` for a named style or none). Raises ``ValueError`` for text outside the grammar."""
    text = " ".join(text.lower().strip().rstrip(".").split())
    content, _, phrase = text.rpartition(" in ")  # descriptors hold no " in ", so the last one opens the style
    if not text.endswith(" style") or phrase[: -len(" style")] in STYLES:
        return {**parse_named_caption(text), "style_id": None}
    descriptor = phrase[: -len(" style")]
    return {**parse_named_caption(content), "style": descriptor, "style_id": style_id(descriptor)}


def render_captions(prompts: list[str], seed: int = 0) -> np.ndarray:
    """Render one image per caption as uint8 [n, 64, 64, 3]: named styles (or none) exactly as
    ``renderer.render_prompts(those prompts, seed)``, descriptors with ``render_styles`` (size defaults to large)."""
    parsed = [parse_caption(p) for p in prompts]
    named = [k for k, p in enumerate(parsed) if p["style_id"] is None]
    spaced = [k for k, p in enumerate(parsed) if p["style_id"] is not None]
    images = np.empty((len(prompts), SIZE, SIZE, 3), dtype=np.uint8)
    if named:
        images[named] = render_prompts([prompts[k] for k in named], seed)
    if spaced:
        fields = [parsed[k] for k in spaced]
        size = np.array([SIZES.index(p["size"] or "large") for p in fields])
        scenes = Scenes(
            shape=np.array([SHAPES.index(p["shape"]) for p in fields]),
            colour=np.array([COLOUR_NAMES.index(p["colour"]) for p in fields]),
            size=size,
            position=np.array([POSITIONS.index(p["position"] or POSITIONS[0]) for p in fields]) * (size == 0),
            style=np.zeros(len(fields), dtype=int),
        )
        images[spaced] = render_styles(scenes, np.array([p["style_id"] for p in fields]), seed)
    return images


# ---- contact sheets and the command line ------------------------------------------------------------------------
# One column per shape, each in another colour, large and small alternating: every shape and colour appears.
SHEET_CONTENTS = Scenes(
    shape=np.arange(8),
    colour=np.array([0, 5, 2, 3, 4, 1, 6, 7]),
    size=np.array([1, 0, 1, 0, 1, 0, 1, 0]),
    position=np.array([0, 1, 0, 3, 0, 2, 0, 4]),
    style=np.zeros(8, dtype=int),
)


def contact_sheet(style_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 [rows*66, 8*66, 3]: one row per style, one column per ``SHEET_CONTENTS`` scene, 2 px gaps."""
    rows, cols = len(style_ids), len(SHEET_CONTENTS)
    scenes = Scenes(**{k: np.tile(v, rows) for k, v in SHEET_CONTENTS.labels().items()})
    tiles = render_styles(scenes, np.repeat(style_ids, cols), seed).reshape(rows, cols, SIZE, SIZE, 3)
    sheet = np.full((rows, cols, SIZE + 2, SIZE + 2, 3), 255, dtype=np.uint8)
    sheet[:, :, :SIZE, :SIZE] = tiles
    return sheet.transpose(0, 2, 1, 3, 4).reshape(rows * (SIZE + 2), cols * (SIZE + 2), 3)


def sample_for_sheet(count: int, seed: int, held_out: bool) -> np.ndarray:
    """``count`` distinct style ids: seen ones at random, or held-out ones taking the families in turn."""
    rng = np.random.default_rng(seed)
    if not held_out:
        return rng.choice(SEEN_IDS, size=min(count, len(SEEN_IDS)), replace=False)
    per_family = [rng.permutation(family_ids(name)) for name in HELD_OUT_FAMILIES]
    return np.array([per_family[k % len(per_family)][k // len(per_family)] for k in range(count)], dtype=np.int64)


def run_cli(args: argparse.Namespace) -> int:
    """``stylecraft world styles [--held-out] [--count N] [--seed S] --out DIR``: print sampled styles and write
    their contact sheet, DIR/seen.png or DIR/held-out.png."""
    parser = argparse.ArgumentParser(prog="stylecraft world styles", description="show a sample of the style space")
    parser.add_argument("--held-out", action="store_true", help="sample the held-out families (default: seen)")
    parser.add_argument("--count", type=int, default=18, help="styles to show, one sheet row each (default 18)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and rendering seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the contact sheet")
    options = parser.parse_args(args.args)
    if not 1 <= options.count <= 200:
        raise StylecraftError(f"--count must be between 1 and 200 (rows of the sheet), got {options.count}")
    from PIL import Image

    ids = sample_for_sheet(options.count, options.seed, options.held_out)
    print(f"{'row':>3}  {'id':>5}  {'family':<18} descriptor")
    for row, i in enumerate(ids):
        print(f"{row:>3}  {i:>5}  {family(i):<18} {describe(i)}")
    options.out.mkdir(parents=True, exist_ok=True)
    path = options.out / ("held-out.png" if options.held_out else "seen.png")
    Image.fromarray(contact_sheet(ids, options.seed)).save(path)
    c = SHEET_CONTENTS
    columns = (f"{SIZES[z]} {COLOUR_NAMES[k]} {SHAPES[s]}" for s, k, z in zip(c.shape, c.colour, c.size, strict=True))
    print(f"columns: {', '.join(columns)}")
    print(f"wrote {path}")
    return 0
