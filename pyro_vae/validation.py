"""Input checks at the library's edges: refuse bad data before any numerics run.

Each check raises a :mod:`pyro_vae.errors` exception with a one-line message that names the
problem and the fix, so a mistake surfaces where it was made, not as a broadcasting bug or
a NaN three calls later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

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


def check_evaluation_inputs(
    model: Callable,
    guide: Callable,
    data: Any,
    num_samples: Any,
    batch_size: Any = None,
    particle_chunk: Any = None,
) -> None:
    """Everything :func:`pyro_vae.evaluation.log_likelihood` needs before it samples.

    data: (N, *event_shape). The model's event shape is read from the owner of a bound
    ``model`` method (a ``VAE``) when it has one; otherwise the traced observation site is
    checked instead, so any contract-following model is covered.
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    check_positive_int(particle_chunk, "particle_chunk", allow_none=True)
    owner = getattr(model, "__self__", None)
    event_shape = getattr(owner, "event_shape", None)
    check_tensor(data, "data", event_shape)
    if event_shape is None:
        check_observed_shapes(model, guide, data[: min(2, data.shape[0])])


def check_observed_shapes(
    model: Callable, guide: Callable, x: torch.Tensor, data_plate: str = "data"
) -> None:
    """Trace guide and model on ``x`` and refuse data the model would broadcast.

    x: (n, *event_shape). Every sample site's value must have exactly the shape of its
    distribution (batch_shape + event_shape) and the data plate must have n entries:
    otherwise log p(x) is silently summed or repeated over the wrong points.
    """
    try:
        with poutine.block():
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(
            f"the model cannot read data of shape {tuple(x.shape)} ({first}); pass data shaped "
            "(N, *event_shape) as in training"
        ) from exc
    for trace in (guide_trace, model_trace):
        for name, site in prune_subsample_sites(trace).nodes.items():
            if site["type"] != "sample":
                continue
            expected = tuple(site["fn"].batch_shape + site["fn"].event_shape)
            got = tuple(site["value"].shape)
            sizes = [f.size for f in site["cond_indep_stack"] if f.name == data_plate]
            if got != expected or (sizes and sizes[0] != x.shape[0]):
                raise DataError(
                    f"data of shape {tuple(x.shape)} is broadcast at site {name!r} (values "
                    f"{got}, distribution {expected}); pass data shaped (N, *event_shape) as in "
                    "training"
                )


def check_finite_config(value: float, name: str, positive: bool = True) -> None:
    """Refuse a NaN, infinite or (when ``positive``) non-positive number."""
    if not (isinstance(value, int | float) and math.isfinite(value)) or (positive and value <= 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
