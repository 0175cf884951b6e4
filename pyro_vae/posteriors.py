"""Posterior families q(z | encoder output).

Contract: a family declares ``num_params`` (encoder outputs it needs) and ``forward(params)``
maps ``params: (*batch, num_params)`` to a distribution with ``batch_shape == batch`` and
``event_shape == (latent_dim,)``. It never calls ``pyro.sample``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch.nn.functional import softplus


class Posterior(PyroModule):
    """Base class of amortized posterior families over ``z`` in R^latent_dim."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)

    @property
    def num_params(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError


class DiagonalNormal(Posterior):
    """q(z | x) = N(z; mu(x), diag(sigma(x)^2)), sigma = softplus(raw) + 1e-6.

    params: (*batch, 2 * latent_dim), the first half the mean, the second the raw scale.
    """

    @property
    def num_params(self) -> int:
        return 2 * self.latent_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = params.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, softplus(raw) + 1e-6).to_event(1)


POSTERIORS: dict[str, type[Posterior]] = {"diagonal": DiagonalNormal}
