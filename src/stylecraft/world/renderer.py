"""The shapes world: a vectorised numpy renderer of 64×64 scenes and their captions.

A scene is one shape (8 kinds) of one colour (8), small or large, at one of five positions, drawn in one of 14
styles. Content and style are known by construction, so every model can be measured against ground truth.
Each style is a randomized procedure (pattern phase, period, stroke width, paper and noise all vary) with a
descriptor phrase used in captions::

    a {size} {colour} {shape} [{position}] in {descriptor} style

Small shapes name their position; large shapes are always centred and the caption omits it. Three styles are
HELD OUT of Muse-mini's pretraining (``HELD_OUT_STYLES``) so StyleDrop has a style the base model cannot draw.

Rendering works on a whole batch at once: a signed distance field (SDF, in pixels, negative inside) per image,
then one function per style that turns SDFs into pixels. Everything is deterministic given the seed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SIZE = 64

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "moon")
COLOURS = {  # RGB in [0, 1]; kept far apart in hue so they survive pastel, neon and grain.
    "red": (0.88, 0.12, 0.12),
    "orange": (1.0, 0.55, 0.0),
    "yellow": (0.98, 0.88, 0.1),
    "green": (0.15, 0.68, 0.2),
    "cyan": (0.1, 0.8, 0.85),
    "blue": (0.15, 0.3, 0.9),
    "purple": (0.55, 0.2, 0.8),
    "pink": (1.0, 0.45, 0.7),
}
COLOUR_NAMES = tuple(COLOURS)
# A ninth shape that no pretrained model ever sees: the "new object" of the two-adapter experiment (StyleDrop §4.4).
# Scenes give it shape index len(SHAPES); captions call it by a rare word made of sub-word pieces, like DreamBooth's.
GLYPH = "glyph"
GLYPH_WORDS = "sks glyph"
SIZES = ("small", "large")
POSITIONS = ("in the center", "on the left", "on the right", "at the top", "at the bottom")
_POSITION_XY = np.array([(32, 32), (19, 32), (45, 32), (32, 19), (32, 45)], dtype=np.float32)

# Descriptor phrases, in style-index order. The three marked HELD OUT never reach Muse-mini.
STYLES = (
    "flat color",
    "striped",
    "polka dot",  # HELD OUT
    "checkerboard",
    "pen hatching",
    "outline",
    "neon glow",  # HELD OUT
    "gradient background",
    "pastel",
    "pixel art",  # HELD OUT
    "film grain",
    "watercolor",
    "mosaic",
    "chalkboard",
)
HELD_OUT_STYLES = ("polka dot", "neon glow", "pixel art")
SEEN_STYLES = tuple(s for s in STYLES if s not in HELD_OUT_STYLES)


@dataclass
class Scenes:
    """Attributes of a batch of scenes, as index arrays of length ``n`` (see the tuples above)."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    position: np.ndarray
    style: np.ndarray

    def __len__(self) -> int:
        return len(self.shape)

    def captions(self) -> list[str]:
        return [
            caption(SHAPES[s], COLOUR_NAMES[c], SIZES[z], POSITIONS[p], STYLES[t])
            for s, c, z, p, t in zip(self.shape, self.colour, self.size, self.position, self.style, strict=False)
        ]

    def labels(self) -> dict[str, np.ndarray]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "position": self.position,
            "style": self.style,
        }


def caption(
    shape: str, colour: str, size: str = "large", position: str = "in the center", style: str = "flat color"
) -> str:
    """The caption of one scene; large shapes are always centred, so their position is not named."""
    where = f" {position}" if size == "small" else ""
    return f"a {size} {colour} {shape}{where} in {style} style"


_CAPTION = re.compile(
    rf"^an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<colour>{'|'.join(COLOUR_NAMES)}) (?P<shape>{'|'.join(SHAPES)})"
    rf"(?: (?P<position>{'|'.join(POSITIONS)}))?(?: in (?P<style>{'|'.join(STYLES)}) style)?$"
)


def parse_caption(text: str) -> dict[str, str | None]:
    """Parse a caption back into ``{size, colour, shape, position, style}``.

    Size, position and style are optional in the text (``None`` when absent); a small shape without a position
    and a large shape are centred. Raises ``ValueError`` for text outside the world's grammar.
    """
    match = _CAPTION.match(" ".join(text.lower().strip().rstrip(".").split()))
    if match is None:
        raise ValueError(
            f"{text!r} is not a shapes-world caption; expected 'a {{size}} {{colour}} {{shape}} [{{position}}] in "
            f"{{descriptor}} style' with colour in {COLOUR_NAMES}, shape in {SHAPES}"
        )
    return match.groupdict()


def vocabulary() -> list[str]:
    """Every word a caption can contain (the CLIP tokenizer is built from it)."""
    words = {"a", "an", "in", "style", *SHAPES, *COLOUR_NAMES, *SIZES}
    for phrase in POSITIONS + STYLES:
        words.update(phrase.split())
    return sorted(words)


def sample_scenes(n: int, rng: np.random.Generator, styles: tuple[str, ...] | None = None) -> Scenes:
    """Uniformly random attributes for ``n`` scenes, styles drawn from ``styles`` (default: all)."""
    style_ids = np.array([STYLES.index(s) for s in (styles or STYLES)])
    size = rng.integers(len(SIZES), size=n)
    return Scenes(
        shape=rng.integers(len(SHAPES), size=n),
        colour=rng.integers(len(COLOURS), size=n),
        size=size,
        position=np.where(size == SIZES.index("large"), 0, rng.integers(len(POSITIONS), size=n)),  # large: centred
        style=style_ids[rng.integers(len(style_ids), size=n)],
    )


# ---- geometry ---------------------------------------------------------------------------------------------------
def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: list[tuple[float, float]]) -> np.ndarray:
    # Exact SDF of a closed polygon (after Inigo Quilez, "2D distance functions"): nearest edge + winding sign.
    v = np.asarray(vertices, dtype=np.float32)
    dist2 = np.full(x.shape, np.inf, dtype=np.float32)
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(v)):
        (ax, ay), (bx, by) = v[i - 1], v[i]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dist2 = np.minimum(dist2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        crosses = (ay > y) != (by > y)
        inside ^= crosses & (x < ax + (y - ay) * ex / (ey if ey != 0 else 1e-9))
    return np.where(inside, -1.0, 1.0) * np.sqrt(dist2)


def _regular(k: int, radius: float = 1.0, phase: float = -np.pi / 2) -> list[tuple[float, float]]:
    angles = phase + 2 * np.pi * np.arange(k) / k
    return [(radius * np.cos(a), radius * np.sin(a)) for a in angles]


_STAR = [
    (x * r, y * r) for (x, y), r in zip(_regular(10), [1.0, 0.45] * 5, strict=False)
]  # 5 points, inner radius 0.45


_BOLT = [(0.1, -1.0), (0.6, -1.0), (0.2, -0.15), (0.6, -0.15), (-0.3, 1.0), (-0.05, 0.15), (-0.5, 0.15)]


def _box(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _shape_sdf(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SDF of a unit-radius shape (y points down) at normalised coordinates."""
    if kind == "circle":
        return np.hypot(x, y) - 1.0
    if kind == "square":
        return _box(x, y, 0.82, 0.82)
    if kind == "triangle":
        return _polygon_sdf(x, y + 0.15, _regular(3, 1.15))
    if kind == "star":
        return _polygon_sdf(x, y + 0.05, _STAR)
    if kind == "heart":
        lobes = np.minimum(np.hypot(x + 0.45, y + 0.35) - 0.52, np.hypot(x - 0.45, y + 0.35) - 0.52)
        return np.minimum(lobes, _polygon_sdf(x, y, [(-0.93, -0.22), (0.93, -0.22), (0.0, 0.95)]))
    if kind == "cross":
        return np.minimum(_box(x, y, 0.9, 0.3), _box(x, y, 0.3, 0.9))
    if kind == "diamond":
        return _polygon_sdf(x, y, [(0, -1.0), (0.75, 0), (0, 1.0), (-0.75, 0)])
    if kind == "moon":  # a disc minus an offset disc
        return np.maximum(np.hypot(x, y) - 1.0, -(np.hypot(x - 0.55, y + 0.2) - 0.8))
    if kind == GLYPH:  # a lightning bolt
        return _polygon_sdf(x, y, _BOLT)
    raise ValueError(f"unknown shape {kind!r}; choose one of {SHAPES}")


def _distance_fields(scenes: Scenes, rng: np.random.Generator) -> np.ndarray:
    """Signed distance to each scene's shape in pixels [n, 64, 64], with jittered place, size and rotation."""
    n = len(scenes)
    centre = _POSITION_XY[scenes.position] + rng.uniform(-2, 2, (n, 2))
    radius = np.where(scenes.size == 1, rng.uniform(19, 23, n), rng.uniform(10.5, 12.5, n)).astype(np.float32)
    angle = rng.uniform(-0.18, 0.18, n)  # about ±10°: a square never turns into a diamond
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x, y = (cos * dx + sin * dy).astype(np.float32), (-sin * dx + cos * dy).astype(np.float32)
    sdf = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for k, kind in enumerate((*SHAPES, GLYPH)):
        idx = np.flatnonzero(scenes.shape == k)
        if len(idx):
            sdf[idx] = _shape_sdf(kind, x[idx], y[idx])
    return sdf * radius[:, None, None]


# ---- styles: each maps (sdf [n,H,W] in px, colour [n,3], rng) -> image [n,H,W,3] in [0,1] ------------------------
def _fill(sdf: np.ndarray, softness: float = 0.5) -> np.ndarray:
    """Antialiased coverage in [0, 1] [n, H, W, 1]; larger ``softness`` gives softer edges."""
    return np.clip(0.5 - sdf / (2 * softness), 0.0, 1.0)[..., None]


def _stroke(sdf: np.ndarray, width: np.ndarray) -> np.ndarray:
    return np.clip(width[:, None, None] / 2 + 0.5 - np.abs(sdf), 0.0, 1.0)[..., None]


def _background(n: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return np.broadcast_to(rng.uniform(low, high, (n, 1, 1, 1)), (n, SIZE, SIZE, 3)).astype(np.float32)


def _coords() -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(SIZE, dtype=np.float32)
    return grid[None, None, :], grid[None, :, None]


def _wave(n: int, rng: np.random.Generator, period: tuple[float, float], angle: float | None = None) -> np.ndarray:
    """A phase in cycles along a random (or given) direction [n, H, W]: stripes are where its fraction < duty."""
    x, y = _coords()
    theta = rng.uniform(0, np.pi, n) if angle is None else np.full(n, angle) + rng.uniform(-0.15, 0.15, n)
    freq = 1.0 / rng.uniform(*period, n)
    return (
        x * (np.cos(theta) * freq)[:, None, None]
        + y * (np.sin(theta) * freq)[:, None, None]
        + rng.uniform(0, 1, n)[:, None, None]
    )


def _smooth_noise(n: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise [n, H, W] in about [-1, 1]: a random cells×cells grid, bilinearly upsampled."""
    pos = np.linspace(0, cells - 1, SIZE)
    lower = np.minimum(pos.astype(int), cells - 2)
    frac = pos - lower
    interp = np.zeros((SIZE, cells), dtype=np.float32)
    interp[np.arange(SIZE), lower] = 1 - frac
    interp[np.arange(SIZE), lower + 1] = frac
    return np.einsum("hi,nij,wj->nhw", interp, rng.uniform(-1, 1, (n, cells, cells)).astype(np.float32), interp)


def _over(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base * (1 - alpha) + colour * alpha


def _flat(sdf, colour, rng):
    return _over(_background(len(sdf), rng, 0.93, 1.0), colour[:, None, None], _fill(sdf))


def _striped(sdf, colour, rng):
    stripes = (_wave(len(sdf), rng, (5, 8)) % 1.0 < 0.5)[..., None]
    inside = np.where(stripes, colour[:, None, None], 0.97)
    return _over(
        _over(_background(len(sdf), rng, 0.95, 1.0), inside, _fill(sdf)),
        colour[:, None, None],
        _stroke(sdf, np.full(len(sdf), 1.5)),
    )


def _polka_dot(sdf, colour, rng):
    n = len(sdf)
    x, y = _coords()
    period = rng.uniform(6, 8, n)[:, None, None]
    ox, oy = rng.uniform(0, 8, (2, n, 1, 1))
    fx, fy = ((x + ox) / period) % 1.0 - 0.5, ((y + oy) / period) % 1.0 - 0.5
    dots = np.hypot(fx, fy) * period < rng.uniform(1.5, 2.3, n)[:, None, None]
    inside = np.where(dots[..., None], 1.0, colour[:, None, None])
    return _over(_background(n, rng, 0.9, 0.97), inside, _fill(sdf))


def _checkerboard(sdf, colour, rng):
    n = len(sdf)
    x, y = _coords()
    cell = rng.uniform(4, 6, n)[:, None, None]
    ox, oy = rng.uniform(0, 6, (2, n, 1, 1))
    checks = ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2 == 0)[..., None]
    inside = np.where(checks, colour[:, None, None], 0.12)
    return _over(_background(n, rng, 0.9, 1.0), inside, _fill(sdf))


_PAPER = np.array([0.96, 0.93, 0.84], dtype=np.float32)


def _pen_hatching(sdf, colour, rng):
    n = len(sdf)
    paper = _PAPER * (1 + 0.03 * rng.standard_normal((n, SIZE, SIZE, 1), dtype=np.float32))
    lines = (_wave(n, rng, (3.0, 4.0), angle=np.pi / 4) % 1.0 < 0.45)[..., None]
    image = _over(paper, colour[:, None, None], _fill(sdf) * lines)
    return _over(image, 0.08, _stroke(sdf, rng.uniform(1.0, 1.8, n)))


def _outline(sdf, colour, rng):
    return _over(
        _background(len(sdf), rng, 0.93, 1.0), colour[:, None, None], _stroke(sdf, rng.uniform(2.0, 3.0, len(sdf)))
    )


def _neon_glow(sdf, colour, rng):
    n = len(sdf)
    neon = colour / colour.max(axis=1, keepdims=True)
    glow = np.exp(-np.abs(sdf) / rng.uniform(2.5, 4.0, n)[:, None, None])[..., None]
    image = _background(n, rng, 0.02, 0.08) + neon[:, None, None] * glow
    return _over(image, 0.5 + 0.5 * neon[:, None, None], _stroke(sdf, rng.uniform(1.0, 1.6, n)))


def _gradient_background(sdf, colour, rng):
    n = len(sdf)
    _, y = _coords()
    top, bottom = rng.uniform(0.85, 1.0, (n, 1, 1, 3)), rng.uniform(0.25, 0.45, (n, 1, 1, 3))
    t = (y / (SIZE - 1))[..., None]
    background = top * (1 - t) + bottom * t
    return _over(background, colour[:, None, None], _fill(sdf))


def _pastel(sdf, colour, rng):
    n = len(sdf)
    tint = rng.uniform(0.93, 1.0, (n, 1, 1, 3))
    soft = 0.5 * colour[:, None, None] + 0.5
    return _over(tint, soft, _fill(sdf, softness=rng.uniform(1.2, 2.0, n)[:, None, None]))


def _pixel_art(sdf, colour, rng):
    n = len(sdf)
    image = _over(_background(n, rng, 0.85, 0.95), colour[:, None, None], _fill(sdf))
    image = _over(image, 0.1, _stroke(sdf + 1.0, np.full(n, 1.5)))
    block = 4
    pooled = image.reshape(n, SIZE // block, block, SIZE // block, block, 3).mean(axis=(2, 4))
    pooled = np.round(pooled * 4) / 4  # a 5-level palette per channel
    return pooled.repeat(block, axis=1).repeat(block, axis=2)


def _film_grain(sdf, colour, rng):
    n = len(sdf)
    image = _over(_background(n, rng, 0.5, 0.7), colour[:, None, None], _fill(sdf))
    x, y = _coords()
    vignette = 1 - 0.35 * (((x - 31.5) ** 2 + (y - 31.5) ** 2) / 31.5**2)[..., None]
    return image * vignette + 0.12 * rng.standard_normal((n, SIZE, SIZE, 1), dtype=np.float32)


def _watercolor(sdf, colour, rng):
    n = len(sdf)
    wobble = 2.0 * _smooth_noise(n, rng, 6)
    coverage = _fill(sdf + wobble, softness=1.5)
    density = 0.55 + 0.2 * _smooth_noise(n, rng, 9)[..., None] + 0.3 * np.exp(-np.abs(sdf + wobble) / 2)[..., None]
    paper = _PAPER * (1 + 0.02 * rng.standard_normal((n, SIZE, SIZE, 1), dtype=np.float32))
    return _over(paper, colour[:, None, None] * 0.9, np.clip(coverage * density, 0, 1))


def _mosaic(sdf, colour, rng):
    n = len(sdf)
    x, y = _coords()
    tile = 6
    ox, oy = rng.integers(0, tile, (2, n, 1, 1))
    tx, ty = (x + ox) // tile, (y + oy) // tile
    tile_id = (tx * 13 + ty * 7) % 16
    shade = 1 + 0.12 * rng.uniform(-1, 1, (n, 16))[np.arange(n)[:, None, None], tile_id.astype(int)][..., None]
    image = _over(_background(n, rng, 0.8, 0.9), colour[:, None, None], _fill(sdf)) * shade
    grout = ((((x + ox) % tile) < 1) | (((y + oy) % tile) < 1))[..., None]
    return np.where(grout, 0.35, image)


def _chalkboard(sdf, colour, rng):
    n = len(sdf)
    board = np.array([0.13, 0.22, 0.17], dtype=np.float32) * rng.uniform(0.8, 1.2, (n, 1, 1, 1))
    chalk = (rng.uniform(0, 1, (n, SIZE, SIZE, 1)) > 0.3).astype(np.float32)
    pale = 0.75 * colour[:, None, None] + 0.25
    return _over(board, pale, _fill(sdf) * chalk * 0.95)


_STYLE_FUNCTIONS = {
    "flat color": _flat,
    "striped": _striped,
    "polka dot": _polka_dot,
    "checkerboard": _checkerboard,
    "pen hatching": _pen_hatching,
    "outline": _outline,
    "neon glow": _neon_glow,
    "gradient background": _gradient_background,
    "pastel": _pastel,
    "pixel art": _pixel_art,
    "film grain": _film_grain,
    "watercolor": _watercolor,
    "mosaic": _mosaic,
    "chalkboard": _chalkboard,
}


# ---- public entry points ----------------------------------------------------------------------------------------
def render(scenes: Scenes, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Draw ``scenes`` as uint8 images [n, 64, 64, 3]; the same scenes and seed give the same pixels."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _paint(scenes, _distance_fields(scenes, rng), rng)


def _paint(scenes: Scenes, sdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``render`` after its first draws: colour and style, given the shapes' distance fields."""
    n = len(scenes)
    base = np.asarray(list(COLOURS.values()), dtype=np.float32)[scenes.colour]
    colour = np.clip(base + rng.uniform(-0.04, 0.04, (n, 3)), 0, 1).astype(np.float32)  # [n, 3]
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    for k, name in enumerate(STYLES):
        idx = np.flatnonzero(scenes.style == k)
        if len(idx):
            images[idx] = _STYLE_FUNCTIONS[name](sdf[idx], colour[idx], rng)
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def outline_tokens(scenes: Scenes, seed: int, patch: int = 8, width: float = 1.5) -> np.ndarray:
    """Which ``patch``-px tokens of ``render(scenes, seed)`` hold the shape's outline: bool [n, 64/patch, 64/patch].

    A token counts when any of its pixels lies within ``width`` px of the shape's edge. It replays ``render``'s
    first random draws (the shape's jittered place, size and rotation), so it matches those images exactly.
    """
    edge = np.abs(_distance_fields(scenes, np.random.default_rng(seed))) < width
    n, cells = len(scenes), SIZE // patch
    return edge.reshape(n, cells, patch, cells, patch).any(axis=(2, 4))


def glyph_caption(colour: str, size: str = "large", position: str = "in the center", style: str | None = None) -> str:
    """The caption of a glyph scene, e.g. "a large orange sks glyph in flat color style" (no style: no phrase)."""
    where = f" {position}" if size == "small" else ""
    return f"a {size} {colour} {GLYPH_WORDS}{where}" + (f" in {style} style" if style else "")


def render_glyphs(
    n: int, seed: int, colour: str | None = None, size: str | None = None, styles: tuple[str, ...] | None = None
) -> tuple[np.ndarray, Scenes]:
    """``n`` glyph scenes (random attributes unless ``colour``/``size`` fix them) and their uint8 images."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, styles)
    scenes.shape[:] = len(SHAPES)
    if colour is not None:
        scenes.colour[:] = COLOUR_NAMES.index(colour)
    if size is not None:
        scenes.size[:] = SIZES.index(size)
        scenes.position[scenes.size == SIZES.index("large")] = 0
    return render(scenes, rng), scenes


def render_blobs(n: int, seed: int | list[int], styles: tuple[str, ...] | None = None) -> np.ndarray:
    """``n`` shapeless blobs as uint8 images [n, 64, 64, 3]: a disc of a scene's size and place whose edge is bent
    by smooth noise (sometimes into holes and islands), painted in a random colour and style. Negatives for the
    glyph detector, so that it answers "is this a bolt", not "is this something other than the eight shapes"."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, styles)
    centre = _POSITION_XY[scenes.position] + rng.uniform(-2, 2, (n, 2))
    radius = np.where(scenes.size == 1, rng.uniform(17, 25, n), rng.uniform(9, 14, n)).astype(np.float32)
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    r = (
        np.hypot(grid[None, None, :] - centre[:, 0, None, None], grid[None, :, None] - centre[:, 1, None, None])
        / radius[:, None, None]
    )
    bend = rng.uniform(0.3, 0.9, n).astype(np.float32)[:, None, None] * _smooth_noise(n, rng, cells=6)
    return _paint(scenes, ((r - 1 + bend) * radius[:, None, None]).astype(np.float32), rng)


def render_strokes(n: int, seed: int | list[int], styles: tuple[str, ...] | None = None) -> np.ndarray:
    """``n`` loose strokes as uint8 images [n, 64, 64, 3]: one or two open zigzags of one to three straight pieces,
    2-6 px thick, about a scene's place, painted in a random colour and style. Negatives for the glyph detector, so
    that bolt-like fragments (a ">" or a "Z" of glowing line) are not read as the bolt."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, styles)
    centre = _POSITION_XY[scenes.position] + rng.uniform(-4, 4, (n, 2))
    reach = np.where(scenes.size == 1, 1.0, 0.55)  # how far a large or small scene's strokes wander
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    x, y = np.meshgrid(grid, grid)  # [64, 64] each, x along the columns
    sdf = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        distance = np.full((SIZE, SIZE), np.inf, dtype=np.float32)
        for _ in range(rng.integers(1, 3)):
            point = centre[i] + rng.uniform(-10, 10, 2) * reach[i]
            heading = rng.uniform(0, 2 * np.pi)
            for _ in range(rng.integers(1, 4)):
                length = rng.uniform(10, 26) * reach[i]
                end = point + length * np.array([np.cos(heading), np.sin(heading)])
                ex, ey = end - point
                t = np.clip(((x - point[0]) * ex + (y - point[1]) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
                distance = np.minimum(distance, np.hypot(x - point[0] - ex * t, y - point[1] - ey * t))
                point, heading = end, heading + rng.choice([-1, 1]) * rng.uniform(2.0, 2.8)  # a sharp turn
        sdf[i] = distance - rng.uniform(1.0, 3.0)
    return _paint(scenes, sdf, rng)


def render_batch(n: int, seed: int, styles: tuple[str, ...] | None = None) -> tuple[np.ndarray, Scenes]:
    """``n`` random scenes (styles from ``styles``, default all) and their uint8 images [n, 64, 64, 3]."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, styles)
    return render(scenes, rng), scenes


def render_prompts(prompts: list[str], seed: int = 0) -> np.ndarray:
    """Render one image per caption (size defaults to large; style to flat color) as uint8 [n, 64, 64, 3]."""
    parsed = [parse_caption(p) for p in prompts]
    scenes = Scenes(
        shape=np.array([SHAPES.index(p["shape"]) for p in parsed]),
        colour=np.array([COLOUR_NAMES.index(p["colour"]) for p in parsed]),
        size=np.array([SIZES.index(p["size"] or "large") for p in parsed]),
        position=np.array(
            [POSITIONS.index(p["position"] or POSITIONS[0]) if p["size"] == "small" else 0 for p in parsed]
        ),
        style=np.array([STYLES.index(p["style"] or "flat color") for p in parsed]),
    )
    return render(scenes, seed)


def stream(batch_size: int, seed: int, styles: tuple[str, ...] | None = None) -> Iterator[tuple[np.ndarray, Scenes]]:
    """An endless, reproducible stream of ``render_batch`` batches (batch ``i`` uses seed ``(seed, i)``)."""
    for images, scenes, _ in stream_with_edges(batch_size, seed, styles, edges=False):
        yield images, scenes


def stream_with_edges(
    batch_size: int, seed: int, styles: tuple[str, ...] | None = None, edges: bool = True
) -> Iterator[tuple[np.ndarray, Scenes, np.ndarray | None]]:
    """``stream``'s batches (the same pixels) with each image's signed distance in px to its shape's edge [n, 64, 64]
    (negative inside the shape)."""
    step = 0
    while True:
        rng = np.random.default_rng([seed, step])
        scenes = sample_scenes(batch_size, rng, styles)
        sdf = _distance_fields(scenes, rng)  # render's first draws: computed once, painted and returned
        yield _paint(scenes, sdf, rng), scenes, sdf if edges else None
        step += 1
