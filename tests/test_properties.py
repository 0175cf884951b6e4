"""Property tests over shapes and configurations: finite outputs, exact shapes, no broadcasting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyro_vae.errors import DataError
from pyro_vae.infer import log_likelihood, log_weights
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.parts import LIKELIHOODS, POSTERIORS, PRIORS, MLPDecoder, MLPEncoder
from pyro_vae.validation import check_tensor

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
event_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


@FEW
@given(batch=batch_shapes, latent=st.integers(1, 4), name=st.sampled_from(sorted(POSTERIORS)))
def test_posterior_shapes_and_finite_log_prob(batch, latent, name):
    assume(not (name == "iaf" and latent < 2))  # an autoregressive flow needs 2+ dims
    # Built as a VAE builds it: some families need options beyond latent_dim.
    family = build_vae(
        ModelConfig(event_shape=(3,), latent_dim=latent, hidden=(5,), posterior=name)
    ).posterior
    q = family(torch.randn(*batch, family.num_params) * 3)
    assert q.batch_shape == batch and q.event_shape == (latent,)
    z = q.rsample()
    assert z.shape == (*batch, latent)
    assert q.log_prob(z).shape == batch and torch.isfinite(q.log_prob(z)).all()


@FEW
@given(latent=st.integers(1, 4), n=st.integers(1, 5), name=st.sampled_from(sorted(PRIORS)))
def test_prior_shapes_and_finite_log_prob(latent, n, name):
    # Built as a VAE builds it: a VampPrior is bound to the encoder and posterior family.
    p = build_vae(ModelConfig(event_shape=(3,), latent_dim=latent, hidden=(5,), prior=name)).prior()
    assert p.event_shape == (latent,)
    z = p.sample((n,))
    assert z.shape == (n, latent) and torch.isfinite(p.log_prob(z)).all()
    assert p.log_prob(z).shape == (n,)


@FEW
@given(batch=batch_shapes, event=event_shapes, name=st.sampled_from(sorted(LIKELIHOODS)))
def test_likelihood_is_elementwise_with_finite_log_prob(batch, event, name):
    lik = LIKELIHOODS[name]()
    params = torch.randn(*batch, *event, lik.num_params) * 5
    p = lik(params)
    assert p.batch_shape == (*batch, *event) and p.event_shape == ()
    x = p.sample()
    assert torch.isfinite(p.log_prob(x)).all() and p.log_prob(x).shape == (*batch, *event)


@FEW
@given(batch=batch_shapes, event=event_shapes, out=st.integers(1, 5), latent=st.integers(1, 3))
def test_nets_keep_leading_dimensions(batch, event, out, latent):
    enc = MLPEncoder(event, out, hidden=(4,))
    dec = MLPDecoder(latent, out, hidden=(4,))
    assert enc(torch.rand(*batch, *event)).shape == (*batch, out)
    assert dec(torch.randn(*batch, latent)).shape == (*batch, out)


vae_configs = st.builds(
    dict,
    event=event_shapes,
    latent=st.integers(1, 3),
    likelihood=st.sampled_from(sorted(LIKELIHOODS)),
    n=st.integers(1, 7),
    k=st.integers(1, 6),
    batch_size=st.none() | st.integers(1, 4),
    chunk=st.none() | st.integers(1, 3),
)


def _vae_and_data(c: dict, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(
        event_shape=c["event"], latent_dim=c["latent"], hidden=(5,), likelihood=c["likelihood"]
    )
    vae = build_vae(config).eval()
    x = torch.rand(c["n"], *c["event"])
    if vae.likelihood.binarize:
        x = x.round()
    return vae, x


@FEW
@given(c=vae_configs)
def test_log_likelihood_has_one_finite_entry_per_point(c):
    vae, x = _vae_and_data(c)
    r = log_likelihood(
        vae.model,
        vae.guide,
        x,
        num_samples=c["k"],
        batch_size=c["batch_size"],
        particle_chunk=c["chunk"],
        keep_log_weights=True,
    )
    n, k = c["n"], c["k"]
    assert r.per_example.shape == (n,) and r.elbo_per_example.shape == (n,)
    assert r.ess.shape == (n,) and r.log_weights.shape == (k, n)
    assert torch.isfinite(r.per_example).all() and torch.isfinite(r.log_weights).all()
    assert ((r.ess >= 1 - 1e-4) & (r.ess <= k + 1e-4)).all()
    # logsumexp over K weights minus log K lies between their mean and their maximum.
    lw = r.log_weights
    assert (r.per_example >= lw.mean(0) - 1e-4).all()
    assert (r.per_example <= lw.max(0).values + 1e-4).all()


@FEW
@given(c=vae_configs)
def test_per_example_weights_do_not_depend_on_the_other_points(c):
    # Changing one data point, with the same random draws, leaves every other point's weights
    # unchanged: nothing is summed or broadcast across the data dimension.
    assume(c["n"] >= 2)
    vae, x = _vae_and_data(c)
    torch.manual_seed(1)
    before = log_weights(vae.model, vae.guide, x, c["k"])
    changed = x.clone()
    changed[0] = 1 - changed[0]
    torch.manual_seed(1)
    after = log_weights(vae.model, vae.guide, changed, c["k"])
    assert before.shape == after.shape == (c["k"], c["n"])
    assert torch.equal(before[:, 1:], after[:, 1:])
    assert not torch.equal(before[:, 0], after[:, 0])


@FEW
@given(c=vae_configs, extra=st.integers(1, 3), where=st.sampled_from(["append", "prepend"]))
def test_wrong_event_shape_raises_instead_of_broadcasting(c, extra, where):
    vae, x = _vae_and_data(c)
    event = c["event"]
    bad_event = (*event, extra) if where == "append" else (extra, *event)
    bad = torch.rand(c["n"], *bad_event)
    with pytest.raises(DataError, match="model expects"):
        log_likelihood(vae.model, vae.guide, bad, num_samples=2)
    # A plain-function model (no VAE to ask) is caught by tracing its shapes.
    with pytest.raises(DataError):
        log_likelihood(lambda d: vae.model(d), lambda d: vae.guide(d), bad, num_samples=2)


@FEW
@given(
    shape=st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
    poison=st.sampled_from([None, float("nan"), float("inf")]),
)
def test_check_tensor_accepts_exactly_finite_nonempty_float_batches(shape, dtype, poison):
    x = torch.zeros(shape, dtype=dtype)
    if poison is not None and x.is_floating_point() and x.numel():
        x.view(-1)[0] = poison
    ok = (
        x.is_floating_point() and len(shape) >= 2 and shape[0] > 0 and bool(torch.isfinite(x).all())
    )
    if ok:
        assert check_tensor(x) is x
    else:
        with pytest.raises(DataError):
            check_tensor(x)
