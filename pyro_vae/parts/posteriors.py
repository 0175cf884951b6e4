"""Posterior families q(z | encoder output).

Contract: a family declares ``num_params`` (encoder outputs it needs) and ``forward(params)``
maps ``params: (*batch, num_params)`` to a distribution with ``batch_shape == batch`` and
``event_shape == (latent_dim,)``. It never calls ``pyro.sample``.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.errors import ConfigError
from pyro_vae.parts.options import NonNegativeInt, PositiveInt, Sizes
from pyro_vae.parts.registry import POSTERIORS, register_posterior


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


@register_posterior("diagonal")
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


@register_posterior("full_rank")
class FullRankNormal(Posterior):
    """q(z | x) = N(z; mu(x), L(x) L(x)^T), L lower-triangular with positive diagonal.

    params: (*batch, D + D (D + 1) / 2): the mean, then the lower triangle of L row by row;
    diag(L) = softplus(raw) + 1e-5.
    """

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    @property
    def num_params(self) -> int:
        d = self.latent_dim
        return d + d * (d + 1) // 2

    def scale_tril(self, raw: torch.Tensor) -> torch.Tensor:
        """raw: (*batch, D (D + 1) / 2) -> L: (*batch, D, D)."""
        d = self.latent_dim
        tril = raw.new_zeros(*raw.shape[:-1], d, d)
        tril[..., self.rows, self.cols] = raw
        diag = tril.diagonal(dim1=-2, dim2=-1)
        return tril - torch.diag_embed(diag) + torch.diag_embed(softplus(diag) + 1e-5)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = params.split([self.latent_dim, self.num_params - self.latent_dim], dim=-1)
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril(raw))


@register_posterior("low_rank")
class LowRankNormal(Posterior):
    """q(z | x) = N(z; mu(x), W(x) W(x)^T + diag(d(x))), W: (D, rank), d = softplus + 1e-5.

    ``rank`` defaults to min(2, D).

    params: (*batch, D + D * rank + D): mean, W row-major, raw diagonal.
    """

    def __init__(self, latent_dim: int, rank: PositiveInt | None = None):
        super().__init__(latent_dim)
        rank = min(2, self.latent_dim) if rank is None else rank
        if not 1 <= rank <= self.latent_dim:
            raise ValueError(f"rank must be between 1 and latent_dim {latent_dim}, got {rank}")
        self.rank = int(rank)

    @classmethod
    def check_options(cls, options: dict, latent_dim: int) -> None:
        """Refuse a rank above ``latent_dim`` (W W^T has rank at most latent_dim)."""
        rank = options["rank"]
        if rank is not None and rank > latent_dim:
            raise ConfigError(
                f"posterior 'low_rank' option rank {rank} exceeds latent_dim {latent_dim}; "
                f"use rank <= {latent_dim} (or posterior 'full_rank')"
            )

    @property
    def num_params(self) -> int:
        return self.latent_dim * (2 + self.rank)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        d, r = self.latent_dim, self.rank
        loc, w, raw = params.split([d, d * r, d], dim=-1)
        factor = w.reshape(*w.shape[:-1], d, r)
        return dist.LowRankMultivariateNormal(loc, factor, softplus(raw) + 1e-5)


class FlowPosteriorDistribution(dist.TransformedDistribution):
    """A base normal pushed through flow transforms; ``mean`` is a point code, see below."""

    @property
    def mean(self) -> torch.Tensor:
        """The flow applied to the base mean: a deterministic point code (not E[z]).

        E[z] has no closed form under a flow; reconstructions and latent plots need a point.
        """
        z = self.base_dist.mean
        for t in self.transforms:
            z = t(z)
        return z


@register_posterior("iaf")
class IAF(Posterior):
    """Amortized inverse autoregressive flow on top of a diagonal normal.

    params: (*batch, 2 D + context_dim) = (mu, raw sigma, h). z_0 ~ N(mu, diag(sigma^2)),
    then ``steps`` affine autoregressive steps z_t = m_t(z_{t-1}, h) + s_t(z_{t-1}, h) z_{t-1}
    (MADE networks conditioned on the encoder's context h, numerically stable gating),
    coordinates reversed between steps. log q(z) = log N(z_0) - sum_t sum_i log s_t,i exactly;
    sampling is reparameterized. Kingma et al. (2016), "Improved variational inference with
    inverse autoregressive flow". The context broadcasts against particle dims on the left.
    """

    def __init__(
        self,
        latent_dim: int,
        steps: PositiveInt = 2,
        context_dim: NonNegativeInt = 16,
        hidden: Sizes = (64,),
    ):
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ValueError("IAF needs latent_dim >= 2; use the diagonal posterior in 1-D")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.context_dim = int(context_dim)
        self.steps = nn.ModuleList(
            T.conditional_affine_autoregressive(
                self.latent_dim, self.context_dim, hidden_dims=list(hidden), stable=True
            )
            for _ in range(int(steps))
        )
        self.register_buffer("reverse", torch.arange(self.latent_dim - 1, -1, -1))

    @classmethod
    def check_options(cls, options: dict, latent_dim: int) -> None:
        """Refuse a one-dimensional latent: an autoregressive flow needs two coordinates."""
        if latent_dim < 2:
            raise ConfigError("posterior 'iaf' needs latent_dim >= 2; use --posterior diagonal")

    @property
    def num_params(self) -> int:
        return 2 * self.latent_dim + self.context_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        d = self.latent_dim
        loc, raw, h = params.split([d, d, self.context_dim], dim=-1)
        base = dist.Normal(loc, softplus(raw) + 1e-6).to_event(1)
        chain: list = []
        for i, step in enumerate(self.steps):
            if i > 0:
                chain.append(T.Permute(self.reverse))
            chain.append(step.condition(h))
        return FlowPosteriorDistribution(base, chain)

__all__ = [
    "POSTERIORS",
    "Posterior",
    "DiagonalNormal",
    "FullRankNormal",
    "LowRankNormal",
    "FlowPosteriorDistribution",
    "IAF",
]
