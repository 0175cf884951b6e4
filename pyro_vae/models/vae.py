"""The VAE: two Pyro programs, ``model(x)`` for p(z) p(x|z) and ``guide(x)`` for q(z|x)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.parts.likelihoods import Likelihood
from pyro_vae.parts.posteriors import Posterior
from pyro_vae.parts.priors import Prior


def local_params():
    """``pyro.settings.context(module_local_params=True)``: parameters live in the modules.

    Scoped to the VAE's construction and its programs instead of set globally at import, so
    ``import pyro_vae`` leaves ``pyro.settings`` and the global param store as they were.
    """
    return pyro.settings.context(module_local_params=True)


class VAE(PyroModule):
    """A variational autoencoder composed of swappable parts.

    ``model(x)``: z ~ p(z) (site ``"z"``), x ~ p(x | decoder(z)) (site ``"x"``), both inside
    ``pyro.plate("data", batch, dim=-1)``. ``guide(x)``: z ~ q(z | encoder(x)) in the same plate.
    Extra dimensions (vectorized particles, chains) go to the left of the data dimension.

    Args:
        encoder: ``x: (*batch, *event_shape) -> (*batch, posterior.num_params)``.
        decoder: ``z: (*batch, latent_dim) -> (*batch, likelihood.num_params * prod(event_shape))``.
        prior: returns p(z) with ``event_shape == (latent_dim,)``.
        likelihood: maps decoder parameters to an element-wise p(x | z).
        posterior: maps encoder outputs to q(z | x).
        event_shape: shape of one data point, e.g. ``(1, 28, 28)``; if omitted, taken from
            ``encoder.event_shape`` (the built-in networks have it).

    A prior with a ``bind(encoder, posterior)`` method (the VampPrior) is bound to this VAE's
    encoder and posterior family here.
    """

    #: its model kind's registered name ([`pyro_vae.models.kinds`][])
    kind = "vae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        posterior: Posterior,
        event_shape: Sequence[int] | None = None,
    ):
        with local_params():
            super().__init__()  # the shared module context holds a local parameter state
        if prior.latent_dim != posterior.latent_dim:
            raise ValueError(
                f"prior latent_dim {prior.latent_dim} differs from posterior latent_dim "
                f"{posterior.latent_dim}; build both with the same latent_dim"
            )
        if event_shape is None:
            event_shape = getattr(encoder, "event_shape", None)
            if event_shape is None:
                raise ValueError(
                    "pass event_shape (the shape of one data point): the encoder has none"
                )
        bind = getattr(prior, "bind", None)
        if callable(bind):
            bind(encoder, posterior)
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = posterior
        self.event_shape = tuple(int(s) for s in event_shape)

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x) for x: (*batch, *event_shape); batch shape ``batch``, event (latent_dim,)."""
        return self.posterior(self.encoder(x))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) for z: (*batch, latent_dim); batch shape ``batch``, event ``event_shape``."""
        batch = z.shape[:-1]
        k = self.likelihood.num_params
        params = self.decoder(z).reshape(*batch, k, *self.event_shape)
        params = params.movedim(len(batch), -1)
        return self.likelihood(params).to_event(len(self.event_shape))

    @local_params()
    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for x: (batch, *event_shape)."""
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decode(z), obs=x)

    @local_params()
    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) for x: (batch, *event_shape)."""
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            pyro.sample("z", self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """Draw ``n`` data points from p(z) p(x | z): (n, *event_shape).

        With ``mean=True`` return E[x | z] (the usual picture for Bernoulli pixels).
        """
        z = self.prior().sample((n,))
        px = self.decode(z)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Encode then decode: x: (batch, *event_shape) -> (batch, *event_shape).

        Uses the posterior mean of z when ``mean`` (deterministic), else one draw from q(z|x).
        """
        qz = self.encode(x)
        z = qz.mean if mean else qz.sample()
        return self.decode(z).mean

    def num_data_elements(self) -> int:
        return math.prod(self.event_shape)
