"""Moving through the latent space: codes, manifold grids, interpolation, attribute vectors,
and an aggregate-posterior sampler.

Works with any model that has ``encode(x)`` (a distribution over z whose ``.mean`` is the
code) and ``decode(z)`` (a distribution over x whose ``.mean`` is the picture): a
[`VAE`][pyro_vae.models.vae.VAE] or an [`Autoencoder`][pyro_vae.models.autoencoder.Autoencoder].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.runtime.devices import model_device


@torch.no_grad()
def latent_codes(model, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Posterior means E[z | x] (a VAE) or codes (an autoencoder).

    x: (n, *event_shape) -> (n, latent_dim), on the CPU whatever the model's device.
    """
    device = model_device(model)
    return torch.cat(
        [
            model.encode(x[i : i + batch_size].to(device)).mean.cpu()
            for i in range(0, len(x), batch_size)
        ]
    )


@torch.no_grad()
def decode_mean(model, z: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """E[x | z] for z: (n, latent_dim) -> (n, *event_shape), on the CPU."""
    device = model_device(model)
    return torch.cat(
        [
            model.decode(z[i : i + batch_size].to(device)).mean.cpu()
            for i in range(0, len(z), batch_size)
        ]
    )


def prior_quantiles(prior, probs: torch.Tensor, num_samples: int = 100_000) -> torch.Tensor:
    """Marginal quantiles of p(z) per latent dimension: probs (m,) -> (m, latent_dim).

    Exact through the inverse CDF where the prior's marginals have one (a factorized normal,
    ``Independent(Normal)``); otherwise empirical quantiles of ``num_samples`` prior draws.
    """
    pz = prior()
    # Only an Independent wrapper has independent marginals whose icdf is the base's icdf;
    # a flow (TransformedDistribution) also has a base_dist, but its quantiles are not the base's.
    if isinstance(pz, torch.distributions.Independent):
        try:
            grid = probs.unsqueeze(-1).expand(-1, pz.event_shape[0])
            return pz.base_dist.icdf(grid.to(pz.base_dist.mean.device)).cpu()
        except (NotImplementedError, AttributeError):
            pass
    draws = pz.sample((num_samples,)).cpu()
    return torch.quantile(draws, probs, dim=0)


def manifold_grid(prior, n: int = 15, tail: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n grid of 2-D latent points evenly spaced in prior probability.

    Returns (z1 values (n,), z2 values (n,)) where z_d = F_d^{-1}(p) for p evenly spaced in
    [tail, 1 - tail] (Kingma & Welling 2014, Fig. 4: "learned MNIST manifold").
    """
    if prior.latent_dim != 2:
        raise ConfigError(
            f"the latent manifold needs a 2-D latent space, this model has {prior.latent_dim}; "
            "train with --latent-dim 2 or use the latent scatter (PCA) instead"
        )
    probs = torch.linspace(tail, 1 - tail, n)
    q = prior_quantiles(prior, probs)
    return q[:, 0], q[:, 1]


def grid_points(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Row-major grid, top row = largest z2 (as on a plot): -> (len(z2) * len(z1), 2)."""
    zz2, zz1 = torch.meshgrid(z2.flip(0), z1, indexing="ij")
    return torch.stack([zz1.reshape(-1), zz2.reshape(-1)], dim=-1)


@torch.no_grad()
def decode_manifold(model, n: int = 15, tail: float = 0.05):
    """Decode the prior-quantile grid: -> (images (n*n, *event_shape), z1 (n,), z2 (n,))."""
    z1, z2 = manifold_grid(model.prior, n, tail)
    return decode_mean(model, grid_points(z1, z2)), z1, z2


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation: z0, z1: (d,), t: (m,) -> (m, d); z(t) = (1 - t) z0 + t z1."""
    t = t.unsqueeze(-1)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 "Sampling generative networks").

    z(t) = sin((1 - t) W) / sin W * z0 + sin(t W) / sin W * z1 with cos W = <z0, z1> / |z0||z1|.
    Keeps the norm near that of typical prior draws, unlike the straight line through the origin's
    low-density region. Falls back to [`lerp`][pyro_vae.analysis.latent_space.lerp] for
    (anti)parallel codes.
    """
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if torch.sin(omega).abs() < 1e-6:
        return lerp(z0, z1, t)
    t = t.unsqueeze(-1)
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


INTERPOLATIONS = {"linear": lerp, "spherical": slerp}


@torch.no_grad()
def interpolate(
    model, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10, method: str = "linear"
) -> torch.Tensor:
    """Decoded images along a path between the codes of two inputs.

    x0, x1: (*event_shape) -> (steps, *event_shape); the first and last images are the
    reconstructions of x0 and x1 (decoded posterior means).
    """
    if method not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {method!r}; choose one of {list(INTERPOLATIONS)}")
    if steps < 2:
        raise ConfigError(f"an interpolation needs at least 2 steps, got {steps}")
    codes = latent_codes(model, torch.stack([x0, x1]))
    t = torch.linspace(0.0, 1.0, steps)
    return decode_mean(model, INTERPOLATIONS[method](codes[0], codes[1], t))


def attribute_vector(
    codes: torch.Tensor, labels: torch.Tensor, positive: int, negative: int
) -> torch.Tensor:
    """The mean code of one label minus another's (the lecture's "smile vector").

    codes: (n, d), labels: (n,) -> (d,); v = mean(z | y = positive) - mean(z | y = negative).
    """
    means = []
    for label in (positive, negative):
        mask = labels == label
        if not bool(mask.any()):
            present = sorted(int(v) for v in labels.unique())
            raise DataError(f"no data point has label {label}; labels present: {present}")
        means.append(codes[mask].mean(0))
    return means[0] - means[1]


@torch.no_grad()
def apply_attribute(
    model, x: torch.Tensor, vector: torch.Tensor, strengths: Sequence[float]
) -> torch.Tensor:
    """Decode each input's code moved along ``vector``: z + s v for each strength s.

    x: (n, *event_shape), vector: (d,) -> (len(strengths), n, *event_shape).
    """
    try:
        values = [float(v) for v in strengths]
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(
            f"attribute strengths must be finite numbers, got {strengths!r}; pass e.g. -2,-1,0,1,2"
        )
    z = latent_codes(model, x)
    s = torch.as_tensor(values, dtype=z.dtype)
    moved = z.unsqueeze(0) + s.view(-1, 1, 1) * vector
    out = decode_mean(model, moved.reshape(-1, z.shape[-1]))
    return out.reshape(len(s), x.shape[0], *out.shape[1:])


class AggregatePosterior:
    """A Gaussian mixture fitted to the codes of the training data, as a sampler of z.

    q(z) = (1/N) sum_n q(z | x_n) is what the decoder was trained on; where the prior puts mass
    that q(z) lacks (empty regions), prior samples decode to blurs. Sampling a mixture fitted to
    encoded means often gives cleaner pictures (Ghosh et al. 2020, "From variational to
    deterministic autoencoders", ex-post density estimation).
    """

    def __init__(self, n_components: int = 10, seed: int = 0):
        self.n_components = int(n_components)
        self.seed = int(seed)
        self.mixture = None

    def fit(self, codes: torch.Tensor) -> AggregatePosterior:
        """codes: (n, d) -> self, with a full-covariance mixture of min(K, n) components."""
        from sklearn.mixture import GaussianMixture

        k = max(1, min(self.n_components, codes.shape[0]))
        self.mixture = GaussianMixture(k, covariance_type="full", random_state=self.seed)
        self.mixture.fit(codes.detach().cpu().double().numpy())
        return self

    def sample(self, n: int) -> torch.Tensor:
        """-> (n, d) float32 draws, shuffled (sklearn returns them grouped by component)."""
        if self.mixture is None:
            raise ConfigError("fit the aggregate posterior to codes before sampling")
        self.mixture.random_state = self.seed
        z, _ = self.mixture.sample(n)
        rng = np.random.default_rng(self.seed)
        return torch.as_tensor(z[rng.permutation(n)], dtype=torch.float32)


@torch.no_grad()
def sample_images(
    model, n: int = 64, source: str = "prior", train_x: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """n pictures E[x | z] with z from the prior or from an
    [`AggregatePosterior`][pyro_vae.analysis.latent_space.AggregatePosterior].

    ``source="aggregate"`` fits the mixture to the codes of ``train_x``. -> (n, *event_shape).
    """
    torch.manual_seed(seed)
    if source == "prior":
        if not callable(getattr(model, "sample", None)):
            raise ConfigError(
                "this model has no prior to sample from; use the aggregate-posterior sampler "
                "(--source aggregate)"
            )
        return model.sample(n)  # ancestral: p(z) (every layer of a hierarchy), then E[x | z]
    if source == "aggregate":
        if train_x is None:
            raise ConfigError("sampling from the aggregate posterior needs training data")
        sampler = AggregatePosterior(seed=seed).fit(latent_codes(model, train_x))
        return decode_mean(model, sampler.sample(n))
    raise ConfigError(f"unknown sample source {source!r}; choose 'prior' or 'aggregate'")


def project_2d(codes: torch.Tensor, reference: torch.Tensor | None = None):
    """Codes as 2-D points for a scatter plot: (n, d) -> ((n, 2) array, (x label, y label)).

    2-D codes are shown as they are; higher-dimensional ones by PCA fitted to ``reference``
    (default: the codes), with each axis labelled by its share of the variance.
    """
    c = codes.detach().cpu().double().numpy()
    if c.shape[1] == 1:
        return np.concatenate([c, np.zeros_like(c)], axis=1), ("z1", "(1-D latent space)")
    if c.shape[1] == 2:
        return c, ("z1", "z2")
    from sklearn.decomposition import PCA

    ref = c if reference is None else reference.detach().cpu().double().numpy()
    pca = PCA(2).fit(ref)
    share = pca.explained_variance_ratio_
    return pca.transform(c), (
        f"PC 1 of z ({100 * share[0]:.0f}% of variance)",
        f"PC 2 of z ({100 * share[1]:.0f}% of variance)",
    )


@torch.no_grad()
def decode_plane(model, codes: torch.Tensor, n: int = 15, margin: float = 0.05):
    """Decode a grid spanning the codes' 2-D extent (PCA plane when d > 2).

    Unlike [`decode_manifold`][pyro_vae.analysis.latent_space.decode_manifold] the grid covers where
    the data's codes lie, not prior quantiles, so an autoencoder and a VAE are shown on equal terms;
    empty regions between clusters decode to whatever the decoder makes of them (the lecture's holes
    in the latent space). -> (images (n*n, *event_shape), u values (n,), v values (n,)).
    """
    c = codes.detach().cpu().double().numpy()
    d = c.shape[1]
    if d == 2:
        plane, to_z = c, lambda p: p
    elif d > 2:
        from sklearn.decomposition import PCA

        pca = PCA(2).fit(c)
        plane, to_z = pca.transform(c), pca.inverse_transform
    else:
        raise ConfigError("a decoded plane needs a latent space of 2 or more dimensions")
    lo, hi = np.quantile(plane, margin, axis=0), np.quantile(plane, 1 - margin, axis=0)
    u, v = torch.linspace(lo[0], hi[0], n), torch.linspace(lo[1], hi[1], n)
    grid = grid_points(u, v).double().numpy()
    z = torch.as_tensor(to_z(grid), dtype=torch.float32)
    return decode_mean(model, z), u, v
