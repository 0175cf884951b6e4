"""Checkpoints: written atomically, read without executing code."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from pyro_vae.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, then
    ``os.replace`` swaps it in: a crash leaves either the old checkpoint or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: nothing in the file can run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; train a model there first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: it is truncated, corrupted, or holds objects "
            f"other than tensors (refused: they could run code) ({_reason(exc)}); restore it "
            "from a backup or retrain"
        ) from exc
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{str(path)!r} is not a pyro-vae checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state['format_version']}, this "
            f"pyro-vae reads version {FORMAT_VERSION}; use the matching pyro-vae release"
        )
    return state


def restore_model(module: torch.nn.Module, model_state: Any, source: str) -> None:
    """Load ``model_state`` into ``module``; a mismatch raises :class:`CheckpointError`."""
    try:
        module.load_state_dict(model_state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(
            f"checkpoint in {source!r} does not match the model's architecture ({first}); "
            "rebuild the model with the checkpoint's configuration or retrain"
        ) from exc


def _reason(exc: Exception) -> str:
    """The informative part of torch.load's error, without its advice to disable safety."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        text = found.group(1)
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    return first.split(". ")[0][:160]
