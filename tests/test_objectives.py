import math

import pyro
import pytest
import torch
from ppca_encoder import LinearGaussian
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer import (
    KLSchedule,
    dreg_loss,
    iwae_loss,
    log_weights,
    make_objective,
    per_dim_kl,
)
from pyro_vae.infer.objectives import importance_weighted_loss


def test_trace_elbo_and_meanfield_agree_within_mc_error():
    lg = LinearGaussian()
    x = lg.sample_x(5)
    n = 4000
    pyro.set_rng_seed(0)
    elbo = make_objective("elbo", n).loss(lg.model, lg.guide, x).elbo
    mf = make_objective("meanfield", n).loss(lg.model, lg.guide, x).elbo
    with torch.no_grad():
        lw = log_weights(lg.model, lg.guide, x, n).sum(1)  # per-particle batch ELBO
    se = float(lw.std()) / math.sqrt(n)
    assert abs(elbo - mf) < 4 * se
    assert abs(elbo - float(lw.mean())) < 6 * se


def test_iwae_is_nondecreasing_in_k_and_reaches_log_px():
    lg = LinearGaussian()
    x = lg.sample_x(10)
    pyro.set_rng_seed(0)
    reps = 200
    means, ses = [], []
    with torch.no_grad():
        for k in (1, 4, 16, 64):
            vals = torch.stack(
                [-iwae_loss(lg.model, lg.guide, x, k).loss / x.shape[0] for _ in range(reps)]
            )
            means.append(float(vals.mean()))
            ses.append(float(vals.std()) / math.sqrt(reps))
    for i in range(3):
        assert means[i + 1] > means[i] - 3 * math.hypot(ses[i], ses[i + 1])
    assert means[-1] > means[0] + 0.5  # the bound tightens markedly on this poor encoder
    assert means[-1] < float(lg.log_px(x).mean()) + 3 * ses[-1]


def test_iwae_closes_the_known_gap_of_an_overdispersed_proposal():
    """q(z | x) = N(m, c^2 S) around the exact posterior N(m, S), c = 1.5, L = 2 latents.

    Known answers: the ELBO (K = 1) is log p(x) - KL(q || p(z | x)), KL = L/2 (c^2 - 1 - 2 log c)
    = 0.4395 nats; the IWAE-K gap is about var(w / p(x)) / (2K) = 0.4465 / (2K), 2e-4 nats at
    K = 1000. An "IWAE" that averages the log weights stays at the ELBO for every K.
    """
    lg = LinearGaussian()
    x = lg.sample_x(10).repeat(10, 1)  # 100 points: the mean over them averages the noise down
    guide = lg.exact_guide(scale=1.5)
    exact = float(lg.log_px(x).mean())
    kl = 0.5 * lg.L * (1.5**2 - 1 - 2 * math.log(1.5))
    pyro.set_rng_seed(0)
    with torch.no_grad():
        elbo = -float(iwae_loss(lg.model, guide, x.repeat(10, 1), 1).loss) / (10 * x.shape[0])
        bound = -float(iwae_loss(lg.model, guide, x, 1000).loss) / x.shape[0]
    # sd(log w) = (c^2 - 1) sqrt(L / 2) = 1.25 per point: SE 0.04 over 1000 points
    assert elbo == pytest.approx(exact - kl, abs=4 * 1.25 / math.sqrt(1000))
    # sd of log mean_k w_k ~ sqrt(0.4465 / 1000) = 0.021 per point: SE 0.0021 over 100 points
    assert bound == pytest.approx(exact - 0.4465 / 2000, abs=0.01)
    # the reported ELBO is the beta = 1 one whatever KL weight is optimized
    with torch.no_grad():
        reported = iwae_loss(lg.model, guide, x.repeat(10, 1), 1, kl_weight=0.3).elbo / 1000
    assert reported == pytest.approx(exact - kl, abs=4 * 1.25 / math.sqrt(1000))


def _grads(loss_fn, lg, x, k, reps):
    enc, dec = [], []
    for _ in range(reps):
        lg.zero_grad()
        loss_fn(lg.model, lg.guide, x, k).loss.backward()
        enc.append(lg.enc.weight.grad.flatten().clone())
        dec.append(lg.W.grad.flatten().clone())
    return torch.stack(enc), torch.stack(dec)


def test_dreg_gradient_same_mean_lower_encoder_variance():
    # near the optimum, where IWAE's encoder gradient is dominated by noise (Rainforth et al.
    # 2018) and DReG's is not (Tucker et al. 2019)
    lg = LinearGaussian(orthogonal=True)
    lg.set_encoder_to_posterior(noise=0.1)
    x = lg.sample_x(4)
    k, reps = 16, 300
    pyro.set_rng_seed(0)
    enc_i, dec_i = _grads(iwae_loss, lg, x, k, reps)
    enc_d, dec_d = _grads(dreg_loss, lg, x, k, reps)
    for a, b in ((enc_i, enc_d), (dec_i, dec_d)):
        se = (a.var(0) / reps + b.var(0) / reps).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < 4.5 * se + 1e-6).all()
    assert enc_d.var(0).sum() < 0.5 * enc_i.var(0).sum()
    # same value: DReG changes only the gradient
    pyro.set_rng_seed(3)
    v1 = iwae_loss(lg.model, lg.guide, x, k).loss
    pyro.set_rng_seed(3)
    v2 = dreg_loss(lg.model, lg.guide, x, k).loss
    assert torch.allclose(v1, v2, atol=1e-4)


def test_kl_weight_scales_only_the_latent_terms():
    lg = LinearGaussian()
    x = lg.sample_x(6)
    obj = make_objective("meanfield")
    with torch.no_grad():
        obj.loss(lg.model, lg.guide, x)  # Pyro guesses the plate nesting on first use
        values = {}
        for w in (1.0, 0.0, 0.5):
            pyro.set_rng_seed(0)  # the same z sample: the reconstruction terms cancel
            values[w] = obj.loss(lg.model, lg.guide, x, w).loss
        full, none, half = values[1.0], values[0.0], values[0.5]
        q = lg.family(lg.enc(x))
        kl = torch.distributions.kl_divergence(q.base_dist, torch.distributions.Normal(0.0, 1.0))
    # meanfield: -log p(x | z) + w KL(q || p), the KL analytic
    kl = float(kl.sum())
    assert kl > 0
    assert float(half - none) == pytest.approx(0.5 * kl, rel=1e-4)
    assert float(full - none) == pytest.approx(kl, rel=1e-4)
    # the reported ELBO is the true one whatever the weight
    pyro.set_rng_seed(0)
    r = make_objective("elbo", 2000).loss(lg.model, lg.guide, x, 0.1)
    pyro.set_rng_seed(1)
    t = make_objective("elbo", 2000).loss(lg.model, lg.guide, x, 1.0)
    assert r.elbo == pytest.approx(t.elbo, abs=0.05 * abs(t.elbo))
    assert -float(r.loss.detach()) > t.elbo  # a down-weighted KL gives a larger objective


def test_schedules():
    lin = KLSchedule(beta=2.0, warmup="linear", warmup_epochs=4)
    assert [lin.weight(t) for t in (0, 2, 4, 10)] == [0.0, 1.0, 2.0, 2.0]
    cyc = KLSchedule(warmup="cyclical", warmup_epochs=4)
    assert [cyc.weight(t) for t in (0, 1, 2, 3, 4, 5)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    assert KLSchedule(beta=0.3).weight(7) == 0.3
    with pytest.raises(
        ConfigError,
        match=whole("warm-up 'linear' needs warmup_epochs > 0, got 0.0; set --warmup-epochs"),
    ):
        KLSchedule(warmup="linear")


def test_free_bits_floor_per_dimension():
    lg = LinearGaussian()
    x = lg.sample_x(6)
    with torch.no_grad():
        q = lg.family(lg.enc(x))
        p = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(lg.L), 1.0), 1)
        kl = per_dim_kl(q, p, q.sample())
        assert kl.shape == (6, lg.L)
        lam = float(kl.mean(0).max()) + 1.0  # above every dimension's KL: all at the floor
        pyro.set_rng_seed(0)
        fb = make_objective("elbo", free_bits=lam).loss(lg.model, lg.guide, x)
        pyro.set_rng_seed(0)
        zero = iwae_loss(lg.model, lg.guide, x, 1, kl_weight=0.0)  # -sum_n log p(x_n | z_n)
    assert float(fb.loss) == pytest.approx(float(zero.loss) + 6 * lg.L * lam, rel=1e-4)
    # at the floor the encoder gets no gradient from the KL, only from reconstruction
    lg.zero_grad()
    make_objective("elbo", free_bits=lam).loss(lg.model, lg.guide, x).loss.backward()
    assert torch.isfinite(lg.enc.weight.grad).all()


@pytest.mark.parametrize(
    "opts",
    [
        dict(objective="iwae", num_particles=3),
        dict(objective="dreg", num_particles=3, warmup="cyclical", warmup_epochs=1),
        dict(objective="meanfield", beta=0.5, free_bits=0.1),
    ],
)
def test_fit_trains_with_any_objective_and_reports_true_elbo(opts):
    from pyro_vae.data import DataSplits
    from pyro_vae.models import ModelConfig, build_vae
    from pyro_vae.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 4, 4, generator=g)
    data = DataSplits("toy", x[:40], x[40:50], x[50:])
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(event_shape=(1, 4, 4), latent_dim=2, hidden=(8,)))
    hist = fit(vae, data, TrainConfig(epochs=2, batch_size=20, **opts), progress=False).history
    for rec in hist:
        assert math.isfinite(rec["train_elbo"]) and math.isfinite(rec["train_loss"])
        assert "kl_weight" in rec


def test_iwae_and_dreg_objectives_pass_the_kl_weight_and_the_gradient_on():
    lg = LinearGaussian()
    x = lg.sample_x(6)

    def run(fn):
        pyro.set_rng_seed(5)
        lg.zero_grad()
        loss = fn().loss
        loss.backward()
        return float(loss.detach()), lg.enc.weight.grad.clone()

    for name, direct in (("iwae", iwae_loss), ("dreg", dreg_loss)):
        obj = make_objective(name, 4)
        via, g_via = run(lambda o=obj: o.loss(lg.model, lg.guide, x, 0.5))  # noqa: B023
        ref, g_ref = run(lambda d=direct: d(lg.model, lg.guide, x, 4, kl_weight=0.5))
        assert via == pytest.approx(ref, rel=1e-6)
        assert torch.allclose(g_via, g_ref, rtol=1e-5, atol=1e-6)
    # the two gradients differ on the same draw: the route really picks one
    _, g_iwae = run(lambda: iwae_loss(lg.model, lg.guide, x, 4, kl_weight=0.5))
    assert not torch.allclose(g_iwae, g_ref, rtol=1e-3, atol=1e-4)


def test_free_bits_below_one_nat_with_a_kl_weight():
    """loss = -sum_n log p(x_n | z_n) + batch * w * sum_d max(lambda, KL_d), KL_d analytic."""
    lg = LinearGaussian()
    x = lg.sample_x(6)
    lam, w = 0.7, 0.5
    with torch.no_grad():
        q = lg.family(lg.enc(x))
        p = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(lg.L), 1.0), 1)
        kl = per_dim_kl(q, p, q.sample()).mean(0)  # (L,), batch mean per dimension
        assert (kl < lam).any() and (kl > lam).any()  # one dimension at the floor, one above
        pyro.set_rng_seed(0)
        fb = make_objective("elbo", free_bits=lam).loss(lg.model, lg.guide, x, w)
        pyro.set_rng_seed(0)
        zero = iwae_loss(lg.model, lg.guide, x, 1, kl_weight=0.0)
    expected = float(zero.loss) + 6 * w * float(kl.clamp(min=lam).sum())
    assert float(fb.loss) == pytest.approx(expected, rel=1e-5)


def test_free_bits_loss_by_default_weighs_the_floored_kl_once():
    """x ~ N(0, 1) whatever z, so log p(x | z) is exact on any draw, and q(z | x) =
    N((x, 2x), diag(1, 0.3^2)) against p(z) = N(0, I): per point KL_1 = x^2 / 2 and
    KL_2 = -log 0.3 + (0.09 + 4x^2 - 1) / 2. Without a KL weight the loss is
    -sum_n log N(x_n; 0, 1) + batch * sum_d max(lambda, mean_n KL_d), the floored KL once."""
    import pyro.distributions as dist

    from pyro_vae.infer import free_bits_loss

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([1]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = torch.cat([x, 2 * x], -1)
            pyro.sample("z", dist.Normal(loc, torch.tensor([1.0, 0.3])).to_event(1))

    x = torch.tensor([[0.1], [0.2], [-0.3]])
    lam = 0.3
    u = x[:, 0].double()
    kl_1 = float((u**2 / 2).mean())  # 0.0233: below the floor
    kl_2 = float((-math.log(0.3) + (0.09 + 4 * u**2 - 1) / 2).mean())  # 0.842: above it
    log_px = float((-(u**2) / 2 - 0.5 * math.log(2 * math.pi)).sum())
    expected = -log_px + 3 * (max(lam, kl_1) + max(lam, kl_2))
    pyro.set_rng_seed(0)
    got = free_bits_loss(model, guide, x, lam)
    assert float(got.loss) == pytest.approx(expected, rel=1e-6)


def test_the_default_objective_is_pyros_trace_elbo_with_one_particle():
    """make_objective() is the plain ELBO (Trace_ELBO, one particle, beta 1, no warm-up, no free
    bits); under the exact posterior its loss is -sum_n log p(x_n) on any draw."""
    from pyro_vae.infer.objectives import TraceELBO

    obj = make_objective()
    assert type(obj) is TraceELBO
    assert repr(obj) == (
        "TraceELBO(num_particles=1, schedule=KLSchedule(beta=1.0, warmup='none', "
        "warmup_epochs=0.0), free_bits=0.0)"
    )
    lg = LinearGaussian(orthogonal=True)
    x = lg.sample_x(4)
    pyro.set_rng_seed(0)
    value = obj.loss(lg.model, lg.exact_guide(), x)
    exact = float(lg.log_px(x).detach().sum())
    assert float(value.loss.detach()) == pytest.approx(-exact, abs=1e-3)


def test_per_dim_kl_without_a_closed_form_is_the_log_density_ratio():
    td = torch.distributions
    q = td.Independent(td.StudentT(3.0, torch.tensor([0.2, -0.1]), torch.tensor([1.0, 0.5])), 1)
    p = td.Independent(td.Normal(torch.zeros(2), 1.0), 1)
    z = torch.tensor([[0.3, -0.4], [1.2, 0.1]])
    want = q.base_dist.log_prob(z) - p.base_dist.log_prob(z)
    assert torch.allclose(per_dim_kl(q, p, z), want)


def test_latent_scale_multiplies_an_outer_scale():
    from pyro import poutine

    from pyro_vae.infer.objectives import LatentScale

    lg = LinearGaussian()
    x = lg.sample_x(3)
    program = LatentScale(0.5)(poutine.scale(lg.model, scale=4.0))
    trace = poutine.trace(program).get_trace(x)
    assert trace.nodes["z"]["scale"] == pytest.approx(2.0)  # 0.5 * 4, latent
    assert trace.nodes["x"]["scale"] == pytest.approx(4.0)  # observed: untouched


@pytest.mark.parametrize("name", ["elbo", "meanfield", "iwae", "dreg"])
def test_kl_weight_against_the_closed_form_weighted_bound(name):
    """With K = 1 every objective's expected loss per point is -(E_q log p(x | z) - w KL), in
    closed form for the linear-Gaussian model and a diagonal q(z | x) = N(m, diag v):

        E_q log p(x | z) = log N(x; W m + b, s^2 I) - sum_l v_l sum_d W_dl^2 / (2 s^2)
        KL(q || N(0, I)) = 0.5 sum_l (v_l + m_l^2 - 1 - log v_l)

    an answer written here, not another path through the library."""
    lg = LinearGaussian(orthogonal=True)
    lg.set_encoder_to_posterior(noise=0.05)  # near the posterior: a low-variance estimate
    n, w = 4000, 0.3
    x = lg.sample_x(1).repeat(n, 1)
    with torch.no_grad():
        q = lg.family(lg.enc(x[:1]))
        m, v = q.base_dist.loc[0], q.base_dist.scale[0] ** 2
        W, b, s = lg.W.detach(), lg.b.detach(), lg.s
        recon = torch.distributions.Normal(W @ m + b, s).log_prob(x[0]).sum()
        recon = recon - (v * W.pow(2).sum(0)).sum() / (2 * s**2)
        kl = 0.5 * (v + m**2 - 1 - v.log()).sum()
    expected = -(float(recon) - w * float(kl))
    pyro.set_rng_seed(0)
    got = float(make_objective(name, 1).loss(lg.model, lg.guide, x, w).loss.detach()) / n
    # Monte Carlo error of the mean over 4000 draws is ~0.015 nats; the weight moves it by 0.7 KL
    assert got == pytest.approx(expected, abs=0.08)
    assert (1 - w) * float(kl) > 0.5


@pytest.mark.parametrize("k", [1, 3])
def test_iwae_loss_by_default_is_minus_log_px_under_the_exact_posterior(k):
    """Known answer: with q(z | x) = p(z | x) every log weight is log p(x), so the K-sample
    bound is log p(x) exactly; by default the latent terms are not reweighted (kl_weight 1)."""
    from pyro_vae.infer.objectives import importance_weighted_loss

    lg = LinearGaussian(orthogonal=True)
    x = lg.sample_x(5)
    pyro.set_rng_seed(0)
    value = importance_weighted_loss(lg.model, lg.exact_guide(), x, k)
    exact = lg.log_px(x).sum()
    assert abs(float(value.loss) + float(exact)) < 1e-3


OBJECTIVE_REFUSALS = [
    (
        "negative beta",
        lambda: KLSchedule(beta=-0.5),
        "beta must be a non-negative number, got -0.5",
    ),
    (
        "nan beta",
        lambda: KLSchedule(beta=float("nan")),
        "beta must be a non-negative number, got nan",
    ),
    (
        "unknown warm-up",
        lambda: KLSchedule(warmup="cosine", warmup_epochs=3),
        "unknown warm-up 'cosine'; choose one of ['none', 'linear', 'cyclical']",
    ),
    (
        "cyclical warm-up without epochs",
        lambda: KLSchedule(warmup="cyclical", warmup_epochs=-1.5),
        "warm-up 'cyclical' needs warmup_epochs > 0, got -1.5; set --warmup-epochs",
    ),
    (
        "unknown objective",
        lambda: make_objective("renyi"),
        "unknown objective 'renyi'; choose one of ['dreg', 'elbo', 'iwae', 'meanfield']",
    ),
    (
        "free bits with iwae",
        lambda: make_objective("iwae", 5, free_bits=0.5),
        "free bits apply to the ELBO, not to 'iwae'; use --objective elbo or --free-bits 0",
    ),
    (
        "free bits with dreg",
        lambda: make_objective("dreg", 5, free_bits=0.5),
        "free bits apply to the ELBO, not to 'dreg'; use --objective elbo or --free-bits 0",
    ),
    (
        "free bits with several particles",
        lambda: make_objective("elbo", 3, free_bits=0.5),
        "free bits use one particle; set --num-particles 1",
    ),
    ("no particles", lambda: make_objective("elbo", 0), "num_particles must be at least 1, got 0"),
    (
        "a bool of particles",
        lambda: make_objective("iwae", True),
        "num_particles must be at least 1, got True",
    ),
    (
        "a float of particles",
        lambda: make_objective("iwae", 2.0),
        "num_particles must be at least 1, got 2.0",
    ),
    (
        "negative free bits",
        lambda: make_objective("elbo", 1, free_bits=-0.25),
        "free_bits must be a non-negative number, got -0.25",
    ),
    (
        "infinite free bits",
        lambda: make_objective("elbo", 1, free_bits=float("inf")),
        "free_bits must be a non-negative number, got inf",
    ),
    (
        "unknown gradient",
        lambda: importance_weighted_loss(None, None, torch.zeros(2, 3), 4, gradient="reinforce"),
        "gradient must be 'iwae' or 'dreg', got 'reinforce'",
    ),
    (
        "free bits on a full-covariance posterior",
        lambda: per_dim_kl(
            torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)),
            torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1),
            torch.zeros(2),
        ),
        "free bits need per-dimension KL, but MultivariateNormal does not factorize over latent "
        "dimensions; use a diagonal posterior and prior, or --free-bits 0",
    ),
]


@pytest.mark.parametrize(
    "make, message", [c[1:] for c in OBJECTIVE_REFUSALS], ids=[c[0] for c in OBJECTIVE_REFUSALS]
)
def test_objective_refusals_name_the_value_and_the_fix_word_for_word(make, message):
    with pytest.raises(ConfigError, match=whole(message)):
        make()


def test_a_sampled_discrete_site_beside_an_enumerated_one_is_refused_whole():
    x = torch.tensor([[-1.5], [-0.2], [0.4], [1.1], [2.7]])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", torch.distributions.OneHotCategorical(torch.tensor([0.5, 0.5])))
            b = pyro.sample("b", pyro.distributions.Bernoulli(0.5).expand([1]).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(y[..., :1] + b, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            logits = torch.zeros(x.shape[0], 2)
            pyro.sample(
                "y",
                pyro.distributions.OneHotCategorical(logits=logits),
                infer={"enumerate": "parallel"},
            )
            pyro.sample("b", pyro.distributions.Bernoulli(0.5).expand([x.shape[0], 1]).to_event(1))

    message = (
        "guide site 'b' is drawn without a pathwise gradient while ['y'] are enumerated; the "
        "score-function term needs the drawn site's log q apart, so mark 'b' "
        "infer={'enumerate': 'parallel'} too, or use --objective elbo (TraceEnum_ELBO)"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        make_objective("iwae", 3).loss(model, guide, x)


@pytest.mark.parametrize("name", ["iwae", "dreg"])
def test_importance_weighted_objectives_check_and_probe_their_programs_on_two_points(name):
    """The first loss of an IWAE or DReG objective checks the pair and chooses how particles are
    drawn on the batch's first 2 points (a cheap probe), then computes the bound on the whole
    batch: the programs see batches of 2 and of 5 points, never any other size."""
    lg = LinearGaussian()
    x = lg.sample_x(5)
    sizes = set()

    def model(x):
        sizes.add(x.shape[0])
        lg.model(x)

    def guide(x):
        sizes.add(x.shape[0])
        lg.guide(x)

    pyro.set_rng_seed(0)
    loss = make_objective(name, 3).loss(model, guide, x).loss
    assert torch.isfinite(loss)
    assert sizes == {2, 5}
