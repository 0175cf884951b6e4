"""The run directory: every file name of a run, atomic writes, the marker and the lock.

A run directory holds ``.pyro-vae-run`` (the marker: this library created it), ``config.json``
(data set, model and training configuration, written once; a resume with more epochs rewrites
it after its checks pass), ``checkpoint.pt``, ``metrics.jsonl``, ``results.json``, ``.lock``
(who trains it now), the figures and, for a tracked run, ``tracking.json`` (the experiment
trackers' run ids and last logged epochs) and ``tensorboard/`` (TensorBoard's event files).
Nothing else in the package spells these names.

No write follows a link out of the directory: files are written to a temporary file and
``os.replace``d (which replaces a link instead of writing through it), the lock is opened with
``O_NOFOLLOW``, and a run directory whose entries are symbolic links is refused, naming the entry.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_vae.data.files import (
    NAME_MAX,
    check_path_length,
    path_error,
    printable,
    quoted,
    write_atomically,
)
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
from pyro_vae.train.checkpoint import load_checkpoint, save_checkpoint

#: What the marker file holds; its presence says "this library created the directory".
MARKER_CONTENT = {"format": "pyro-vae-run", "version": 1}


def check_run_name(name: str) -> str:
    """Refuse a run name that is not a single path component (``..``, ``.``, ``a/b``, empty)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"run name must be a non-empty string, got {printable(repr(name))}")
    if name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ConfigError(
            f"run name {printable(repr(name))} must be a single directory name (no '/', '.' or "
            "'..'); choose a plain --name such as digits-beta2"
        )
    size = len(os.fsencode(name))
    if size > NAME_MAX:
        raise ConfigError(
            f"run name {quoted(name[:40])}... is {size} bytes long, more than the {NAME_MAX} a "
            "file name may have; choose a shorter --name"
        )
    return name


class RunDir:
    """One run directory: its file names, atomic writes and the exclusive lock.

    Args:
        path: the directory (need not exist yet).
    """

    MARKER = ".pyro-vae-run"
    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.pt"
    METRICS = "metrics.jsonl"
    RESULTS = "results.json"
    LOCK = ".lock"
    TRACKING = "tracking.json"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: str | Path):
        if isinstance(path, RunDir):
            path = path.path
        self.path = Path(path)

    @classmethod
    def named(cls, output_dir: str | Path, name: str) -> RunDir:
        """The run ``name`` (a single path component) inside ``output_dir``."""
        return cls(Path(output_dir) / check_run_name(name))

    def __str__(self) -> str:
        return printable(str(self.path))

    def quoted(self, name: str | None = None) -> str:
        """The directory's (or one of its files') path, printable and quoted, for messages."""
        return repr(printable(str(self.file(name) if name else self.path)))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- names -------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """The path of one of the run's files (one of the class constants)."""
        return self.path / name

    def figure(self, name: str, fmt: str = "png") -> Path:
        """The path of a figure, e.g. ``figure("samples")`` -> ``samples.png``."""
        return self.path / f"{name}.{fmt}"

    # --- what is there -----------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether this library created the directory: its marker, or (runs older than the
        marker) a ``config.json`` with dataset, model and train tables beside a checkpoint or
        metrics."""
        if (self.path / self.MARKER).is_file():
            try:
                return json.loads((self.path / self.MARKER).read_text()) == MARKER_CONTENT
            except (OSError, ValueError):
                return False
        try:
            config = json.loads(self.file(self.CONFIG).read_text())
        except (OSError, ValueError):
            return False
        has_tables = isinstance(config, dict) and {"dataset", "model", "train"} <= set(config)
        return has_tables and (
            self.file(self.CHECKPOINT).is_file() or self.file(self.METRICS).is_file()
        )

    def has_checkpoint(self) -> bool:
        return self.file(self.CHECKPOINT).is_file()

    def has_config(self) -> bool:
        return self.file(self.CONFIG).is_file()

    # --- creating and clearing -----------------------------------------------------------------

    def check_entries(self) -> None:
        """Refuse a run directory holding a symbolic link (``samples.png -> elsewhere``): the
        library never reads or writes a run's files through a link. Names the entry."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise CheckpointError(
                f"run directory {self.quoted()} is a file, not a directory; check the path"
            ) from None
        except OSError as exc:
            raise CheckpointError(
                f"cannot list run directory {self.quoted()} ({exc.strerror}); check it"
            ) from exc
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                target = printable(os.readlink(entry.path))
                raise CheckpointError(
                    f"run directory {self.quoted()} holds {entry.name!r}, a symbolic link to "
                    f"{target!r}; pyro-vae never writes through links: remove the link (or "
                    "replace it with the file itself) and retry"
                )

    def check_creatable(self, overwrite: bool = False) -> None:
        """Refuse, before anything is written, what
        [`create`][pyro_vae.runs.rundir.RunDir.create] would refuse."""
        check_path_length(self.path, "run directory")
        parent = self.path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(
                f"the output directory of {self.quoted()} is under {quoted(parent)}, which is a "
                "file, not a directory; choose another --output-dir"
            )
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(
                f"{self.quoted()} exists and is not a directory; choose another --name"
            )
        self.check_entries()
        if self.path.is_dir() and any(p.name != self.LOCK for p in self.path.iterdir()):
            if not overwrite:
                raise ConfigError(
                    f"run directory {self.quoted()} already exists; pass --overwrite to replace "
                    "it, --resume to continue it, or choose another --name"
                )
            if not self.is_run():
                raise ConfigError(
                    f"--overwrite refused: {self.quoted()} is not a pyro-vae run directory (no "
                    f"{self.MARKER} or config.json + checkpoint); remove it yourself or choose "
                    "another --name"
                )

    def create(self, overwrite: bool = False) -> RunDir:
        """Make an empty run directory with its marker.

        An existing non-empty directory is refused unless ``overwrite``; then it is cleared only if
        this library created it as a run ([`is_run`][pyro_vae.runs.rundir.RunDir.is_run]), never
        another directory.
        """
        self.check_creatable(overwrite)
        if self.path.is_dir() and any(p.name != self.LOCK for p in self.path.iterdir()):
            self.clear()
        self.make()
        self.write_json(self.MARKER, MARKER_CONTENT)
        return self

    def make(self) -> None:
        """Create the directory (and its parents); an unusable path is one ConfigError line."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise path_error(exc, self.path, "run directory") from exc

    def clear(self) -> None:
        """Delete the run's contents except the lock file (a held lock stays held)."""
        for child in self.path.iterdir():
            if child.name == self.LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # --- atomic writes -----------------------------------------------------------------------

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` to the run's file ``name`` atomically (tmp + fsync + os.replace)."""
        return write_atomically(self.file(name), lambda f: f.write(text.encode("utf-8")))

    def write_json(self, name: str, value: Any) -> Path:
        return self.write_text(name, json.dumps(value, indent=2))

    def read_json(self, name: str) -> Any:
        """A JSON file of the run; a missing or unreadable one raises
        [`CheckpointError`][pyro_vae.errors.CheckpointError]."""
        path = self.file(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(
                f"{printable(str(path))!r} is missing; is {self.quoted()} a run?"
            ) from exc
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{printable(str(path))!r} is not valid JSON ({exc}); restore it from a backup"
            ) from exc

    # --- the files the fit loop writes ---------------------------------------------------------

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.file(self.CHECKPOINT), state)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.file(self.CHECKPOINT))

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files a killed writer left (``.checkpoint.pt.XXXX.tmp``,
        ``.metrics.jsonl.XXXX.tmp``, ``.samples.png.XXXX.tmp``): only those of the run's own
        files and figures, and only by the lock's holder, so no live write loses its file."""
        owned = (self.MARKER, self.CONFIG, self.CHECKPOINT, self.METRICS, self.RESULTS)
        for entry in os.scandir(self.path):
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp")) or not entry.is_file(
                follow_symlinks=False
            ):
                continue
            target = name[1:].rsplit(".", 2)[0]
            if target in owned or target.endswith((".png", ".pdf")):
                os.unlink(entry.path)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` atomically with exactly ``history``'s records."""
        self.write_text(self.METRICS, "".join(json.dumps(r) + "\n" for r in history))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one epoch's record to ``metrics.jsonl``, durably: the file is rewritten
        atomically with the new line (never appended to through a link)."""
        path = self.file(self.METRICS)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            before = b""
        except OSError as exc:
            raise self._link_error(self.METRICS, exc) from exc
        else:
            with os.fdopen(fd, "rb") as f:
                before = f.read()
        if before and not before.endswith(b"\n"):
            before += b"\n"
        line = (json.dumps(record) + "\n").encode("utf-8")
        write_atomically(path, lambda f: f.write(before + line))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(self.METRICS)
        try:
            lines = path.read_text().splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        except FileNotFoundError as exc:
            raise CheckpointError(f"{printable(str(path))!r} is missing; retrain the run") from exc
        except ValueError as exc:
            raise CheckpointError(f"{printable(str(path))!r} is corrupted ({exc})") from exc

    def record_config(
        self, updates: dict[str, Any], defaults: dict[str, Any] | None = None
    ) -> None:
        """Merge ``updates`` (and ``defaults`` for keys not yet set) into ``config.json``;
        write only if something changed, atomically.

        The fit loop calls this after a resume's checks passed, so a refused resume leaves
        ``config.json`` as it was.
        """
        current = self.read_json(self.CONFIG) if self.has_config() else {}
        if not isinstance(current, dict):
            raise CheckpointError(f"{self.quoted(self.CONFIG)} is not a table; restore it")
        # as JSON reads it back (tuples are lists), so an unchanged config is not rewritten
        merged = json.loads(json.dumps({**(defaults or {}), **current, **updates}))
        if merged != current:
            self.write_json(self.CONFIG, merged)

    # --- the lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold an exclusive ``fcntl.flock`` on the run for training or resuming.

        A second process is refused with one line naming the holder (pid, host, start time).
        """
        self.make()
        self.check_entries()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.file(self.LOCK), flags, 0o644)
        except OSError as exc:
            raise self._link_error(self.LOCK, exc) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise CheckpointError(
                    f"{self.quoted(self.LOCK)} is not a plain file of this run (it is "
                    f"{'hard-linked elsewhere' if info.st_nlink != 1 else 'not a regular file'}"
                    "); pyro-vae writes its pid into it: remove it and retry"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
                raise CheckpointError(
                    f"run directory {self.quoted()} is in use by another process "
                    f"({printable(holder)}); wait for it to finish or stop it, then retry"
                ) from None
            # a kill during a write leaves its temporary file; the file itself is intact
            self.remove_stale_temporaries()
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}".encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing releases the flock

    def _link_error(self, name: str, exc: OSError) -> PyroVAEError | OSError:
        """The one-line refusal of opening the run's file ``name`` without following links."""
        if exc.errno == errno.ELOOP:
            return CheckpointError(
                f"{self.quoted(name)} is a symbolic link; pyro-vae never writes through links: "
                "remove it and retry"
            )
        return path_error(exc, self.file(name), "run file")
