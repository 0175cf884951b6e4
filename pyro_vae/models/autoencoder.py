"""A deterministic autoencoder baseline built from the same networks and likelihood as a VAE.

z = encoder(x) (a point, not a distribution) and the loss is the reconstruction negative
log-likelihood -log p(x | decoder(z)) under the VAE's likelihood: the ELBO without the
sampling of z and without the KL term. Nothing pulls the codes towards a prior, so the code
space has gaps between clusters and off them decodes poorly (the lecture's "limitations").
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models.config import ModelConfig, build_vae


class Autoencoder(nn.Module):
    """Encoder -> code z (latent_dim) -> decoder -> likelihood parameters.

    Same interface as the VAE where it makes sense: ``encode(x)`` returns a point mass
    ``Delta(z)`` (so ``.mean`` is the code), ``decode(z)`` returns p(x | z),
    ``reconstruct(x)`` returns E[x | z(x)]. The code is the encoder's first ``latent_dim``
    outputs: the location that every built-in posterior family reads first, so the
    autoencoder is the VAE with q(z|x) collapsed to its location and no prior.
    """

    kind = "ae"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood, event_shape, latent_dim):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = int(latent_dim)

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """x: (*batch, *event_shape) -> Delta(z) with event_shape (latent_dim,)."""
        return dist.Delta(self.code(x), event_dim=1)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """x: (*batch, *event_shape) -> z: (*batch, latent_dim)."""
        return self.encoder(x)[..., : self.latent_dim]

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """z: (*batch, latent_dim) -> p(x | z) with event_shape ``event_shape``."""
        batch = z.shape[:-1]
        params = self.decoder(z).reshape(*batch, self.likelihood.num_params, *self.event_shape)
        return self.likelihood(params.movedim(len(batch), -1)).to_event(len(self.event_shape))

    def reconstruction_nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | decoder(encoder(x))) per data point: x: (batch, *event_shape) -> (batch,)."""
        return -self.decode(self.code(x)).log_prob(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, *event_shape) -> E[x | z(x)]: (batch, *event_shape)."""
        return self.decode(self.code(x)).mean


def build_autoencoder(config: ModelConfig) -> Autoencoder:
    """The networks and likelihood [`build_vae`][pyro_vae.models.config.build_vae] builds for
    ``config`` (any ``arch``), without the prior and the posterior family: the code is the
    encoder's location output."""
    vae = build_vae(config)
    return Autoencoder(vae.encoder, vae.decoder, vae.likelihood, vae.event_shape, vae.latent_dim)


@torch.no_grad()
def mean_reconstruction_nll(ae: Autoencoder, x: torch.Tensor, batch_size: int = 2048):
    """Mean and standard error of the reconstruction NLL (nats per data point) over x."""
    nll = torch.cat(
        [ae.reconstruction_nll(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
