"""Figures: ELBO curves, image grids and latent-space pictures (matplotlib, no display needed).

Figures are drawn on ``matplotlib.figure.Figure`` objects, never through ``pyplot``: no
backend is selected or switched (a notebook's interactive backend stays as it was) and no
global figure list grows. Every figure here uses a constrained layout and is saved at
``DPI`` without cropping, so its pixel size is ``figsize * DPI`` (a figure without a
layout engine is cropped instead). The file type follows the path's suffix (``.png``, ``.pdf``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyro_vae.data.files import printable, quoted, write_atomically
from pyro_vae.errors import ConfigError

if TYPE_CHECKING:
    from pyro_vae.infer.collapse import LatentUsage, SiteUsage

TRAIN_COLOR = "#1f77b4"
VALID_COLOR = "#d62728"
DPI = 120


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


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float],
    layout: str | None = "constrained",
    squeeze: bool = True,
) -> tuple[Figure, Any]:
    """A new figure and its axes, like ``pyplot.subplots`` but outside pyplot's state.

    The figure belongs to no backend and no figure manager: it is drawn only when saved, and
    garbage-collected like any object.
    """
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _show(ax: Axes, mosaic: np.ndarray, title: str) -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(mosaic, 0, 1), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


#: File types a figure is written as, by the path's suffix.
FIGURE_SUFFIXES = (".png", ".pdf")


def check_figure_path(path: str | Path) -> Path:
    """Refuse a figure path whose suffix is not one of ``FIGURE_SUFFIXES`` or that is an
    existing folder, before anything is drawn."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        has = f"suffix {printable(path.suffix)!r}" if path.suffix else "no suffix"
        raise ConfigError(
            f"figure path {quoted(path)} has {has}; end it in {' or '.join(FIGURE_SUFFIXES)}"
        )
    if path.is_dir():
        raise ConfigError(f"figure path {quoted(path)} is a folder; name a file in it")
    return path


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (type from the suffix) at ``DPI``, creating parent folders.

    The file is written atomically ([`write_atomically`][pyro_vae.data.files.write_atomically]): a
    symbolic link at ``path`` is replaced, never written through. A figure without a layout
    engine is cropped to its drawn content instead.
    """
    path = check_figure_path(path)
    fmt = path.suffix.lower()[1:]
    # no layout engine: crop to the drawn content so nothing is cut off
    crop = {"bbox_inches": "tight"} if fig.get_layout_engine() is None else {}
    return write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=DPI, **crop))


def plot_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    train_key: str,
    valid_key: str,
    ylabel: str,
    title: str,
) -> Path:
    """A train and a validation curve against epoch; the validation band is +-2 standard
    errors (``<valid_key>_stderr`` when recorded)."""
    epochs = [r["epoch"] for r in history]
    fig, ax = subplots(figsize=(6, 4), layout="constrained")
    ax.plot(epochs, [r[train_key] for r in history], color=TRAIN_COLOR, label="train")
    valid = np.array([r[valid_key] for r in history])
    err = np.array([r.get(f"{valid_key}_stderr", 0.0) for r in history])
    ax.plot(epochs, valid, color=VALID_COLOR, label="validation")
    ax.fill_between(epochs, valid - 2 * err, valid + 2 * err, color=VALID_COLOR, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_elbo(history: Sequence[dict[str, Any]], path: str | Path, title: str = "ELBO") -> Path:
    """Train and validation ELBO per data point (nats) against epoch."""
    return plot_curves(
        history, path, "train_elbo", "valid_elbo", "ELBO per data point (nats)", title
    )


def plot_image_grid(x: torch.Tensor, path: str | Path, title: str, ncol: int = 8) -> Path | None:
    """A grid of images x: (n, C, H, W); ``None`` (nothing written) if x is not image-like."""
    images = as_images(x)
    if images is None:
        return None
    ncol = min(ncol, images.shape[0])
    mosaic = tile(images, ncol)
    scale = 0.6 if images.shape[1] <= 16 else 1.0
    fig, ax = subplots(
        figsize=(scale * ncol + 0.5, scale * mosaic.shape[0] / images.shape[1] + 0.7),
        layout="constrained",
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
    fig, axes = subplots(
        1,
        2,
        figsize=(2 * (0.6 * ncol + 0.5), 0.6 * math.ceil(a.shape[0] / ncol) + 0.8),
        layout="constrained",
    )
    # A clear gutter so the two grids read as two panels, not one wide grid.
    fig.get_layout_engine().set(wspace=0.08)
    _show(axes[0], tile(a, ncol), "input")
    _show(axes[1], tile(b, ncol), "reconstruction (posterior mean)")
    return save_figure(fig, path)


# --- latent-space figures -------------------------------------------------------------------

LABEL_CMAP = "tab10"


def cell_inches(side: int) -> float:
    """Display size (inches) of one image in a grid: small images get fewer inches."""
    return 0.45 if side <= 16 else 0.6


def _show_cells(
    ax: Axes,
    images: torch.Tensor,
    ncol: int,
    title: str,
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
) -> None:
    """Mosaic of (n, H, W, C) images with optional tick labels at column/row centres."""
    n, h, w, _ = images.shape
    nrow = math.ceil(n / ncol)
    _show(ax, tile(images, ncol), title)
    if col_labels is None and row_labels is None:
        return
    ax.set_axis_on()
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks([q * (w + 1) + (w - 1) / 2 for q in range(ncol)] if col_labels else [])
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(nrow)] if row_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels, fontsize=8)
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _thin(values: Sequence[float], every: int) -> list[str]:
    return [f"{v:.2g}" if i % every == 0 else "" for i, v in enumerate(values)]


def _scatter(ax: Axes, points: np.ndarray, labels, axis_labels, title: str, names=None) -> None:
    """2-D points coloured by integer label (tab10, legend) or one colour without labels."""
    size = 16 if len(points) <= 1000 else 5  # visible dots for small sets, no blobs for large
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, color=TRAIN_COLOR, alpha=0.6, linewidths=0)
    else:
        y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels)
        classes = np.unique(y)
        if len(classes) <= 10:
            cmap = matplotlib.colormaps[LABEL_CMAP]
            for c in classes:
                m = y == c
                name = names[int(c)] if names is not None and int(c) < len(names) else str(c)
                ax.scatter(
                    points[m, 0],
                    points[m, 1],
                    s=size,
                    color=cmap(int(c) % 10),
                    label=name,
                    alpha=0.7,
                    linewidths=0,
                )
            ax.legend(
                title="label",
                markerscale=2.5,
                fontsize=8,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                frameon=False,
            )
        else:
            sc = ax.scatter(points[:, 0], points[:, 1], s=size, c=y, cmap="viridis", linewidths=0)
            ax.figure.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_latent_scatter(
    points: np.ndarray,
    labels: torch.Tensor | None,
    path: str | Path,
    axis_labels: Sequence[str] = ("z1", "z2"),
    title: str = "latent codes of the test data",
    names: Sequence[str] | None = None,
) -> Path:
    """Scatter of 2-D latent points (n, 2) coloured by label; figure 6.5 x 5 inches."""
    fig, ax = subplots(figsize=(6.5, 5), layout="constrained")
    _scatter(ax, np.asarray(points), labels, axis_labels, title, names)
    return save_figure(fig, path)


def plot_manifold(
    images: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    path: str | Path,
    title: str = "latent manifold: E[x | z] on a grid of prior quantiles",
    axis_labels: Sequence[str] = ("z1", "z2"),
) -> Path | None:
    """Decoded grid (len(z2) rows, top = largest z2, x len(z1) columns) with z values on the axes.

    images: (len(z1) * len(z2), C, H, W).
    """
    imgs = as_images(images)
    if imgs is None:
        return None
    n1, n2 = len(z1), len(z2)
    cell = cell_inches(imgs.shape[1])
    fig, ax = subplots(figsize=(cell * n1 + 1.0, cell * n2 + 1.0), layout="constrained")
    every = 1 if n1 <= 8 else 2
    _show_cells(
        ax,
        imgs,
        n1,
        title,
        col_labels=_thin(z1.tolist(), every),
        row_labels=_thin(z2.flip(0).tolist(), every),
        xlabel=axis_labels[0],
        ylabel=axis_labels[1],
    )
    return save_figure(fig, path)


def plot_interpolations(
    strips: dict[str, torch.Tensor],
    path: str | Path,
    title: str = "interpolation between the codes of two test inputs",
) -> Path | None:
    """One row per method ({name: (steps, C, H, W)}), columns t = 0 ... 1."""
    rows = [as_images(v) for v in strips.values()]
    if any(r is None for r in rows):
        return None
    steps = rows[0].shape[0]
    cell = cell_inches(rows[0].shape[1])
    fig, ax = subplots(figsize=(cell * steps + 1.4, cell * len(rows) + 1.0), layout="constrained")
    t = np.linspace(0, 1, steps)
    _show_cells(
        ax,
        torch.cat(rows),
        steps,
        title,
        col_labels=[f"{v:.2f}" for v in t],
        row_labels=list(strips),
        xlabel="t (0 and 1: reconstructions of the two inputs)",
    )
    return save_figure(fig, path)


def plot_attribute(
    moved: torch.Tensor,
    strengths: Sequence[float],
    path: str | Path,
    title: str = "attribute vector added to\ntest inputs' codes",
    inputs: torch.Tensor | None = None,
) -> Path | None:
    """Rows: inputs; columns: the input itself (if given), then z + s v for each strength s.

    moved: (S, n, C, H, W); inputs: (n, C, H, W).
    """
    s, n = moved.shape[:2]
    columns = moved.transpose(0, 1)  # (n, S, ...)
    labels = [f"{v:+.1f}" for v in strengths]
    if inputs is not None:
        columns = torch.cat([inputs.unsqueeze(1).to(moved.dtype), columns], dim=1)
        labels = ["input", *labels]
    ncol = columns.shape[1]
    imgs = as_images(columns.reshape(n * ncol, *moved.shape[2:]))
    if imgs is None:
        return None
    cell = cell_inches(imgs.shape[1])
    fig, ax = subplots(figsize=(max(cell * ncol + 1.2, 4.5), cell * n + 1.3), layout="constrained")
    _show_cells(
        ax,
        imgs,
        ncol,
        title,
        col_labels=labels,
        row_labels=[str(i) for i in range(n)],
        xlabel="strength s (0: reconstruction)",
        ylabel="input",
    )
    return save_figure(fig, path)


def plot_model_comparison(
    panels: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "latent space: autoencoder vs VAE",
) -> Path | None:
    """Side by side, one column per model: its latent scatter above its decoded grid.

    Each panel: ``name``, ``points`` (n, 2), ``labels`` or None, ``axis_labels``,
    ``images`` (k*k, C, H, W) decoded on a grid over the codes' extent, ``u``, ``v`` (k,).
    """
    k = len(panels)
    fig, axes = subplots(2, k, figsize=(5.5 * k, 10), layout="constrained", squeeze=False)
    for j, p in enumerate(panels):
        _scatter(
            axes[0, j],
            np.asarray(p["points"]),
            p["labels"],
            p["axis_labels"],
            p["name"],
            p.get("names"),
        )
        imgs = as_images(p["images"])
        if imgs is None:
            axes[1, j].set_axis_off()
            continue
        every = 1 if len(p["u"]) <= 8 else 2
        _show_cells(
            axes[1, j],
            imgs,
            len(p["u"]),
            f"{p['name']}: decoded grid over the codes' extent",
            col_labels=_thin(p["u"].tolist(), every),
            row_labels=_thin(p["v"].flip(0).tolist(), every),
            xlabel=p["axis_labels"][0],
            ylabel=p["axis_labels"][1],
        )
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_reconstruction_nll(
    history: Sequence[dict[str, Any]], path: str | Path, title: str = "reconstruction loss"
) -> Path:
    """An autoencoder's train and validation reconstruction NLL (nats per data point)."""
    return plot_curves(
        history, path, "train_nll", "valid_nll", "-log p(x | z(x)) per data point (nats)", title
    )


# --- latent usage ---------------------------------------------------------------------------

INACTIVE_COLOR = "#bdbdbd"


def plot_kl_per_dim(
    usage: LatentUsage,
    path: str | Path,
    title: str = "KL per latent dimension",
) -> Path:
    """Bars of KL(q || p) per latent dimension (nats), one panel per latent site.

    ``usage``: a [`LatentUsage`][pyro_vae.infer.collapse.LatentUsage]. Bars stand at their
    dimension index (not sorted), coloured when the unit is active, Cov_x(E_q[z_u | x]) >
    ``usage.threshold`` (Burda et al. 2016), grey and hatched when not; a strip of markers on
    the axis repeats each unit's activity, so a unit with KL near 0 still shows. A site whose
    KL does not factorize over dimensions shows its total KL as a note above the strip.
    Figure width grows with the widest site (6.5 to 14 inches), 2.4 inches of height per site.
    """
    names = list(usage.sites)
    widest = max((usage.sites[n].num_units for n in names), default=1)
    width = min(14.0, max(6.5, 2.5 + 0.22 * widest))
    fig, axes = subplots(
        max(1, len(names)), 1, figsize=(width, 1.0 + 2.4 * max(1, len(names))), squeeze=False
    )
    labels = (f"active (Cov_x E_q[z] > {usage.threshold:g})", "inactive")
    for ax, name in zip(axes[:, 0], names, strict=False):
        _kl_panel(ax, name, usage.sites[name], labels, width)
    if not names:
        axes[0, 0].set_axis_off()
    heading = (
        f"{title}\n{usage.active_units} of {usage.num_units} units active, "
        f"I(x; z) {usage.mutual_information + 0.0:.2f} nats".replace("-0.00", "0.00")
    )
    if usage.skipped:
        heading += "\nnot shown: " + "; ".join(
            f"{n} ({why.split(':')[0]})" for n, why in usage.skipped.items()
        )
    fig.suptitle(heading)
    return save_figure(fig, path)


def _kl_panel(ax: Axes, name: str, site: SiteUsage, labels: tuple[str, str], width: float) -> None:
    """One site's KL bars (or its total as a note) and its strip of active/inactive units."""
    units = max(site.num_units, 1)
    dims = np.arange(site.num_units)
    active = site.active.detach().cpu().numpy().astype(bool)
    ax.set_title(
        f"{name}: {site.active_units} of {site.num_units} units active, KL {site.kl:.3g} nats",
        fontsize=10,
    )
    styles = ((active, TRAIN_COLOR, None, labels[0]), (~active, INACTIVE_COLOR, "//", labels[1]))
    if site.kl_per_dim is not None:
        kl = site.kl_per_dim.detach().cpu().double().numpy()
        for mask, color, hatch, label in styles:
            if mask.any():
                ax.bar(
                    dims[mask], kl[mask], width=0.8, color=color, hatch=hatch,
                    edgecolor="#636363" if hatch else color, linewidth=0.3, label=label,
                )  # fmt: skip
        top = float(kl.max(initial=0.0)) if np.isfinite(kl).all() else 1.0
        ax.set_ylim(0, max(1.2 * top, 1e-3))
        ax.set_ylabel("KL (nats)")
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.text(
            0.5, 0.6, f"total KL {site.kl:.3g} nats, not split by dimension:\n{site.reason}",
            transform=ax.transAxes, ha="center", va="center", fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": INACTIVE_COLOR},
        )  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_yticks([])
    # markers sized to the space one unit gets on the axis, so 200 units do not overlap
    size = min(36.0, (0.6 * (width - 1.5) * 72 / units) ** 2)
    for mask, color, _, label in styles:
        if mask.any():
            ax.scatter(
                dims[mask], np.zeros(mask.sum()), marker="s", s=size, color=color,
                edgecolors="#636363", linewidths=0.3, clip_on=False, zorder=3,
                label=label if site.kl_per_dim is None else None,
            )  # fmt: skip
    ax.set_xlim(-0.6, max(units, 3) - 0.4)
    if units <= 20:
        ax.set_xticks(dims)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"dimension of {name}")
    ax.legend(fontsize=8, loc="upper right", frameon=False)
