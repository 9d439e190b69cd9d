"""Reading user images and writing outputs safely.

Input policy (documented in the README): any Pillow-readable file is accepted; non-RGB modes are converted
(RGBA/LA over white, palette, grayscale, 16-bit and float images rescaled) with a warning; non-square images are
centre-cropped to a square and resized to the model's resolution with Lanczos, with a warning; images smaller than
``MIN_SIDE`` pixels or larger than ``MAX_SIDE`` pixels on a side are refused.

Outputs are written so that nothing is lost, ever (docs/errors.md says it for users):
- files go to a temporary name (mode from the umask) and are renamed into place;
- output folders are built beside their final name (``.NAME.partial``) and swapped in when complete
  (``swap_into_place``): the old folder moves aside (``.NAME.old``) and is deleted only after the new one is in
  place, and ``recover`` finishes a swap a kill cut between its two renames, so ``NAME`` always holds the old or
  the complete new folder;
- a folder is replaced only when it is empty or stylecraft made it (its ``MARKER`` file), never ``/``, the home
  folder or the current folder; a single-writer lock (``locks.folder_lock``) is held while one is written;
- a full disk is one error line naming the folder, and what it interrupted is cleaned up.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import StylecraftError
from .locks import folder_lock

logger = logging.getLogger("stylecraft")

MIN_SIDE = 16
MAX_SIDE = 8192
MARKER = ".stylecraft"  # written into every output folder stylecraft makes: --overwrite replaces only those


def load_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Open ``path`` as an RGB image; with ``size``, centre-crop to a square and resize to ``size``×``size``."""
    path = Path(path)
    if not path.is_file():
        raise StylecraftError(f"image not found: {path}; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_SIDE below is the limit
            with Image.open(path) as opened:  # reads the header only: the size is refused before any decoding
                width, height = opened.size
                if min(width, height) < MIN_SIDE:
                    raise StylecraftError(
                        f"{path} is {width}x{height}; images must be at least {MIN_SIDE} pixels on each side"
                    )
                if max(width, height) > MAX_SIDE:
                    raise StylecraftError(
                        f"{path} is {width}x{height}; resize it to at most {MAX_SIDE} pixels on a side"
                    )
                opened.load()
                image = opened.copy()
    except StylecraftError:
        raise
    except Image.DecompressionBombError as err:  # Pillow refuses a huge declared size at open
        raise StylecraftError(
            f"{path} is too large to open safely ({err}); resize it to at most {MAX_SIDE} pixels on a side"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # ValueError: e.g. a text chunk
        raise StylecraftError(  # that decompresses beyond Pillow's limit ("Decompressed Data Too Large")
            f"{path} is not a readable image ({err.__class__.__name__}: {err}); re-export it as PNG or JPEG"
        ) from None
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


def kill_point(label: str) -> None:
    """Test hook of the crash harness (tests/test_crash.py): ``STYLECRAFT_KILL_AT=label@N`` SIGKILLs this process
    the Nth time it passes ``label`` (N defaults to 1). Labels: ``write`` (before a file is renamed into place) and
    ``swap`` (before each rename of a folder swap)."""
    wanted = os.environ.get("STYLECRAFT_KILL_AT")
    if wanted is None:
        return
    _kill_counts[label] = _kill_counts.get(label, 0) + 1
    name, _, nth = wanted.partition("@")
    if name == label and _kill_counts[label] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_kill_counts: dict[str, int] = {}


def umask() -> int:
    """The process umask, read without setting it where Linux shows it (setting it races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def no_space_is_an_error(folder: Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, or a full quota) while writing into ``folder`` into one error line."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StylecraftError(
            f"no space left on {folder} ({err.strerror}); free some space, then run the command again"
        ) from None


def _write_file(path: str, data: bytes) -> None:
    """The one low-level write every output file goes through."""
    with open(path, "wb") as file:
        file.write(data)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` (mode 0o666 less the umask), then rename it into place."""
    with no_space_is_an_error(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 whatever the umask (and some writers replace tmp)
            kill_point("write")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    _atomic_write(Path(path), lambda tmp: _write_file(tmp, data))


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Save a PNG atomically with ``metadata`` in its text chunks (strings kept, other values as JSON)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    write_bytes(path, buffer.getvalue())


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


# ---- output folders: ownership, building aside, swapping in, recovering ------------------------------------------
def check_place(path: str | Path) -> None:
    """Refuse ``/``, the home folder, the current folder or a folder above it, and a file, as an output folder."""
    path = Path(path)
    resolved, here = path.resolve(), Path.cwd().resolve()
    for name, folder in (("the home folder", Path.home().resolve()), ("the current folder", here)):
        if resolved == folder:
            raise StylecraftError(
                f"--out {path} is {name}; stylecraft writes into a folder of its own, e.g. {path / 'out'}"
            )
    if resolved in here.parents:
        raise StylecraftError(f"--out {path} holds the current folder; stylecraft never writes into or replaces it")
    if path.exists() and not path.is_dir():
        raise StylecraftError(f"--out {path} is a file; give a folder path")


def check_out(path: str | Path, overwrite: bool, hint: str = "pass --overwrite or pick another") -> None:
    """Refuse an output folder stylecraft must not write or replace, with one line naming it and the fix: one
    ``check_place`` refuses, or a folder with files in it, unless ``overwrite`` and stylecraft made it (``MARKER``).
    """
    path = Path(path)
    check_place(path)
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        raise StylecraftError(f"output folder {path} already exists and is not empty; {hint}")
    if not (path / MARKER).is_file():
        raise StylecraftError(
            f"{path} has files stylecraft did not make (no {MARKER} in it), so --overwrite will not replace it; "
            "move it away yourself or pick another --out"
        )


def partial_of(path: Path) -> Path:
    """Where the folder ``path`` is built before ``swap_into_place`` moves it in: ``.NAME.partial`` beside it."""
    return path.with_name(f".{path.name}.partial")


def _old_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def new_folder(path: Path) -> None:
    """Make ``path`` (or take it, empty) as a stylecraft output folder: with the ``MARKER`` that lets --overwrite
    replace it later (an empty file: made in one step, a kill cannot leave half of it)."""
    with no_space_is_an_error(path.parent):
        path.mkdir(parents=True, exist_ok=True)
        (path / MARKER).touch()


def remove(path: Path) -> None:
    """Delete a folder (or a link or file) stylecraft made, if it is there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def swap_into_place(path: Path) -> None:
    """Move the complete ``partial_of(path)`` to ``path``. An existing ``path`` moves aside first and is deleted
    only once the new folder is in place; a kill between the two renames is finished by ``recover``."""
    old = _old_of(path)
    if path.exists() or path.is_symlink():
        kill_point("swap")
        os.replace(path, old)
    kill_point("swap")
    os.replace(partial_of(path), path)
    remove(old)


def recover(path: Path) -> None:
    """Put right what a killed run left beside ``path``; call it holding ``path``'s lock, before anything else.

    No ``path`` but its ``.old``: the kill fell between a swap's two renames, and the new folder, complete before
    any swap starts, moves in (or the old one back, if the new one is gone). Then leftovers go: the old folder of a
    finished swap, a ``.partial`` that never got swapped in (its run was killed before it was complete), and in a
    folder stylecraft made, the temporary files of writes a kill cut short.
    """
    old, partial = _old_of(path), partial_of(path)
    if old.exists() and not path.exists():
        os.replace(partial if partial.is_dir() else old, path)
    remove(old)
    remove(partial)
    if (path / MARKER).is_file():
        for tmp in path.rglob(".*.tmp"):  # _atomic_write's names
            tmp.unlink()


@contextmanager
def output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder beside ``path`` and swap it in only when the block succeeds.

    A folder with files in it is replaced only with ``overwrite`` and only if stylecraft made it (``check_out``);
    the old one goes only after the new one is in place, so a failure or a kill leaves the old results. Another
    process writing ``path`` is refused at once (``folder_lock``).
    """
    path = Path(os.path.normpath(path))  # "out/" and "a/../out" name their folder: "out"
    check_out(path, overwrite)  # before the lock too: a refused command leaves nothing behind
    with folder_lock(path, "writing results"):
        recover(path)
        check_out(path, overwrite)  # again: recovering may have put a folder back
        staging = partial_of(path)
        new_folder(staging)
        try:
            yield staging
        except BaseException:
            remove(staging)
            raise
        swap_into_place(path)
