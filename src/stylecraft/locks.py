"""Single-writer locks on output folders: a second stylecraft process on the same folder is refused at once.

The lock is an ``flock`` on a small file beside the folder (``.NAME.lock`` in its parent), not inside it, because
the folder itself is built aside and renamed into place. The kernel drops the lock when its process exits, kill -9
included, so a crashed run never leaves a lock that blocks the next one; the lock file itself may stay (it is empty
and harmless).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import StylecraftError


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``.NAME.lock`` beside it."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def folder_lock(folder: str | Path, what: str = "writing") -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` for the block; raise at once if another process holds it.

    ``what`` names this process's work (e.g. "training", "the feedback studio"); the holder writes it and its pid
    into the lock file, so a refused process can say who holds the folder.
    """
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise StylecraftError(
            f"cannot create {path} ({err.strerror}); pick an --out in a folder you can write to"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip()  # "(its work) with pid N", or "" if unwritten
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise StylecraftError(
            f"{Path(folder)} is in use by another stylecraft process {holder or '(starting)'}; wait for it to "
            "finish or pick another folder"
        ) from None
    try:  # who holds it, for a refused process's message; a full disk only loses the description
        os.ftruncate(fd, 0)
        os.write(fd, f"({what}) with pid {os.getpid()}".encode())
    except OSError:
        pass
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
