"""AIS step by step on z ~ N(0, 1), x ~ N(z, 1): p(x) = N(x; 0, 2), p(z | x) = N(x / 2, 1 / 2).

The annealed weights, the HMC transitions, the step-size adaptation and every field of the
result are written out here for a few chains and steps, in float64, from the random numbers
AIS drew; the defaults are pinned through calls that leave them out.
"""

import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from assumption_programs import exact_guide, exact_log_px
from assumption_programs import plain_model as model
from refusals import whole

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer import ais_log_likelihood, sigmoid_schedule


def log_px(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, 2) per point, in float64 whatever x's dtype."""
    return exact_log_px(x.double())


@pytest.fixture
def drawn(monkeypatch):
    """The momenta (``torch.randn_like``) and uniforms (``torch.rand_like``) AIS draws, in order."""
    record = {"momenta": [], "uniforms": []}
    randn_like, rand_like = torch.randn_like, torch.rand_like

    def momenta(t, *args, **kwargs):
        out = randn_like(t, *args, **kwargs)
        record["momenta"].append(out.clone())
        return out

    def uniforms(t, *args, **kwargs):
        out = rand_like(t, *args, **kwargs)
        record["uniforms"].append(out.clone())
        return out

    monkeypatch.setattr(torch, "randn_like", momenta)
    monkeypatch.setattr(torch, "rand_like", uniforms)
    return record


Q_SHIFT, Q_SD = 0.3, 1.0  # q(z | x) = N(x / 2 + 0.3, 1): not the posterior, so weights differ


def test_every_field_of_a_two_step_run_matches_the_annealed_weights_written_out(drawn):
    """Two chains, two points, T = 2 (beta = 0, 1/2, 1), two leapfrog steps, step 1.3:

        log w = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log q(z_{t-1} | x)],
        z_t: leapfrog on log f_t = (1 - beta_t) log q + beta_t log p(x, .), accepted when
        u < min(1, exp(-dH)); each point's step size then moves by exp(0.5 (a - 0.65)), a its
        acceptance probability averaged over its chains.

    Estimate log mean_c w_c, standard error sd(w) / (sqrt(C) mean(w)) (C - 1 divisor) and
    acceptance the mean of min(1, exp(-dH)) over chains and steps, all in float64."""
    starts: list[torch.Tensor] = []

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x / 2 + Q_SHIFT, Q_SD).to_event(1))
        starts.append(z.detach().clone())

    x = torch.tensor([[0.4], [-1.3]], dtype=torch.float64)
    chains, steps, leapfrog, step_size = 2, 2, 2, 1.3
    pyro.set_rng_seed(1)
    r = ais_log_likelihood(
        model, guide, x, num_steps=steps, num_chains=chains, leapfrog_steps=leapfrog,
        step_size=step_size,
    )  # fmt: skip

    xs = x.squeeze(-1)
    q = dist.Normal(xs / 2 + Q_SHIFT, Q_SD)

    def log_joint(z):
        return dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(xs)

    def grad_joint(z):
        return xs - 2 * z

    def grad_q(z):
        return -(z - xs / 2 - Q_SHIFT) / Q_SD**2

    assert len(drawn["momenta"]) == steps and len(drawn["uniforms"]) == steps
    z = starts[-1].squeeze(-1)  # the chains' starting points, (C, N)
    assert z.shape == (chains, 2)
    betas = sigmoid_schedule(steps)
    assert betas == pytest.approx([0.0, 0.5, 1.0], abs=1e-15)
    eps = torch.full((chains, 2), step_size, dtype=torch.float64)
    log_w = torch.zeros(chains, 2, dtype=torch.float64)
    probs, log_ratios = [], []
    for t in range(1, steps + 1):
        b = betas[t]
        log_w = log_w + (b - betas[t - 1]) * (log_joint(z) - q.log_prob(z))

        def log_f(z, b=b):
            return (1 - b) * q.log_prob(z) + b * log_joint(z)

        def grad_f(z, b=b):
            return (1 - b) * grad_q(z) + b * grad_joint(z)

        p0 = drawn["momenta"][t - 1].squeeze(-1)
        zn, p = z, p0 + 0.5 * eps * grad_f(z)
        for j in range(leapfrog):
            zn = zn + eps * p
            p = p + (1.0 if j < leapfrog - 1 else 0.5) * eps * grad_f(zn)
        log_ratio = (log_f(zn) - 0.5 * p**2) - (log_f(z) - 0.5 * p0**2)
        prob = log_ratio.clamp(max=0).exp()
        z = torch.where(drawn["uniforms"][t - 1] < prob, zn, z)
        eps = eps * torch.exp(0.5 * (prob.mean(0) - 0.65))
        probs.append(prob)
        log_ratios.append(log_ratio)
    w = log_w.exp()
    acceptance = torch.stack(probs).mean(0).mean(0)

    assert any((lr > 0).any() for lr in log_ratios)  # some moves gain density: probability 1
    first_moves = drawn["uniforms"][0] < probs[0]
    assert first_moves.any() and not first_moves.all()  # z_1: some chains moved, some stayed
    assert r.num_steps == steps and r.num_chains == chains and r.unscaled == ()
    for got in (r.per_example, r.per_example_stderr, r.acceptance):
        assert got.dtype == torch.float64 and got.shape == (2,)
    assert torch.allclose(r.per_example, w.mean(0).log(), rtol=1e-11, atol=0)
    want_se = w.std(0, unbiased=True) / (math.sqrt(chains) * w.mean(0))
    assert torch.allclose(r.per_example_stderr, want_se, rtol=1e-9, atol=0)
    assert torch.allclose(r.acceptance, acceptance, rtol=1e-11, atol=0)


def test_a_move_of_acceptance_probability_zero_is_refused_even_on_a_uniform_draw_of_zero(
    monkeypatch,
):
    """torch.rand draws from [0, 1), 0 included. A move is accepted when u < min(1, exp(-dH)),
    so a proposal where log p(x, z) is NaN (probability 0) stays refused even when u = 0: from
    the exact posterior every chain keeps log w = log p(x), log N(x; 0, 2)."""
    outside: list[bool] = []

    def half_defined_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            defined = z.abs() < 2.0
            outside.append(bool((~defined).any()))
            pyro.sample("x", dist.Normal(torch.where(defined, z, torch.nan), 1.0).to_event(1),
                        obs=x)  # fmt: skip

    monkeypatch.setattr(torch, "rand_like", torch.zeros_like)
    x = torch.tensor([[0.3], [-1.2], [0.9]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):
        r = ais_log_likelihood(
            half_defined_model, exact_guide, x, num_steps=3, num_chains=4, leapfrog_steps=1,
            step_size=3.0,
        )  # fmt: skip
    assert any(outside)
    assert torch.allclose(r.per_example, log_px(x), rtol=0, atol=1e-12)
    assert (r.acceptance < 1).all()


def test_float32_data_gets_float32_estimates_standard_errors_and_acceptance():
    """The log-weights are summed in float64; what AIS returns is in the data's dtype. From the
    exact posterior with one step log w = log p(x) in every chain: standard error 0, to rounding."""
    x = torch.tensor([[0.3], [-1.2], [2.0]])
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(model, exact_guide, x, num_steps=1, num_chains=3, leapfrog_steps=1)
    for got in (r.per_example, r.per_example_stderr, r.acceptance):
        assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.allclose(r.per_example.double(), log_px(x), atol=1e-5)
    assert (r.per_example_stderr < 1e-6).all()


def test_keyword_arguments_reach_the_model_and_guide_in_every_pass():
    """x ~ N(z, noise^2) with noise a required keyword argument of model and guide alike; the
    guide the exact posterior N(x / (1 + noise^2), noise^2 / (1 + noise^2)). AIS returns
    log N(x; 0, 1 + noise^2) exactly, in float64."""

    def noisy_model(x, *, noise):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, noise).to_event(1), obs=x)

    def noisy_guide(x, *, noise):
        with pyro.plate("data", x.shape[0]):
            scale = noise / math.sqrt(1 + noise**2)
            pyro.sample("z", dist.Normal(x / (1 + noise**2), scale).to_event(1))

    x = torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(
        noisy_model, noisy_guide, x, num_steps=3, num_chains=2, leapfrog_steps=2, noise=0.5
    )
    want = -0.5 * x.squeeze(-1).pow(2) / 1.25 - 0.5 * math.log(2 * math.pi * 1.25)
    assert torch.allclose(r.per_example, want, rtol=0, atol=1e-12)


class OnePointAtATime:
    """A model bound to an object that declares its event_shape, as a VAE does: the programs
    are checked on one data point, so a model that takes one point per call runs with
    batch_size=1."""

    event_shape = (1,)

    def model(self, x):
        if x.shape[0] != 1:
            raise ValueError(f"one point per call, got {x.shape[0]}")
        model(x)


def test_a_model_of_an_object_with_an_event_shape_is_checked_on_one_point():
    x = torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(
        OnePointAtATime().model, exact_guide, x, num_steps=2, num_chains=2, leapfrog_steps=1,
        batch_size=1,
    )  # fmt: skip
    assert torch.allclose(r.per_example, log_px(x), rtol=0, atol=1e-12)


def test_from_the_prior_one_step_weighs_prior_draws_by_their_likelihood():
    """init="prior", T = 1: z_c ~ p(z), drawn by the model, and log w_c = log p(x | z_c),
    whatever the guide is (here the exact posterior, which would give log p(x) exactly)."""
    draws: list[torch.Tensor] = []

    def recording_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
        draws.append(z.detach().clone())

    x = torch.tensor([[0.3], [-1.2], [2.0], [0.9]], dtype=torch.float64)
    chains = 3
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(
        recording_model, exact_guide, x, num_steps=1, num_chains=chains, leapfrog_steps=1,
        init="prior",
    )  # fmt: skip
    z = next(d for d in draws if d.shape == (chains, 4, 1)).squeeze(-1)  # the chains' start
    log_w = dist.Normal(z, 1.0).log_prob(x.squeeze(-1))
    want = log_w.exp().mean(0).log()
    assert (log_w.std(0) > 0.1).all()
    assert torch.allclose(r.per_example, want, rtol=1e-12, atol=0)
    assert (r.per_example - log_px(x)).abs().min() > 1e-3


def test_a_straight_through_guide_site_is_refused_as_discrete():
    """OneHotCategoricalStraightThrough has a reparameterized sample but a discrete support:
    HMC cannot move it."""

    def one_hot_model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(torch.tensor([0.5, 0.5])))
            pyro.sample("x", dist.Normal(y[..., :1], 1.0).to_event(1), obs=x)

    def straight_through_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.OneHotCategoricalStraightThrough(torch.tensor([0.5, 0.5])))

    message = (
        "AIS moves latent sites by HMC, but site 'y' is discrete "
        "(OneHotCategoricalStraightThrough); mark it infer={'enumerate': 'parallel'} in the "
        "model and leave it out of the guide (AIS then sums it out), or use log_likelihood"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        ais_log_likelihood(one_hot_model, straight_through_guide, torch.zeros(3, 1), num_steps=1)


def test_a_guide_that_leaves_the_data_plate_on_a_one_point_batch_is_refused_naming_its_site():
    """The programs are checked on the first two points; the batch of one point left at the
    end (three points, batches of two) is where this guide drops its plate."""

    def guide(x):
        plate = pyro.plate("data", x.shape[0]) if x.shape[0] > 1 else contextlib.nullcontext()
        with plate:
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))

    message = (
        "sample site 'z' is outside plate 'data'; per-example weights need every sample site "
        "inside the data plate (or pass data_plate= the name of your data plate)"
    )
    x = torch.tensor([[0.3], [-1.2], [2.0]])
    with pytest.raises(DataError, match=whole(message)):
        ais_log_likelihood(model, guide, x, num_steps=1, num_chains=2, batch_size=2)


@pytest.mark.parametrize("plate", ["particles_", "XXparticlesXX"])
def test_a_data_plate_whose_name_contains_particles_is_the_program_s_own(plate):
    def named_model(x):
        with pyro.plate(plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def named_guide(x):
        with pyro.plate(plate, x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))

    x = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(
        named_model, named_guide, x, num_steps=2, num_chains=2, leapfrog_steps=1,
        data_plate=plate,
    )  # fmt: skip
    assert torch.allclose(r.per_example, log_px(x), rtol=0, atol=1e-12)


def test_by_default_ais_runs_500_steps_of_8_chains_with_5_leapfrog_steps(drawn):
    """One transition per step (one momentum draw each), and per transition one evaluation of
    log p(x, z) per leapfrog step, plus one at the start: 1 + 500 * 5 model runs on the chains."""
    runs: list[tuple[int, ...]] = []

    def counting_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
        runs.append(tuple(z.shape))

    x = torch.tensor([[0.3]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(counting_model, exact_guide, x)
    assert (r.num_steps, r.num_chains) == (500, 8)
    assert len(drawn["momenta"]) == 500 and drawn["momenta"][0].shape == (8, 1, 1)
    assert runs.count((8, 1, 1)) == 1 + 500 * 5
    assert torch.allclose(r.per_example, log_px(x), rtol=0, atol=1e-12)


def test_by_default_ais_takes_the_data_64_points_at_a_time():
    sizes: list[int] = []

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))
        if z.dim() == 3:
            sizes.append(x.shape[0])

    x = torch.linspace(-2, 2, 65, dtype=torch.float64).unsqueeze(-1)
    pyro.set_rng_seed(0)
    r = ais_log_likelihood(model, guide, x, num_steps=1, num_chains=2, leapfrog_steps=1)
    assert sizes[-2:] == [64, 1]
    assert 65 not in sizes
    assert torch.allclose(r.per_example, log_px(x), rtol=0, atol=1e-12)
