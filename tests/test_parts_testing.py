"""The contract checks of pyro_vae.parts.testing, run on every registered part and on a new one."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.parts import LIKELIHOODS, POSTERIORS, PRIORS, Prior
from pyro_vae.parts.testing import (
    LikelihoodContract,
    PosteriorContract,
    PriorContract,
    integrate_density,
)

SMALL = {
    "mixture": {"n_components": 3},
    "vamp": {"num_pseudo_inputs": 4},
    "flow": {"hidden": (8,)},
    "iaf": {"hidden": (8,), "context_dim": 3},
}


class _LibraryPrior(PriorContract):
    name = "normal"
    latent_dim = 2

    def make_prior(self):
        # Built as a VAE builds it: a VampPrior is bound to the VAE's encoder and family.
        self.vae = build_vae(
            ModelConfig(
                event_shape=(3,),
                latent_dim=self.latent_dim,
                hidden=(4,),
                prior=self.name,
                prior_options=SMALL.get(self.name, {}),
            )
        )
        return self.vae.prior

    def move(self, prior, dtype):
        return self.vae.to(dtype).prior


class _LibraryPosterior(PosteriorContract):
    name = "diagonal"

    def make_posterior(self):
        return POSTERIORS.build(self.name, SMALL.get(self.name, {}), latent_dim=2)


class _LibraryLikelihood(LikelihoodContract):
    name = "bernoulli"

    def make_likelihood(self):
        return LIKELIHOODS.build(self.name)


for _name in PRIORS:
    globals()[f"TestPrior_{_name}"] = type(f"TestPrior_{_name}", (_LibraryPrior,), {"name": _name})
for _name in POSTERIORS:
    globals()[f"TestPosterior_{_name}"] = type(
        f"TestPosterior_{_name}", (_LibraryPosterior,), {"name": _name}
    )
for _name in LIKELIHOODS:
    globals()[f"TestLikelihood_{_name}"] = type(
        f"TestLikelihood_{_name}", (_LibraryLikelihood,), {"name": _name}
    )


class _ScaledNormal(Prior):
    """A user's prior: N(0, s^2 I) with s learned."""

    def __init__(self, latent_dim: int, scale: float = 2.0):
        super().__init__(latent_dim)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())
        self.register_buffer("zero", torch.zeros(latent_dim))

    def forward(self):
        return dist.Normal(self.zero, self.log_scale.exp().expand(self.latent_dim)).to_event(1)


class TestUserPrior(PriorContract):
    def make_prior(self):
        return _ScaledNormal(2)


class _Unnormalized(_ScaledNormal):
    def forward(self):
        return _Shifted(super().forward())


class _Shifted(dist.TorchDistribution):
    """log_prob off by log 2: integrates to 2, which the contract must catch."""

    arg_constraints: dict = {}

    def __init__(self, base):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def sample(self, sample_shape=()):
        return self.base.sample(sample_shape)

    def log_prob(self, z):
        return self.base.log_prob(z) + 0.6931


class _PlainTensor(_ScaledNormal):
    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.plain = torch.zeros(latent_dim)  # not a buffer: stays float32 under .double()

    def forward(self):
        return dist.Normal(self.plain, self.log_scale.exp().expand(self.latent_dim)).to_event(1)


def test_the_contract_catches_an_unnormalized_prior():
    class Check(PriorContract):
        def make_prior(self):
            return _Unnormalized(1)

    with pytest.raises(AssertionError, match="integrates to 2"):
        Check().test_log_prob_is_normalized()


def test_the_contract_catches_a_tensor_that_does_not_move():
    class Check(PriorContract):
        def make_prior(self):
            return _PlainTensor(2)

    with pytest.raises((AssertionError, RuntimeError)):
        Check().test_tensors_move_with_to()


def test_quadrature_of_a_known_density():
    d = dist.Normal(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.5])).expand([2])
    z = d.sample((1000,)).unsqueeze(-1)
    totals = integrate_density(lambda v: d.log_prob(v[..., 0]), z)
    assert torch.allclose(totals, torch.ones(2), atol=1e-3)
