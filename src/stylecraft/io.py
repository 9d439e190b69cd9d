"""Reading user images and writing outputs safely.

Input policy (documented in the README): any Pillow-readable file is accepted; non-RGB modes are converted
(RGBA/LA over white, palette, grayscale, 16-bit and float images rescaled) with a warning; non-square images are
centre-cropped to a square and resized to the model's resolution with Lanczos, with a warning; images smaller than
``MIN_SIDE`` pixels or larger than ``MAX_SIDE`` pixels on a side are refused.

Outputs are written atomically: files go to a temporary name and are renamed into place, and whole output folders
are built next to their final name and renamed when complete, so an interrupted run never leaves a folder that
looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import StylecraftError

logger = logging.getLogger("stylecraft")

MIN_SIDE = 16
MAX_SIDE = 8192


def load_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Open ``path`` as an RGB image; with ``size``, centre-crop to a square and resize to ``size``×``size``."""
    path = Path(path)
    if not path.is_file():
        raise StylecraftError(f"image not found: {path}; check the path")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise StylecraftError(
            f"{path} is not a readable image ({err.__class__.__name__}: {err}); re-export it as PNG or JPEG"
        ) from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise StylecraftError(f"{path} is {width}x{height}; images must be at least {MIN_SIDE} pixels on each side")
    if max(width, height) > MAX_SIDE:
        raise StylecraftError(f"{path} is {width}x{height}; resize it to at most {MAX_SIDE} pixels on a side")
    image = _to_rgb(image, path)
    if size is not None:
        if width != height:
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            logger.warning("%s is %dx%d: centre-cropped to %dx%d", path, width, height, side, side)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: rescale the actual value range to 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low if high > low else 1.0) * 255.0
        image = Image.fromarray(array.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    logger.warning("%s has mode %s: converted to RGB (transparency composited over white)", path, mode)
    return image.convert("RGB")


def to_tensor_image(image: Image.Image):
    """PIL RGB -> float tensor [3, H, W] in [0, 1]."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_pil_images(images) -> list[Image.Image]:
    """Float tensor [B, 3, H, W] in [0, 1] -> list of PIL RGB images (rounded like diffusers' postprocess)."""
    array = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Save a PNG atomically with ``metadata`` in its text chunks (strings kept, other values as JSON)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value, default=str))
    _atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def make_grid(images: list[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile equally sized images into one picture, ``columns`` wide (default: about square), white padding."""
    if not images:
        raise StylecraftError("no images to put in a grid")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    width, height = images[0].size
    grid = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (pad + (i % columns) * (width + pad), pad + (i // columns) * (height + pad)))
    return grid


@contextmanager
def output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder in a temporary sibling and move it into place only when the block succeeds.

    An existing non-empty folder is an error unless ``overwrite``; then it is replaced only after the new one is
    complete, so a failure leaves the old results untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StylecraftError(f"--out {path} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise StylecraftError(f"output folder {path} already exists and is not empty; pass --overwrite or pick another")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old / "x")
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)
