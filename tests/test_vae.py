"""The VAE's two programs: shapes, the site/plate contract, and ELBO agreement."""

import pyro
import pyro.infer
import pytest
import torch
from pyro import poutine
from refusals import whole

from pyro_vae import VAE, ModelConfig, build_vae
from pyro_vae.data import load_digits, static_binarize
from pyro_vae.infer import log_likelihood


@pytest.fixture
def vae():
    pyro.set_rng_seed(0)
    return build_vae(ModelConfig(event_shape=(1, 8, 8), latent_dim=3, hidden=(32, 16)))


@pytest.fixture(scope="module")
def batch():
    return static_binarize(load_digits().test[:32])


def test_sites_and_plate(vae, batch):
    guide_trace = poutine.trace(vae.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(batch)
    z = guide_trace.nodes["z"]
    assert z["value"].shape == (32, 3)
    assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert z["cond_indep_stack"][0].dim == -1
    x = model_trace.nodes["x"]
    assert x["is_observed"] and x["fn"].event_shape == (1, 8, 8)
    assert x["fn"].batch_shape == (32,)


def test_methods_shapes(vae, batch):
    qz = vae.encode(batch)
    assert qz.batch_shape == (32,) and qz.event_shape == (3,)
    px = vae.decode(torch.zeros(5, 7, 3))
    assert px.batch_shape == (5, 7) and px.event_shape == (1, 8, 8)
    assert vae.sample(6).shape == (6, 1, 8, 8)
    recon = vae.reconstruct(batch)
    assert recon.shape == batch.shape and ((recon >= 0) & (recon <= 1)).all()


def test_vectorized_particles_go_left(vae, batch):
    """RenyiELBO with vectorized particles works without any special case."""
    elbo = pyro.infer.RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True)
    loss = elbo.loss(vae.model, vae.guide, batch)
    assert torch.isfinite(torch.tensor(loss))


def test_encoder_runs_once_per_data_point_and_particle_chunk(vae, batch):
    calls = []
    handle = vae.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    log_likelihood(vae.model, vae.guide, batch, num_samples=1000, particle_chunk=1000)
    # On one point: one call to check the programs (plate layout, roles), one to check that
    # particles go on the left; then one per batch of data, never one per particle.
    assert sum(calls) == 2 + batch.shape[0]
    calls.clear()
    # The default chunk is sized from bytes (three more probe calls on one point, with 2, 4
    # and 2 particles): the encoder runs once per data point and chunk of particles, never
    # once per particle.
    log_likelihood(vae.model, vae.guide, batch, num_samples=1000)
    handle.remove()
    per_point = (sum(calls) - 5) / batch.shape[0]
    assert per_point == int(per_point) and 1 <= per_point <= 1000 // 16 + 1


def test_trace_and_meanfield_elbo_agree(vae, batch):
    """Same ELBO in expectation: MC average vs analytic-KL average, within 4 joint SE."""
    with torch.no_grad():
        losses = {}
        for name, cls in (("mc", pyro.infer.Trace_ELBO), ("mf", pyro.infer.TraceMeanField_ELBO)):
            elbo = cls(num_particles=200, vectorize_particles=True)
            values = torch.tensor([elbo.loss(vae.model, vae.guide, batch) for _ in range(10)])
            losses[name] = (values.mean(), values.std() / values.numel() ** 0.5)
    (m1, s1), (m2, s2) = losses["mc"], losses["mf"]
    assert abs(m1 - m2) < 4 * (s1**2 + s2**2) ** 0.5


def test_is_k1_matches_elbo_in_expectation(vae, batch):
    """The IS estimate with K = 1 and Pyro's Trace_ELBO estimate the same quantity."""
    torch.manual_seed(0)
    x = batch[:4].repeat(250, 1, 1, 1)
    r = log_likelihood(vae.model, vae.guide, x, num_samples=1)
    with torch.no_grad():
        elbo = pyro.infer.TraceMeanField_ELBO(num_particles=200, vectorize_particles=True)
        values = torch.tensor([-elbo.loss(vae.model, vae.guide, batch[:4]) / 4 for _ in range(10)])
    se = (r.stderr**2 + float(values.var() / values.numel())) ** 0.5
    assert abs(r.mean - float(values.mean())) < 4 * se


def test_latent_dims_must_match():
    from pyro_vae.models import VAE
    from pyro_vae.parts import Bernoulli, DiagonalNormal, MLPDecoder, MLPEncoder, StandardNormal

    with pytest.raises(
        ValueError,
        match=whole(
            "prior latent_dim 3 differs from posterior latent_dim 2; build both with the same "
            "latent_dim"
        ),
    ):
        VAE(
            MLPEncoder((4,), 4),
            MLPDecoder(2, 4),
            StandardNormal(3),
            Bernoulli(),
            DiagonalNormal(2),
            (4,),
        )


def test_an_encoder_without_an_event_shape_needs_one_given():
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    from pyro_vae.models import VAE

    with pytest.raises(
        ValueError,
        match=whole("pass event_shape (the shape of one data point): the encoder has none"),
    ):
        VAE(torch.nn.Linear(6, 4), vae.decoder, vae.prior, vae.likelihood, vae.posterior)


def test_a_vae_counts_the_elements_of_one_data_point(vae: VAE) -> None:
    """num_data_elements() is the number of values in one data point (what site x scores):
    64 for 1 x 8 x 8 digits, 30 for a (3, 2, 5) point, 6 for a flat (6,) one."""
    assert vae.num_data_elements() == 64
    pyro.set_rng_seed(0)
    cube = build_vae(ModelConfig(event_shape=(3, 2, 5), latent_dim=2, hidden=(8,)))
    flat = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    assert cube.num_data_elements() == 30
    assert flat.num_data_elements() == 6
