"""Inference gaps against closed forms, their documented defaults, and how the local posterior is
laid out (which calls are the old positional form, which plate dim, which probe batch).

The running example is z ~ N(0, 1), x | z ~ N(z, 1) in float64: log p(x) = log N(x; 0, 2) and
p(z | x) = N(x / 2, 1/2). A fixed encoder q(z | x) = N(a x, s^2) has ELBO log p(x) - KL(q || p(z |
x)); a local posterior started at the exact one (and not moved) has ELBO log p(x) at every draw.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from assumption_programs import exact_log_px
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer import gaps as gaps_module
from pyro_vae.infer import inference_gaps, local_guide, log_likelihood
from pyro_vae.infer.gaps import _local_layout
from pyro_vae.infer.trace import log_weights

X = torch.tensor([[-1.5], [-0.2], [0.4], [1.1], [2.7]], dtype=torch.float64)
#: the fixed encoder q(z | x) = N(A x, S^2)
A, S = 0.3, 0.9


def encoder_kl(x: torch.Tensor) -> torch.Tensor:
    """KL(N(A x, S^2) || N(x / 2, 1/2)) per point: the amortization gap of the fixed encoder."""
    var = 0.5
    return 0.5 * (S**2 / var + (x[:, 0] / 2 - A * x[:, 0]) ** 2 / var - 1 + math.log(var / S**2))


def model(x, *, noise):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, noise).to_event(1), obs=x)


def encoder_guide(x, *, noise):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(A * x, S).to_event(1))


def family(params: torch.Tensor) -> dist.Distribution:
    """N(loc, softplus(raw)): params (batch, 2) = (loc, raw)."""
    loc, raw = params.split(1, -1)
    return dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1)


def softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


def exact_params(x: torch.Tensor) -> torch.Tensor:
    """The exact posterior's (loc, raw) per point."""
    return torch.cat([x / 2, torch.full_like(x, softplus_inverse(math.sqrt(0.5)))], -1)


def encoder_params(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([A * x, torch.full_like(x, softplus_inverse(S))], -1)


def test_the_gaps_of_a_fixed_encoder_are_its_kl_and_zero_over_batches_with_a_required_keyword():
    """Started at the exact posterior and not moved, the local ELBO is log p(x) at every point,
    so the approximation gap is 0 and the amortization gap is the encoder's KL to the posterior;
    five points in batches of two, and a keyword the programs cannot run without."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        model, encoder_guide, X, family=family, init_params=exact_params,
        num_samples=4000, elbo_samples=4000, num_steps=0, batch_size=2, noise=1.0,
    )  # fmt: skip
    exact = exact_log_px(X)
    assert torch.allclose(gaps.elbo_local, exact, rtol=0, atol=1e-12)
    assert torch.allclose(gaps.log_px, exact, rtol=0, atol=1e-12)
    assert torch.allclose(gaps.approximation_gap, torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(gaps.amortization_gap, encoder_kl(X), rtol=0, atol=0.03)
    assert torch.allclose(gaps.elbo_amortized, exact - encoder_kl(X), rtol=0, atol=0.03)


def test_the_local_figures_are_the_local_guide_s_weights_drawn_in_chunks_of_256():
    """Under one seed: the amortized figures are log_likelihood's, then each batch's local ELBO
    and log p(x) come from the local guide's log weights, drawn 256 particles at a time at the
    particle dim of the checked programs (here -2), nothing else drawn in between."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        model, encoder_guide, X, family=family, init_params=encoder_params,
        num_samples=300, elbo_samples=300, num_steps=0, noise=1.0,
    )  # fmt: skip
    pyro.set_rng_seed(0)
    amortized = log_likelihood(model, encoder_guide, X, num_samples=300, noise=1.0)
    local = local_guide({"z": family}, {"z": encoder_params(X)})
    lw = torch.cat([
        log_weights(model, local, X, k, particle_dim=-2, noise=1.0) for k in (256, 44)
    ])  # fmt: skip
    assert torch.equal(gaps.elbo_amortized, amortized.elbo_per_example)
    assert torch.equal(gaps.elbo_local, lw.mean(0))
    local_log_px = torch.logsumexp(lw, 0) - math.log(300)
    better = gaps.elbo_local > amortized.elbo_per_example
    assert 0 < int(better.sum()) < 5  # the same proposal: each wins somewhere by chance
    assert torch.equal(gaps.log_px, torch.where(better, local_log_px, amortized.per_example))


def uniform_prior_model(x):
    """z ~ U(-1, 1), x | z ~ N(z, 1): log p(x) = log((Phi(x + 1) - Phi(x - 1)) / 2)."""
    with pyro.plate("data", x.shape[0]):
        low, high = -x.new_ones(1), x.new_ones(1)
        z = pyro.sample("z", dist.Uniform(low, high, validate_args=False).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def wide_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 1.0).to_event(1))


def test_where_the_elbos_tie_log_px_is_the_amortized_estimate():
    """Draws outside the prior's support make both ELBOs -inf: neither proposal is the better,
    and log p(x) stays the amortized guide's estimate (close to the closed form)."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        uniform_prior_model, wide_guide, X,
        family=lambda p: dist.Normal(p, 1.0).to_event(1), init_params=lambda x: x / 2,
        num_samples=300, elbo_samples=300, num_steps=0,
    )  # fmt: skip
    pyro.set_rng_seed(0)
    amortized = log_likelihood(uniform_prior_model, wide_guide, X, num_samples=300)
    assert torch.equal(gaps.elbo_local, torch.full((5,), -math.inf, dtype=torch.float64))
    assert torch.equal(gaps.elbo_amortized, gaps.elbo_local)
    assert torch.equal(gaps.log_px, amortized.per_example)
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = torch.log((normal.cdf(X[:, 0] + 1) - normal.cdf(X[:, 0] - 1)) / 2)
    assert torch.allclose(gaps.log_px, exact, rtol=0, atol=0.1)


def test_log_px_uses_a_thousand_samples_per_point_by_default():
    """Left at its default, ``num_samples`` is 1000: with elbo_samples=3, the amortized figures
    are exactly those log_likelihood gives under the same seed with 1000 samples."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        model, encoder_guide, X, family=family, init_params=encoder_params,
        elbo_samples=3, num_steps=0, noise=1.0,
    )  # fmt: skip
    pyro.set_rng_seed(0)
    alone = log_likelihood(model, encoder_guide, X, num_samples=1000, noise=1.0)
    assert torch.equal(gaps.elbo_amortized, alone.elbo_per_example)


def test_the_local_optimization_defaults_to_batches_of_100_and_500_adam_steps(monkeypatch):
    """Left at their defaults: the data go to the optimizer 100 points at a time (101 points: a
    batch of 100, then one of 1), each optimized for 500 steps of 16 particles at rate 0.01."""
    seen = []

    def recording_optimizer(model, families, data, init, num_steps, num_particles, lr, **options):
        seen.append((data[0].shape[0], num_steps, num_particles, lr))
        return init

    monkeypatch.setattr(gaps_module, "optimize_local", recording_optimizer)
    x = torch.linspace(-2.0, 2.0, 101, dtype=torch.float64).unsqueeze(-1)
    inference_gaps(
        model, encoder_guide, x, family=family, init_params=encoder_params,
        num_samples=2, elbo_samples=2, noise=1.0,
    )  # fmt: skip
    assert seen == [(100, 500, 16, 0.01), (1, 500, 16, 0.01)]


def prior_only_model(x):
    """z ~ N(0, 1) whether or not x is missing; x | z ~ N(z, 1) only where it is observed."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1).mask(x[:, 0] > 0), obs=x)


def guide_masking_missing_points(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1).mask(x[:, 0] > 0))


def test_the_local_posterior_is_optimized_under_the_guide_s_masks():
    """Where the guide masks z out (x <= 0) and the model keeps the prior, the local objective
    is E_q[log N(z; 0, 1)] with no log q: optimized under the mask, q narrows onto z = 0, so the
    local ELBO there rises to log N(0; 0, 1) (optimized without it, q would stay the prior and
    score E[log N(z; 0, 1)] = log N(0; 0, 1) - 1/2)."""
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        prior_only_model, guide_masking_missing_points, X, family=family,
        init_params=lambda x: torch.cat([torch.zeros_like(x), torch.full_like(x, 0.5413)], -1),
        num_samples=64, elbo_samples=64, num_steps=200, num_particles=8, lr=0.05,
    )  # fmt: skip
    masked = X[:, 0] <= 0
    peak = -0.5 * math.log(2 * math.pi)
    assert torch.allclose(
        gaps.elbo_local[masked], torch.full((2,), peak, dtype=torch.float64), rtol=0, atol=0.02
    )


# --- which calls are the old positional form (model, guide, x, family, init_params) --------


def linked_model(x, link, noise):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(link(z), noise).to_event(1), obs=x)


def linked_guide(x, link, noise):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.5**0.5).to_event(1))


def noisy_linked_model(x, noise, link):
    linked_model(x, link, noise)


def noisy_linked_guide(x, noise, link):
    linked_guide(x, link, noise)


def identity(z):
    return z


NO_FAMILY_CALLS = [
    ("the data alone", lambda: inference_gaps(model, encoder_guide, X, noise=1.0)),
    ("data ending in a callable and a number",
     lambda: inference_gaps(linked_model, linked_guide, X, identity, 1.0)),
    ("data ending in a tensor and a callable",
     lambda: inference_gaps(noisy_linked_model, noisy_linked_guide, X, torch.ones_like(X),
                            identity)),
]  # fmt: skip


@pytest.mark.parametrize(
    "call", [c[1] for c in NO_FAMILY_CALLS], ids=[c[0] for c in NO_FAMILY_CALLS]
)
def test_only_two_trailing_callables_are_taken_for_family_and_init_params(call):
    """Positional data are the old (family, init_params) form only when the last two are both
    callables (and not tensors); else they stay data, and the missing family is refused whole."""
    message = (
        "inference gaps need one family per latent site; the guide has latent sites ['z'], so "
        "pass family={site: ...} for each"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        call()


# --- the local posterior's layout ---------------------------------------------------------


def three_dim_model(x):
    """z1, z2, z3 in the sizeless plate "data" at dims -1, -2 and -3."""
    n = x.shape[0]
    with pyro.plate("data", dim=-1):
        z1 = pyro.sample("z1", dist.Normal(x.new_zeros(n), 1.0))
    with pyro.plate("data", dim=-2):
        z2 = pyro.sample("z2", dist.Normal(x.new_zeros(n, 1), 1.0))
    with pyro.plate("data", dim=-3):
        z3 = pyro.sample("z3", dist.Normal(x.new_zeros(n, 1, 1), 1.0))
    with pyro.plate("data", dim=-1):
        loc = z1 + z2.reshape(z2.shape[:-2] + (n,)) + z3.reshape(z3.shape[:-3] + (n,))
        pyro.sample("x", dist.Normal(loc.unsqueeze(-1), 1.0).to_event(1), obs=x)


def three_dim_guide(x):
    n = x.shape[0]
    with pyro.plate("data", dim=-1):
        pyro.sample("z1", dist.Normal(x.new_zeros(n), 1.0))
    with pyro.plate("data", dim=-2):
        pyro.sample("z2", dist.Normal(x.new_zeros(n, 1), 1.0))
    with pyro.plate("data", dim=-3):
        pyro.sample("z3", dist.Normal(x.new_zeros(n, 1, 1), 1.0))


def test_latent_sites_at_three_dims_of_the_data_plate_are_refused_naming_the_first_two():
    message = (
        "latent sites 'z1' and 'z2' sit in plate 'data' at dims -1 and -2; the local posterior "
        "draws every latent site in the data plate at one dim, so give plate 'data' the same "
        "dim at every latent site"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        inference_gaps(
            three_dim_model, three_dim_guide, X, family={"z1": None, "z2": None, "z3": None},
            init_params={"z1": None, "z2": None, "z3": None},
        )  # fmt: skip


def observed_only_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(x.new_zeros(1), 2**0.5).to_event(1), obs=x)


def empty_guide(x):
    pass


def data_at_minus_two_model(x):
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(x.new_zeros(1, 1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x.unsqueeze(-2))


def data_at_minus_two_guide(x):
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(x.unsqueeze(-2) / 2, 1.0).to_event(1))


LAYOUTS = [
    ("latent z in the data plate at -1", model, encoder_guide, {"noise": 1.0}, (["z"], -1, -2)),
    ("latent z in the data plate at -2", data_at_minus_two_model, data_at_minus_two_guide, {},
     (["z"], -2, -3)),
    ("no latent site: the data plate's default dim", observed_only_model, empty_guide, {},
     ([], -1, -2)),
]  # fmt: skip


@pytest.mark.parametrize(
    "program, guide, kwargs, layout", [c[1:] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS]
)
def test_the_layout_names_the_latent_sites_the_data_plate_dim_and_the_particle_dim(
    program, guide, kwargs, layout
):
    assert _local_layout(program, guide, (X,), "data", kwargs) == layout


class OnePointProbe:
    """Programs bound to an object that declares its ``event_shape`` (as a VAE does): they
    record the batch size of every run."""

    event_shape = (1,)

    def __init__(self):
        self.sizes = []

    def model(self, x):
        self.sizes.append(x.shape[0])
        model(x, noise=1.0)

    def guide(self, x):
        self.sizes.append(x.shape[0])
        encoder_guide(x, noise=1.0)


def test_programs_bound_to_an_object_with_an_event_shape_are_laid_out_on_one_point():
    """The check and the layout pass each run guide and model once, on one data point."""
    probe = OnePointProbe()
    assert _local_layout(probe.model, probe.guide, (X,), "data", {}) == (["z"], -1, -2)
    assert probe.sizes == [1, 1, 1, 1]
