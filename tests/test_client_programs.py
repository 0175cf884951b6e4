"""Programs written the way users write them, scored against independent answers or refused.

Each estimate is compared with a per-example estimate written here: the guide traced once per
sample and data point (no vectorization, no plates of ours), the model replayed, logsumexp.
"""

import math
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from refusals import whole

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer import (
    StreamingMoments,
    iwae_loss,
    latent_usage,
    log_likelihood,
    make_objective,
)

D, L = 4, 2
W = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0], [0.7, 0.1]])
B = torch.tensor([0.1, -0.2, 0.3, 0.0])
S = 0.5


def exact_log_px(x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W W^T + s^2 I), x: (N, D) -> (N,)."""
    cov = W @ W.T + S**2 * torch.eye(D)
    return dist.MultivariateNormal(B, covariance_matrix=cov).log_prob(x)


def sample_x(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, L, generator=g) @ W.T + B + S * torch.randn(n, D, generator=g)


# --- Pyro's VAE example style: its own site names and plate name ------------------------


def pyro_example_model(x):
    with pyro.plate("batch", x.shape[0]):
        code = pyro.sample("latent", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        pyro.sample("obs", dist.Normal(code @ W.T + B, S).to_event(1), obs=x)


POST_COV = torch.linalg.inv(torch.eye(L) + W.T @ W / S**2)


def near_posterior(x: torch.Tensor) -> dist.MultivariateNormal:
    """The exact posterior p(z | x), widened by 1.2: a good but imperfect proposal."""
    loc = (x - B) @ W @ POST_COV / S**2
    return dist.MultivariateNormal(loc, covariance_matrix=1.44 * POST_COV)


def pyro_example_guide(x):
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("latent", near_posterior(x))


def mc_tolerance(r, k_indep: int) -> torch.Tensor:
    """4 standard errors of the difference between ``r`` (K samples, effective sample size
    r.ess) and an independent estimate from ``k_indep`` samples of the same proposal: the
    log of a mean of weights has standard error ~ sqrt(1 / ESS) (delta method)."""
    return 4 * (1 / r.ess + r.num_samples / (k_indep * r.ess)).sqrt()


def independent_estimate(model, guide, xs: tuple, k: int, **kwargs) -> torch.Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k | x) per data point, one trace per sample."""
    out = []
    for n in range(xs[0].shape[0]):
        point = tuple(t[n : n + 1] for t in xs)
        lw = []
        for _ in range(k):
            gt = poutine.trace(guide).get_trace(*point, **kwargs)
            mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(*point, **kwargs)
            lw.append(mt.log_prob_sum() - gt.log_prob_sum())
        out.append(torch.logsumexp(torch.stack(lw), 0) - math.log(k))
    return torch.stack(out)


def test_pyro_example_names_match_independent_estimate_and_exact():
    pyro.set_rng_seed(0)
    x = sample_x(4)
    r = log_likelihood(
        pyro_example_model, pyro_example_guide, x, num_samples=400, data_plate="batch"
    )
    indep = independent_estimate(pyro_example_model, pyro_example_guide, (x,), 200)
    # ESS ~ 0.9 K: each estimate's Monte Carlo sd is ~0.02 nats
    assert torch.allclose(r.per_example, indep, atol=0.1)
    assert torch.allclose(r.per_example, exact_log_px(x), atol=0.1)
    assert r.strategy == "vectorized"


def exact_example_guide(x):
    """The exact posterior p(z | x) under Pyro's example names: every weight is p(x)."""
    with pyro.plate("batch", x.shape[0]):
        loc = (x - B) @ W @ POST_COV / S**2
        pyro.sample("latent", dist.MultivariateNormal(loc, covariance_matrix=POST_COV))


def test_inference_report_scores_every_row_under_the_given_plate_name():
    """The exact posterior as guide: the ELBO, each IWAE-k and IS are all the mean log p(x),
    every row scored with the data plate 'batch'."""
    from pyro_vae.infer import inference_report

    x = sample_x(6, seed=3)
    report = inference_report(
        pyro_example_model, exact_example_guide, x, num_samples=20, ks=(1, 3, 7),
        data_plate="batch",
    )  # fmt: skip
    exact = float(exact_log_px(x).mean())
    assert [name for name, *_ in report.rows] == ["ELBO", "IWAE-3", "IWAE-7", "IS (K=20)"]
    for name, mean, _, n in report.rows:
        assert mean == pytest.approx(exact, abs=1e-4), name
        assert n == 6


def test_inference_report_scores_iwae_k_in_batches_of_the_given_size():
    """Under one seed the IWAE-3 row is exactly what log_likelihood gives with the same
    ``batch_size`` after the importance-sampling pass the report runs first."""
    from pyro_vae.infer import inference_report

    def wide_guide(x):
        with pyro.plate("batch", x.shape[0]):
            loc = (x - B) @ W @ POST_COV / S**2
            pyro.sample("latent", dist.MultivariateNormal(loc, covariance_matrix=2 * POST_COV))

    x = sample_x(6, seed=3)
    options = {"data_plate": "batch", "batch_size": 2}
    pyro.set_rng_seed(0)
    report = inference_report(pyro_example_model, wide_guide, x, num_samples=20, ks=(3,), **options)
    pyro.set_rng_seed(0)
    log_likelihood(
        pyro_example_model, wide_guide, x, num_samples=20, keep_log_weights=True, **options
    )
    iwae = log_likelihood(pyro_example_model, wide_guide, x, num_samples=3, **options)
    assert report.rows[1] == ("IWAE-3", iwae.mean, iwae.stderr, 6)


def test_inference_report_lists_iwae_k_only_below_the_importance_sample_count():
    """IWAE-1 is the ELBO row itself, IWAE-k with k = K draws is the IS (K) row itself and one
    with k > K would need more draws than IS takes, so of ks (1, 2, 3, 20, 50) with K = 20 only
    IWAE-2 (the smallest bound above the ELBO) and IWAE-3 get a row."""
    from pyro_vae.infer import inference_report

    pyro.set_rng_seed(0)
    report = inference_report(
        pyro_example_model, exact_example_guide, sample_x(3, seed=3), num_samples=20,
        ks=(1, 2, 3, 20, 50), data_plate="batch",
    )  # fmt: skip
    assert [name for name, *_ in report.rows] == ["ELBO", "IWAE-2", "IWAE-3", "IS (K=20)"]


def test_default_plate_name_refused_with_the_fix():
    x = sample_x(3)
    with pytest.raises(
        DataError,
        match=whole(
            "sample site 'latent' is outside plate 'data'; per-example weights need every sample "
            "site inside the data plate (or pass data_plate= the name of your data plate)"
        ),
    ):
        log_likelihood(pyro_example_model, pyro_example_guide, x, num_samples=3)


# --- conditional model: labels as a second positional argument --------------------------


def cond_model(x, y, *, shift=0.0):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        loc = z @ W.T + B + y.unsqueeze(-1) + shift
        pyro.sample("x", dist.Normal(loc, S).to_event(1), obs=x)


def cond_guide(x, y, *, shift=0.0):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", near_posterior(x - y.unsqueeze(-1) - shift))


def test_labels_are_sliced_with_the_data_and_kwargs_passed_unchanged():
    pyro.set_rng_seed(0)
    y = torch.tensor([0.0, 1.0, -1.0, 2.0])
    x = sample_x(4) + y.unsqueeze(-1) + 0.25
    r = log_likelihood(cond_model, cond_guide, x, y, num_samples=400, batch_size=2, shift=0.25)
    expected = exact_log_px(x - y.unsqueeze(-1) - 0.25)
    indep = independent_estimate(cond_model, cond_guide, (x, y), 200, shift=0.25)
    assert torch.allclose(r.per_example, indep, atol=0.1)
    assert torch.allclose(r.per_example, expected, atol=0.1)


def test_positional_tensors_of_different_lengths_refused():
    x, y = sample_x(4), torch.zeros(3)
    with pytest.raises(
        DataError,
        match=whole(
            "positional data tensors have different lengths along dim 0 [(4, 4), (3,)]; every "
            "positional tensor is sliced with the data points, pass extra inputs as keywords"
        ),
    ):
        log_likelihood(cond_model, cond_guide, x, y, num_samples=2)


# --- a model that flattens its data with view(-1, D) -------------------------------------


def view_model(x):
    flat = x.reshape(-1, D)
    with pyro.plate("data", flat.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, S).to_event(1), obs=flat)


def view_guide(x):
    flat = x.reshape(-1, D)
    with pyro.plate("data", flat.shape[0]):
        pyro.sample("z", near_posterior(flat))


def test_view_model_on_images_shaped_data():
    pyro.set_rng_seed(0)
    x = sample_x(4)
    r = log_likelihood(view_model, view_guide, x.reshape(4, 2, 2), num_samples=1000)
    assert torch.allclose(r.per_example, exact_log_px(x), atol=0.02)


# --- two-layer linear-Gaussian with its exact posterior: zero variance ------------------

A, S1 = 0.8, 0.6  # z2 | z1 ~ N(A z1, S1^2), z1 ~ N(0, 1), x | z2 ~ N(w z2, S^2)
WV = torch.tensor([1.0, -0.5, 0.3])


def two_layer_model(x):
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
        z2 = pyro.sample("z2", dist.Normal(A * z1, S1))
        pyro.sample("x", dist.Normal(z2.unsqueeze(-1) * WV, S).to_event(1), obs=x)


def two_layer_exact_guide(x):
    """q(z2 | x) q(z1 | z2) = p(z2 | x) p(z1 | z2, x): the exact posterior."""
    var2 = A**2 + S1**2  # marginal variance of z2
    prec = 1 / var2 + (WV @ WV) / S**2
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Normal((x @ WV) / S**2 / prec, prec**-0.5))
        v1 = 1 / (1 + A**2 / S1**2)
        pyro.sample("z1", dist.Normal(v1 * A * z2 / S1**2, v1**0.5))


def two_layer_log_px(x):
    var2 = A**2 + S1**2
    cov = var2 * torch.outer(WV, WV) + S**2 * torch.eye(3)
    return dist.MultivariateNormal(torch.zeros(3), covariance_matrix=cov).log_prob(x)


@pytest.mark.parametrize("chunk", [None, 1])
def test_two_layer_exact_posterior_is_exact(chunk):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, generator=g)
    r = log_likelihood(
        two_layer_model, two_layer_exact_guide, x, num_samples=16, particle_chunk=chunk,
        keep_log_weights=True,
    )
    assert torch.allclose(r.per_example, two_layer_log_px(x), atol=1e-4)
    assert torch.allclose(r.log_weights, two_layer_log_px(x).expand(16, 6), atol=1e-4)


# --- refusals: a number is never silently wrong ------------------------------------------


def test_guide_missing_a_latent_site_refused():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z2", dist.Normal(0.0, 1.0))

    with pytest.raises(
        DataError,
        match=whole(
            "latent site 'z1' of the model is not sampled by the guide, so its log-density would "
            "be counted without a proposal; sample it in the guide, mark it infer={'enumerate': "
            "'parallel'} to sum it out exactly, or sum it out inside the model"
        ),
    ):
        log_likelihood(two_layer_model, guide, torch.zeros(3, 3), num_samples=2)


def test_guide_site_unknown_to_the_model_refused():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(0.0, 1.0))
            pyro.sample("z2", dist.Normal(0.0, 1.0))
            pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(
        DataError,
        match=whole(
            "guide site 'extra' does not appear in the model; name the guide's sample sites as the "
            "model's latent sites"
        ),
    ):
        log_likelihood(two_layer_model, guide, torch.zeros(3, 3), num_samples=2)


def test_model_without_observed_site_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(
        DataError,
        match=whole(
            "the model observes no sample site; give the data to pyro.sample(..., obs=x) so there "
            "is a likelihood to score"
        ),
    ):
        log_likelihood(model, guide, torch.zeros(3, 1), num_samples=2)


def test_subsample_scaling_refused():
    def model(x):
        with pyro.plate("data", 1000, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", 1000, subsample_size=x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(
        DataError,
        match=whole(
            "plate 'data' at site 'z' has size 1000 (subsample 2) but the batch has 2 points; "
            "subsample scaling would rescale log p by N / n, so size the plate to the batch: "
            "pyro.plate('data', x.shape[0])"
        ),
    ):
        log_likelihood(model, guide, torch.zeros(3, 1), num_samples=2)


# --- memory flat in K, streaming reductions ----------------------------------------------


def test_largest_weight_tensor_does_not_grow_with_k(log_weight_rows):
    rows = log_weight_rows
    x = sample_x(8)
    sizes = {}
    for k in (100, 2000):
        rows.clear()
        r = log_likelihood(
            pyro_example_model, pyro_example_guide, x, num_samples=k, batch_size=8,
            particle_budget=256, data_plate="batch",
        )
        assert r.log_weights is None
        sizes[k] = max(rows)
    assert sizes[100] == sizes[2000] == 256 // 8


def test_streaming_reductions_equal_the_full_ones():
    pyro.set_rng_seed(0)
    x = sample_x(6)
    r = log_likelihood(
        pyro_example_model, pyro_example_guide, x, num_samples=300, particle_chunk=7,
        keep_log_weights=True, data_plate="batch",
    )
    lw = r.log_weights
    assert torch.allclose(r.per_example, torch.logsumexp(lw, 0) - math.log(300), atol=1e-5)
    assert torch.allclose(r.elbo_per_example, lw.mean(0), atol=1e-5)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    assert torch.allclose(r.ess, ess, rtol=1e-4)
    m = StreamingMoments(2)
    m.update(torch.tensor([[0.0, 1.0]]))
    m.update(torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(m.ess(), torch.tensor([2.0, 2.0]))


def test_streaming_reductions_accumulate_in_their_own_dtype():
    """float32 chunks summed in float64: 1e8 + 1 is exact there, and rounds to 1e8 in float32."""
    m = StreamingMoments(1, torch.float64)
    m.update(torch.tensor([[1e8]]))
    m.update(torch.tensor([[1.0]]))
    mean = m.mean_log_weight()
    assert mean.dtype == torch.float64 and mean.item() == (1e8 + 1) / 2
    assert m.log_mean_weight().item() == pytest.approx(1e8 - math.log(2))


def test_streaming_logsumexps_are_kept_in_their_own_dtype_from_the_first_chunk():
    """float64 moments of float32 chunks: the running logsumexps start in float64, so one
    chunk of a single weight and then another give log mean w = logaddexp(a, b) - log 2 in
    float64, exactly, and the effective sample size in float64 too."""
    a, b = torch.tensor([[0.1]]), torch.tensor([[1.7]])
    m = StreamingMoments(1, torch.float64)
    assert m.lse.dtype == m.lse2.dtype == m.total.dtype == torch.float64
    m.update(a)
    m.update(b)
    lse = torch.logaddexp(a[0].double(), b[0].double())
    lse2 = torch.logaddexp(2 * a[0].double(), 2 * b[0].double())
    assert torch.equal(m.log_mean_weight(), lse - math.log(2))
    assert torch.equal(m.ess(), torch.exp(2 * lse - lse2))


# --- objectives find latent sites from the traces ----------------------------------------


def test_kl_weight_scales_latent_sites_whatever_their_name():
    """kl_weight = 0 leaves log p(x | z) alone: the latent site is 'latent', not 'z'."""
    x = sample_x(5)
    pyro.set_rng_seed(0)
    value = iwae_loss(
        pyro_example_model, pyro_example_guide, x, 1, 0.0, data_plate="batch", particle_dim=-2
    )
    pyro.set_rng_seed(0)
    gt = poutine.trace(pyro_example_guide).get_trace(x)
    mt = poutine.trace(poutine.replay(pyro_example_model, trace=gt)).get_trace(x)
    mt.compute_log_prob()
    assert torch.allclose(value.loss, -mt.nodes["obs"]["log_prob"].sum(), atol=1e-4)

    obj = make_objective("elbo", beta=0.5, data_plate="batch")
    loss = obj.loss(pyro_example_model, pyro_example_guide, x, 0.0)
    assert torch.isfinite(loss.loss) and math.isfinite(loss.elbo)


def test_objective_passes_extra_model_arguments():
    y = torch.zeros(5)
    x = sample_x(5)
    for name in ("elbo", "iwae", "dreg"):
        value = make_objective(name, 3).loss(cond_model, cond_guide, x, 1.0, y, shift=0.0)
        assert torch.isfinite(value.loss)


# --- the package leaves Pyro's global state alone ----------------------------------------


def test_import_leaves_pyro_settings_and_param_store_unchanged():
    code = (
        "import pyro; before = (pyro.settings.get('module_local_params'), "
        "len(pyro.get_param_store().keys()));"
        "import pyro_vae;"
        "after = (pyro.settings.get('module_local_params'), len(pyro.get_param_store().keys()));"
        "assert before == after, (before, after); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- AIS and gaps: refused where they cannot work ----------------------------------------


def test_ais_refuses_a_discrete_latent_site():
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer import ais_log_likelihood

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(
        ConfigError,
        match=whole(
            "AIS moves latent sites by HMC, but site 'c' is discrete (Bernoulli); mark it "
            "infer={'enumerate': 'parallel'} in the model and leave it out of the guide (AIS then "
            "sums it out), or use log_likelihood"
        ),
    ):
        ais_log_likelihood(model, guide, torch.zeros(3, 1), num_steps=2, num_chains=2)


def test_gaps_need_a_family_for_each_latent_site():
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer import inference_gaps

    with pytest.raises(
        ConfigError,
        match=whole(
            "inference gaps need one family per latent site; the guide has latent sites ['z2', "
            "'z1'], so pass family={site: ...} for each"
        ),
    ):
        inference_gaps(
            two_layer_model, two_layer_exact_guide, torch.zeros(3, 3),
            family=lambda p: dist.Normal(p, 1.0), init_params=lambda x: torch.zeros(x.shape[0]),
        )  # fmt: skip


def _normal_family(p: torch.Tensor) -> dist.Normal:
    """params (batch, 2): loc and log-scale of a scalar normal."""
    return dist.Normal(p[..., 0], p[..., 1].exp())


def test_gaps_of_a_two_layer_model_with_a_family_per_site():
    """The guide q(z2 | x) q(z1 | z2) is exact; the local family, independent per site, is
    not: log p(x) and the amortized ELBO are exact, the amortization gap is not positive."""
    from pyro_vae.infer import inference_gaps

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10))
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        two_layer_model, two_layer_exact_guide, x,
        family={"z1": _normal_family, "z2": _normal_family},
        init_params={"z1": lambda x: torch.zeros(x.shape[0], 2),
                     "z2": lambda x: torch.zeros(x.shape[0], 2)},
        num_samples=200, elbo_samples=200, num_steps=150, lr=0.05,
    )  # fmt: skip
    exact = two_layer_log_px(x)
    assert torch.allclose(gaps.log_px, exact, atol=1e-3)
    assert torch.allclose(gaps.elbo_amortized, exact, atol=1e-3)
    assert (gaps.approximation_gap > 0.05).all()  # z1, z2 correlated a posteriori
    assert (gaps.amortization_gap < 0.01).all()


def test_gaps_with_independent_sites_reach_the_exact_answer_and_take_labels():
    """x[:2] = z1 + noise, x[2:] = y + z2 + noise: each site's posterior is a normal, so the
    local family reaches log p(x); the constant guide leaves a positive amortization gap."""
    from pyro_vae.infer import inference_gaps

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            pyro.sample("a", dist.Normal(z1, S).to_event(1), obs=x[:, :2])
            pyro.sample("b", dist.Normal(y + z2, S), obs=x[:, 2])

    def guide(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(0.0, 1.0))

    def exact(x, y):
        sd = (1 + S**2) ** 0.5
        return dist.Normal(0.0, sd).log_prob(x[:, :2]).sum(-1) + dist.Normal(y, sd).log_prob(
            x[:, 2]
        )

    def family_z1(p):
        return dist.Normal(p[..., :2], p[..., 2:].exp()).to_event(1)

    g = torch.Generator().manual_seed(11)
    y = torch.tensor([0.0, 3.0, -2.0])
    x = torch.randn(3, 3, generator=g)
    x[:, 2] += y
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        model, guide, x, y,
        family={"z1": family_z1, "z2": _normal_family},
        init_params={"z1": lambda x, y: torch.zeros(x.shape[0], 4),
                     "z2": lambda x, y: torch.zeros(x.shape[0], 2)},
        num_samples=500, elbo_samples=500, num_steps=300, lr=0.05,
    )  # fmt: skip
    assert torch.allclose(gaps.log_px, exact(x, y), atol=0.03)
    assert gaps.approximation_gap.abs().max() < 0.03
    assert (gaps.amortization_gap > 0.1).all()


# --- particles replicated along the data plate: same numbers, programs that need it -----


@pytest.mark.parametrize("strategy", ["vectorized", "replicate"])
def test_two_layer_exact_posterior_is_exact_under_either_strategy(strategy):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, generator=g)
    r = log_likelihood(
        two_layer_model, two_layer_exact_guide, x, num_samples=8, strategy=strategy,
        keep_log_weights=True,
    )  # fmt: skip
    assert r.strategy == strategy
    assert torch.allclose(r.log_weights, two_layer_log_px(x).expand(8, 5), atol=1e-4)


def test_both_strategies_draw_the_same_numbers_from_the_same_seed():
    x = sample_x(3)
    runs = []
    for strategy in ("vectorized", "replicate"):
        pyro.set_rng_seed(5)
        runs.append(
            log_likelihood(
                pyro_example_model, pyro_example_guide, x, num_samples=50,
                data_plate="batch", strategy=strategy, keep_log_weights=True,
            ).log_weights  # fmt: skip
        )
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


NET = torch.nn.Linear(L, D)
torch.nn.init.normal_(NET.weight, generator=torch.Generator().manual_seed(6))


def exact_log_px_of(net: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W W^T + S^2 I) for the linear decoder ``net``."""
    w, b = net.weight.detach(), net.bias.detach()
    cov = w @ w.T + S**2 * torch.eye(D)
    return dist.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def flat_view_model(x):
    """A decoder whose output is flattened to (-1, D), as many hand-written models do."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        loc = NET(z).view(-1, D)
        pyro.sample("x", dist.Normal(loc, S).to_event(1), obs=x)


def flat_view_guide(x):
    """The exact posterior of the linear decoder, widened by 1.2."""
    w, b = NET.weight.detach(), NET.bias.detach()
    cov = torch.linalg.inv(torch.eye(L) + w.T @ w / S**2)
    with pyro.plate("data", x.shape[0]):
        loc = (x - b) @ w @ cov / S**2
        pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=1.44 * cov))


def test_model_that_flattens_with_view_falls_back_to_replicated_particles():
    pyro.set_rng_seed(0)
    x = sample_x(3)
    with torch.no_grad():
        r = log_likelihood(flat_view_model, flat_view_guide, x, num_samples=2000)
        indep = independent_estimate(flat_view_model, flat_view_guide, (x,), 300)
    assert r.strategy == "replicate"
    assert ((r.per_example - indep).abs() < mc_tolerance(r, 300)).all()
    assert torch.allclose(r.per_example, exact_log_px_of(NET, x), atol=0.05)
    with pytest.raises(
        DataError,
        match=whole(
            "the programs cannot draw particles vectorized (vectorized: Shape mismatch inside "
            "plate('data') at site x dim -1, 2 vs 4); use strategy='auto'"
        ),
    ):
        log_likelihood(flat_view_model, flat_view_guide, x, num_samples=4, strategy="vectorized")


# --- Pyro's CVAE example: masks indexed with the batch shape ------------------------------

CVAE_D = 6
PRIOR_NET = torch.nn.Linear(CVAE_D, 2 * L)
RECOG_NET = torch.nn.Linear(2 * CVAE_D, 2 * L)
GEN_NET = torch.nn.Linear(L, CVAE_D)


def cvae_model(xs, ys=None):
    """As examples/cvae writes it: xs has -1 where ys is observed, the mask picks those."""
    batch_size = xs.shape[0]
    with pyro.plate("data"):
        h = PRIOR_NET(xs)
        zs = pyro.sample(
            "z", dist.Normal(h[..., :L], torch.nn.functional.softplus(h[..., L:])).to_event(1)
        )
        loc = torch.sigmoid(GEN_NET(zs))
        mask_loc = loc[(xs == -1).view(-1, CVAE_D)].view(batch_size, -1)
        mask_ys = ys[xs == -1].view(batch_size, -1)
        pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)


def cvae_guide(xs, ys=None):
    with pyro.plate("data"):
        h = RECOG_NET(torch.cat([xs, ys], -1))
        pyro.sample(
            "z", dist.Normal(h[..., :L], torch.nn.functional.softplus(h[..., L:])).to_event(1)
        )


def test_pyro_cvae_with_masks_is_scored_with_replicated_particles():
    g = torch.Generator().manual_seed(7)
    ys = torch.bernoulli(torch.full((3, CVAE_D), 0.5), generator=g)
    xs = ys.clone()
    xs[:, CVAE_D // 2 :] = -1.0  # the second half is to be predicted
    pyro.set_rng_seed(0)
    with torch.no_grad():
        r = log_likelihood(cvae_model, cvae_guide, xs, ys, num_samples=2000)
        indep = independent_estimate(cvae_model, cvae_guide, (xs, ys), 500)
    assert r.strategy == "replicate"
    assert ((r.per_example - indep).abs() < mc_tolerance(r, 500)).all()


# --- discrete latents: enumerated sites are summed out exactly ---------------------------

PI = torch.tensor([0.2, 0.5, 0.3])
MU = torch.tensor([-2.0, 0.0, 3.0])


def mixture_log_px(x: torch.Tensor) -> torch.Tensor:
    """log sum_c pi_c N(x; mu_c, sqrt(1 + S^2)), x: (N, 1) -> (N,)."""
    comp = dist.Normal(MU, (1 + S**2) ** 0.5).log_prob(x)
    return torch.logsumexp(PI.log() + comp, -1)


def mixture_model(x):
    """c ~ Categorical(pi), z | c ~ N(mu_c, 1), x | z ~ N(z, S^2)."""
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(PI))
        z = pyro.sample("z", dist.Normal(MU[c], 1.0))
        pyro.sample("x", dist.Normal(z, S), obs=x[:, 0])


def mixture_exact_guide(x):
    """q(c) anything (enumerated), q(z | x, c) = p(z | x, c): the weight is p(x, c) exactly."""
    prec = 1 + 1 / S**2
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})
        pyro.sample("z", dist.Normal((MU[c] + x[:, 0] / S**2) / prec, prec**-0.5))


@pytest.mark.parametrize("strategy", ["vectorized", "replicate"])
def test_mixture_with_an_enumerated_component_equals_its_closed_form(strategy):
    x = torch.tensor([[-2.5], [-0.3], [0.4], [2.0], [5.0]])
    r = log_likelihood(
        mixture_model, mixture_exact_guide, x, num_samples=6, strategy=strategy,
        keep_log_weights=True,
    )  # fmt: skip
    assert r.enumerated == ("c",)
    assert torch.allclose(r.log_weights, mixture_log_px(x).expand(6, 5), atol=1e-4)


def test_a_component_marked_for_sequential_enumeration_is_summed_exactly_as_well():
    """``infer={"enumerate": "sequential"}`` (what ``config_enumerate(guide, "sequential")``
    marks) names the same sum as "parallel": the estimator sums it in parallel, exactly."""

    def guide(x):
        prec = 1 + 1 / S**2
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3),
                            infer={"enumerate": "sequential"})  # fmt: skip
            pyro.sample("z", dist.Normal((MU[c] + x[:, 0] / S**2) / prec, prec**-0.5))

    x = torch.tensor([[-2.5], [0.4], [5.0]])
    r = log_likelihood(mixture_model, guide, x, num_samples=4, keep_log_weights=True)
    assert r.enumerated == ("c",)
    torch.testing.assert_close(r.log_weights, mixture_log_px(x).expand(4, 3), rtol=0, atol=1e-4)


def test_a_component_enumerated_in_the_model_alone_is_summed_exactly():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MU[c], (1 + S**2) ** 0.5), obs=x[:, 0])

    def guide(x):  # nothing to sample: the component is summed inside the model
        pass

    x = torch.tensor([[-1.0], [0.5], [4.0]])
    r = log_likelihood(model, guide, x, num_samples=1)
    assert torch.allclose(r.per_example, mixture_log_px(x), atol=1e-5)
    assert r.ess.eq(1).all()


def test_sampling_the_component_instead_is_unbiased_but_noisier():
    pyro.set_rng_seed(1)
    x = torch.tensor([[-2.5], [0.4], [5.0]])

    def sampled_guide(x):
        prec = 1 + 1 / S**2
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("z", dist.Normal((MU[c] + x[:, 0] / S**2) / prec, prec**-0.5))

    r = log_likelihood(mixture_model, sampled_guide, x, num_samples=4000)
    assert r.enumerated == ()
    assert torch.allclose(r.per_example, mixture_log_px(x), atol=0.05)
    assert (r.ess < 4000).all()


X_FEATURES = torch.tensor([[0.5, -1.0, 2.0], [3.0, 3.5, -2.0]])


def _per_feature_mixture(x: torch.Tensor, shift: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log prod_d sum_c pi_c N(x_nd; mu_c + shift_n, 1): (..., N) for shift (..., N, 1)."""
    comp = dist.Normal(MU + torch.as_tensor(shift)[..., None], 1.0).log_prob(x[..., None])
    return torch.logsumexp(comp + PI.log(), -1).sum(-1)


@pytest.mark.parametrize("strategy", ["vectorized", "replicate"])
def test_an_enumerated_site_inside_an_inner_plate_is_summed_per_element(strategy):
    """c_nd ~ Categorical(pi) per feature d of point n, x_nd ~ N(mu_c, 1): summed out per
    element of the features plate, log p(x_n) = sum_d log sum_c pi_c N(x_nd; mu_c, 1)."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MU[c], 1.0), obs=x)

    r = log_likelihood(model, lambda x: None, X_FEATURES, num_samples=3, strategy=strategy,
                       keep_log_weights=True)  # fmt: skip
    assert r.enumerated == ("c",) and r.strategy == strategy
    want = _per_feature_mixture(X_FEATURES)  # -5.7703, -6.5853
    torch.testing.assert_close(r.log_weights, want.expand(3, 2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", ["vectorized", "replicate"])
def test_a_latent_per_point_and_a_component_enumerated_per_feature_weigh_exactly(strategy):
    """z_n ~ N(0, 1) from q = N(0.5, 1), c_nd enumerated per feature in the model: each
    particle's weight is p(z) / q(z) prod_d sum_c pi_c N(x_nd; mu_c + z_n, 1) at its own z."""
    drawn = []

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("features", x.shape[1], dim=-1):
                c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
                pyro.sample("x", dist.Normal(MU[c] + z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            drawn.append(pyro.sample("z", dist.Normal(0.5, 1.0)).detach())

    pyro.set_rng_seed(3)
    r = log_likelihood(model, guide, X_FEATURES, num_samples=4, particle_chunk=4,
                       strategy=strategy, keep_log_weights=True)  # fmt: skip
    z = drawn[-1].reshape(4, 2, 1)  # replicated rows are particle-major as well
    want = (_per_feature_mixture(X_FEATURES, z) + dist.Normal(0.0, 1.0).log_prob(z[..., 0])
            - dist.Normal(0.5, 1.0).log_prob(z[..., 0]))  # fmt: skip
    torch.testing.assert_close(r.log_weights, want, rtol=0, atol=1e-5)


def test_a_component_enumerated_per_feature_in_the_guide_weighs_exactly():
    """The guide enumerates c_nd per feature and draws u_nd | c from q(u | c) = N(mu_c / 2,
    1); the model has c ~ pi, u ~ N(mu_c, 1), x ~ N(u, S). Each particle's weight is
    prod_d sum_c pi_c N(u_c; mu_c, 1) N(x; u_c, S) / q(u_c | c), at the guide's draw u_c for
    each value of c (q(c) itself is left out: the sum replaces it)."""
    drawn = []

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            c = pyro.sample("c", dist.Categorical(PI))
            u = pyro.sample("u", dist.Normal(MU[c], 1.0))
            pyro.sample("x", dist.Normal(u, S), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3),
                            infer={"enumerate": "parallel"})  # fmt: skip
            drawn.append(pyro.sample("u", dist.Normal(MU[c] / 2, 1.0)).detach())

    pyro.set_rng_seed(4)
    r = log_likelihood(model, guide, X_FEATURES, num_samples=5, particle_chunk=5,
                       keep_log_weights=True)  # fmt: skip
    assert r.enumerated == ("c",)
    u = drawn[-1].reshape(3, 5, 2, 3)  # (value of c, particle, point, feature)
    mu = MU[:, None, None, None]
    log_q = dist.Normal(mu / 2, 1.0).log_prob(u)
    terms = (PI.log()[:, None, None, None] + dist.Normal(mu, 1.0).log_prob(u)
             + dist.Normal(u, S).log_prob(X_FEATURES) - log_q)  # fmt: skip
    want = torch.logsumexp(terms, 0).sum(-1)  # (particles, points)
    torch.testing.assert_close(r.log_weights, want, rtol=0, atol=1e-4)


def test_a_site_reading_an_enumerated_site_outside_its_plate_is_refused():
    """Enumeration gives c one value for every feature at once, so x_n ~ N(sum_d mu_{c_nd}, 1)
    outside the features plate would be scored as a different program (Pyro's TraceEnum_ELBO
    scores that one silently): refused, in the model and in the guide."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("features", 3, dim=-1):
                c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MU[c].sum(-1, keepdim=True), 1.0), obs=x)

    with pytest.raises(
        DataError,
        match=whole(
            "site 'x' reads the enumerated site 'c' outside its plate 'features', where "
            "enumeration gives every element of the plate one value; sum 'c' out inside the "
            "model (e.g. dist.MixtureSameFamily) or mark it infer={'enumerate': None} to "
            "sample it"
        ),
    ):
        log_likelihood(model, lambda x: None, torch.zeros(3, 1), num_samples=2)

    def model_z(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("features", 3, dim=-1):
                pyro.sample("c", dist.Categorical(PI))
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide_z(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("features", 3, dim=-1):
                c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal(MU[c].sum(-1, keepdim=True), 1.0))

    with pytest.raises(DataError, match="^site 'z' reads the enumerated site 'c' outside its "):
        log_likelihood(model_z, guide_z, torch.zeros(3, 1), num_samples=2)


# --- Pyro's M2 (semi-supervised VAE), as its example writes it ---------------------------

NCLS = 3
M2_DEC = torch.nn.Linear(L + NCLS, D)
M2_ENC_Y = torch.nn.Linear(D, NCLS)
M2_ENC_Z = torch.nn.Linear(D + NCLS, 2 * L)
for _net in (M2_DEC, M2_ENC_Y, M2_ENC_Z):
    torch.nn.init.normal_(_net.weight, std=0.3, generator=torch.Generator().manual_seed(8))
with torch.no_grad():  # q(z | x, y) about as wide as the prior: bounded importance weights
    M2_ENC_Z.bias[L:] = 0.55


def _concat(a, b):
    """torch.cat along the last dim after broadcasting the batch dims (examples/vae/utils)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


def m2_model(xs, ys=None):
    batch_size = xs.size(0)
    with pyro.plate("data"):
        prior_loc = torch.zeros(batch_size, L)
        zs = pyro.sample("z", dist.Normal(prior_loc, torch.ones(batch_size, L)).to_event(1))
        alpha_prior = torch.ones(batch_size, NCLS) / NCLS
        ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
        loc = torch.sigmoid(M2_DEC(_concat(zs, ys)))
        pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)


def m2_guide(xs, ys=None):
    with pyro.plate("data"):
        if ys is None:
            alpha = torch.softmax(M2_ENC_Y(xs), -1)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha))
        h = M2_ENC_Z(_concat(xs, ys))
        pyro.sample(
            "z", dist.Normal(h[..., :L], torch.nn.functional.softplus(h[..., L:])).to_event(1)
        )


def m2_per_label_estimate(xs: torch.Tensor, k: int) -> torch.Tensor:
    """log sum_y p_hat(x, y), each p_hat(x, y) estimated with the label observed, per point."""
    per_label = []
    for c in range(NCLS):
        ys = torch.nn.functional.one_hot(torch.full((xs.shape[0],), c), NCLS).float()
        per_label.append(independent_estimate(m2_model, m2_guide, (xs, ys), k))
    return torch.logsumexp(torch.stack(per_label), 0)


def test_pyro_m2_with_the_label_enumerated_matches_a_per_label_estimate():
    from pyro.infer import config_enumerate

    xs = torch.bernoulli(torch.full((3, D), 0.4), generator=torch.Generator().manual_seed(9))
    guide = config_enumerate(m2_guide, "parallel", expand=True)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        r = log_likelihood(m2_model, guide, xs, num_samples=2000)
        indep = m2_per_label_estimate(xs, 250)
    assert r.enumerated == ("y",) and r.strategy == "vectorized"
    assert ((r.per_example - indep).abs() < mc_tolerance(r, 250)).all()
    # labelled points: y observed, nothing enumerated, log p(x, y)
    ys = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), NCLS).float()
    labelled = log_likelihood(m2_model, guide, xs, ys, num_samples=3000)
    assert labelled.enumerated == ()
    assert (labelled.per_example < r.per_example).all()  # p(x, y) < p(x)


@pytest.mark.parametrize("init", ["guide", "prior"])
def test_ais_sums_out_a_component_the_model_enumerates(init):
    from pyro_vae.infer import ais_log_likelihood

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(MU[c], 1.0))
            pyro.sample("x", dist.Normal(z, S), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[:, 0] * 0.8, 1.0))

    x = torch.tensor([[-2.5], [0.4], [5.0]])
    pyro.set_rng_seed(2)
    r = ais_log_likelihood(model, guide, x, num_steps=100, num_chains=16, init=init)
    exact = mixture_log_px(x)
    assert ((r.per_example - exact).abs() < 4 * r.per_example_stderr + 0.02).all()


def test_gaps_and_posterior_summaries_use_the_guide_s_own_site_and_plate_names():
    """Pyro's example names (site 'latent', plate 'batch'): no site called z is assumed."""
    from pyro_vae.infer import inference_gaps, posterior_inference_data

    def family(loc):
        return dist.MultivariateNormal(loc, covariance_matrix=1.44 * POST_COV)

    x = sample_x(5, seed=12)
    pyro.set_rng_seed(0)
    gaps = inference_gaps(
        pyro_example_model, pyro_example_guide, x, family=family,
        init_params=lambda x: near_posterior(x).loc, data_plate="batch",
        num_samples=2000, elbo_samples=2000, num_steps=50, num_particles=8,
    )  # fmt: skip
    # the amortized mean is already this family's optimum: no gap, never a negative one
    assert float(gaps.amortization_gap.mean()) > -0.05
    assert torch.allclose(gaps.log_px, exact_log_px(x), atol=0.05)
    idata = posterior_inference_data(
        pyro_example_model, pyro_example_guide, x[:1], num_samples=200, seed=0,
        data_plate="batch",
    )  # fmt: skip
    assert idata.posterior["latent"].shape == (1, 200, L)


def test_objectives_on_m2_sum_the_enumerated_label():
    """The ELBO objective runs Pyro's TraceEnum_ELBO on programs that mark a site for
    enumeration; IWAE sums the label inside each weight and approaches log p(x)."""
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    xs = torch.bernoulli(torch.full((4, D), 0.4), generator=torch.Generator().manual_seed(13))
    guide = config_enumerate(m2_guide, "parallel", expand=True)
    elbo = make_objective("elbo")
    pyro.set_rng_seed(3)
    ours = elbo.loss(m2_model, guide, xs)
    pyro.set_rng_seed(3)
    pyros = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2_model, guide, xs)
    assert elbo.enumerates
    assert torch.allclose(ours.loss, pyros)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        iwae = make_objective("iwae", num_particles=2000).loss(m2_model, guide, xs)
        ll = log_likelihood(m2_model, guide, xs, num_samples=2000)
    # two independent K = 2000 estimates of sum_n log p(x_n): 4 standard errors (delta method)
    tolerance = 4 * float((2 / ll.ess).sum().sqrt())
    assert abs(-float(iwae.loss) - float(ll.per_example.sum())) < tolerance
    with pytest.raises(
        ConfigError,
        match=whole(
            "a KL weight of 0.5 (beta, warm-up) cannot scale the latent terms of programs with "
            "enumerated sites; train them with KL weight 1"
        ),
    ):
        make_objective("elbo").loss(m2_model, guide, xs, kl_weight=0.5)


def test_ais_refuses_a_program_that_cannot_carry_chains_on_the_left():
    from pyro_vae.infer import ais_log_likelihood

    with pytest.raises(
        DataError,
        match=whole(
            "the programs cannot draw particles vectorized (vectorized: Shape mismatch inside "
            "plate('data') at site x dim -1, 2 vs 4); AIS runs its chains in a plate left of the "
            "data plate; use log_likelihood, which replicates the data instead"
        ),
    ):
        ais_log_likelihood(flat_view_model, flat_view_guide, sample_x(2), num_steps=2)


@pytest.mark.parametrize("name", ["iwae", "dreg"])
def test_importance_weighted_objectives_train_a_flattening_model(name):
    """IWAE and DReG draw replicated particles for a model that cannot carry them on the
    left, and their bound equals the vectorized one on a model that can, from one seed."""
    objective = make_objective(name, num_particles=8)
    x = sample_x(3)
    value = objective.loss(flat_view_model, flat_view_guide, x)
    assert objective.strategy == "replicate" and torch.isfinite(value.loss)
    bounds = []
    for strategy in ("vectorized", "replicate"):
        pyro.set_rng_seed(6)
        bounds.append(
            iwae_loss(
                pyro_example_model, pyro_example_guide, x, 8, data_plate="batch",
                strategy=strategy,
            ).loss  # fmt: skip
        )
    assert torch.allclose(bounds[0], bounds[1], atol=1e-5)


def test_posterior_summary_of_a_flattening_model_and_refusal_with_enumeration():
    from pyro.infer import config_enumerate

    from pyro_vae.infer import posterior_inference_data

    idata = posterior_inference_data(
        flat_view_model, flat_view_guide, sample_x(1), num_samples=100, seed=0
    )
    assert idata.posterior["z"].shape == (1, 100, L)
    xs = torch.bernoulli(torch.full((1, D), 0.4), generator=torch.Generator().manual_seed(14))
    with pytest.raises(
        ConfigError,
        match=whole(
            "sites ['y'] are enumerated, so the guide's draws of the other sites come one per "
            "enumerated value; summarize a program without enumeration, or score it with "
            "log_likelihood"
        ),
    ):
        posterior_inference_data(m2_model, config_enumerate(m2_guide, "parallel"), xs)



def _report(method: str, **options):
    from pyro_vae.infer import inference_report

    small = {"num_samples": 4, "ks": (1,), "num_points": 2, "ais_steps": 2, "ais_chains": 1}
    return inference_report(
        pyro_example_model, pyro_example_guide, sample_x(3), method, data_plate="batch",
        **small, **options,
    )  # fmt: skip


def _one_point_data(x, **options):
    from pyro_vae.infer.diagnostics import posterior_inference_data

    return posterior_inference_data(
        pyro_example_model, pyro_example_guide, x, num_samples=5, data_plate="batch", **options
    )


def _two_site_data():
    from pyro_vae.infer.diagnostics import posterior_inference_data

    x = torch.tensor([[0.4, -0.2, 0.1]])
    return posterior_inference_data(two_layer_model, two_layer_exact_guide, x, num_samples=5)


REPORT_AND_DIAGNOSTIC_REFUSALS = [
    (
        "an unknown report method",
        lambda: _report("mcmc"),
        ConfigError,
        "unknown method 'mcmc'; choose one of ['is', 'ais', 'gaps']",
    ),
    (
        "gaps without a family",
        lambda: _report("gaps"),
        ConfigError,
        "the inference gaps need the guide's posterior family and initial parameters, which this "
        "model does not provide; use --method ais",
    ),
    (
        "diagnostics of a batch",
        lambda: _one_point_data(sample_x(2)),
        DataError,
        "expected one data point, got a batch of 2; pass x[i : i + 1]",
    ),
    (
        "diagnostics of an unknown site",
        lambda: _one_point_data(sample_x(1), site="nope"),
        ConfigError,
        "'nope' is not a latent site of the guide; choose one of ['latent']",
    ),
    (
        "diagnostics without a site among several",
        _two_site_data,
        ConfigError,
        "the guide has latent sites ['z2', 'z1']; choose one with site=...",
    ),
    (
        "latent usage without data",
        lambda: latent_usage(pyro_example_model, pyro_example_guide),
        DataError,
        "no data given; call latent_usage(model, guide, x)",
    ),
]


@pytest.mark.parametrize(
    "call, exc_type, message",
    [c[1:] for c in REPORT_AND_DIAGNOSTIC_REFUSALS],
    ids=[c[0] for c in REPORT_AND_DIAGNOSTIC_REFUSALS],
)
def test_report_diagnostic_and_usage_refusals_are_checked_whole(call, exc_type, message):
    with pytest.raises(exc_type, match=whole(message)):
        call()


def test_two_enumerated_sites_are_one_term_named_by_both():
    """With sites summed out, the model's terms are one entry named by the enumerated sites
    joined by ``+``, whose value is the whole log weight, and the guide has no terms."""
    from pyro_vae.infer import trace

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            d = pyro.sample("d", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(MU[c] + d, 1.0))
            pyro.sample("x", dist.Normal(z, S), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[:, 0], 1.0))

    x = torch.tensor([[-2.5], [0.4], [5.0]])
    terms = trace.particle_terms(model, guide, 4, x)
    assert terms.enumerated == ["c", "d"]
    assert list(terms.log_p) == ["c+d"] and terms.log_q == {}
    torch.testing.assert_close(terms.log_weights(), terms.log_p["c+d"])


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_a_scale_given_as_a_tensor_is_read_by_its_value(factor):
    """``poutine.scale`` with a tensor factor: a factor of ones is no scale at all, any other
    is listed for every site it covers; the terms are scored unscaled either way."""
    from pyro_vae.infer import trace

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[:, 0] / 2, 0.5**0.5))

    x = torch.tensor([[-1.0], [0.5], [2.0]])
    terms = trace.particle_terms(poutine.scale(model, torch.tensor(factor)), guide, 3, x)
    expected = {} if factor == 1.0 else {"z": factor, "x": factor}
    assert {n: float(s) for n, s in terms.scales.items()} == expected
    log_px = dist.Normal(0.0, 2**0.5).log_prob(x[:, 0])
    torch.testing.assert_close(terms.log_weights(), log_px.expand(3, -1), rtol=0, atol=1e-5)
