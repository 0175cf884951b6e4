"""Latent-space applications: interpolation, attribute vectors, prior-quantile grids, the
aggregate-posterior sampler and 2-D projections."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.analysis import latent_space as ls
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models import ModelConfig, build_autoencoder, build_vae
from pyro_vae.parts import Prior


def tiny_models(latent_dim=2):
    torch.manual_seed(0)
    config = ModelConfig(event_shape=(1, 4, 4), latent_dim=latent_dim, hidden=(8,))
    return build_vae(config).eval(), build_autoencoder(config).eval()


def test_lerp_and_slerp_hit_endpoints_and_slerp_keeps_norm():
    z0, z1 = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    t = torch.linspace(0, 1, 7)
    for f in (ls.lerp, ls.slerp):
        path = f(z0, z1, t)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(path[-1], z1)
    # between equal-norm orthogonal codes slerp stays on the circle; lerp cuts the chord
    torch.testing.assert_close(ls.slerp(z0, z1, t).norm(dim=-1), torch.full((7,), 2.0))
    assert float(ls.lerp(z0, z1, t)[3].norm()) == pytest.approx(math.sqrt(2))
    # parallel codes: slerp falls back to the straight line
    torch.testing.assert_close(ls.slerp(z0, 3 * z0, t), ls.lerp(z0, 3 * z0, t))


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_endpoints_are_the_reconstructions(method):
    vae, ae = tiny_models()
    x = torch.rand(2, 1, 4, 4)
    for model in (vae, ae):
        strip = ls.interpolate(model, x[0], x[1], steps=6, method=method)
        assert strip.shape == (6, 1, 4, 4)
        torch.testing.assert_close(strip[0], model.reconstruct(x[:1])[0])
        torch.testing.assert_close(strip[-1], model.reconstruct(x[1:])[0])
    with pytest.raises(ConfigError):
        ls.interpolate(vae, x[0], x[1], method="cubic")


def test_attribute_vector_is_the_difference_of_group_means():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(30, 3, generator=g)
    labels = torch.arange(30) % 3
    v = ls.attribute_vector(codes, labels, positive=2, negative=0)
    pos = sum(codes[i] for i in range(30) if i % 3 == 2) / 10
    neg = sum(codes[i] for i in range(30) if i % 3 == 0) / 10
    torch.testing.assert_close(v, pos - neg)
    with pytest.raises(DataError, match="no data point has label 7"):
        ls.attribute_vector(codes, labels, 7, 0)


def test_apply_attribute_moves_codes_along_the_vector():
    vae, _ = tiny_models()
    x = torch.rand(3, 1, 4, 4)
    v = torch.tensor([0.5, -1.0])
    out = ls.apply_attribute(vae, x, v, strengths=[0.0, 2.0])
    assert out.shape == (2, 3, 1, 4, 4)
    torch.testing.assert_close(out[0], vae.reconstruct(x))
    z = vae.encode(x).mean + 2.0 * v
    torch.testing.assert_close(out[1], vae.decode(z).mean)


def test_manifold_grid_uses_the_normal_inverse_cdf_and_plot_orientation():
    vae, _ = tiny_models()
    z1, z2 = ls.manifold_grid(vae.prior, n=5, tail=0.1)
    expected = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.1, 0.9, 5))
    torch.testing.assert_close(z1, expected)
    torch.testing.assert_close(z2, expected)
    grid = ls.grid_points(z1, z2)
    assert grid.shape == (25, 2)
    # first row on screen is the largest z2, left to right increasing z1
    torch.testing.assert_close(grid[0], torch.stack([z1[0], z2[-1]]))
    torch.testing.assert_close(grid[4], torch.stack([z1[-1], z2[-1]]))
    torch.testing.assert_close(grid[-1], torch.stack([z1[-1], z2[0]]))
    images, _, _ = ls.decode_manifold(vae, n=5)
    assert images.shape == (25, 1, 4, 4)
    with pytest.raises(ConfigError, match="2-D latent space"):
        ls.manifold_grid(tiny_models(latent_dim=3)[0].prior)


class GammaPrior(Prior):
    """A prior whose marginals have no inverse CDF in torch (exercises the fallback)."""

    def forward(self):
        return dist.Gamma(torch.full((2,), 2.0), torch.ones(2)).to_event(1)


def test_prior_quantiles_fall_back_to_sample_quantiles():
    import scipy.stats

    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.5, 0.9])
    q = ls.prior_quantiles(GammaPrior(2), probs, num_samples=100_000)
    exact = torch.as_tensor(scipy.stats.gamma(2.0).ppf(probs.numpy()), dtype=torch.float32)
    # standard error of a sample quantile: sqrt(p (1 - p) / n) / density(quantile)
    dens = torch.as_tensor(scipy.stats.gamma(2.0).pdf(exact.numpy()), dtype=torch.float32)
    se = torch.sqrt(probs * (1 - probs) / 100_000) / dens
    assert bool(((q - exact.unsqueeze(-1)).abs() < 5 * se.unsqueeze(-1)).all())


def test_aggregate_posterior_sampler_matches_a_two_cluster_code_distribution():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-4.0, 0.0], [4.0, 1.0]])
    codes = centers[torch.arange(2000) % 2] + 0.5 * torch.randn(2000, 2, generator=g)
    sampler = ls.AggregatePosterior(n_components=2, seed=0).fit(codes)
    z = sampler.sample(4000)
    assert z.shape == (4000, 2) and z.dtype == torch.float32
    # mean and std of the mixture: tolerance = 5 standard errors of a 4000-draw mean
    std = codes.std(0)
    assert bool(((z.mean(0) - codes.mean(0)).abs() < 5 * std / math.sqrt(4000)).all())
    # half the draws in each cluster (binomial sd = sqrt(4000)/2)
    assert abs(int((z[:, 0] > 0).sum()) - 2000) < 5 * math.sqrt(4000) / 2
    # shuffled: the first half is not one component
    assert 0.3 < float((z[:2000, 0] > 0).float().mean()) < 0.7
    with pytest.raises(ConfigError):
        ls.AggregatePosterior().sample(3)


def test_sample_images_from_prior_and_aggregate():
    vae, ae = tiny_models()
    train = torch.rand(40, 1, 4, 4)
    assert ls.sample_images(vae, 5, "prior").shape == (5, 1, 4, 4)
    assert ls.sample_images(ae, 5, "aggregate", train_x=train).shape == (5, 1, 4, 4)
    with pytest.raises(ConfigError):
        ls.sample_images(vae, 5, "aggregate")


def test_project_2d_passes_2d_through_and_uses_pca_above():
    g = torch.Generator().manual_seed(0)
    c2 = torch.randn(50, 2, generator=g)
    p, names = ls.project_2d(c2)
    assert names == ("z1", "z2")
    torch.testing.assert_close(torch.as_tensor(p, dtype=torch.float32), c2)
    c5 = torch.randn(50, 5, generator=g) * torch.tensor([5.0, 3.0, 0.1, 0.1, 0.1])
    p, names = ls.project_2d(c5)
    assert p.shape == (50, 2) and names[0].startswith("PC 1") and "variance" in names[1]
    # the projection keeps almost all variance of the two dominant axes
    assert float(torch.as_tensor(p).var(0).sum()) > 0.99 * float(c5[:, :2].var(0).sum())


def test_decode_plane_covers_the_codes_extent():
    _, ae = tiny_models(latent_dim=3)
    codes = ls.latent_codes(ae, torch.rand(30, 1, 4, 4))
    images, u, v = ls.decode_plane(ae, codes, n=4)
    assert images.shape == (16, 1, 4, 4) and u.shape == (4,) and v.shape == (4,)


class ShiftedFlowPrior(Prior):
    """z = 3 + 2 e, e ~ N(0, I), written as a transformed distribution (like a flow prior)."""

    def forward(self):
        base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
        shift = torch.distributions.AffineTransform(3.0, 2.0, event_dim=1)
        return dist.TransformedDistribution(base, [shift])


def test_prior_quantiles_of_a_transformed_prior_are_not_its_base_quantiles():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.5, 0.9])
    q = ls.prior_quantiles(ShiftedFlowPrior(2), probs, num_samples=100_000)
    exact = 3 + 2 * torch.distributions.Normal(0.0, 1.0).icdf(probs)
    # sample-quantile standard error: sqrt(p (1 - p) / n) / density, density of N(3, 2^2)
    dens = torch.distributions.Normal(3.0, 2.0).log_prob(exact).exp()
    se = torch.sqrt(probs * (1 - probs) / 100_000) / dens
    assert bool(((q - exact.unsqueeze(-1)).abs() < 5 * se.unsqueeze(-1)).all())
