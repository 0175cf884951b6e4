import pyro
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
