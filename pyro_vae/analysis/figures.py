"""The lecture's applications as figures of a trained model: one function per picture.

Each ``figure_*`` takes a trained model (a [`VAE`][pyro_vae.models.vae.VAE], an
[`Autoencoder`][pyro_vae.models.autoencoder.Autoencoder], or a module of another model kind with
``encode`` and ``decode``), the data it was trained on, and an output path (``.png`` or ``.pdf``),
and returns the path written (``None`` where the data are not images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pyro_vae.analysis import latent_space as ls
from pyro_vae.analysis import plots
from pyro_vae.data.batches import first_points
from pyro_vae.data.binarize import eval_data
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models.kinds import kind_of
from pyro_vae.runtime.devices import model_device

#: Test points shown in latent scatters (all of them for small test sets).
MAX_SCATTER_POINTS = 5000


def _model_name(model) -> str:
    """The model's kind as figure titles name it ("VAE", "autoencoder", "hierarchical VAE")."""
    try:
        return kind_of(model).label
    except ConfigError:  # a module of no registered kind
        return type(model).__name__


def _probabilistic(model) -> bool:
    """Whether the model's codes are posterior means (a model with p(x)) or a point code."""
    try:
        return kind_of(model).scores_likelihood
    except ConfigError:
        return hasattr(model, "guide")


def _inputs(model, x: torch.Tensor) -> torch.Tensor:
    """What the model is fed, on its device: the fixed binarization for Bernoulli-type
    likelihoods."""
    return eval_data(model, x).to(model_device(model))


def figure_samples(
    model, data: DataSplits, path: str | Path, source: str = "prior", n: int = 64, seed: int = 0
) -> Path | None:
    """Grid of E[x | z] with z from the prior or from a mixture fitted to the training codes."""
    if source == "prior" and not callable(getattr(model, "sample", None)):
        raise ConfigError(
            "an autoencoder has no prior to sample from; use the aggregate-posterior sampler "
            "(--source aggregate)"
        )
    train_x = None
    if source != "prior":
        train_x = _inputs(model, first_points(data.train, MAX_SCATTER_POINTS * 4))
    images = ls.sample_images(model, n, source, train_x=train_x, seed=seed)
    what = "the prior p(z)" if source == "prior" else "a mixture fitted\nto the training codes"
    return plots.plot_image_grid(
        images, path, f"{_model_name(model)} samples E[x | z],\nz from {what}"
    )


def figure_reconstructions(model, data: DataSplits, path: str | Path, n: int = 32) -> Path | None:
    """Test inputs beside their reconstructions."""
    x = data.test[:n]
    return plots.plot_reconstructions(x, model.reconstruct(_inputs(model, x)).cpu(), path)


def figure_latent(model, data: DataSplits, path: str | Path) -> Path:
    """Latent codes of the test data coloured by label (PCA when the latent space is not 2-D)."""
    x = data.test[:MAX_SCATTER_POINTS]
    codes = ls.latent_codes(model, _inputs(model, x))
    points, axis_labels = ls.project_2d(codes)
    labels = data.labels.get("test")
    labels = labels[:MAX_SCATTER_POINTS] if labels is not None else None
    what = "posterior means E[z | x]" if _probabilistic(model) else "codes z(x)"
    return plots.plot_latent_scatter(
        points,
        labels,
        path,
        axis_labels,
        title=f"{_model_name(model)} {what} of {len(x)} {data.name} test points",
        names=data.label_names,
    )


def figure_manifold(model, data: DataSplits, path: str | Path, n: int = 15) -> Path | None:
    """E[x | z] over a 2-D grid of prior quantiles (2-D latent spaces only)."""
    if not hasattr(model, "prior"):
        raise ConfigError("the prior-quantile manifold needs a VAE; use --kind compare for an AE")
    images, z1, z2 = ls.decode_manifold(model, n)
    return plots.plot_manifold(
        images,
        z1,
        z2,
        path,
        title=f"latent manifold ({data.name}): E[x | z], z on prior quantiles 5%..95%",
    )


def _pair(data: DataSplits) -> tuple[int, int]:
    """Two test indices, of different labels when labels are known."""
    y = data.labels.get("test")
    if y is not None:
        other = (y != y[0]).nonzero()
        if len(other):
            return 0, int(other[0])
    return 0, 1


def figure_interpolation(
    model, data: DataSplits, path: str | Path, steps: int = 10, pair: tuple[int, int] | None = None
) -> Path | None:
    """Linear and spherical interpolation between two test inputs' codes, as strips."""
    i, j = pair if pair is not None else _pair(data)
    n = data.test.shape[0]
    if not (0 <= i < n and 0 <= j < n):
        raise DataError(f"test indices {i}, {j} out of range; the test split has {n} points")
    x = _inputs(model, data.test[[i, j]])
    strips = {m: ls.interpolate(model, x[0], x[1], steps, m) for m in ls.INTERPOLATIONS}
    return plots.plot_interpolations(
        strips, path, title=f"{_model_name(model)} interpolation: test #{i} -> test #{j}"
    )


def figure_attribute(
    model,
    data: DataSplits,
    path: str | Path,
    positive: int,
    negative: int,
    strengths: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    n: int = 8,
) -> Path | None:
    """Inputs labelled ``negative`` moved along mean(z | positive) - mean(z | negative).

    The vector is estimated on the training data; the inputs are test points.
    """
    if "train" not in data.labels:
        raise DataError(f"{data.name!r} has no labels; attribute vectors need labelled data")
    y = data.labels["train"][: MAX_SCATTER_POINTS * 4]
    codes = ls.latent_codes(model, _inputs(model, first_points(data.train, len(y))))
    vector = ls.attribute_vector(codes, y, positive, negative)
    test_y = data.labels["test"]
    idx = (test_y == negative).nonzero().flatten()[:n]
    if len(idx) == 0:
        idx = torch.arange(min(n, data.test.shape[0]))
    moved = ls.apply_attribute(model, _inputs(model, data.test[idx]), vector, strengths)
    names = data.label_names or []
    pos, neg = (
        f"{label} ({names[label]})" if 0 <= label < len(names) else str(label)
        for label in (positive, negative)
    )
    return plots.plot_attribute(
        moved,
        strengths,
        path,
        title=f"z + s v, v = mean(z | {pos}) - mean(z | {neg}),\nfor test inputs labelled {neg}",
        inputs=data.test[idx],
    )


def comparison_panel(model, data: DataSplits, name: str, n: int = 12) -> dict:
    """One column of
    [`plots.plot_model_comparison`][pyro_vae.analysis.plots.plot_model_comparison] for ``model``."""
    x = data.test[:MAX_SCATTER_POINTS]
    codes = ls.latent_codes(model, _inputs(model, x))
    points, axis_labels = ls.project_2d(codes)
    images, u, v = ls.decode_plane(model, codes, n)
    labels = data.labels.get("test")
    return {
        "name": name,
        "points": points,
        "labels": labels[: len(x)] if labels is not None else None,
        "names": data.label_names,
        "axis_labels": axis_labels,
        "images": images,
        "u": u,
        "v": v,
    }


def figure_comparison(models: dict[str, object], data: DataSplits, path: str | Path) -> Path | None:
    """Latent scatter and a decoded grid over the codes' extent, one column per model."""
    panels = [comparison_panel(m, data, name) for name, m in models.items()]
    return plots.plot_model_comparison(
        panels, path, title=f"{' vs '.join(models)} on {data.name}: latent codes and decoded grid"
    )
