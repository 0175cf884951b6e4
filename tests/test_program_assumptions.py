"""Programs whose number used to come out silently wrong: scale handlers, enumeration under
``pyro.markov``, masks in the inference gaps, a deterministic site standing in for an
observation, point-mass guides, and gradient estimators' assumptions. Each gets the right
number against a closed form, or a refusal that names the site and the fix.

The running example is z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(0, 2) and p(z | x) =
N(x / 2, 1/2), so with the exact posterior as guide every importance weight is p(x) itself.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from assumption_programs import X, exact_log_px
from pyro import poutine
from refusals import whole

from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.infer import (
    ais_log_likelihood,
    dreg_loss,
    inference_gaps,
    iwae_loss,
    log_likelihood,
    make_objective,
    trace,
)


def model(x, annealing_factor=1.0):
    with pyro.plate("data", x.shape[0]):
        with poutine.scale(scale=annealing_factor):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def exact_guide(x, annealing_factor=1.0):
    with pyro.plate("data", x.shape[0]):
        with poutine.scale(scale=annealing_factor):
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))


# --- 1. scale handlers: a training device, not part of p(x) ------------------------------


@pytest.mark.parametrize("scale", [50.0, 0.1])
def test_a_scale_around_model_and_guide_is_left_out_of_log_px(scale):
    # before: log N/B folded in, -85.5 per point at scale 50 instead of -1.71
    r = log_likelihood(
        poutine.scale(model, scale), poutine.scale(exact_guide, scale), X, num_samples=8
    )
    assert torch.allclose(r.per_example, exact_log_px(X), atol=1e-5)
    assert torch.allclose(r.elbo_per_example, exact_log_px(X), atol=1e-5)
    assert set(r.unscaled) == {"z", "x"}
    assert "scored without their scale" in str(r)


def test_an_annealing_factor_on_the_latent_site_is_left_out_of_log_px():
    # the Deep Markov Model's idiom; before: -1.52 instead of -1.71 at 0.5
    r = log_likelihood(model, exact_guide, X, num_samples=8, annealing_factor=0.5)
    assert torch.allclose(r.per_example, exact_log_px(X), atol=1e-5)
    assert r.unscaled == ("z",)
    plain = log_likelihood(model, exact_guide, X, num_samples=8)
    assert plain.unscaled == ()


def test_ais_and_gaps_score_the_unscaled_program():
    pyro.set_rng_seed(0)
    ais = ais_log_likelihood(
        model, exact_guide, X, num_steps=20, num_chains=2, annealing_factor=0.3
    )
    # from the exact posterior every AIS increment is log p(x): exact whatever the moves
    assert torch.allclose(ais.per_example, exact_log_px(X), atol=1e-4)
    assert ais.unscaled == ("z",)
    gaps = inference_gaps(
        model, exact_guide, X,
        family=lambda p: dist.Normal(p[..., :1], p[..., 1:].exp()).to_event(1),
        init_params=lambda x: torch.cat([x / 2, torch.full_like(x, 0.5 * math.log(0.5))], -1),
        num_steps=20, num_samples=1000, elbo_samples=1000, annealing_factor=0.3,
    )  # fmt: skip
    # the amortized ELBO is exact; the local one is a 1000-sample estimate (sd ~ 0.01)
    assert torch.allclose(gaps.elbo_amortized, exact_log_px(X), atol=1e-4)
    assert torch.allclose(gaps.log_px, exact_log_px(X), atol=0.03)
    assert (gaps.elbo_local <= exact_log_px(X) + 0.03).all()


def test_particle_terms_list_a_scale_that_only_the_model_carries():
    """``poutine.scale`` around the model alone: the terms list both model sites with their
    factor (the guide has none), and score them unscaled, so with the exact posterior as guide
    every log weight is still log p(x)."""
    terms = trace.particle_terms(poutine.scale(model, 4.0), exact_guide, 3, X)
    assert terms.scales == {"z": 4.0, "x": 4.0}
    assert torch.allclose(terms.log_weights(), exact_log_px(X).expand(3, -1), atol=1e-5)
    plain = trace.particle_terms(model, exact_guide, 3, X, annealing_factor=0.5)
    assert plain.scales == {"z": 0.5}


def test_the_iwae_objective_applies_a_common_scale_to_the_whole_bound():
    # exact guide: the IWAE-K bound is log p(x) exactly, so the loss is -c sum_n log p(x_n)
    c = 40.0
    value = iwae_loss(poutine.scale(model, c), poutine.scale(exact_guide, c), X, 3)
    assert value.loss.item() == pytest.approx(-c * float(exact_log_px(X).sum()), rel=1e-5)
    assert value.elbo == pytest.approx(float(exact_log_px(X).sum()), rel=1e-5)


def test_the_iwae_objective_refuses_a_scale_that_differs_between_sites():
    match = whole(
        "site 'z' is scaled by 0.5 and site 'x' by 1 (poutine.scale, an annealing factor); the "
        "iwae bound is the log of a mean of weights, so only a factor shared by every site (the "
        "minibatch factor N / B) can scale it; anneal with the objective's KL weight (--beta, "
        "--warmup) instead of the handler"
    )
    with pytest.raises(ConfigError, match=match):
        make_objective("iwae", 3).loss(model, exact_guide, X, 1.0, annealing_factor=0.5)


def test_the_iwae_objective_refuses_a_scale_that_varies_from_point_to_point_whole():
    def weighed(program):
        def weighed_program(x):
            with poutine.scale(scale=torch.linspace(0.5, 1.5, x.shape[0])):
                program(x)

        return weighed_program

    with pytest.raises(ConfigError) as info:
        make_objective("iwae", 3).loss(weighed(model), weighed(exact_guide), X, 1.0)
    assert str(info.value) == (
        "site 'z' carries a scale factor that varies from point to point (shape (5,)); the iwae "
        "bound cannot weigh points differently, so drop the poutine.scale handler (or weigh the "
        "per-point losses yourself)"
    )


def test_the_elbo_objective_keeps_the_scale_in_the_loss_and_reports_the_true_elbo():
    c = 40.0
    value = make_objective("elbo").loss(poutine.scale(model, c), poutine.scale(exact_guide, c), X)
    # exact guide: log p(x, z) - log q(z | x) = log p(x) at every draw
    assert value.loss.item() == pytest.approx(-c * float(exact_log_px(X).sum()), rel=1e-5)
    assert value.elbo == pytest.approx(float(exact_log_px(X).sum()), rel=1e-5)


# --- 2. enumeration under pyro.markov: the forward algorithm -----------------------------

INIT = torch.tensor([0.6, 0.4])
TRANS = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
LOCS = torch.tensor([-1.0, 1.5])


def hmm_model(xs):
    t_max = xs.shape[1]
    with pyro.plate("data", xs.shape[0]):
        s = 0
        for t in pyro.markov(range(t_max)):
            probs = INIT if t == 0 else TRANS[s]
            s = pyro.sample(f"s_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
            pyro.sample(f"x_{t}", dist.Normal(LOCS[s], 1.0), obs=xs[:, t])


def forward_algorithm(xs: torch.Tensor) -> torch.Tensor:
    """log p(x_1..T) per sequence by the forward recursion, written out: (N,)."""
    n, t_max = xs.shape
    out = []
    for i in range(n):
        alpha = [
            math.log(INIT[k]) + float(dist.Normal(LOCS[k], 1.0).log_prob(xs[i, 0]))
            for k in range(2)
        ]
        for t in range(1, t_max):
            alpha = [
                math.log(sum(math.exp(alpha[j]) * float(TRANS[j, k]) for j in range(2)))
                + float(dist.Normal(LOCS[k], 1.0).log_prob(xs[i, t]))
                for k in range(2)
            ]
        out.append(math.log(sum(math.exp(a) for a in alpha)))
    return torch.tensor(out)


@pytest.mark.parametrize("t_max", [4, 8])
def test_an_hmm_enumerated_under_markov_equals_the_forward_algorithm(t_max):
    # before: -0.104 (T=4) and -0.212 (T=8) off, with zero variance
    xs = torch.randn(5, t_max, generator=torch.Generator().manual_seed(t_max))
    r = log_likelihood(hmm_model, lambda xs: None, xs, num_samples=3)
    assert torch.allclose(r.per_example, forward_algorithm(xs), atol=1e-4)
    assert set(r.enumerated) == {f"s_{t}" for t in range(t_max)}
    # Pyro's TraceEnum_ELBO on the same program: a second implementation that agrees
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(hmm_model, lambda xs: None, xs)
    assert -loss == pytest.approx(float(forward_algorithm(xs).sum()), abs=1e-3)


# --- 3. masks in the inference gaps ------------------------------------------------------


def mask_of(x: torch.Tensor) -> torch.Tensor:
    """Which points the program keeps (a ragged sequence's padding is masked the same way)."""
    return (x[:, 0] > -1) & (x[:, 0] < 2)


MASK = mask_of(X)  # False, True, True, True, False


def masked_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1).mask(mask_of(x)))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1).mask(mask_of(x)), obs=x)


def masked_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1).mask(mask_of(x)))


def test_inference_gaps_carry_the_guide_s_masks_into_the_local_guide():
    # masked-out points are absent from p(x): log p = 0 there; before, the local guide
    # ignored the mask and its ELBO came out above log p(x)
    truth = torch.where(MASK, exact_log_px(X), torch.zeros(()))
    pyro.set_rng_seed(0)
    ll = log_likelihood(masked_model, masked_guide, X, num_samples=16)
    assert torch.allclose(ll.per_example, truth, atol=1e-5)
    gaps = inference_gaps(
        masked_model, masked_guide, X,
        family=lambda p: dist.Normal(p[..., :1], p[..., 1:].exp()).to_event(1),
        init_params=lambda x: torch.cat([x, torch.zeros_like(x)], -1),  # not the optimum
        num_steps=150, num_samples=256, elbo_samples=256, lr=0.05,
    )  # fmt: skip
    assert torch.allclose(gaps.log_px, truth, atol=0.02)
    assert (gaps.elbo_local <= truth + 0.02).all()
    assert torch.equal(gaps.elbo_local[~MASK], torch.zeros(2))


def positive(x: torch.Tensor) -> torch.Tensor:
    """A second mask, put on by a handler: False, False, True, True, True on X."""
    return x[:, 0] > 0


def doubly_masked_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]), poutine.mask(mask=positive(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1).mask(mask_of(x)))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1).mask(mask_of(x)), obs=x)


def doubly_masked_guide(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]), poutine.mask(mask=positive(x)):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1).mask(mask_of(x)))


def test_inference_gaps_keep_the_points_that_every_mask_of_the_guide_keeps():
    """A handler's mask and a distribution's ``.mask`` on one guide site: the local guide keeps
    only the points both keep (0.4 and 1.1 of X); -0.2 (dropped by the handler) and 2.7 (by the
    distribution) are absent from p(x) and from the local ELBO, exactly 0 there."""
    from pyro_vae.infer.gaps import guide_masks

    keep = torch.tensor([False, False, True, True, False])
    masks = guide_masks(doubly_masked_guide, ["z"], (X,))
    assert torch.equal(masks["z"], keep)
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        doubly_masked_model, doubly_masked_guide, X,
        family=lambda p: dist.Normal(p[..., :1], p[..., 1:].exp()).to_event(1),
        init_params=lambda x: torch.cat([x / 2, torch.full_like(x, -0.5 * math.log(2))], -1),
        num_steps=5, num_samples=16, elbo_samples=16,
    )  # fmt: skip
    assert torch.equal(gaps.elbo_local[~keep], torch.zeros(3))
    assert torch.equal(gaps.log_px[~keep], torch.zeros(3))
    assert torch.allclose(gaps.log_px[keep], exact_log_px(X)[keep], atol=1e-3)


def handler_masked_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]), poutine.mask(mask=mask_of(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def handler_masked_guide(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]), poutine.mask(mask=mask_of(x)):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_a_scaled_program_keeps_its_poutine_masks_while_its_scale_is_left_out(scale: float):
    """Under ``poutine.scale`` the sites are scored unscaled, but a ``poutine.mask`` still
    holds: log p(x) at the masked-out points is 0, at the others N(x; 0, 2), exactly (exact
    guide), with or without the scale."""
    truth = torch.where(MASK, exact_log_px(X), torch.zeros(()))
    r = log_likelihood(
        poutine.scale(handler_masked_model, scale),
        poutine.scale(handler_masked_guide, scale),
        X,
        num_samples=4,
    )
    assert set(r.unscaled) == ({"z", "x"} if scale != 1.0 else set())
    assert torch.allclose(r.per_example, truth, atol=1e-5)
    assert torch.equal(r.per_example[~MASK], torch.zeros(2))


# --- 4. a deterministic site standing in for an observation ------------------------------


def test_a_deterministic_site_is_not_an_observation():
    def det_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.deterministic("x", z, event_dim=1)

    # before: a number (-0.05 here) from a program with no likelihood
    with pytest.raises(
        DataError,
        match=whole(
            "the model observes no sample site: 'x' is a pyro.deterministic site, which records a "
            "value without a density, so there is no likelihood to score; observe the data through "
            "a distribution: pyro.sample('x', dist.Normal(f(z), sigma).to_event(1), obs=x)"
        ),
    ):
        log_likelihood(det_model, exact_guide, X, num_samples=4)


def test_a_deterministic_site_beside_the_observation_is_ignored():
    def model_with_record(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.deterministic("twice_z", 2 * z, event_dim=1)
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
        pyro.deterministic("outside_the_plate", z.sum())

    r = log_likelihood(model_with_record, exact_guide, X, num_samples=4)
    assert torch.allclose(r.per_example, exact_log_px(X), atol=1e-5)


# --- 5. point-mass guides ----------------------------------------------------------------


def delta_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Delta(x / 2).to_event(1))


def test_a_point_mass_guide_is_refused_by_every_estimator():
    # before: log p(x, z*) reported as log p(x) (+1.28 nats on a linear-Gaussian model)
    # with ESS = K
    match = whole(
        "guide site 'z' is a point mass (a Delta, as a MAP guide or AutoDelta draws): every "
        "importance weight is p(x, z*) at that one point (ESS = K by construction), which is not "
        "an estimate of log p(x); give 'z' a density in the guide (e.g. dist.Normal(loc, scale)), "
        "or report log p(x, z*) as what it is, the joint density at the point estimate"
    )
    with pytest.raises(ConfigError, match=match):
        log_likelihood(model, delta_guide, X, num_samples=4)
    with pytest.raises(ConfigError, match=match):
        ais_log_likelihood(model, delta_guide, X, num_steps=2)


@pytest.mark.parametrize("kind", ["AutoDelta", "AutoNormal", "AutoDiagonalNormal"])
def test_an_autoguide_is_refused_as_not_amortized(kind):
    from pyro.infer import autoguide

    guide = getattr(autoguide, kind)(model)
    guide(X)
    message = (
        f"the guide is Pyro's autoguide {kind}: it is not amortized (one set of parameters per "
        "latent site of the training batch, no q(z | x) for other data points, auxiliary sites "
        "the model does not have), so it cannot score data point by point; write an amortized "
        "guide, an encoder that maps x to the parameters of q(z | x) inside "
        "pyro.plate('data', ...) (as pyro_vae's VAE does)"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        log_likelihood(model, guide, X, num_samples=4)


def test_latent_usage_still_reads_a_point_mass_encoder():
    from pyro_vae.infer import latent_usage

    usage = latent_usage(model, delta_guide, X, num_samples=2)
    assert usage.sites["z"].kl_method == "undefined"


# --- 6. gradient estimators' assumptions -------------------------------------------------

P_Y = 0.3  # p(y = 1)
MEANS = torch.tensor([-1.0, 1.0])  # x | y ~ N(MEANS[y], 1)
X0 = 1.5


def discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Bernoulli(torch.tensor(P_Y)))
        pyro.sample("x", dist.Normal(MEANS[y.long()], 1.0), obs=x[:, 0])


def exact_iwae_gradient(phi: float, k: int) -> float:
    """d/dphi E_{y_1..K ~ q}[log mean_k p(x, y_k) / q(y_k)] for q(y = 1) = sigmoid(phi), by
    summing over all 2^K draws (autograd through the closed form)."""
    import itertools

    phi_t = torch.tensor(phi, dtype=torch.float64, requires_grad=True)
    q1 = torch.sigmoid(phi_t)
    total = 0.0
    for ys in itertools.product([0, 1], repeat=k):
        log_q = [torch.log(q1 if y else 1 - q1) for y in ys]
        log_w = [
            math.log(P_Y if y else 1 - P_Y)
            + float(dist.Normal(MEANS[y].double(), 1.0).log_prob(torch.tensor(X0)))
            - lq
            for y, lq in zip(ys, log_q, strict=True)
        ]
        prob = torch.exp(sum(log_q))
        total = total + prob * (torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
    (grad,) = torch.autograd.grad(total, phi_t)
    return float(grad)


@pytest.mark.parametrize("k", [1, 3])
def test_iwae_gradient_with_a_sampled_discrete_guide_site_has_the_exact_mean(k):
    # before: 0.000 at K=1 and -0.30 at K=3 (the score-function term was missing)
    n, phi0 = 20000, -1.5
    phi = torch.full((n,), phi0, requires_grad=True)  # one copy per point: per-point gradients

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=phi))

    pyro.set_rng_seed(k)
    loss = iwae_loss(discrete_model, guide, torch.full((n, 1), X0), k).loss
    (grad,) = torch.autograd.grad(-loss, phi)
    exact = exact_iwae_gradient(phi0, k)
    se = float(grad.std() / math.sqrt(n))
    assert abs(float(grad.mean()) - exact) < 4 * se
    assert abs(exact) > 10 * se  # the test can tell the estimate from zero


def dependent_guide_pair(phi: torch.Tensor):
    def two_model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1, 1.0).to_event(1), obs=x)

    def two_guide(x):  # q(z2 | x) q(z1 | z2, x)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x / 3 + phi, 1.0).to_event(1))
            pyro.sample("z1", dist.Normal((x + z2) / 2, 0.8).to_event(1))

    return two_model, two_guide


DEPENDENT_GUIDE_REFUSAL = (
    "dreg assumes the guide's latent sites are conditionally independent given the data, "
    "but q(z1 | ...) depends on the draw of 'z2', so its encoder gradient would be biased; "
    "use --objective iwae for this model"
)


def test_dreg_refuses_a_guide_whose_sites_depend_on_each_other_called_directly():
    # before: dreg_loss gave 0.845 against the unbiased 0.589
    two_model, two_guide = dependent_guide_pair(torch.tensor(0.3, requires_grad=True))
    with pytest.raises(
        ConfigError,
        match=whole(DEPENDENT_GUIDE_REFUSAL),
    ):
        dreg_loss(two_model, two_guide, X, 3)


def test_dreg_finds_the_dependency_of_a_guide_without_parameters():
    two_model, two_guide = dependent_guide_pair(torch.tensor(0.3))
    with pytest.raises(
        ConfigError,
        match=whole(DEPENDENT_GUIDE_REFUSAL),
    ):
        make_objective("dreg", 3).loss(two_model, two_guide, X)


def test_dreg_refuses_a_guide_site_marked_for_enumeration_as_enumerated():
    """A site marked for enumeration (here Monte Carlo enumeration, num_samples values at once)
    is summed out, not drawn: in a guide without parameters, the check for guide sites that
    depend on another's draw leaves it alone though z1 reads it, and DReG refuses it for what
    it is, an enumerated site."""

    def two_model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1, 1.0).to_event(1), obs=x)

    def two_guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample(
                "z2", dist.Normal(x / 3, 1.0).to_event(1),
                infer={"enumerate": "parallel", "num_samples": 3},
            )  # fmt: skip
            pyro.sample("z1", dist.Normal((x + z2) / 2, 0.8).to_event(1))

    with pytest.raises(
        ConfigError,
        match=whole(
            "dreg needs every latent guide site reparameterized, but site 'z2' is enumerated; "
            "use --objective iwae (it adds score-function terms for such sites) or "
            "--objective elbo"
        ),
    ):
        make_objective("dreg", 3).loss(two_model, two_guide, X)


def test_dreg_refuses_a_categorical_guide_site_with_the_site_named():
    def cat_model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("x", dist.Normal(MEANS[y], 1.0), obs=x[:, 0])

    def cat_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(x.shape[0], 2)))

    # before: "only Tensors of floating point dtype can require gradients"
    with pytest.raises(
        ConfigError,
        match=whole(
            "dreg needs every latent guide site reparameterized, but site 'y' is a Categorical "
            "without rsample (discrete or not reparameterizable); use --objective iwae (it adds "
            "score-function terms for such sites) or --objective elbo"
        ),
    ):
        make_objective("dreg", 3).loss(cat_model, cat_guide, X)


# --- unclear refusals ---------------------------------------------------------------------


def test_per_example_keyword_tensors_are_refused_with_the_positional_fix():
    def cond_model(x, ys=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + ys[:, None], 1.0).to_event(1), obs=x)

    def cond_guide(x, ys=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((x - ys[:, None]) / 2, math.sqrt(0.5)).to_event(1))

    ys = torch.linspace(-1, 1, 5)
    with pytest.raises(
        DataError,
        match=whole(
            "the programs fail on a batch of 2 points (The size of tensor a (2) must match the "
            "size of tensor b (5) at non-singleton dimension 0) and keyword 'ys' is a tensor of "
            "shape (5,); keywords are passed unchanged to every batch, so pass per-example tensors "
            "positionally after the data, e.g. log_likelihood(model, guide, x, ys), and they are "
            "sliced with it"
        ),
    ):
        log_likelihood(cond_model, cond_guide, X, num_samples=4, ys=ys)
    r = log_likelihood(cond_model, cond_guide, X, ys, num_samples=4)  # the fix works
    assert torch.allclose(r.per_example, exact_log_px(X - ys[:, None]), atol=1e-5)


def test_float64_data_into_a_float32_model_gets_a_dtype_message():
    net = torch.nn.Linear(1, 1)

    def net_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net(z), 1.0).to_event(1), obs=x)

    with pytest.raises(
        DataError,
        match=whole(
            "the programs fail on data of dtype float64 with a dtype error (mat1 and mat2 must "
            "have the same dtype, but got Double and Float); convert the data to the model's dtype "
            "(x.float()) or the model to the data's (model.double())"
        ),
    ):
        log_likelihood(net_model, exact_guide, X.double(), num_samples=4)


def test_gaps_of_a_program_that_needs_replicated_particles():
    def flat_model(x):  # .view(-1, 1) cannot carry a particle dimension on the left
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.view(-1, 1), 1.0).to_event(1), obs=x)

    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        flat_model, exact_guide, X,
        family=lambda p: dist.Normal(p[..., :1], p[..., 1:].exp()).to_event(1),
        init_params=lambda x: torch.cat([x / 2, torch.full_like(x, 0.5 * math.log(0.5))], -1),
        num_steps=20, num_samples=1000, elbo_samples=1000,
    )  # fmt: skip
    assert torch.allclose(gaps.elbo_amortized, exact_log_px(X), atol=1e-4)
    assert torch.allclose(gaps.log_px, exact_log_px(X), atol=0.03)


def test_every_refusal_here_is_a_pyro_vae_error():
    assert issubclass(ConfigError, PyroVAEError) and issubclass(DataError, PyroVAEError)


# --- a guide enumerated with config_enumerate (ssiVAE style) ---------------------------------

PI_Y = torch.tensor([0.3, 0.7])
W_Z = torch.tensor([1.2, -0.4, 0.8])  # x | z, y ~ N(W_Z z + B_Y y, S_X^2 I)
B_Y = torch.tensor([[1.0, -1.0], [0.5, 0.0], [-0.5, 2.0]])
S_X = 0.6
V_Z = 1 / (1 + float(W_Z @ W_Z) / S_X**2)  # posterior variance of z given x and y


def ssi_model(xs, ys=None):
    with pyro.plate("data", xs.shape[0]):
        ys = pyro.sample("y", dist.OneHotCategorical(PI_Y), obs=ys)
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        loc = z * W_Z + ys @ B_Y.T
        pyro.sample("x", dist.Normal(loc, S_X).to_event(1), obs=xs)


def ssi_guide(xs, ys=None):
    """q(y | x) anything (it is summed out), q(z | x, y) = p(z | x, y) exactly."""
    with pyro.plate("data", xs.shape[0]):
        if ys is None:
            ys = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(xs.shape[0], 2)))
        loc = V_Z * ((xs - ys @ B_Y.T) @ W_Z) / S_X**2
        pyro.sample("z", dist.Normal(loc.unsqueeze(-1), math.sqrt(V_Z)).to_event(1))


def ssi_log_px(xs: torch.Tensor) -> torch.Tensor:
    """log sum_y pi_y N(x; B y, W W^T + s^2 I), written out: (N,)."""
    cov = torch.outer(W_Z, W_Z) + S_X**2 * torch.eye(3)
    comps = torch.stack(
        [dist.MultivariateNormal(B_Y[:, c], cov).log_prob(xs) + PI_Y[c].log() for c in range(2)]
    )
    return torch.logsumexp(comps, 0)


@pytest.mark.parametrize("strategy", ["vectorized", "replicate"])
def test_a_config_enumerate_guide_is_summed_exactly(strategy):
    from pyro.infer import config_enumerate

    xs = torch.randn(4, 3, generator=torch.Generator().manual_seed(4)) * 2
    guide = config_enumerate(ssi_guide, "parallel", expand=True)
    r = log_likelihood(ssi_model, guide, xs, num_samples=3, strategy=strategy)
    assert r.enumerated == ("y",)
    assert torch.allclose(r.per_example, ssi_log_px(xs), atol=1e-4)
    value = iwae_loss(ssi_model, guide, xs, 3)  # the bound is exact too
    assert float(value.loss) == pytest.approx(-float(ssi_log_px(xs).sum()), rel=1e-5)


MIX_PI = torch.tensor([0.3, 0.7])
MIX_LOCS = torch.tensor([-1.0, 2.0])


def test_an_enumerated_guide_site_takes_the_dimension_left_of_the_particles():
    """The guide's enumerated label has its values in the first dimension left of the
    particles' (2, 1, 1 here: values, particles, data), as Pyro's ``TraceEnum_ELBO`` with
    vectorized particles lays it out; both programs see that shape, and log p(x) is exact."""
    seen: set[tuple[str, tuple[int, ...]]] = set()

    def mix_model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(MIX_PI))
            if y.dim() > 1:  # the enumerated passes
                seen.add(("model", tuple(y.shape)))
            pyro.sample("x", dist.Normal(MIX_LOCS[y].unsqueeze(-1), 1.0).to_event(1), obs=x)

    def mix_guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            logits = torch.zeros(x.shape[0], 2)
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            if y.dim() > 1:
                seen.add(("guide", tuple(y.shape)))

    x = torch.tensor([[0.5], [-1.0], [3.0]])
    r = log_likelihood(mix_model, mix_guide, x, num_samples=4)
    components = dist.Normal(MIX_LOCS, 1.0).log_prob(x) + MIX_PI.log()  # (3, 2)
    assert torch.allclose(r.per_example, torch.logsumexp(components, -1), atol=1e-5)
    assert seen == {("model", (2, 1, 1)), ("guide", (2, 1, 1))}
    seen.clear()
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=4, vectorize_particles=True)
    elbo.loss(mix_model, mix_guide, x)
    assert seen == {("model", (2, 1, 1)), ("guide", (2, 1, 1))}


def test_choose_strategy_names_every_failure_in_its_refusal_whole():
    """When no way of drawing particles works, the refusal lists each one's failure, in
    order, separated by semicolons: here the data the model saw (2 points vectorized, 2
    copies of them replicated)."""
    from pyro_vae.infer.trace import choose_strategy

    def picky_model(x):
        raise ValueError(f"saw data of shape {tuple(x.shape)}")

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))

    with pytest.raises(DataError) as info:
        choose_strategy(picky_model, guide, X[:2], particle_dim=-2)
    assert str(info.value) == (
        "the programs cannot draw particles vectorized or replicate (vectorized: saw data of "
        "shape (2, 1); replicate: saw data of shape (4, 1)); write the model so that every "
        "sample site is inside the data plate and batch dimensions broadcast"
    )


# --- the trace helpers' own refusals ------------------------------------------------------


def _frame(name: str, dim: int):
    return type("Frame", (), {"name": name, "dim": dim})()


def _attached_transform_distribution():
    loc = torch.zeros(1, requires_grad=True)
    return dist.TransformedDistribution(
        dist.Normal(torch.zeros(1), 1.0), [torch.distributions.AffineTransform(loc, 1.0)]
    )


def _enumerated_terms():
    from pyro_vae.infer.trace import ParticleTerms

    return ParticleTerms({}, {}, ["y"], {}, {}, None, None, enumerated=["y"])


def unsized_plate_model(x):
    with pyro.plate("data"):  # no size: the plate takes the sites' 3 entries
        z = pyro.sample("z", dist.Normal(torch.zeros(3, 1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[:3])


def unsized_plate_guide(x):
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(torch.zeros(3, 1), 1.0).to_event(1))


def unbroadcast_unsized_plate_model(x):
    with pyro.plate("data"):  # no size, and z has no batch dimension for it to take
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[:1])


def unbroadcast_unsized_plate_guide(x):
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))


TRACE_REFUSALS = [
    (
        "a data plate without a size",
        lambda: log_likelihood(unsized_plate_model, unsized_plate_guide, X, num_samples=2),
        DataError,
        # the program is first checked on two of the points
        "plate 'data' has no size and site 'z' has 3 entries along it, but the batch has 2 "
        "points; size the plate: pyro.plate('data', x.shape[0])",
    ),
    (
        "a data plate without a size that a site does not broadcast along",
        lambda: log_likelihood(
            unbroadcast_unsized_plate_model, unbroadcast_unsized_plate_guide, X, num_samples=2
        ),
        DataError,
        # a site with no dimension at the plate's has one entry along it
        "plate 'data' has no size and site 'z' has 1 entries along it, but the batch has 2 "
        "points; size the plate: pyro.plate('data', x.shape[0])",
    ),
    (
        "no data tensor",
        lambda: trace.batch_size_of(("not a tensor",)),
        DataError,
        "no data tensor given; pass the data as (model, guide, x, ...)",
    ),
    (
        "a scalar among the data",
        lambda: trace.batch_size_of((torch.zeros(3, 2), torch.tensor(1.0))),
        DataError,
        "positional data tensors have different lengths along dim 0 [(3, 2), ()]; every "
        "positional tensor is sliced with the data points, pass extra inputs as keywords",
    ),
    (
        "a site outside the data plate",
        lambda: trace.data_plate_frame("z", {"cond_indep_stack": [_frame("rows", -1)]}, "data"),
        DataError,
        "sample site 'z' is outside plate 'data'; per-example weights need every sample site "
        "inside the data plate (or pass data_plate= the name of your data plate)",
    ),
    (
        "a site outside the data plate, for another need",
        lambda: trace.data_plate_frame("w", {"cond_indep_stack": []}, "batch", needs="AIS needs"),
        DataError,
        "sample site 'w' is outside plate 'batch'; AIS needs every sample site inside the data "
        "plate (or pass data_plate= the name of your data plate)",
    ),
    (
        "log-density dimensions left of every plate",
        lambda: trace._site_log_prob(
            "z",
            {"cond_indep_stack": [_frame("data", -1)], "log_prob": torch.zeros(2, 4, 5)},
            -2,
            "data",
        ),
        DataError,
        "site 'z' has log-density dimensions (2, 4, 5) left of every plate and enumeration; "
        "declare batch dimensions with pyro.plate or .to_event()",
    ),
    (
        "parameters that stay attached",
        lambda: trace.detach_distribution(_attached_transform_distribution()),
        ConfigError,
        "cannot detach the parameters of TransformedDistribution for DReG; use a guide whose "
        "distribution holds its parameters as tensors, or --objective iwae",
    ),
    (
        "a KL weight with enumerated sites",
        lambda: _enumerated_terms().log_weights(0.25),
        ConfigError,
        "a KL weight of 0.25 cannot scale latent terms once the enumerated sites ['y'] are "
        "summed out; use KL weight 1 (no warm-up, beta or free bits) or Pyro's TraceEnum_ELBO",
    ),
    (
        "an unknown particle strategy",
        lambda: trace.particle_terms(model, exact_guide, 3, X, strategy="serial"),
        ConfigError,
        "unknown particle strategy 'serial'; choose one of ('vectorized', 'replicate')",
    ),
]


@pytest.mark.parametrize(
    "call, exc_type, message", [c[1:] for c in TRACE_REFUSALS], ids=[c[0] for c in TRACE_REFUSALS]
)
def test_the_trace_helpers_refuse_with_the_whole_message(call, exc_type, message):
    with pytest.raises(exc_type, match=whole(message)):
        call()


def test_dreg_reads_the_dependency_of_a_guide_that_a_keyword_argument_switches_on():
    """The dependency check runs the programs with the loss's keyword arguments: q(z1 | ...)
    reads the draw of z2 only under ``coupled=True``, and only that call is refused."""

    def two_model(x: torch.Tensor, coupled: bool = False) -> None:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1, 1.0).to_event(1), obs=x)

    def two_guide(x: torch.Tensor, coupled: bool = False) -> None:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x / 3, 1.0).to_event(1))
            loc = (x + z2) / 2 if coupled else x / 2
            pyro.sample("z1", dist.Normal(loc, 0.8).to_event(1))

    pyro.set_rng_seed(0)
    assert torch.isfinite(make_objective("dreg", 3).loss(two_model, two_guide, X).loss)
    with pytest.raises(ConfigError, match=whole(DEPENDENT_GUIDE_REFUSAL)):
        make_objective("dreg", 3).loss(two_model, two_guide, X, coupled=True)


def test_kl_weight_scales_only_the_latent_terms_of_model_and_guide():
    """log w = log p(x | z) + w (log p(z) - log q(z | x)) - log q(aux): a guide site the model
    observes ('aux', not latent) enters unweighted, as the observed model site 'x' does."""
    from pyro_vae.infer import ParticleTerms

    log_p = {"z": torch.tensor([[-1.0]]), "x": torch.tensor([[-2.0]])}
    log_q = {"z": torch.tensor([[-0.5]]), "aux": torch.tensor([[-3.0]])}
    terms = ParticleTerms(log_p, log_q, ["z"], {}, {}, None, None)
    expected = -2.0 + 0.25 * (-1.0 - -0.5) - -3.0
    assert torch.equal(terms.log_weights(kl_weight=0.25), torch.tensor([[expected]]))
    assert torch.equal(terms.log_weights(), torch.tensor([[-2.0 - 1.0 + 0.5 + 3.0]]))
