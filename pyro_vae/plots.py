"""Figures: ELBO curves and image grids (matplotlib, written without a display)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

TRAIN_COLOR = "#1f77b4"
VALID_COLOR = "#d62728"


def as_images(x: torch.Tensor) -> torch.Tensor | None:
    """(n, C, H, W) with C in {1, 3}, (n, H, W), or (n, D) with D a square -> (n, H, W, C).

    Returns ``None`` when the data are not image-like.
    """
    x = x.detach().cpu().float()
    if x.dim() == 4 and x.shape[1] in (1, 3):
        return x.permute(0, 2, 3, 1)
    if x.dim() == 3:
        return x.unsqueeze(-1)
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1]:
            return x.reshape(-1, side, side, 1)
    return None


def tile(images: torch.Tensor, ncol: int, pad: int = 1) -> np.ndarray:
    """(n, H, W, C) -> one (rows*(H+pad)-pad, ncol*(W+pad)-pad, C) mosaic.

    Padding is drawn white: 0 for one channel (shown with an inverted gray map), 1 for RGB.
    """
    n, h, w, c = images.shape
    nrow = math.ceil(n / ncol)
    out = np.full(
        (nrow * (h + pad) - pad, ncol * (w + pad) - pad, c),
        fill_value=0.0 if c == 1 else 1.0,
        dtype=np.float32,
    )
    for i in range(n):
        r, q = divmod(i, ncol)
        out[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = images[i]
    return out


def _show(ax, mosaic: np.ndarray, title: str) -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(mosaic, 0, 1), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_elbo(history: Sequence[dict[str, Any]], path: str | Path, title: str = "ELBO") -> Path:
    """Train and validation ELBO per data point (nats) against epoch."""
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_elbo"] for r in history], color=TRAIN_COLOR, label="train")
    valid = np.array([r["valid_elbo"] for r in history])
    err = np.array([r.get("valid_elbo_stderr", 0.0) for r in history])
    ax.plot(epochs, valid, color=VALID_COLOR, label="validation")
    ax.fill_between(epochs, valid - 2 * err, valid + 2 * err, color=VALID_COLOR, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per data point (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_image_grid(x: torch.Tensor, path: str | Path, title: str, ncol: int = 8) -> Path | None:
    """A grid of images x: (n, C, H, W); ``None`` (nothing written) if x is not image-like."""
    images = as_images(x)
    if images is None:
        return None
    ncol = min(ncol, images.shape[0])
    mosaic = tile(images, ncol)
    scale = 0.6 if images.shape[1] <= 16 else 1.0
    fig, ax = plt.subplots(
        figsize=(scale * ncol + 0.5, scale * mosaic.shape[0] / images.shape[1] + 0.7)
    )
    _show(ax, mosaic, title)
    return save_figure(fig, path)


def plot_reconstructions(
    x: torch.Tensor, x_hat: torch.Tensor, path: str | Path, ncol: int = 8
) -> Path | None:
    """Inputs (left) beside their reconstructions (right); x, x_hat: (n, C, H, W)."""
    a, b = as_images(x), as_images(x_hat)
    if a is None or b is None:
        return None
    ncol = min(ncol, a.shape[0])
    fig, axes = plt.subplots(
        1, 2, figsize=(2 * (0.6 * ncol + 0.5), 0.6 * math.ceil(a.shape[0] / ncol) + 0.8)
    )
    _show(axes[0], tile(a, ncol), "input")
    _show(axes[1], tile(b, ncol), "reconstruction (posterior mean)")
    return save_figure(fig, path)
