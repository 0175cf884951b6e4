"""Checks shared by the bad-input tables: one error line, exit 2, nothing outside changed."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

#: What :func:`snapshot` records of one entry: its kind and its bytes or link target.
Entry = tuple[str, bytes | str]


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, Entry]:
    """Every entry under ``root`` (not following links) with its content, except those under
    ``skip``: compare two snapshots to see that nothing outside a run was changed."""
    seen: dict[str, Entry] = {}
    skipped = {Path(p).resolve() if not Path(p).is_symlink() else Path(p) for p in skip}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skipped]
        for name in [*dirs, *files]:
            path = here / name
            if path in skipped:
                continue
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                seen[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                seen[key] = ("file", path.read_bytes())
            else:
                seen[key] = ("dir", b"")
    return seen


def one_error_line(err: str) -> str:
    """The single ``pyro-vae: error:`` line of ``err``; fails on a traceback or more lines."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyro-vae: error: ") and "Traceback" not in err, err
    return lines[0]


def whole(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern that holds only for exactly ``message``: every word
    of a refusal is pinned, not a fragment of it."""
    return "^" + re.escape(message) + r"\Z"
