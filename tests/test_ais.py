import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from assumption_programs import (
    X,
    mixture_guide,
    mixture_model,
    plain_guide,
    plain_model,
    two_plate_guide,
    two_plate_model,
)
from ppca_encoder import LinearGaussian
from pyro import poutine
from pyro.infer import config_enumerate
from refusals import whole

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer import ais_log_likelihood, sigmoid_schedule


def test_ais_converges_to_exact_log_likelihood_from_a_poor_start():
    lg = LinearGaussian()
    x = lg.sample_x(10)
    exact = float(lg.log_px(x).mean())
    # a proposal 3x too wide and shifted by one unit: plain IS with few samples is far off
    poor = lg.exact_guide(scale=3.0, shift=1.0)
    pyro.set_rng_seed(0)
    short = ais_log_likelihood(lg.model, poor, x, num_steps=2, num_chains=16)
    pyro.set_rng_seed(0)
    long = ais_log_likelihood(lg.model, poor, x, num_steps=200, num_chains=16)
    assert short.mean < exact - 4 * short.mc_stderr  # a lower bound, clearly short
    assert abs(long.mean - exact) < 4 * long.mc_stderr
    assert long.mc_stderr < 0.1
    assert 0.5 < float(long.acceptance.mean()) < 0.9  # adapted toward 0.65


def test_ais_from_the_prior():
    """E[w] = p(x) only if every HMC transition leaves its f_t invariant.

    A leapfrog whose last momentum update is a full step instead of a half step breaks that:
    its weights get a heavy right tail, which 16 chains rarely see but 128 do. On this model it
    then exceeds the exact log p(x) by about 0.3 nats, 20 standard errors; the correct kernel
    stays within 1.
    """
    lg = LinearGaussian()
    x = lg.sample_x(10, seed=2)
    pyro.set_rng_seed(1)
    r = ais_log_likelihood(lg.model, lg.guide, x, num_steps=200, num_chains=128, init="prior")
    exact = float(lg.log_px(x).mean())
    assert r.mc_stderr < 0.05  # small enough that a 0.3-nat bias cannot hide in it
    assert abs(r.mean - exact) < 4 * r.mc_stderr
    assert r.per_example.shape == (10,)


def test_schedule_and_errors():
    b = sigmoid_schedule(10)
    assert b[0] == 0.0 and b[-1] == 1.0 and all(u < v for u, v in zip(b[:-1], b[1:], strict=True))
    lg = LinearGaussian()
    with pytest.raises(
        ConfigError, match=whole("AIS init must be 'guide' or 'prior', got 'posterior'")
    ):
        ais_log_likelihood(lg.model, lg.guide, lg.sample_x(2), init="posterior")


def test_ais_started_at_the_exact_posterior_is_exact_in_one_step_batch_by_batch():
    """With f_0 = p(z | x), every increment is (beta_t - beta_{t-1}) log p(x): log w = log p(x)
    exactly, whatever the HMC moves, so every chain of every batch returns it."""
    lg = LinearGaussian()
    x = lg.sample_x(10, seed=3)
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(lg.model, lg.exact_guide(), x, num_steps=1, num_chains=4, batch_size=4)
    assert torch.allclose(r.per_example, lg.log_px(x), atol=1e-4)
    assert (r.per_example_stderr < 1e-4).all()
    assert len(sigmoid_schedule(1)) == 2 and len(sigmoid_schedule(10)) == 11


def test_sigmoid_schedule_is_the_rescaled_sigmoid_of_an_even_grid_on_minus_one_to_one():
    """beta_t = (s(rad (2t/T - 1)) - s(-rad)) / (s(rad) - s(-rad)), s the logistic function,
    from the formula in float64; the grid is symmetric, so beta_t + beta_(T-t) = 1."""
    steps, rad = 6, 4.0

    def s(u):
        return 1.0 / (1.0 + math.exp(-u))

    want = [(s(rad * (2 * t / steps - 1)) - s(-rad)) / (s(rad) - s(-rad)) for t in range(steps + 1)]
    got = sigmoid_schedule(steps, rad)
    assert got == pytest.approx(want, abs=1e-12)
    assert all(abs(got[t] + got[steps - t] - 1.0) < 1e-12 for t in range(steps + 1))


# --- small programs that break one assumption each --------------------------------------


def coin_model(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Bernoulli(0.5).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(y, 1.0).to_event(1), obs=x)


def coin_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(0.5).expand([1]).to_event(1))


def observed_only_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([1]).to_event(1), obs=x)


def empty_guide(x):
    pass


def _ais(model, guide, x=X, **options):
    return ais_log_likelihood(model, guide, x, **{"num_steps": 1, **options})


AIS_REFUSALS = [
    ("no steps", lambda: sigmoid_schedule(0), ConfigError, "AIS needs at least one step, got 0"),
    (
        "an unknown start",
        lambda: _ais(plain_model, plain_guide, init="posterior"),
        ConfigError,
        "AIS init must be 'guide' or 'prior', got 'posterior'",
    ),
    (
        "no chains",
        lambda: _ais(plain_model, plain_guide, num_chains=0),
        ConfigError,
        "AIS needs at least one chain, got 0",
    ),
    (
        "no data points",
        lambda: _ais(plain_model, plain_guide, X[:0]),
        DataError,
        "no data points to evaluate; pass a non-empty tensor",
    ),
    (
        "a guide with no latent sites",
        lambda: _ais(observed_only_model, empty_guide),
        DataError,
        "the guide has no latent sample sites to anneal",
    ),
    (
        "a discrete guide site",
        lambda: _ais(coin_model, coin_guide),
        ConfigError,
        "AIS moves latent sites by HMC, but site 'y' is discrete (Independent); mark it "
        "infer={'enumerate': 'parallel'} in the model and leave it out of the guide (AIS then "
        "sums it out), or use log_likelihood",
    ),
    (
        "an enumerated guide site",
        lambda: _ais(mixture_model, config_enumerate(mixture_guide, "parallel", expand=True)),
        ConfigError,
        "AIS moves latent sites by HMC, but site 'y' is discrete (OneHotCategorical); mark it "
        "infer={'enumerate': 'parallel'} in the model and leave it out of the guide (AIS then "
        "sums it out), or use log_likelihood",
    ),
    (
        "a second plate",
        lambda: _ais(two_plate_model, two_plate_guide),
        ConfigError,
        "AIS supports programs whose only plate is the data plate (chains at dim -2); flatten "
        "the other plates into the event shape",
    ),
]


@pytest.mark.parametrize(
    "call, exc_type, message", [c[1:] for c in AIS_REFUSALS], ids=[c[0] for c in AIS_REFUSALS]
)
def test_ais_refusals_are_checked_whole(call, exc_type, message):
    with pytest.raises(exc_type, match=whole(message)):
        call()


def _normal_log_px(x: torch.Tensor, var: float) -> torch.Tensor:
    """log N(x; 0, var I) summed over the last dimension, in float64."""
    x = x.double()
    return (-0.5 * x.pow(2) / var - 0.5 * math.log(2 * math.pi * var)).sum(-1)


def test_ais_at_the_exact_posterior_scores_a_masked_latent_site_with_its_mask():
    """z ~ N(0, I), x ~ N(z, s^2 I), with z and x masked out for some points (poutine.mask) in
    model and guide alike. From the exact posterior q(z | x) = N(x / (1 + s^2), s^2 / (1 + s^2))
    every increment is (beta_t - beta_{t-1}) log p(x), log p(x) = log N(x; 0, (1 + s^2) I),
    where the point counts, and 0 where it is masked out: its prior, posterior and likelihood
    all drop out. Scoring q without the mask would leave -log q(z | x) in the masked points."""
    s, d = 0.5, 2
    post_scale = s / math.sqrt(1 + s * s)

    def model(x, m):
        with pyro.plate("data", x.shape[0]), poutine.mask(mask=m):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    def guide(x, m):
        with pyro.plate("data", x.shape[0]), poutine.mask(mask=m):
            pyro.sample("z", dist.Normal(x / (1 + s * s), post_scale).to_event(1))

    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1], [1.1, -2.2]])
    m = torch.tensor([True, False, True, False])
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(model, guide, x, m, num_steps=3, num_chains=3, leapfrog_steps=2)
    expected = torch.where(m, _normal_log_px(x, 1 + s * s), 0.0)
    assert torch.allclose(r.per_example.double(), expected, atol=1e-5)
    assert (r.per_example_stderr < 1e-5).all()


@pytest.mark.parametrize("plate", ["PARTICLES", "chains"])
def test_ais_leaves_every_plate_name_but_particles_to_the_program(plate):
    """The chains run in a plate named "particles", as log_likelihood's particles do; any other
    name, "PARTICLES" or "chains" included, may name the program's data plate. From the exact
    posterior of z ~ N(0, I), x ~ N(z, s^2 I), AIS returns log N(x; 0, (1 + s^2) I)."""
    s = 0.5
    post_scale = s / math.sqrt(1 + s * s)

    def model(x):
        with pyro.plate(plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    def guide(x):
        with pyro.plate(plate, x.shape[0]):
            pyro.sample("z", dist.Normal(x / (1 + s * s), post_scale).to_event(1))

    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]])
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(
        model, guide, x, num_steps=2, num_chains=2, leapfrog_steps=1, data_plate=plate
    )
    assert torch.allclose(r.per_example.double(), _normal_log_px(x, 1 + s * s), atol=1e-5)


_EXP = dist.transforms.ExpTransform(cache_size=1)


def test_ais_at_the_exact_posterior_of_a_log_normal_latent_whose_transform_guide_and_model_share():
    """log z ~ N(0, 1), x ~ N(log z, s^2), and the guide the exact posterior pushed through the
    same cached ExpTransform: log z | x ~ N(x / (1 + s^2), s^2 / (1 + s^2)). The Jacobians cancel,
    so AIS from it returns log p(x) = log N(x; 0, 1 + s^2) exactly. The guide's density at z
    caches log z, and the model's density at the same z reads it from the cache, so the two
    densities share part of their graph: the gradient of the first must keep it for the second."""
    s = 0.5
    post_scale = s / math.sqrt(1 + s * s)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.TransformedDistribution(dist.Normal(torch.zeros(1), 1.0), [_EXP])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Normal(z.log(), s).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(x / (1 + s * s), post_scale)
            pyro.sample("z", dist.TransformedDistribution(base, [_EXP]).to_event(1))

    x = torch.tensor([[0.3], [-1.2], [2.0]])
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(model, guide, x, num_steps=3, num_chains=3, leapfrog_steps=2)
    assert torch.allclose(r.per_example.double(), _normal_log_px(x, 1 + s * s), atol=1e-5)
    assert (r.per_example_stderr < 1e-5).all()


def test_ais_keeps_its_weights_on_the_device_of_the_data():
    """Every tensor AIS makes follows the data's device. On the meta device (shapes, no values;
    validation off, since it reads values) the estimates and their standard errors, computed
    from the float64 log-weights, stay there: (N,) meta tensors, not CPU ones."""
    s = 0.5

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, device=x.device), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / (1 + s * s), 0.4).to_event(1))

    x = torch.zeros(3, 2, device="meta")
    with pyro.validation_enabled(False):
        r = ais_log_likelihood(model, guide, x, num_steps=2, num_chains=3, leapfrog_steps=2)
    for t in (r.per_example, r.per_example_stderr, r.acceptance):
        assert t.device.type == "meta" and t.shape == (3,)


def test_ais_rejects_a_proposal_where_the_model_s_log_density_is_nan():
    """z ~ N(0, 1), x ~ N(z, 1), with a decoder defined only on |z| < 3: beyond, its mean is
    NaN (validation off, as a user may run), and so is log p(x, z). Large leapfrog steps carry
    proposals there; the Metropolis correction must reject them, so the chains stay where the
    density is defined and, from the exact posterior N(x / 2, 1/2), AIS returns log p(x) =
    log N(x; 0, 2) exactly. Accepting one would make that chain's weight NaN."""
    outside: list[bool] = []

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            defined = z.abs() < 3.0
            outside.append(bool((~defined).any()))
            loc = torch.where(defined, z, torch.nan)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))

    x = torch.tensor([[0.3], [-1.2], [0.9]])
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):
        r = ais_log_likelihood(
            model, guide, x, num_steps=4, num_chains=4, leapfrog_steps=1, step_size=3.0
        )
    assert any(outside)  # some proposals did land where the density is NaN
    assert torch.allclose(r.per_example.double(), _normal_log_px(x, 2.0), atol=1e-5)
    assert (r.per_example_stderr < 1e-5).all()
    assert (r.acceptance < 0.5).all()  # the NaN proposals count as rejected, probability 0


def test_ais_reports_the_acceptance_rate_of_each_data_point_over_its_chains():
    """z ~ N(0, s_n^2) in model and guide alike, x independent of z: every f_t is N(0, s_n^2).
    Leapfrog with step 0.05 is nearly exact on s = 1 (acceptance near 1) and unstable on
    s = 0.01 (step / s = 5 > 2, still > 2 after three adapted steps: acceptance 0), so the
    acceptance is one figure per data point (N,), averaged over the chains, not one per chain."""

    def model(x, s):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, s.unsqueeze(-1)).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([1]).to_event(1), obs=x)

    def guide(x, s):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, s.unsqueeze(-1)).to_event(1))

    x = torch.zeros(3, 1)
    s = torch.tensor([1.0, 0.01, 1.0])
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(model, guide, x, s, num_steps=3, num_chains=2, step_size=0.05)
    assert r.acceptance.shape == (3,)
    assert r.acceptance[0] > 0.99 and r.acceptance[2] > 0.99
    assert r.acceptance[1] < 1e-6


def test_ais_standard_error_is_the_delta_method_over_the_weights_of_the_chains():
    """With one step, log w_c = log p(x, z_c) - log q(z_c | x) at the chains' starting draws
    z_c ~ q(z | x), whatever the HMC move does: recorded from the guide, they give the weights,
    the estimate log mean_c w_c and its standard error sd(w) / (sqrt(C) mean(w)), sd with the
    C - 1 divisor, computed here from the weights directly."""
    draws: list[torch.Tensor] = []

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x / 2, 1.0).to_event(1))
        draws.append(z.detach().clone())

    x = torch.tensor([[0.3], [-1.2], [2.0], [0.9]])
    chains = 3
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(
        plain_model, guide, x, num_steps=1, num_chains=chains, leapfrog_steps=1
    )
    z = draws[-1].double()  # the chains' starting points: the guide's last run
    assert z.shape == (chains, 4, 1)
    xd = x.double()
    log_w = (
        dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(xd)
        - dist.Normal(xd / 2, 1.0).log_prob(z)
    ).sum(-1)  # fmt: skip
    w = log_w.exp()
    want_se = w.std(0, unbiased=True) / (math.sqrt(chains) * w.mean(0))
    assert (want_se > 0.05).all()  # the chains' weights differ at every point
    assert torch.allclose(r.per_example.double(), w.mean(0).log(), atol=1e-5)
    assert torch.allclose(r.per_example_stderr.double(), want_se, rtol=1e-4, atol=1e-6)


def test_sigmoid_schedule_defaults_to_radius_four():
    """Without ``rad``, the schedule is the published one of Grosse et al. (2015) at rad = 4:
    beta_t = (s(4 (2t/T - 1)) - s(-4)) / (s(4) - s(-4)), from the formula in float64 (at T = 4,
    beta_1 = 0.10499; rad = 5 would give 0.07010)."""

    def s(u: float) -> float:
        return 1.0 / (1.0 + math.exp(-u))

    steps = 4
    want = [(s(4.0 * (2 * t / steps - 1)) - s(-4.0)) / (s(4.0) - s(-4.0)) for t in range(5)]
    assert want[1] == pytest.approx(0.10499, abs=1e-5)
    assert sigmoid_schedule(steps) == pytest.approx(want, abs=1e-12)
