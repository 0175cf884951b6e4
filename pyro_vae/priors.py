"""Priors p(z): ``PyroModule``s whose ``forward()`` returns a distribution over ``z``.

Contract: ``forward()`` returns a ``pyro.distributions`` object with
``event_shape == (latent_dim,)`` and an exact, normalized ``log_prob``. A prior never
calls ``pyro.sample``; the VAE does.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule


class Prior(PyroModule):
    """Base class: a distribution over ``z`` with ``event_shape == (latent_dim,)``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class StandardNormal(Prior):
    """p(z) = N(z; 0, I), ``event_shape == (latent_dim,)``."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # Buffers follow the module across devices and into checkpoints.
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


PRIORS: dict[str, type[Prior]] = {"normal": StandardNormal}
