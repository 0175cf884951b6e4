"""Checkpoints: written atomically, read without executing code."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from pyro_vae.data.files import write_atomically
from pyro_vae.errors import CheckpointError

FORMAT_VERSION = 1
#: Largest total size a checkpoint's zip members may declare (refused before inflating).
MAX_INFLATED_BYTES = 2 * 1024**3


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, then
    ``os.replace`` swaps it in: a crash leaves either the old checkpoint or the new one.
    """
    payload = {"format_version": FORMAT_VERSION, **state}
    write_atomically(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: nothing in the file can run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; train a model there first")
    check_inflated_size(path)
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
    version = state["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a format_version of type {type(version).__name__}, "
            "not an integer; it was not written by pyro-vae: restore it from a backup or retrain"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state['format_version']}, this "
            f"pyro-vae reads version {FORMAT_VERSION}; use the matching pyro-vae release"
        )
    return state


def check_inflated_size(path: Path) -> None:
    """Refuse a zip checkpoint whose members declare more than ``MAX_INFLATED_BYTES`` or
    much more than the file holds (a zip bomb), from the zip directory alone."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format is not compressed; torch.load refuses what it cannot read
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a corrupted zip file ({exc}); restore it or retrain"
        ) from exc
    declared = sum(m.file_size for m in members)
    limit = min(MAX_INFLATED_BYTES, 2 * path.stat().st_size + 2**20)
    compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if declared > limit or compressed:
        raise CheckpointError(
            f"checkpoint {str(path)!r} declares {declared} bytes once inflated (limit {limit}) "
            f"or compressed members {compressed[:3]}; torch.save never writes that: refused"
        )


def restore_model(module: torch.nn.Module, model_state: Any, source: str) -> None:
    """Load ``model_state`` into ``module``; refuse a mismatch of names, shapes or dtypes and
    non-finite weights with [`CheckpointError`][pyro_vae.errors.CheckpointError] (load_state_dict
    would cast silently)."""
    if not isinstance(model_state, dict):
        raise CheckpointError(
            f"checkpoint in {source!r} holds no model state table; restore it or retrain"
        )
    expected = module.state_dict()
    for name, value in model_state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint in {source!r}: {name!r} is a {type(value).__name__}, not a tensor; "
                "restore the checkpoint or retrain"
            )
        if name in expected and value.dtype != expected[name].dtype:
            raise CheckpointError(
                f"checkpoint in {source!r}: {name!r} is {value.dtype}, the model expects "
                f"{expected[name].dtype}; the file was altered, restore it or retrain"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"checkpoint in {source!r}: {name!r} holds NaN or infinite values; restore an "
                "earlier checkpoint or retrain"
            )
    try:
        module.load_state_dict(model_state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        reason = state_mismatch(expected, model_state) or first
        raise CheckpointError(
            f"checkpoint in {source!r} does not match the model's architecture ({reason}); "
            "rebuild the model with the checkpoint's configuration or retrain"
        ) from exc


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> str | None:
    """The first difference between a model's state table and a file's, in words, with how
    many more there are; ``None`` where names and shapes all agree.

    In the model's order: a tensor of another shape, one the file lacks, then one the model
    lacks (e.g. ``'decoder.net.0.weight' has shape (5, 2) in the file and (8, 2) in the model,
    and 3 more differ``).
    """
    found = []
    for name, tensor in expected.items():
        if name not in given:
            found.append(f"the file lacks {name!r}")
        elif tuple(given[name].shape) != tuple(tensor.shape):
            found.append(
                f"{name!r} has shape {tuple(given[name].shape)} in the file and "
                f"{tuple(tensor.shape)} in the model"
            )
    found += [
        f"the file has {name!r}, which the model lacks" for name in given if name not in expected
    ]
    if not found:
        return None
    more = len(found) - 1
    return found[0] + (
        f", and {more} more differ" if more > 1 else ", and 1 more differs" if more else ""
    )


def _reason(exc: Exception) -> str:
    """The informative part of torch.load's error, without its advice to disable safety."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        text = found.group(1)
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    return first.split(". ")[0][:160]
