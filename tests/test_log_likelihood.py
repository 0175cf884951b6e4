"""Known answers for the importance-sampled log-likelihood (linear-Gaussian model)."""

import math

import pyro
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyro_vae.infer import LogLikelihood, log_likelihood


@pytest.fixture
def lg():
    return LinearGaussian(latent_dim=2, data_dim=5, scale=0.5)


@pytest.mark.parametrize("k", [1, 100])
def test_exact_posterior_gives_exact_log_px(lg, k):
    x = lg.sample_data(40)
    result = log_likelihood(lg.model, lg.exact_guide, x, num_samples=k)
    exact = lg.exact_log_px(x)
    assert result.per_example.shape == (40,)
    assert torch.allclose(result.per_example, exact, atol=1e-4, rtol=0)
    # Exact posterior: every weight equals p(x), so the ESS is K.
    assert torch.allclose(result.ess, torch.full_like(result.ess, float(k)), rtol=1e-6)


def test_chunked_particles_and_batches_agree_with_exact(lg):
    x = lg.sample_data(23)
    result = log_likelihood(
        lg.model, lg.exact_guide, x, num_samples=50, batch_size=7, particle_chunk=9
    )
    assert result.per_example.shape == (23,)
    assert torch.allclose(result.per_example, lg.exact_log_px(x), atol=1e-4, rtol=0)


def test_wrong_guide_is_a_lower_bound_that_closes_with_k(lg):
    x = lg.sample_data(200)
    exact = lg.exact_log_px(x)
    pyro.set_rng_seed(3)
    r1 = log_likelihood(lg.model, lg.wrong_guide, x, num_samples=1)
    r1000 = log_likelihood(lg.model, lg.wrong_guide, x, num_samples=1000)
    gap1 = exact - r1.per_example
    gap1000 = exact - r1000.per_example
    se1 = float(gap1.std() / math.sqrt(len(gap1)))
    se1000 = float(gap1000.std() / math.sqrt(len(gap1000)))
    # Below the exact value on average, by many standard errors at K = 1 ...
    assert float(gap1.mean()) > 5 * se1
    # ... never above it beyond noise at K = 1000 ...
    assert float(gap1000.mean()) > -3 * se1000
    # ... and most of the gap is closed.
    assert float(gap1000.mean()) < 0.1 * float(gap1.mean())


def test_k1_estimate_is_unbiased_for_the_elbo(lg):
    """log w with one sample is an unbiased ELBO estimate; compare to the closed form."""
    x = lg.sample_data(1).expand(4000, -1)
    result = log_likelihood(lg.model, lg.wrong_guide, x, num_samples=1)
    expected = float(lg.wrong_guide_elbo(x[:1]))
    se = result.stderr
    assert abs(result.mean - expected) < 4 * se
    # The K-sample ELBO average agrees with the closed form too.
    r = log_likelihood(lg.model, lg.wrong_guide, x[:200], num_samples=200)
    assert abs(r.elbo - expected) < 4 * r.elbo_stderr


def test_result_summaries(lg):
    x = lg.sample_data(10)
    r = log_likelihood(lg.model, lg.wrong_guide, x, num_samples=20, keep_log_weights=True)
    assert r.log_weights.shape == (20, 10)
    lse = torch.logsumexp(r.log_weights, 0) - math.log(20)
    assert torch.allclose(r.per_example, lse)
    assert torch.allclose(r.elbo_per_example, r.log_weights.mean(0))
    assert ((r.ess >= 1 - 1e-6) & (r.ess <= 20 + 1e-6)).all()
    assert r.stderr == pytest.approx(float(r.per_example.std() / math.sqrt(10)))
    assert "K=20" in str(r)


def test_bad_arguments(lg):
    x = lg.sample_data(3)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(lg.model, lg.exact_guide, x, num_samples=0)
    with pytest.raises(ValueError, match="no data points"):
        log_likelihood(lg.model, lg.exact_guide, x[:0], num_samples=3)


def test_log_likelihood_prints_one_line_and_names_unscaled_sites_only_when_there_are_some():
    """The printed summary of results built by hand, whole: log p(x) [1, 3] has mean 2 and
    standard error 1, the ELBO [-1, 1] mean 0 and standard error 1; the note on sites scored
    without their scale appears only when there are such sites."""
    plain = LogLikelihood(
        per_example=torch.tensor([1.0, 3.0]),
        elbo_per_example=torch.tensor([-1.0, 1.0]),
        ess=torch.tensor([2.0, 2.0]),
        num_samples=2,
    )
    line = "log p(x) ~ 2.000 +- 1.000 nats (IS, K=2); ELBO 0.000 +- 1.000"
    assert str(plain) == line
    scaled = LogLikelihood(
        per_example=plain.per_example,
        elbo_per_example=plain.elbo_per_example,
        ess=plain.ess,
        num_samples=2,
        unscaled=("z", "x"),
    )
    assert str(scaled) == line + "; sites ['z', 'x'] scored without their scale"
