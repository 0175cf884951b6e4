"""Priors: exact normalization by quadrature, VampPrior against a direct logsumexp, flows."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch import nn

from pyro_vae.parts import (
    PRIORS,
    DiagonalNormal,
    FlowPrior,
    GaussianMixture,
    LearnedNormal,
    StandardNormal,
    VampPrior,
)


def _perturb(module: nn.Module, scale: float = 0.5) -> None:
    """Move parameters away from their (often identity-like) initial values."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _small_vamp(latent_dim: int, k: int = 4) -> VampPrior:
    event_shape = (3,)
    posterior = DiagonalNormal(latent_dim)
    encoder = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, posterior.num_params))
    prior = VampPrior(latent_dim, event_shape, num_pseudo_inputs=k, init_std=1.0)
    prior.bind(encoder, posterior)
    prior._test_modules = (encoder, posterior)  # keep them alive for the test
    return prior


def _make(name: str, latent_dim: int):
    pyro.set_rng_seed(1)
    if name == "normal":
        return StandardNormal(latent_dim)
    if name == "learned_normal":
        return LearnedNormal(latent_dim, loc=0.3, scale=torch.linspace(0.5, 1.5, latent_dim))
    if name == "mixture":
        prior = GaussianMixture(latent_dim, n_components=3)
        _perturb(prior, 0.3)
        return prior
    if name == "vamp":
        return _small_vamp(latent_dim)
    if name == "flow":
        prior = FlowPrior(latent_dim, flow_layers=2, hidden=(8,))
        _perturb(prior, 0.3)
        return prior
    raise AssertionError(name)


def _integral(log_prob, latent_dim: int, half_width: float = 9.0) -> float:
    """Trapezoid rule of exp(log_prob) over [-half_width, half_width]^latent_dim."""
    # Splines have kinks in their density's derivative: a fine grid in 1-D (cheap).
    n = 20001 if latent_dim == 1 else 401
    grid = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    if latent_dim == 1:
        z = grid[:, None]
        return float(torch.trapezoid(log_prob(z).exp(), grid))
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)  # (n, n, 2)
    dens = log_prob(zz.reshape(-1, 2)).exp().reshape(n, n)
    return float(torch.trapezoid(torch.trapezoid(dens, grid, dim=-1), grid))


@pytest.mark.parametrize("latent_dim", [1, 2])
@pytest.mark.parametrize("name", sorted(PRIORS))
def test_prior_density_integrates_to_one(name, latent_dim):
    prior = _make(name, latent_dim).double()
    for module in getattr(prior, "_test_modules", ()):  # the VampPrior's bound encoder
        module.double()
    with torch.no_grad():
        p = prior()
        assert p.event_shape == (latent_dim,)
        total = _integral(p.log_prob, latent_dim)
    # Trapezoid error on these grids for these smooth densities is below 1e-4; tails beyond
    # |z| = 9 are negligible at these scales. A missing log-det or log K would be off by O(1).
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_prior_samples_and_log_prob_shapes(name):
    prior = _make(name, 3)
    p = prior()
    z = p.sample((5, 4))
    assert z.shape == (5, 4, 3)
    lp = p.log_prob(z)
    assert lp.shape == (5, 4) and torch.isfinite(lp).all()


def test_prior_sample_moments_match_density():
    """Mixture sampling draws from the same distribution log_prob describes (mean check)."""
    prior = _make("mixture", 2)
    p = prior()
    z = p.sample((20000,))
    # Mean of the mixture: sum_k pi_k m_k.
    w = prior.logits.softmax(-1)
    expected = (w[:, None] * prior.locs).sum(0)
    se = z.std(0) / math.sqrt(z.shape[0])
    assert ((z.mean(0) - expected).abs() < 5 * se).all()


def test_vamp_prior_log_prob_is_logsumexp_over_components():
    prior = _small_vamp(latent_dim=3, k=5)
    encoder, posterior = prior._test_modules
    z = torch.randn(7, 2, 3)
    got = prior().log_prob(z)
    params = encoder(prior.pseudo_inputs)
    loc, raw = params.split(3, dim=-1)
    scale = torch.nn.functional.softplus(raw) + 1e-6
    comp = torch.distributions.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1)  # (7,2,5)
    direct = torch.logsumexp(comp, -1) - math.log(5)
    assert torch.allclose(got, direct, atol=1e-5)


def test_vamp_prior_is_bound_by_vae_and_pseudo_inputs_train():
    from pyro_vae.models import ModelConfig, build_vae

    vae = build_vae(
        ModelConfig(
            event_shape=(4,),
            latent_dim=2,
            prior="vamp",
            hidden=(8,),
            likelihood="normal",
            prior_options={"num_pseudo_inputs": 3},
        )
    )
    names = [n for n, _ in vae.named_parameters()]
    assert "prior.pseudo_inputs" in names
    # Encoder parameters are held once, by the VAE, not duplicated under the prior.
    assert not any(n.startswith("prior.") and "encoder" in n for n in vae.state_dict())
    loss = pyro.infer.Trace_ELBO()(vae.model, vae.guide)(torch.randn(6, 4))
    loss.backward()
    assert vae.prior.pseudo_inputs.grad is not None
    assert vae.prior.pseudo_inputs.grad.abs().sum() > 0


def test_unbound_vamp_prior_says_how_to_fix():
    with pytest.raises(RuntimeError, match="bind"):
        VampPrior(2, (3,))()


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_flow_prior_log_det_matches_autograd_jacobian(latent_dim):
    torch.manual_seed(0)
    prior = FlowPrior(latent_dim, flow_layers=2, hidden=(8,)).double()
    _perturb(prior, 0.3)
    transforms = prior.transforms()

    def forward(x):
        for t in transforms:
            x = t(x)
        return x

    x = torch.randn(latent_dim, dtype=torch.float64)
    y = forward(x)
    jac = torch.autograd.functional.jacobian(forward, x)
    logdet_autograd = torch.linalg.slogdet(jac).logabsdet
    # The distribution's log_prob must equal base log-density minus the forward log-det.
    base = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum()
    y_fresh = y.detach().clone()  # no cache: forces the inverse
    assert float(prior().log_prob(y_fresh).detach()) == pytest.approx(
        float(base - logdet_autograd), abs=1e-6
    )


def test_flow_prior_parameters_are_in_state_dict():
    prior = FlowPrior(3, flow_layers=2)
    n_params = sum(p.numel() for p in prior.parameters())
    assert n_params > 0
    keys = [k for k in prior.state_dict() if k.startswith("layers.")]
    assert keys
    clone = FlowPrior(3, flow_layers=2)
    clone.load_state_dict(prior.state_dict())
    z = torch.randn(4, 3)
    assert torch.allclose(clone().log_prob(z), prior().log_prob(z))


def test_learned_normal_starts_at_given_mean_and_scale():
    prior = LearnedNormal(2, loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([0.5, 2.0]))
    p = prior()
    assert torch.allclose(p.mean, torch.tensor([1.0, -1.0]))
    assert torch.allclose(p.stddev, torch.tensor([0.5, 2.0]), atol=1e-5)
    assert len(list(prior.parameters())) == 2
