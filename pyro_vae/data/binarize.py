"""Binarization of [0, 1] data for Bernoulli-type likelihoods: a fresh draw per batch, or one
fixed draw."""

from __future__ import annotations

import torch

from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import DataError

#: The seed of the fixed evaluation binarization.
BINARIZE_SEED = 1234


def dynamic_binarize(x: torch.Tensor) -> torch.Tensor:
    """A fresh Bernoulli draw per element: x in [0, 1] -> {0, 1}. Call once per batch."""
    return torch.bernoulli(x)


def static_binarize(x: torch.Tensor, seed: int = BINARIZE_SEED) -> torch.Tensor:
    """One fixed, seeded Bernoulli draw per element, the same on every call."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=gen).to(x.device)


BINARIZE_MODES = ("dynamic", "static", "none")


def binarize_splits(data: DataSplits, mode: str, seed: int = BINARIZE_SEED) -> DataSplits:
    """Apply a binarization choice to every split of data in [0, 1].

    ``dynamic``: unchanged here; Bernoulli-type likelihoods draw a fresh binarization of each
    training batch (and score one fixed draw). ``static``: one seeded draw per split, kept for
    the whole run. ``none``: unchanged (gray values, for likelihoods of continuous data).
    """
    if mode not in BINARIZE_MODES:
        raise DataError(f"unknown binarization {mode!r}; choose one of {list(BINARIZE_MODES)}")
    if mode != "static":
        return data
    for split in ("train", "valid", "test"):
        x = getattr(data, split)
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise DataError(
                f"static binarization needs data in [0, 1], the {split} split has range "
                f"[{float(x.min()):g}, {float(x.max()):g}]; rescale or use --binarize none"
            )
    return DataSplits(
        data.name,
        static_binarize(data.train, seed),
        static_binarize(data.valid, seed + 1),
        static_binarize(data.test, seed + 2),
        labels=dict(data.labels),
        label_names=data.label_names,
    )


def eval_data(model, x: torch.Tensor) -> torch.Tensor:
    """The tensor a model is scored on: one fixed binarization for Bernoulli-type likelihoods.

    ``model`` is anything with a ``likelihood`` whose ``binarize`` flag says whether it
    binarizes [0, 1] data (a VAE, the autoencoder baseline). x: (N, *event_shape).
    """
    return static_binarize(x) if model.likelihood.binarize else x
