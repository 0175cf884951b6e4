"""Priors p(z): ``PyroModule``s whose ``forward()`` returns a distribution over ``z``.

Contract: ``forward()`` returns a ``pyro.distributions`` object with
``event_shape == (latent_dim,)`` and an exact, normalized ``log_prob``. A prior never
calls ``pyro.sample``; the VAE does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints
from torch.nn.functional import softplus

from pyro_vae.parts.options import PositiveFloat, PositiveInt, Sizes
from pyro_vae.parts.registry import PRIORS, register_prior


class Prior(PyroModule):
    """Base class: a distribution over ``z`` with ``event_shape == (latent_dim,)``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


@register_prior("normal")
class StandardNormal(Prior):
    """p(z) = N(z; 0, I), ``event_shape == (latent_dim,)``."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # Buffers follow the module across devices and into checkpoints.
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


@register_prior("learned_normal")
class LearnedNormal(Prior):
    """p(z) = N(z; m, diag(s^2)) with learned m and s = softplus(raw) + 1e-4.

    Starts at N(loc, diag(scale^2)) (default N(0, I)).
    """

    def __init__(
        self,
        latent_dim: int,
        loc: torch.Tensor | float = 0.0,
        scale: torch.Tensor | float = 1.0,
    ):
        super().__init__(latent_dim)
        loc_t = torch.as_tensor(loc, dtype=torch.get_default_dtype()).expand(self.latent_dim)
        scale_t = torch.as_tensor(scale, dtype=torch.get_default_dtype()).expand(self.latent_dim)
        if not bool((scale_t > 1e-4).all()):
            raise ValueError(f"LearnedNormal scale must exceed 1e-4, got {scale}")
        self.loc = nn.Parameter(loc_t.clone())
        self.raw_scale = nn.Parameter(torch.log(torch.expm1(scale_t - 1e-4)).clone())

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, softplus(self.raw_scale) + 1e-4).to_event(1)


@register_prior("mixture")
class GaussianMixture(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), weights, means and scales all learned.

    Means start spread as N(0, I) draws (seeded by the global RNG), scales at ``init_scale``.
    """

    def __init__(
        self, latent_dim: int, n_components: PositiveInt = 10, init_scale: PositiveFloat = 0.5
    ):
        super().__init__(latent_dim)
        if n_components < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}")
        self.n_components = int(n_components)
        self.logits = nn.Parameter(torch.zeros(self.n_components))
        self.locs = nn.Parameter(torch.randn(self.n_components, self.latent_dim))
        self.raw_scales = nn.Parameter(
            torch.full((self.n_components, self.latent_dim), _inv_softplus(init_scale))
        )

    def forward(self) -> dist.TorchDistribution:
        scales = softplus(self.raw_scales) + 1e-4
        components = dist.Normal(self.locs, scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class UniformMixture(TorchDistribution):
    """Equal-weight mixture of the K components of ``components`` (batch_shape (K,)).

    log p(z) = logsumexp_k log q_k(z) - log K, exact for any component family.
    z: (*sample, latent_dim) -> log_prob (*sample,).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, components: dist.TorchDistribution):
        if len(components.batch_shape) != 1:
            raise ValueError(
                f"components need batch_shape (K,), got {tuple(components.batch_shape)}"
            )
        self.components = components
        super().__init__(torch.Size(), components.event_shape, validate_args=False)

    @property
    def num_components(self) -> int:
        return self.components.batch_shape[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        # Expand (not broadcast) to K: conditional flows need z and their context aligned.
        zk = z.unsqueeze(-2).expand(*z.shape[:-1], self.num_components, z.shape[-1])
        lp = self.components.log_prob(zk)  # (*sample, K)
        return lp.logsumexp(-1) - math.log(self.num_components)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape)
            draws = self.components.sample(shape)  # (*shape, K, D)
            k = torch.randint(self.num_components, shape, device=draws.device)
            index = k[..., None, None].expand(*shape, 1, draws.shape[-1])
            return draws.gather(-2, index).squeeze(-2)


@register_prior("vamp")
class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the posterior family at K learned pseudo-inputs.

    Needs the VAE's encoder and posterior family; [`pyro_vae.VAE`][pyro_vae.models.vae.VAE] calls
    [`bind`][pyro_vae.parts.priors.VampPrior.bind] (or bind them yourself). They are held by
    reference, not as submodules, so their parameters appear once in the VAE. Pseudo-inputs
    ``u: (K, *event_shape)`` start as ``init_mean + init_std * N(0, 1)``. Tomczak & Welling (2018),
    "VAE with a VampPrior".
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        num_pseudo_inputs: PositiveInt = 50,
        init_mean: float = 0.5,
        init_std: PositiveFloat = 0.1,
    ):
        super().__init__(latent_dim)
        if num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be at least 1, got {num_pseudo_inputs}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.pseudo_inputs = nn.Parameter(
            init_mean + init_std * torch.randn(int(num_pseudo_inputs), *self.event_shape)
        )
        self._bound: tuple[Callable, Callable] | None = None

    def bind(self, encoder: Callable, posterior: Callable) -> VampPrior:
        """Use ``posterior(encoder(u))`` as the components. Returns self."""
        # A plain tuple attribute keeps them out of this module's submodules and state_dict.
        object.__setattr__(self, "_bound", (encoder, posterior))
        return self

    def forward(self) -> dist.TorchDistribution:
        if self._bound is None:
            raise RuntimeError(
                "VampPrior is not bound to an encoder; build the VAE with it or call "
                "prior.bind(encoder, posterior)"
            )
        encoder, posterior = self._bound
        return UniformMixture(posterior(encoder(self.pseudo_inputs)))


@register_prior("flow")
class FlowPrior(Prior):
    """p(z): N(0, I) pushed through learned invertible transforms (a normalizing flow).

    Layers are affine couplings (Dinh et al. 2017, RealNVP) with the coordinates reversed
    between layers; in one dimension, monotone rational-quadratic splines (Durkan et al. 2019).
    ``log_prob`` is exact: log N(f^-1(z)) + log|det d f^-1 / dz|. The transforms are
    submodules, so they are in ``parameters()`` and ``state_dict()``.
    """

    def __init__(
        self, latent_dim: int, flow_layers: PositiveInt = 2, hidden: Sizes = (64,)
    ):
        super().__init__(latent_dim)
        if flow_layers < 1:
            raise ValueError(f"flow_layers must be at least 1, got {flow_layers}")
        self.register_buffer("base_loc", torch.zeros(self.latent_dim))
        self.register_buffer("base_scale", torch.ones(self.latent_dim))
        d = self.latent_dim
        if d == 1:
            layers = [T.Spline(1, count_bins=8) for _ in range(flow_layers)]
        else:
            layers = [T.affine_coupling(d, hidden_dims=list(hidden)) for _ in range(flow_layers)]
        self.layers = nn.ModuleList(layers)
        self.register_buffer("reverse", torch.arange(d - 1, -1, -1))

    def transforms(self) -> list:
        """The chain base -> z: layer_1, reverse, layer_2, reverse, ..."""
        chain: list = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                chain.append(T.Permute(self.reverse))
            chain.append(layer)
        return chain

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self.base_loc, self.base_scale).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())

__all__ = [
    "PRIORS",
    "Prior",
    "StandardNormal",
    "LearnedNormal",
    "GaussianMixture",
    "UniformMixture",
    "VampPrior",
    "FlowPrior",
]
