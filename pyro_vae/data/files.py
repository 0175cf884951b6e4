"""Files: checks on those a user or a shared run directory names, and atomic writes.

Every path a data set comes from is untrusted input: it may be a FIFO that blocks a reader
forever, a device, or a folder where a file was expected. Readers call
:func:`check_regular_file` first and refuse with one line instead of hanging. Every file the
library writes goes through :func:`write_atomically`, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyro_vae.errors import DataError


def check_regular_file(path: str | Path, what: str = "data file") -> Path:
    """Refuse ``path`` unless it is an existing regular file (symbolic links are followed).

    A FIFO, socket, character or block device, or folder is refused without being opened,
    so a reader never blocks on it.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{what} {str(path)!r} does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"cannot inspect {what} {str(path)!r} ({exc.strerror}); check it") from exc
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
        )
        raise DataError(f"{what} {str(path)!r} is {kind}, not a regular file; name a saved file")
    return path


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` so that a crash leaves either the old file or the new one, never a part.

    ``write(f)`` writes the bytes to a temporary file in the same folder, which is flushed and
    fsynced; ``os.replace`` swaps it in, and the folder itself is fsynced so the rename lasts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
