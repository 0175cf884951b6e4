"""Input checks at the library's edges: refuse bad data before any numerics run.

Each check raises a [`pyro_vae.errors`][] exception with a one-line message that names the
problem and the fix, so a mistake surfaces where it was made, not as a broadcasting bug or
a NaN three calls later. Pure tensor and number checks only: checks that trace a model and
guide live in [`pyro_vae.infer.trace`][] (``check_program``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pyro_vae.errors import ConfigError, DataError


def check_tensor(
    x: Any, what: str = "data", event_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Refuse anything but a non-empty, finite, floating-point tensor ``(N, *event_shape)``.

    x: (N, *event_shape). ``event_shape=None`` only requires at least one dimension beyond N.
    Returns ``x`` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"{what} must be a torch.Tensor, got {type(x).__name__}; convert it with "
            "torch.as_tensor(x, dtype=torch.float32)"
        )
    if not x.is_floating_point():
        raise DataError(
            f"{what} has dtype {x.dtype}, need a floating-point tensor; convert it with "
            "x.float() (divide 8-bit pixels by 255)"
        )
    if x.dim() < 2:
        raise DataError(
            f"{what} has shape {tuple(x.shape)}; need (N, *event_shape) with one row per data "
            "point (use x.unsqueeze(-1) for scalar data points)"
        )
    if x.shape[0] == 0:
        raise DataError(
            f"{what} has no data points (shape {tuple(x.shape)}); pass at least one data point"
        )
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise DataError(
            f"{what} points have shape {tuple(x.shape[1:])} but the model expects "
            f"{tuple(event_shape)}; reshape the data to (N, {', '.join(map(str, event_shape))}) "
            "or build the model with the data's event_shape"
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(
            f"{what} contains {bad} NaN or infinite values; clean or impute the data first"
        )
    return x


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    """Refuse a count (samples, batch size, chunk) that is not an integer >= 1."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}")


def check_finite_config(value: float, name: str, positive: bool = True) -> None:
    """Refuse a NaN, infinite or (when ``positive``) non-positive number."""
    if not (isinstance(value, int | float) and math.isfinite(value)) or (positive and value <= 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
