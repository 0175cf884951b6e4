import pyro
import pytest
import torch
from ppca_encoder import LinearGaussian

from pyro_vae.infer import khat_summary, log_likelihood, posterior_inference_data, psis_khat


def _khat(lg, x, scale):
    pyro.set_rng_seed(0)
    ll = log_likelihood(lg.model, lg.exact_guide(scale), x, 1000, keep_log_weights=True)
    return psis_khat(ll.log_weights)


def test_khat_small_with_exact_posterior_large_with_narrow_guide():
    lg = LinearGaussian()
    x = lg.sample_x(20)
    assert (_khat(lg, x, 1.0) < 0.5).all()
    assert (_khat(lg, x, 1.5) < 0.5).all()  # wider than the posterior: bounded weights
    narrow = _khat(lg, x, 0.3)
    assert narrow.mean() > 0.7
    assert khat_summary(narrow)["frac_over_0.7"] >= 0.5


def test_posterior_inference_data_summarizes_with_arviz():
    import arviz as az

    lg = LinearGaussian()
    x = lg.sample_x(1)
    idata = posterior_inference_data(lg.model, lg.exact_guide(2.0), x, num_samples=4000, seed=0)
    summary = az.summary(idata, kind="stats")
    assert summary.shape[0] == lg.L
    loc, cov = lg.posterior(x)
    # importance-resampled draws from a too-wide q recover the exact posterior mean
    mean = torch.as_tensor(idata.posterior["z"].values.reshape(-1, lg.L).mean(0))
    se = cov.diagonal().sqrt() / 4000**0.5
    assert ((mean - loc[0]).abs() < 6 * se + 0.05).all()
    assert idata.variational["z"].shape == (1, 4000, lg.L)
    assert az.summary(idata, group="variational", kind="stats").shape[0] == lg.L


def test_khat_is_shift_invariant_and_finds_the_pareto_tail():
    """Pareto(alpha=2) weights have tail index 1/alpha = 0.5; adding a constant changes nothing."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, 3, generator=g, dtype=torch.float64)
    lw = -0.5 * torch.log(u)  # w = u^(-1/2) ~ Pareto(alpha=2) on [1, inf)
    k = psis_khat(lw)
    assert ((k - 0.5).abs() < 0.1).all()
    assert torch.allclose(psis_khat(lw + 123.0), k, atol=1e-6)


def test_sir_with_an_offset_proposal_recovers_the_exact_posterior_mean():
    lg = LinearGaussian()
    x = lg.sample_x(1)
    loc, cov = lg.posterior(x)
    sd = cov.diagonal().sqrt()
    guide = lg.exact_guide(1.5, shift=0.5)
    idata = posterior_inference_data(lg.model, guide, x, num_samples=8000, seed=0)
    q_mean = torch.as_tensor(idata.variational["z"].values.reshape(-1, lg.L).mean(0))
    sir_mean = torch.as_tensor(idata.posterior["z"].values.reshape(-1, lg.L).mean(0))
    assert ((q_mean - loc[0]).abs() > 0.3 * sd).any()  # the proposal is off
    assert ((sir_mean - loc[0]).abs() < 0.15 * sd + 0.02).all()


def test_khat_summary_counts_strictly_over_the_thresholds():
    khat = torch.tensor([0.2, 0.5, 0.6, 0.7, 0.9, -float("inf")], dtype=torch.float64)
    want = {"frac_over_0.5": 3 / 6, "frac_over_0.7": 1 / 6, "max": 0.9}
    assert khat_summary(khat) == pytest.approx(want, rel=1e-6)


def test_khat_of_small_but_nonzero_spread_is_finite_and_keeps_the_dtype():
    """Only (numerically) equal weights get k = -inf; a spread of 0.1 nats has a tail to fit."""
    g = torch.Generator().manual_seed(0)
    lw = 0.02 * torch.randn(2000, 3, generator=g)  # spread about 0.15 nats, float32
    k = psis_khat(lw)
    assert k.dtype == torch.float32
    assert torch.isfinite(k).all() and (k < 0.5).all()
    flat = torch.zeros(50, 2)
    flat[0, 1] = 5e-5  # within 1e-4 of equal: no tail
    assert torch.isinf(psis_khat(flat)).all()
