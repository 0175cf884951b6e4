"""Files: checks on those a user or a shared run directory names, and atomic writes.

Every path a data set comes from is untrusted input: it may be a FIFO that blocks a reader forever,
a device, or a folder where a file was expected. Readers call
[`check_regular_file`][pyro_vae.data.files.check_regular_file] first and refuse with one line
instead of hanging. Every file the library writes goes through
[`write_atomically`][pyro_vae.data.files.write_atomically], so a crash never leaves half a file, and
a symbolic link where the file should be is replaced, never written through.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyro_vae.errors import ConfigError, DataError

#: Longest file name and path the library writes (Linux's NAME_MAX and PATH_MAX, in bytes).
NAME_MAX = 255
PATH_MAX = 4095
#: Errors of creating a path that mean the path itself is unusable, not that the disk failed.
_PATH_ERRORS = {
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOTDIR: "a part of it is a file, not a folder",
    errno.EEXIST: "a part of it is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ELOOP: "it is a symbolic link",
}


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


def printable(text: str) -> str:
    """``text`` safe to show in a message or a figure title: undecodable bytes (surrogate
    escapes of non-UTF-8 file names) and control characters (a newline) become backslash
    escapes, so a message stays one line and names the whole path."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def quoted(path: str | Path) -> str:
    """``path`` quoted whole for a one-line message (see
    [`printable`][pyro_vae.data.files.printable])."""
    return repr(printable(str(path)))


def check_path_length(path: str | Path, what: str = "output path") -> Path:
    """Refuse a path with a name longer than ``NAME_MAX`` bytes or longer than
    ``PATH_MAX`` bytes in all, before anything is created on it."""
    path = Path(path)
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    total = len(os.fsencode(str(path.absolute())))
    if longest > NAME_MAX or total > PATH_MAX:
        raise ConfigError(
            f"{what} {quoted(path)[:80]}... is too long ({longest} bytes in one name, "
            f"{total} in all; at most {NAME_MAX} and {PATH_MAX}); choose a shorter name"
        )
    return path


def path_error(exc: OSError, path: Path, what: str = "output path") -> OSError | ConfigError:
    """A [`ConfigError`][pyro_vae.errors.ConfigError] naming ``path`` for an ``OSError`` that
    says the path is unusable (too long, under a file, a folder, not writable); ``exc`` itself
    otherwise."""
    reason = _PATH_ERRORS.get(exc.errno)
    if reason is None:
        return exc
    return ConfigError(f"cannot write {what} {quoted(path)}: {reason}; choose another path")


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` so that a crash leaves either the old file or the new one, never a part.

    ``write(f)`` writes the bytes to a temporary file in the same folder, which is flushed and
    fsynced; ``os.replace`` swaps it in, and the folder itself is fsynced so the rename lasts. A
    symbolic link at ``path`` is replaced by the file, never followed; a path that cannot hold a
    file (too long, under a file, a folder) is refused with
    [`ConfigError`][pyro_vae.errors.ConfigError].
    """
    path = check_path_length(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
    except OSError as exc:
        raise path_error(exc, path) from exc
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
