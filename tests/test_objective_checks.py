"""Objectives against answers written here in plain torch: the bounds of programs that take
extra inputs and name their data plate, the VIMCO score-function gradient, the DReG gradient,
free bits, and the refusals of a guide that draws a parent after its child."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer import dreg_loss, free_bits_loss, iwae_loss, make_objective
from pyro_vae.infer.objectives import DReG, importance_weighted_loss

F64 = torch.float64
X = torch.tensor([[0.3], [-1.2], [0.8], [2.1]], dtype=F64)
Y = torch.tensor([[0.5], [-0.4], [1.0], [0.2]], dtype=F64)


def shifted_model(x, y, *, s):
    """z ~ N(y, 1), x ~ N(z, s^2), per point, in a plate named "obs"."""
    with pyro.plate("obs", x.shape[0]):
        z = pyro.sample("z", dist.Normal(y, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)


def shifted_posterior(x, y, *, s):
    """The exact posterior p(z | x) = N((y s^2 + x) / (1 + s^2), s^2 / (1 + s^2))."""
    with pyro.plate("obs", x.shape[0]):
        loc = (y * s**2 + x) / (1 + s**2)
        pyro.sample("z", dist.Normal(loc, s / math.sqrt(1 + s**2)).to_event(1))


def shifted_log_px(x, y, s):
    """log p(x) = log N(x; y, 1 + s^2), summed over the points."""
    return float(torch.distributions.Normal(y, math.sqrt(1 + s**2)).log_prob(x).sum())


@pytest.mark.parametrize("name", ["elbo", "meanfield", "iwae", "dreg"])
def test_every_objective_passes_extra_inputs_and_its_data_plate_to_the_programs(name):
    """Under the exact posterior every log weight is log p(x), so whatever the KL weight each
    objective reports the ELBO sum_n log p(x_n) on any draw, and with KL weight 1 the loss of
    the sampled bounds is -sum_n log p(x_n) (meanfield's analytic KL leaves its loss random):
    programs with a positional input after x, a keyword input and a data plate named "obs"."""
    s = 0.5
    exact = shifted_log_px(X, Y, s)
    particles = 3 if name in ("iwae", "dreg") else 1
    weighted = make_objective(name, particles, data_plate="obs")
    value = weighted.loss(shifted_model, shifted_posterior, X, 0.5, Y, s=s)
    assert value.elbo == pytest.approx(exact, abs=1e-9)
    if name != "meanfield":
        obj = make_objective(name, particles, data_plate="obs")
        value = obj.loss(shifted_model, shifted_posterior, X, 1.0, Y, s=s)
        assert float(value.loss.detach()) == pytest.approx(-exact, abs=1e-9)
        assert value.elbo == pytest.approx(exact, abs=1e-9)


def test_the_bound_functions_pass_extra_inputs_on_and_by_default_weigh_the_kl_once():
    s = 0.7
    exact = shifted_log_px(X, Y, s)
    for fn in (iwae_loss, dreg_loss):
        value = fn(shifted_model, shifted_posterior, X, 3, 1.0, Y, data_plate="obs", s=s)
        assert float(value.loss.detach()) == pytest.approx(-exact, abs=1e-9)
        assert value.elbo == pytest.approx(exact, abs=1e-9)

    def model(x, *, y, s):
        shifted_model(x, y, s=s)

    def guide(x, *, y, s):
        shifted_posterior(x, y, s=s)

    value = importance_weighted_loss(model, guide, X, 3, data_plate="obs", y=Y, s=s)
    assert float(value.loss.detach()) == pytest.approx(-exact, abs=1e-9)


def coin_programs(mu, logits, drawn):
    """b ~ Bernoulli(sigmoid(-0.8)), x ~ N(mu b, 1); the guide draws b ~ Bernoulli(logits) (no
    pathwise gradient) and keeps its last draw in ``drawn``."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(logits=torch.tensor([-0.8], dtype=F64)).to_event(1))
            pyro.sample("x", dist.Normal(mu * b, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            drawn[:] = [pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))]

    return model, guide


def test_the_iwae_gradient_of_a_discrete_site_carries_the_vimco_score_function_term():
    """With K = 3 draws b_k of a Bernoulli site, L = log mean_k w_k and the gradient is
    grad L + sum_k l_k grad log q(b_k), l_k = L - log mean(w with w_k replaced by the geometric
    mean of the other two) (Mnih & Rezende 2016), computed here particle by particle; the loss
    is -sum_n L_n (the score-function term adds no value)."""
    k = 3
    mu = torch.tensor(1.5, dtype=F64, requires_grad=True)
    logits = torch.tensor([[0.4], [-0.7], [1.1], [0.0]], dtype=F64, requires_grad=True)
    drawn = []
    model, guide = coin_programs(mu, logits, drawn)
    pyro.set_rng_seed(3)
    loss = iwae_loss(model, guide, X, k).loss
    got = torch.autograd.grad(loss, [mu, logits])

    b = drawn[0].detach()  # (K, batch, 1)
    assert b.shape == (k, 4, 1) and 0 < float(b.sum()) < b.numel()  # both values drawn
    log_q = torch.distributions.Bernoulli(logits=logits).log_prob(b).sum(-1)
    log_sigmoid = torch.nn.functional.logsigmoid
    prior = torch.tensor(-0.8, dtype=F64)
    log_prior = (b * log_sigmoid(prior) + (1 - b) * log_sigmoid(-prior)).sum(-1)
    log_lik = torch.distributions.Normal(mu * b, 1.0).log_prob(X).sum(-1)
    lw = log_prior + log_lik - log_q  # (K, batch)
    bound = torch.logsumexp(lw, 0) - math.log(k)
    fixed = lw.detach()
    signals = []
    for j in range(k):
        others = [fixed[i] for i in range(k) if i != j]
        geometric = sum(others) / len(others)
        replaced = [geometric if i == j else fixed[i] for i in range(k)]
        signals.append(bound.detach() - (torch.logsumexp(torch.stack(replaced), 0) - math.log(k)))
    surrogate = bound.sum() + (torch.stack(signals) * log_q).sum()
    want = torch.autograd.grad(-surrogate, [mu, logits])

    assert float(loss.detach()) == pytest.approx(-float(bound.detach().sum()), abs=1e-12)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12)


def test_the_dreg_gradient_matches_the_doubly_reparameterized_estimator_written_out():
    """q(z | x) = N(a x + c, sd^2) on the shifted model with a learnt prior scale t; with the
    draws z_k = loc + sd eps_k, log w_k scored with q's parameters held fixed and
    w~_k the normalized weights, the decoder gradient is sum_k w~_k grad_t log w_k and the
    encoder gradient sum_k w~_k^2 grad_(a, c, sd) log w_k (Tucker et al. 2019, eq. 5)."""
    k, s = 4, 0.6
    t = torch.tensor(1.3, dtype=F64, requires_grad=True)
    enc = torch.tensor([0.5, 0.1, 0.8], dtype=F64, requires_grad=True)  # a, c, sd
    drawn = []

    def model(x, y, *, s):
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(y, t).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    def guide(x, y, *, s):
        with pyro.plate("obs", x.shape[0]):
            drawn[:] = [pyro.sample("z", dist.Normal(enc[0] * x + enc[1], enc[2]).to_event(1))]

    pyro.set_rng_seed(4)
    value = dreg_loss(model, guide, X, k, 1.0, Y, data_plate="obs", s=s)
    got = torch.autograd.grad(value.loss, [t, enc])

    loc, sd = enc[0] * X + enc[1], enc[2]
    eps = ((drawn[0] - loc) / sd).detach()  # (K, batch, 1)
    z = loc + sd * eps
    normal = torch.distributions.Normal
    lw = (
        normal(Y, t).log_prob(z)
        + normal(z, s).log_prob(X)
        - normal(loc.detach(), sd.detach()).log_prob(z)
    ).sum(-1)  # (K, batch)
    w = torch.softmax(lw.detach(), 0)
    decoder = torch.autograd.grad(-(w * lw).sum(), t, retain_graph=True)[0]
    encoder = torch.autograd.grad(-(w**2 * lw).sum(), enc)[0]
    bound = torch.logsumexp(lw.detach(), 0) - math.log(k)

    assert float(value.loss.detach()) == pytest.approx(-float(bound.sum()), abs=1e-12)
    assert value.elbo == pytest.approx(float(lw.detach().mean(0).sum()), abs=1e-12)
    assert torch.allclose(got[0], decoder, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got[1], encoder, rtol=1e-10, atol=1e-12)


def test_free_bits_pass_extra_inputs_and_the_data_plate_to_the_programs():
    """x ~ N(0, s^2) whatever z, and q(z | x) = N((x, 2x), diag(1, s^2)) against p(z) = N(0, I):
    per point KL_1 = x^2 / 2, KL_2 = -log s + (s^2 + 4x^2 - 1) / 2, and the loss is
    -sum_n log N(x_n; 0, s^2) + batch * w * sum_d max(lambda, mean_n KL_d)."""

    def model(x, *, s):
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.zeros(1, dtype=F64), s).to_event(1), obs=x)

    def guide(x, *, s):
        with pyro.plate("obs", x.shape[0]):
            scale = torch.tensor([1.0, s], dtype=F64)
            pyro.sample("z", dist.Normal(torch.cat([x, 2 * x], -1), scale).to_event(1))

    x = torch.tensor([[0.1], [0.2], [-0.3]], dtype=F64)
    s, lam, w = 0.4, 0.3, 0.5
    u = x[:, 0]
    kl_1 = float((u**2 / 2).mean())  # below the floor
    kl_2 = float((-math.log(s) + (s**2 + 4 * u**2 - 1) / 2).mean())  # above it
    assert kl_1 < lam < kl_2
    log_px = float(torch.distributions.Normal(0.0, torch.tensor(s, dtype=F64)).log_prob(u).sum())
    expected = -log_px + 3 * w * (lam + kl_2)

    obj = make_objective("elbo", free_bits=lam, data_plate="obs")
    assert float(obj.loss(model, guide, x, w, s=s).loss) == pytest.approx(expected, rel=1e-12)
    direct = free_bits_loss(model, guide, x, lam, w, data_plate="obs", s=s)
    assert float(direct.loss) == pytest.approx(expected, rel=1e-12)


def test_free_bits_draw_the_particle_at_the_dimension_given():
    """The latent site carries two copies of z left of the data plate (a batch dimension no
    plate declares), so the particle goes at dim -3, as given; each KL_d is the mean over
    copies and points: KL_1 = mean (m^2 / 2), KL_2 = mean (-log 0.5 + (0.25 + m^2 - 1) / 2) with
    m the copy's mean (x + 0.5 copy index), x ~ N(0, 1) whatever z."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(torch.zeros(2, x.shape[0], 2, dtype=F64), 1.0).to_event(1)
            pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(torch.zeros(1, dtype=F64), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            m = torch.stack([x, x + 0.5]).expand(2, x.shape[0], 2)
            scale = torch.tensor([1.0, 0.5], dtype=F64)
            pyro.sample("z", dist.Normal(m, scale).to_event(1))

    x = torch.tensor([[0.1], [0.9], [-0.3]], dtype=F64)
    lam = 0.2
    m = torch.stack([x[:, 0], x[:, 0] + 0.5])  # (copies, batch)
    kl_1 = float((m**2 / 2).mean())
    kl_2 = float((-math.log(0.5) + (0.25 + m**2 - 1) / 2).mean())
    log_px = float(torch.distributions.Normal(torch.zeros((), dtype=F64), 1.0).log_prob(x).sum())
    expected = -log_px + 3 * (max(lam, kl_1) + max(lam, kl_2))
    got = free_bits_loss(model, guide, x, lam, particle_dim=-3)
    assert float(got.loss) == pytest.approx(expected, rel=1e-12)


def test_free_bits_train_programs_that_cannot_carry_a_particle_dimension():
    """The model concatenates its draw with the data point, (batch, 2) beside (batch, 1), so
    the programs hold no dimension left of the data plate (the ELBO trains them). With z the
    guide's draw, q(z | x) = N((x, -x), diag(0.5^2, 1)) and p(x | z) = N(z_1 - 0.5 z_2 + 0.3 x, 1):
    loss = -sum_n log p(x_n | z_n) + batch * sum_d max(lambda, mean_n KL_d),
    KL_1 = mean (-log 0.5 + (0.25 + x^2 - 1) / 2), KL_2 = mean (x^2 / 2)."""
    drawn = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            features = torch.cat([z, x], -1)
            loc = features @ torch.tensor([[1.0], [-0.5], [0.3]], dtype=F64)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            scale = torch.tensor([0.5, 1.0], dtype=F64)
            drawn[:] = [pyro.sample("z", dist.Normal(torch.cat([x, -x], -1), scale).to_event(1))]

    x = torch.tensor([[0.4], [-1.1], [0.7]], dtype=F64)
    lam = 0.35
    pyro.set_rng_seed(2)
    got = make_objective("elbo", free_bits=lam).loss(model, guide, x)
    z, u = drawn[0], x[:, 0]
    assert z.shape == (3, 2)
    loc = z[:, 0] - 0.5 * z[:, 1] + 0.3 * u
    log_lik = float(torch.distributions.Normal(loc, 1.0).log_prob(u).sum())
    kl_1 = float((-math.log(0.5) + (0.25 + u**2 - 1) / 2).mean())
    kl_2 = float((u**2 / 2).mean())
    assert kl_1 > lam > kl_2
    assert float(got.loss) == pytest.approx(-log_lik + 3 * (kl_1 + lam), rel=1e-12)


def chain_model(x, *, bottom_up):
    """z1 ~ N(0, 1), z2 ~ N(z1, 1), x ~ N(z2, 1): a top-down hierarchy (``bottom_up`` is the
    guide's)."""
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.Normal(torch.zeros(1, dtype=F64), 1.0).to_event(1))
        z2 = pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z2, 1.0).to_event(1), obs=x)


def chain_guide(x, *, bottom_up):
    """Draws z1 then z2 from it (top-down), or z2 from x then z1 from z2 (bottom-up)."""
    with pyro.plate("data", x.shape[0]):
        if bottom_up:
            z2 = pyro.sample("z2", dist.Normal(x / 2, 0.8).to_event(1))
            pyro.sample("z1", dist.Normal(z2 / 2, 0.8).to_event(1))
        else:
            z1 = pyro.sample("z1", dist.Normal(x / 3, 0.8).to_event(1))
            pyro.sample("z2", dist.Normal((x + z1) / 2, 0.8).to_event(1))


def conflict(what):
    return (
        f"{what} of site 'z2' is taken against p(z2 | z1) at the guide's draw of 'z1', which the "
        "guide makes after 'z2' (from it), so it would be biased; use --objective elbo without "
        "free bits, or a guide that draws 'z1' first (a top-down guide, e.g. --inference ladder)"
    )


class FreeBitsDReG(DReG):
    """A DReG objective that also takes free bits: its checks include the base's."""

    allows_free_bits = True


@pytest.mark.parametrize(
    "make, what, top_down_passes",
    [
        (lambda: make_objective("elbo", free_bits=0.5), "free bits", True),
        (lambda: make_objective("meanfield"), "meanfield's analytic KL", True),
        (lambda: FreeBitsDReG(free_bits=0.5), "free bits", False),
    ],
    ids=["free bits", "meanfield", "a dreg subclass with free bits"],
)
def test_a_guide_that_a_keyword_makes_bottom_up_is_refused_whole(make, what, top_down_passes):
    """The guide's order is chosen by a keyword input: top-down passes the check (DReG refuses
    it for its own reason, z2 drawn from z1), bottom-up (z1 drawn after z2, from it) is refused
    with the whole message, the base's free-bits check coming before DReG's."""
    x = X[:3]
    if top_down_passes:
        make().loss(chain_model, chain_guide, x, bottom_up=False)
    with pytest.raises(ConfigError, match=whole(conflict(what))):
        make().loss(chain_model, chain_guide, x, bottom_up=True)
