"""Likelihoods: normalization over the support, stability, support checks, head sizes."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.errors import DataError
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.parts import (
    LIKELIHOODS,
    Bernoulli,
    ContinuousBernoulli,
    DiscretizedLogistic,
    HeteroscedasticNormal,
    Laplace,
    LearnedScaleNormal,
    NegativeBinomial,
    Normal,
    Poisson,
)


def _params(*columns: float) -> torch.Tensor:
    """One element's decoder outputs: (1, num_params) in float64."""
    return torch.tensor([columns], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_shapes_follow_the_contract(name):
    lik = LIKELIHOODS[name]()
    d = lik(torch.randn(5, 2, 3, lik.num_params))
    assert d.batch_shape == (5, 2, 3) and d.event_shape == ()


def test_bernoulli_sums_to_one():
    d = Bernoulli()(_params(0.7))
    assert float(d.log_prob(torch.tensor([[0.0], [1.0]], dtype=torch.float64)).exp().sum()) == (
        pytest.approx(1.0, abs=1e-12)
    )


@pytest.mark.parametrize("loc,raw_scale", [(0.5, -2.0), (-1.0, 0.0), (2.0, -4.0), (0.3, -8.0)])
def test_discretized_logistic_sums_to_one_over_256_levels(loc, raw_scale):
    d = DiscretizedLogistic()(_params(loc, raw_scale))
    levels = (torch.arange(256, dtype=torch.float64) / 255)[:, None]
    probs = d.log_prob(levels).exp()
    assert torch.all(probs >= 0)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-9)


def test_discretized_logistic_bin_mass_is_cdf_difference():
    d = DiscretizedLogistic()(_params(0.4, -1.0))
    scale = float(torch.nn.functional.softplus(torch.tensor(-1.0))) + 1e-3
    x = 100 / 255
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    expected = sig((x + 0.5 / 255 - 0.4) / scale) - sig((x - 0.5 / 255 - 0.4) / scale)
    got = float(d.log_prob(torch.tensor([[x]], dtype=torch.float64)).exp())
    assert got == pytest.approx(expected, rel=1e-9)


def _log_softplus(t: float) -> float:
    """log(1 + e^t) in float64 without overflow."""
    return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


def _discretized_logistic_reference(k: int, loc: float, scale: float) -> float:
    """log P(bin k) in float64 from a form with no cancellation anywhere:
    sigmoid(a) - sigmoid(b) = e^b (e^(a-b) - 1) / ((1 + e^a)(1 + e^b)), a > b."""
    h = 0.5 / 255
    a, b = (k / 255 + h - loc) / scale, (k / 255 - h - loc) / scale
    if k == 0:
        return -_log_softplus(-a)  # log sigmoid(a)
    if k == 255:
        return -_log_softplus(b)  # log (1 - sigmoid(b))
    return b + math.log(math.expm1(a - b)) - _log_softplus(a) - _log_softplus(b)


@pytest.mark.parametrize(
    "loc,scale,dtype",
    [
        (0.2, 0.01, torch.float32),
        (0.1, 0.004, torch.float32),
        (0.9, 0.004, torch.float32),
        (0.5, 0.05, torch.float32),
        (-0.3, 0.1, torch.float32),
        (0.05, 0.0011, torch.float64),
    ],
)
def test_discretized_logistic_tails_match_float64_closed_form(loc, scale, dtype):
    """Every one of the 256 bins against the float64 closed form.

    Far in the right tail both CDF values round to 1 (log-CDFs to 0) once the bin is more than
    about 90 scales above loc in float32 (about 740 in float64), and far in the left tail the
    complementary CDFs do, so the bin mass must be taken from the tail that keeps it:
    log-probabilities reach -225 nats in float32 and -860 in float64 here.
    """
    raw = math.log(math.expm1(scale - 1e-3))  # softplus(raw) + 1e-3 = scale
    d = DiscretizedLogistic()(torch.tensor([[loc, raw]], dtype=dtype))
    levels = (torch.arange(256, dtype=dtype) / 255)[:, None]
    got = d.log_prob(levels)[:, 0].double()
    scale = float(torch.nn.functional.softplus(torch.tensor(raw, dtype=torch.float64))) + 1e-3
    want = torch.tensor(
        [_discretized_logistic_reference(k, loc, scale) for k in range(256)], dtype=torch.float64
    )
    assert torch.isfinite(got).all()
    # float32 inputs (value - loc) / scale carry a relative error ~1e-7: 1e-5 of |log p|
    rtol, atol = (1e-5, 2e-4) if dtype == torch.float32 else (1e-10, 1e-10)
    assert torch.allclose(got, want, rtol=rtol, atol=atol)


def test_discretized_logistic_samples_lie_on_the_grid():
    d = DiscretizedLogistic()(torch.randn(50, 2))
    x = d.sample((3,))
    assert DiscretizedLogistic.support.check(x).all()


@pytest.mark.parametrize("loc,scale", [(0.01, 0.01), (0.5, 0.05), (0.97, 0.02)])
def test_discretized_logistic_samples_follow_the_bin_masses(loc, scale):
    """Sample frequencies of every bin, end bins included, against exp(log_prob)."""
    raw = math.log(math.expm1(scale - 1e-3))
    d = DiscretizedLogistic()(torch.tensor([[loc, raw]], dtype=torch.float64))
    n = 200_000
    torch.manual_seed(0)
    x = d.sample((n,))[:, 0]
    counts = torch.bincount((x * 255).round().long(), minlength=256).double()
    p = d.log_prob((torch.arange(256, dtype=torch.float64) / 255)[:, None])[:, 0].exp()
    se = (p * (1 - p) / n).sqrt()
    # 5 binomial standard errors per bin (256 bins), plus 1e-5 for bins of tiny mass
    assert ((counts / n - p).abs() < 5 * se + 1e-5).all()


@pytest.mark.parametrize(
    "lik,params,x,expected",
    [
        # N(x; mu, s), s = softplus(raw) + 1e-3
        (HeteroscedasticNormal(), (0.3, -0.5), 1.1, "normal"),
        (Laplace(), (-0.4, 0.7), 0.9, "laplace"),
    ],
)
def test_location_scale_log_prob_is_the_closed_form(lik, params, x, expected):
    mu, raw = params
    s = math.log1p(math.exp(raw)) + 1e-3
    if expected == "normal":
        want = -0.5 * ((x - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    else:
        want = -abs(x - mu) / s - math.log(2 * s)
    got = float(lik(_params(*params)).log_prob(torch.tensor([[x]], dtype=torch.float64)))
    assert got == pytest.approx(want, abs=1e-12)


def test_count_log_probs_are_the_closed_forms():
    # Poisson: rate = softplus(r) + 1e-6; log p(k) = k log rate - rate - log k!
    rate = math.log1p(math.exp(0.4)) + 1e-6
    k = 3.0
    got = float(Poisson()(_params(0.4)).log_prob(torch.tensor([[k]], dtype=torch.float64)))
    assert got == pytest.approx(k * math.log(rate) - rate - math.lgamma(k + 1), abs=1e-12)
    # NegativeBinomial: total r = softplus(t) + 1e-4, logits l (success probability sigmoid(l))
    # log p(k) = log Gamma(k + r) - log Gamma(r) - log k! + r log(1 - p) + k log p
    lg, t = -0.3, 0.8
    r = math.log1p(math.exp(t)) + 1e-4
    log_p, log_1mp = -math.log1p(math.exp(-lg)), -math.log1p(math.exp(lg))
    want = math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) + r * log_1mp + k * log_p
    d = NegativeBinomial()(_params(lg, t))
    assert float(d.log_prob(torch.tensor([[k]], dtype=torch.float64))) == pytest.approx(
        want, abs=1e-12
    )
    assert float(d.mean) == pytest.approx(r * math.exp(lg), rel=1e-12)


def test_fixed_scale_normals_refuse_a_zero_scale():
    for cls in (Normal, LearnedScaleNormal):
        with pytest.raises(ValueError, match="scale must be positive, got 0.0"):
            cls(scale=0.0)


@pytest.mark.parametrize("rate_raw", [-3.0, 0.0, 2.0, 15.0])
def test_poisson_sums_to_one(rate_raw):
    d = Poisson()(_params(rate_raw))
    counts = torch.arange(400, dtype=torch.float64)[:, None]  # tail beyond 400 is < 1e-100
    assert float(d.log_prob(counts).exp().sum()) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("logit,raw_total", [(-2.0, 0.0), (0.5, 1.0), (1.0, -2.0)])
def test_negative_binomial_sums_to_one(logit, raw_total):
    d = NegativeBinomial()(_params(logit, raw_total))
    # Geometric-type tail: p = sigmoid(logit) <= 0.74, so mass beyond 2000 is < 1e-200.
    counts = torch.arange(2000, dtype=torch.float64)[:, None]
    assert float(d.log_prob(counts).exp().sum()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("logit", [-12.0, -5.0, -1e-2, -1e-5, 0.0, 1e-6, 3e-3, 0.2, 5.0, 12.0])
def test_continuous_bernoulli_integrates_to_one(logit):
    """lambda = sigmoid(logit) near 0 (logit -12), near 0.5 (|logit| tiny) and near 1."""
    d = ContinuousBernoulli()(_params(logit))
    x = torch.linspace(0, 1, 200001, dtype=torch.float64)[:, None]
    dens = d.log_prob(x).exp()[:, 0]
    assert float(torch.trapezoid(dens, x[:, 0])) == pytest.approx(1.0, abs=1e-6)


def test_continuous_bernoulli_float32_is_stable_near_half():
    """In float32 the probs-form normalizer cancels near lambda = 0.5; ours does not."""
    logits = torch.tensor([[-1e-3], [-1e-7], [0.0], [1e-7], [1e-3]])
    d = ContinuousBernoulli()(logits)
    lp = d.log_prob(torch.full((5, 1), 0.3))
    # Exact: log C -> log 2 as logit -> 0, and the Bernoulli part -> log(1/2).
    assert torch.allclose(lp, torch.full((5, 1), 0.0), atol=2e-3)
    assert torch.isfinite(lp).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_continuous_bernoulli_at_tiny_logits_matches_float64_closed_form(dtype, tol):
    """log C = log(l / tanh(l / 2)), evaluated in float64 where it is accurate, against the
    normalizer's series branch (|l| < 1e-2, l^2/6 there is 1.7e-5 and l^4/360 is 3e-11)."""
    logits = [0.0, 1e-7, -1e-5, 3e-4, -2e-3, 6e-3, -9.99e-3, 1e-2, -0.05]
    x = 0.3
    want = []
    for lg in logits:
        log_c = math.log(2.0) if lg == 0 else math.log(lg / math.tanh(lg / 2))
        log_sig, log_sig_neg = -_log_softplus(-lg), -_log_softplus(lg)
        want.append(log_c + x * log_sig + (1 - x) * log_sig_neg)
    d = ContinuousBernoulli()(torch.tensor(logits, dtype=dtype)[:, None])
    got = d.log_prob(torch.full((len(logits),), x, dtype=dtype)).double()  # batch (9,)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=tol)


def test_continuous_bernoulli_matches_torch_away_from_half():
    logits = torch.tensor([-4.0, -0.7, 1.3, 6.0], dtype=torch.float64)
    x = torch.tensor([0.1, 0.5, 0.8, 0.99], dtype=torch.float64)
    ours = ContinuousBernoulli()(logits[:, None]).log_prob(x)
    ref = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    assert torch.allclose(ours, ref, atol=1e-8)


@pytest.mark.parametrize(
    "lik,params",
    [
        (Normal(scale=0.3), (0.2,)),
        (LearnedScaleNormal(scale=0.4), (-0.1,)),
        (HeteroscedasticNormal(), (0.5, -1.0)),
        (Laplace(), (0.0, 0.3)),
    ],
)
def test_continuous_likelihoods_integrate_to_one(lik, params):
    d = lik(_params(*params))
    x = torch.linspace(-15, 15, 300001, dtype=torch.float64)[:, None]
    dens = d.log_prob(x).detach().exp()[:, 0]
    assert float(torch.trapezoid(dens, x[:, 0])) == pytest.approx(1.0, abs=1e-6)


def test_learned_scale_is_a_parameter_starting_at_scale():
    lik = LearnedScaleNormal(scale=0.25)
    assert float(lik.scale.detach()) == pytest.approx(0.25, abs=1e-5)
    assert len(list(lik.parameters())) == 1


@pytest.mark.parametrize(
    "lik,data,pattern",
    [
        (
            Poisson(),
            [0.0, 0.5, 1.0],
            r"Poisson likelihood needs non-negative integer counts; "
            r"data range \[0, 1\] has non-integers",
        ),
        (NegativeBinomial(), [-1.0, 2.0], r"NegativeBinomial.*data range \[-1, 2\]"),
        (
            Bernoulli(),
            [0.0, 2.0],
            r"Bernoulli likelihood needs values in \[0, 1\]; "
            r"data range \[0, 2\]",
        ),
        (ContinuousBernoulli(), [-0.5, 0.5], r"ContinuousBernoulli.*\[-0.5, 0.5\]"),
        (
            DiscretizedLogistic(),
            [0.0, 0.1234],
            r"DiscretizedLogistic likelihood needs 8-bit"
            r".*between the 256 levels",
        ),
        (Normal(), [0.0, float("nan")], r"NaN"),
        (DiscretizedLogistic(), [0.0, 2.0], r"DiscretizedLogistic.*data range \[0, 2\] is outside"),
    ],
)
def test_wrong_data_is_refused_with_part_and_range(lik, data, pattern):
    with pytest.raises(DataError, match=pattern):
        lik.check_data(torch.tensor(data))


@pytest.mark.parametrize(
    "lik,data",
    [
        (Poisson(), [0.0, 3.0, 17.0]),
        (NegativeBinomial(), [0.0, 1.0, 250.0]),
        (ContinuousBernoulli(), [0.0, 0.37, 1.0]),
        (DiscretizedLogistic(), [0.0, 1 / 255, 0.4, 1.0]),
        (Laplace(), [-3.0, 5.0]),
    ],
)
def test_right_data_is_accepted(lik, data):
    x = torch.tensor(data)
    if isinstance(lik, DiscretizedLogistic):
        x = torch.tensor([0, 1, 102, 255]) / 255.0
    lik.check_data(x)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_decoder_head_is_sized_from_num_params(name):
    vae = build_vae(ModelConfig(event_shape=(2, 3), latent_dim=2, hidden=(4,), likelihood=name))
    out = vae.decoder(torch.zeros(1, 2))
    assert out.shape == (1, LIKELIHOODS[name].num_params * 6)
    assert vae.decode(torch.zeros(4, 2)).batch_shape == (4,)
