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
from pyro.infer import config_enumerate
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer import inference_gaps, log_likelihood


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


def test_cli_trains_with_objective_options_and_prints_gaps_table(tmp_path, capsys):
    from pyro_vae.cli import main

    args = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim"]
    args += ["2", "--objective", "dreg", "--num-particles", "3", "--warmup", "linear"]
    args += ["--warmup-epochs", "2", "--beta", "0.5", "--num-samples", "10"]
    args += ["--output-dir", str(tmp_path), "--name", "r", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    run = str(tmp_path / "r")
    args = [run, "--method", "gaps", "--num-samples", "50", "--num-points", "4"]
    assert main(["evaluate", *args, "--ais-steps", "3", "--gap-steps", "3"]) == 0
    out = capsys.readouterr().out
    for row in ("ELBO", "IWAE-5", "IS (K=50)", "AIS", "amortization gap", "PSIS k-hat"):
        assert row in out
    bad = ["train", "--warmup", "linear", "--output-dir", str(tmp_path), "--name", "bad"]
    assert main(bad) == 2  # a warm-up needs its length
    assert "warmup_epochs" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_local_elbo_reaches_log_px_with_the_data_plate_at_dim_minus_two():
    """The local posterior is laid out along the data plate's own dim: here -2 (each point
    (1, D), the sites' batch shape (N, 1)); known answer: log p(x) of the linear-Gaussian."""
    import pyro.distributions as dist

    lg = LinearGaussian(orthogonal=True)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1, lg.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.s).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", lg.family(lg.enc(x)))

    x = lg.sample_x(6).unsqueeze(1)  # (N, 1, D)
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        model, guide, x, lg.family, lg.enc,
        num_samples=500, num_steps=400, num_particles=8, lr=0.05,
    )  # fmt: skip
    exact = lg.log_px(x.squeeze(1))
    assert gaps.elbo_local.shape == exact.shape
    assert (gaps.elbo_local - exact).abs().max() < 0.03
    assert (gaps.log_px - exact).abs().max() < 0.03


def test_local_posteriors_stay_with_their_points_when_the_data_plate_is_at_dim_minus_two():
    """Data plate at -2 and a features plate at -1 over the observed values (x (N, D), one
    z (1, L) per point): each local posterior is optimized for its own point along dim -2, so
    the local ELBO reaches that point's closed-form log p(x) (orthogonal W: the exact
    posterior is in the family)."""
    lg = LinearGaussian(orthogonal=True)
    W, b = lg.W.detach(), lg.b.detach()

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1, lg.L), 1.0).to_event(1))
            loc = (z @ W.T + b).squeeze(-2)  # (..., N, D)
            with pyro.plate("features", lg.D, dim=-1):
                pyro.sample("x", dist.Normal(loc, lg.s), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", lg.family(lg.enc(x).unsqueeze(-2)))

    x = lg.sample_x(6)  # (N, D), N = 6 points and D = 4 features
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        model, guide, x, family=lg.family, init_params=lambda x: lg.enc(x).unsqueeze(-2),
        num_samples=300, num_steps=200, num_particles=8, lr=0.05,
    )  # fmt: skip
    exact = lg.log_px(x)
    assert gaps.elbo_local.shape == exact.shape
    assert (gaps.elbo_local - exact).abs().max() < 0.05
    assert (gaps.log_px - exact).abs().max() < 0.05


def test_local_guide_puts_its_sites_in_the_plate_named_data_by_default():
    """local_guide(families, params) with no data_plate draws in plate "data" at dim -1, the
    plate the linear-Gaussian model uses; with the exact posterior's per-point parameters
    (orthogonal W: a diagonal normal) every importance weight is p(x) itself, so log_likelihood
    returns log p(x) to rounding."""
    import torch
    from torch.nn.functional import softplus

    from pyro_vae.infer import local_guide, log_likelihood

    lg = LinearGaussian(orthogonal=True)
    x = lg.sample_x(2, seed=4)  # the two points the programs are also checked on
    loc, cov = lg.posterior(x)
    sd = cov.diagonal().sqrt().expand(2, lg.L)
    raw = torch.log(torch.expm1(sd))  # softplus^-1: lg.family adds softplus(raw) + 1e-6
    assert torch.allclose(softplus(raw), sd)
    guide = local_guide({"z": lg.family}, {"z": torch.cat([loc, raw], -1)})
    trace = pyro.poutine.trace(guide).get_trace(x)
    frames = trace.nodes["z"]["cond_indep_stack"]
    assert [(f.name, f.dim, f.size) for f in frames] == [("data", -1, 2)]
    pyro.set_rng_seed(0)
    r = log_likelihood(lg.model, guide, x, num_samples=4)
    assert torch.allclose(r.per_example, lg.log_px(x), atol=1e-3)


def noisy_model(x, noise=1.0):
    """z ~ N(0, 1), x ~ N(z, noise^2): log p(x) = log N(x; 0, 1 + noise^2), and the posterior
    is N(x / (1 + noise^2), noise^2 / (1 + noise^2)), a member of ``scalar_family``."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, noise).to_event(1), obs=x)


def noisy_guide(x, noise=1.0):
    """The exact posterior for noise=1 whatever ``noise`` is: an encoder trained on other data."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.5**0.5).to_event(1))


def scalar_family(params: torch.Tensor) -> dist.Distribution:
    """N(loc, softplus(raw)): params (batch, 2) = (loc, raw)."""
    loc, raw = params.split(1, -1)
    return dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-6).to_event(1)


def test_keyword_arguments_reach_the_local_optimization():
    """The model's keyword ``noise=0.5`` is given to inference_gaps: the local posterior is
    optimized for that model (not for its default noise 1), so the local ELBO reaches the
    closed-form log p(x) = log N(x; 0, 1.25) and the amortized guide, exact for noise 1 only,
    keeps an amortization gap."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        noisy_model, noisy_guide, X, family=scalar_family,
        init_params=lambda x: torch.cat([x / 2, torch.zeros_like(x)], -1),
        num_samples=200, elbo_samples=200, num_steps=100, num_particles=8, lr=0.05, noise=0.5,
    )  # fmt: skip
    exact = dist.Normal(0.0, 1.25**0.5).log_prob(X[:, 0])
    assert (gaps.elbo_local - exact).abs().max() < 0.03
    assert (gaps.log_px - exact).abs().max() < 0.03
    assert gaps.amortization_gap.min() > 0.1


# --- small programs that break one assumption each --------------------------------------

def two_wide_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z[..., :1], 1.0).to_event(1), obs=x)


def half_masked_guide(x):
    with pyro.plate("data", x.shape[0]):
        keep = torch.tensor([True, False]).expand(x.shape[0], 2)
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).mask(keep).to_event(1))


def two_dim_model(x):
    """z1 in plate "data" at dim -1, z2 in it at dim -2 (a sizeless plate, entered twice):
    x ~ N(z1 + z2, 1) per point, which log_likelihood scores exactly."""
    n = x.shape[0]
    with pyro.plate("data", dim=-1):
        z1 = pyro.sample("z1", dist.Normal(torch.zeros(n), 1.0))
    with pyro.plate("data", dim=-2):
        z2 = pyro.sample("z2", dist.Normal(torch.zeros(n, 1), 1.0))
    with pyro.plate("data", dim=-1):
        loc = z1 + z2.transpose(-1, -2).reshape(z1.shape)
        pyro.sample("x", dist.Normal(loc.unsqueeze(-1), 1.0).to_event(1), obs=x)


def two_dim_guide(x):
    n = x.shape[0]
    with pyro.plate("data", dim=-1):
        pyro.sample("z1", dist.Normal(torch.zeros(n), 1.0))
    with pyro.plate("data", dim=-2):
        pyro.sample("z2", dist.Normal(torch.zeros(n, 1), 1.0))


def _gaps(model, guide, **options):
    options = {
        "family": lambda p: dist.Normal(p[..., :1], 1.0).to_event(1),
        "init_params": lambda x: torch.zeros(x.shape[0], 1),
        "num_steps": 1,
        "num_samples": 2,
        "elbo_samples": 2,
        **options,
    }
    return inference_gaps(model, guide, X, **options)


GAPS_REFUSALS = [
    (
        "an enumerated site",
        lambda: _gaps(mixture_model, config_enumerate(mixture_guide, "parallel", expand=True)),
        "inference gaps optimize a continuous local posterior per data point, but sites ['y'] "
        "are enumerated; score such a model with log_likelihood",
    ),
    (
        "a family for a site the guide lacks",
        lambda: _gaps(plain_model, plain_guide, family={"w": lambda p: None}),
        "family must name exactly the guide's latent sites ['z'] (missing ['z'], unknown ['w'])",
    ),
    (
        "init_params for an extra site",
        lambda: _gaps(plain_model, plain_guide, init_params={"z": None, "w": None}),
        "init_params must name exactly the guide's latent sites ['z'] (missing [], unknown ['w'])",
    ),
    (
        "no family",
        lambda: _gaps(plain_model, plain_guide, family=None),
        "inference gaps need one family per latent site; the guide has latent sites ['z'], so "
        "pass family={site: ...} for each",
    ),
    (
        "a latent site in a second plate",
        lambda: _gaps(two_plate_model, two_plate_guide),
        "latent site 'z' is inside plate 'two' as well as 'data'; the local posterior is per data "
        "point only, so move that plate into the site's event shape (.to_event)",
    ),
    (
        "latent sites at two dims of the data plate",
        lambda: _gaps(two_dim_model, two_dim_guide, family={"z1": None, "z2": None}),
        "latent sites 'z1' and 'z2' sit in plate 'data' at dims -1 and -2; the local posterior "
        "draws every latent site in the data plate at one dim, so give plate 'data' the same "
        "dim at every latent site",
    ),
    (
        "a mask inside the event",
        lambda: _gaps(two_wide_model, half_masked_guide),
        "guide site 'z' masks part of its event (.mask inside .to_event); the local posterior "
        "keeps or drops whole draws, so mask whole data points (a mask of the batch shape)",
    ),
]


@pytest.mark.parametrize(
    "call, message", [c[1:] for c in GAPS_REFUSALS], ids=[c[0] for c in GAPS_REFUSALS]
)
def test_inference_gaps_refusals_are_checked_whole(call, message):
    with pytest.raises(ConfigError, match=whole(message)):
        call()


def test_amortized_figures_are_those_log_likelihood_gives_under_the_same_seed():
    """Checking the programs and laying out the local posterior draw nothing from the random
    stream: under one seed, inference_gaps' amortized ELBO is exactly the one log_likelihood
    returns with as many samples."""
    pyro.set_rng_seed(0)
    gaps = _gaps(plain_model, plain_guide, num_samples=3, elbo_samples=3)
    pyro.set_rng_seed(0)
    alone = log_likelihood(plain_model, plain_guide, X, num_samples=3)
    assert torch.equal(gaps.elbo_amortized, alone.elbo_per_example)


def test_a_program_with_two_data_plate_dims_is_scored_exactly_by_log_likelihood():
    """The program the gaps refuse for its two data-plate dims is a sound one: z1 + z2 ~ N(0, 2),
    so log p(x) = log N(x; 0, 3), which importance sampling from the prior reaches."""
    pyro.set_rng_seed(0)
    r = log_likelihood(two_dim_model, two_dim_guide, X, num_samples=4000)
    exact = dist.Normal(0.0, 3.0**0.5).log_prob(X[:, 0])
    assert (r.per_example - exact).abs().max() < 0.05


def test_elbos_use_a_thousand_samples_per_point_by_default():
    """Left at its default, ``elbo_samples`` is 1000: with num_samples=3, the amortized ELBO
    is exactly the one log_likelihood gives under the same seed with 1000 samples."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        plain_model, plain_guide, X, family=lambda p: dist.Normal(p[..., :1], 1.0).to_event(1),
        init_params=lambda x: torch.zeros(x.shape[0], 1), num_steps=1, num_samples=3,
    )  # fmt: skip
    pyro.set_rng_seed(0)
    alone = log_likelihood(plain_model, plain_guide, X, num_samples=1000)
    assert torch.equal(gaps.elbo_amortized, alone.elbo_per_example)
