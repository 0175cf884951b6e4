import pyro

from pyro_vae.gaps import inference_gaps
from tests.linear_gaussian import LinearGaussian


def test_local_elbo_reaches_log_px_and_untrained_encoder_has_amortization_gap():
    # orthogonal W: the exact posterior is a diagonal normal, inside the guide's family
    lg = LinearGaussian(orthogonal=True)
    x = lg.sample_x(8)
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        lg.model, lg.guide, x, lg.family, lg.enc,
        num_samples=500, num_steps=400, num_particles=8, lr=0.05,
    )  # fmt: skip
    exact = lg.log_px(x)
    # the optimum of the family is the exact posterior: local ELBO = log p(x), no gap
    assert (gaps.elbo_local - exact).abs().max() < 0.03
    assert (gaps.log_px - exact).abs().max() < 0.03
    assert gaps.approximation_gap.abs().max() < 0.03
    # the untrained linear encoder is far from the posterior
    assert gaps.amortization_gap.min() > 0.1
    assert gaps.amortization_gap.mean() > 2.0
    s = gaps.summary()
    assert set(s) >= {"approximation gap", "amortization gap", "log p(x)"}
