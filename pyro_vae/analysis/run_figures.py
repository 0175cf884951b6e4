"""The figures of a run by name: what ``pyro-vae train`` draws and ``pyro-vae plot --kind`` takes.

A model kind lists the names of the figures that fit it (``ModelKind.figures``); each name is
an entry of ``FIGURES``, a function ``make(model, data, path, *, history, seed)`` that
writes one figure and returns its path (``None`` when the figure does not apply, e.g. a
manifold of a latent space that is not 2-D, or data that are not images). A plugin adds a
figure with [`register_figure`][pyro_vae.analysis.run_figures.register_figure].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.analysis import figures, plots
from pyro_vae.data.binarize import eval_data
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import ConfigError
from pyro_vae.infer.collapse import latent_usage
from pyro_vae.models.kinds import kind_of
from pyro_vae.runtime.devices import model_device

FigureMaker = Callable[..., Path | None]

#: Figure name -> maker ``(model, data, path, *, history, seed) -> Path | None``.
FIGURES: dict[str, FigureMaker] = {}


def register_figure(name: str) -> Callable[[FigureMaker], FigureMaker]:
    """Register a figure maker under ``name`` (a model kind lists it in ``figures``)."""

    def add(make: FigureMaker) -> FigureMaker:
        FIGURES[name] = make
        return make

    return add


def draw(
    name: str,
    model: Any,
    data: DataSplits,
    path: str | Path,
    history: Sequence[dict[str, Any]] = (),
    seed: int = 0,
) -> Path | None:
    """Figure ``name`` of ``model`` written to ``path`` (``None`` where it does not apply)."""
    if name not in FIGURES:
        raise ConfigError(f"unknown figure {name!r}; choose one of {sorted(FIGURES)}")
    pyro.set_rng_seed(seed)
    return FIGURES[name](model, data, Path(path), history=list(history), seed=seed)


def _test_inputs(model: Any, data: DataSplits, n: int) -> tuple[torch.Tensor, tuple]:
    """The first ``n`` test points as the model is scored on them, and the programs' further
    arguments for them (labels), on the model's device."""
    device = model_device(model)
    x = eval_data(model, data.test[:n]).to(device)
    return x, tuple(a[:n].to(device) for a in kind_of(model).split_args(data, "test"))


@register_figure("elbo")
def _elbo(model, data, path, *, history, seed):
    return plots.plot_elbo(history, path, title=f"ELBO on {data.name}")


@register_figure("loss")
def _loss(model, data, path, *, history, seed):
    title = f"autoencoder reconstruction loss on {data.name}"
    return plots.plot_reconstruction_nll(history, path, title=title)


@register_figure("samples")
def _samples(model, data, path, *, history, seed):
    """From the prior; a model without one (the autoencoder) from a mixture fitted to its
    training codes."""
    source = "prior" if callable(getattr(model, "sample", None)) else "aggregate"
    return figures.figure_samples(model, data, path, source=source, seed=seed)


@register_figure("reconstructions")
def _reconstructions(model, data, path, *, history, seed):
    return figures.figure_reconstructions(model, data, path)


@register_figure("latent")
def _latent(model, data, path, *, history, seed):
    return figures.figure_latent(model, data, path)


@register_figure("interpolation")
def _interpolation(model, data, path, *, history, seed):
    return figures.figure_interpolation(model, data, path)


@register_figure("manifold")
def _manifold(model, data, path, *, history, seed):
    if getattr(model, "latent_dim", None) != 2 or not hasattr(model, "prior"):
        return None
    return figures.figure_manifold(model, data, path)


@register_figure("class_samples")
def _class_samples(model, data, path, *, history, seed):
    """One row per class: E[x | z, y] with z from the prior (``model.sample_per_class``)."""
    with torch.no_grad():
        images = model.sample_per_class(10)  # (num_classes, 10, *event_shape)
    rows, per_row = images.shape[0], images.shape[1]
    names = data.label_names or [str(c) for c in range(rows)]
    return plots.plot_image_grid(
        images.reshape(rows * per_row, *images.shape[2:]).cpu(),
        path,
        f"{kind_of(model).label} samples E[x | z, y] on {data.name},\none row per class: "
        f"{', '.join(names[:rows]) if rows <= 10 else f'{names[0]} .. {names[rows - 1]}'}",
        ncol=per_row,
    )


@register_figure("conditional_reconstructions")
def _conditional_reconstructions(model, data, path, *, history, seed):
    """Test inputs beside E[x | z, y] with z the mean of q(z | x, y) for their own labels."""
    x, args = _test_inputs(model, data, 32)
    with torch.no_grad():
        x_hat = model.reconstruct(x, *args)
    return plots.plot_reconstructions(data.test[:32], x_hat.cpu(), path)


@register_figure("completions")
def _completions(model, data, path, *, history, seed):
    """Quadrant completion: the visible quadrant, samples of the other three, the truth."""
    x, _ = _test_inputs(model, data, 8)
    with torch.no_grad():
        # the hidden quadrants shown grey: what the model is given
        given = torch.where(model.visible.expand_as(x), x, torch.full_like(x, 0.5))
        samples = model.complete(x, num_samples=3, mean=True)  # (3, 8, *event_shape)
    rows = torch.stack([given, *samples, x], dim=1)  # (8, 5, *event_shape)
    return plots.plot_image_grid(
        rows.reshape(-1, *x.shape[1:]).cpu(),
        path,
        "quadrant completion\ngiven | 3 x E[x | z, c] | truth",
        ncol=rows.shape[1],
    )


@register_figure("kl_per_dim")
def _kl_per_dim(model, data, path, *, history, seed):
    """KL per latent dimension and the active units on (up to) 1000 test points."""
    x, args = _test_inputs(model, data, 1000)
    with torch.no_grad():
        usage = latent_usage(model.model, model.guide, x, *args)
    return plots.plot_kl_per_dim(
        usage, path, title=f"KL per latent dimension ({len(x)} {data.name} test points)"
    )


__all__ = ["FIGURES", "draw", "register_figure"]
