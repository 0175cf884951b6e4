"""Checks on the files a user or a shared run directory names, before anything reads them.

Every path a data set comes from is untrusted input: it may be a FIFO that blocks a reader
forever, a device, or a folder where a file was expected. Readers call
:func:`check_regular_file` first and refuse with one line instead of hanging.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
