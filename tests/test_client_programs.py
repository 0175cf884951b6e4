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

from pyro_vae.errors import DataError
from pyro_vae.infer import (
    StreamingMoments,
    iwae_loss,
    log_likelihood,
    make_objective,
)
from pyro_vae.infer import importance as importance_module

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


def test_default_plate_name_refused_with_the_fix():
    x = sample_x(3)
    with pytest.raises(DataError, match="'latent' is outside plate 'data'.*data_plate="):
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
    with pytest.raises(DataError, match="different lengths along dim 0"):
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

    with pytest.raises(DataError, match="latent site 'z1' of the model is not sampled"):
        log_likelihood(two_layer_model, guide, torch.zeros(3, 3), num_samples=2)


def test_guide_site_unknown_to_the_model_refused():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(0.0, 1.0))
            pyro.sample("z2", dist.Normal(0.0, 1.0))
            pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(DataError, match="guide site 'extra' does not appear in the model"):
        log_likelihood(two_layer_model, guide, torch.zeros(3, 3), num_samples=2)


def test_model_without_observed_site_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(DataError, match="observes no sample site"):
        log_likelihood(model, guide, torch.zeros(3, 1), num_samples=2)


def test_subsample_scaling_refused():
    def model(x):
        with pyro.plate("data", 1000, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", 1000, subsample_size=x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(DataError, match="subsample scaling would rescale"):
        log_likelihood(model, guide, torch.zeros(3, 1), num_samples=2)


# --- memory flat in K, streaming reductions ----------------------------------------------


def test_largest_weight_tensor_does_not_grow_with_k(monkeypatch):
    rows = []
    original = importance_module.log_weights

    def recording(*args, **kwargs):
        lw = original(*args, **kwargs)
        rows.append(lw.shape[0])
        return lw

    monkeypatch.setattr(importance_module, "log_weights", recording)
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

    with pytest.raises(ConfigError, match="site 'c' is discrete"):
        ais_log_likelihood(model, guide, torch.zeros(3, 1), num_steps=2, num_chains=2)


def test_gaps_refuse_a_guide_with_two_latent_sites():
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer import inference_gaps

    with pytest.raises(ConfigError, match=r"latent sites \['z2', 'z1'\]"):
        inference_gaps(
            two_layer_model, two_layer_exact_guide, torch.zeros(3, 3),
            lambda p: dist.Normal(p, 1.0), lambda x: torch.zeros(x.shape[0]),
        )
