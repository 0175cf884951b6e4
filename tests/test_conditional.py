"""The conditional VAE: known answers of conditional linear-Gaussian models, shapes, sites, the
quadrant condition and its mask, and refusals."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from refusals import whole

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.models import MODELS
from pyro_vae.models.conditional import (
    ConditionalKind,
    ConditionalPrior,
    ConditionalVAE,
    build_conditional,
    one_hot_labels,
    quadrant_mask,
)
from pyro_vae.models.config import ModelConfig
from pyro_vae.parts.likelihoods import Normal
from pyro_vae.parts.nets import MLPDecoder, MLPEncoder
from pyro_vae.parts.posteriors import DiagonalNormal
from pyro_vae.parts.priors import StandardNormal

F64 = torch.float64


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.expm1(y))


class ConditionalLinearGaussian:
    """z ~ N(A c, I), x | z, c ~ N(W z + V c + b, s^2 I) as plain Pyro programs.

    p(x | c) = N(W A c + V c + b, W W^T + s^2 I); p(z | x, c) = N(S (A c + W^T r / s^2), S),
    r = x - V c - b, S = (I + W^T W / s^2)^-1. A = 0 is the unconditional prior N(0, I).
    """

    def __init__(self, learned_prior: bool, latent: int = 2, data: int = 5, cond: int = 3):
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(data, latent, generator=g, dtype=F64)
        self.V = torch.randn(data, cond, generator=g, dtype=F64)
        self.b = torch.randn(data, generator=g, dtype=F64)
        self.A = torch.randn(latent, cond, generator=g, dtype=F64) * float(learned_prior)
        self.s = 0.5
        self.L, self.D, self.C = latent, data, cond
        eye = torch.eye(latent, dtype=F64)
        self.post_cov = torch.linalg.inv(eye + self.W.T @ self.W / self.s**2)
        self.post_tril = torch.linalg.cholesky(self.post_cov)

    def model(self, x: torch.Tensor, c: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(c @ self.A.T, 1.0).to_event(1))
            loc = z @ self.W.T + c @ self.V.T + self.b
            pyro.sample("x", dist.Normal(loc, self.s).to_event(1), obs=x)

    def posterior_mean(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = x - c @ self.V.T - self.b
        return (c @ self.A.T + r @ self.W / self.s**2) @ self.post_cov

    def exact_guide(self, x: torch.Tensor, c: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            q = dist.MultivariateNormal(self.posterior_mean(x, c), scale_tril=self.post_tril)
            pyro.sample("z", q)

    def wrong_guide(self, x: torch.Tensor, c: torch.Tensor) -> None:
        sd = self.post_cov.diagonal().sqrt()
        with pyro.plate("data", x.shape[0], dim=-1):
            q = dist.Normal(self.posterior_mean(x, c) + 0.5 * sd, 0.7 * sd)
            pyro.sample("z", q.to_event(1))

    def exact_log_px(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.D, dtype=F64)
        loc = c @ (self.W @ self.A + self.V).T + self.b
        return dist.MultivariateNormal(loc, covariance_matrix=cov).log_prob(x)

    def sample_data(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        c = torch.randn(n, self.C, generator=g, dtype=F64)
        z = c @ self.A.T + torch.randn(n, self.L, generator=g, dtype=F64)
        eps = torch.randn(n, self.D, generator=g, dtype=F64)
        return z @ self.W.T + c @ self.V.T + self.b + self.s * eps, c


@pytest.mark.parametrize("learned_prior", [False, True])
def test_exact_posterior_gives_exact_conditional_likelihood_for_every_k(learned_prior):
    lg = ConditionalLinearGaussian(learned_prior)
    x, c = lg.sample_data(20)
    exact = lg.exact_log_px(x, c)
    for k in (1, 7, 100):
        ll = log_likelihood(lg.model, lg.exact_guide, x, c, num_samples=k)
        assert torch.allclose(ll.per_example, exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("learned_prior", [False, True])
def test_worse_guide_rises_towards_the_conditional_likelihood(learned_prior):
    lg = ConditionalLinearGaussian(learned_prior)
    x, c = lg.sample_data(200)
    exact = float(lg.exact_log_px(x, c).mean())
    means = [
        log_likelihood(lg.model, lg.wrong_guide, x, c, num_samples=k).mean for k in (1, 10, 300)
    ]
    assert means[0] < means[1] < means[2] < exact + 0.01
    assert exact - means[2] < 0.2 * (exact - means[0])


def linear_cvae(
    condition_on: str, event_shape: tuple[int, ...], learned_prior: bool, cond: int = 3
) -> tuple[ConditionalVAE, ConditionalLinearGaussian, torch.Tensor]:
    """A ConditionalVAE whose nets are single linear layers set to a linear-Gaussian model and
    its exact posterior over the scored (hidden) elements: returns the module, the model's
    matrices (W, V, b, A over every element) and the scored elements' indices."""
    size = math.prod(event_shape)
    latent, s = 2, 0.5
    if condition_on == "quadrant":
        hidden_idx = (~quadrant_mask(event_shape, 2)).reshape(-1).nonzero().squeeze(-1)
        cdim = size
    else:
        hidden_idx = torch.arange(size)
        cdim = cond
    lg = ConditionalLinearGaussian(learned_prior, latent=latent, data=size, cond=cdim)
    g = torch.Generator().manual_seed(2)
    # Orthogonal columns over the scored rows make the exact posterior diagonal.
    q, _ = torch.linalg.qr(torch.randn(len(hidden_idx), latent, generator=g, dtype=F64))
    lg.W[hidden_idx] = q * torch.tensor([1.5, 0.7], dtype=F64)
    wh, vh, bh = lg.W[hidden_idx], lg.V[hidden_idx], lg.b[hidden_idx]
    post_var = 1 / (1 + (wh * wh).sum(0) / s**2)
    enc_x = torch.zeros(latent, size, dtype=F64)
    enc_x[:, hidden_idx] = post_var[:, None] * wh.T / s**2
    enc_c = post_var[:, None] * (lg.A - wh.T @ vh / s**2)
    enc_b = -post_var * (wh.T @ bh) / s**2
    encoder = MLPEncoder((size + cdim,), 2 * latent, ()).double()
    decoder = MLPDecoder(latent + cdim, size, ()).double()
    with torch.no_grad():
        layer = encoder.net[0]
        layer.weight.zero_()
        layer.weight[:latent] = torch.cat([enc_x, enc_c], 1)
        layer.bias[:latent] = enc_b
        layer.bias[latent:] = inv_softplus(post_var.sqrt() - 1e-6)
        decoder.net[0].weight.copy_(torch.cat([lg.W, lg.V], 1))
        decoder.net[0].bias.copy_(lg.b)
    if learned_prior:
        family = DiagonalNormal(latent)
        net = MLPEncoder((cdim,), 2 * latent, ()).double()
        with torch.no_grad():
            net.net[0].weight.zero_()
            net.net[0].weight[:latent] = lg.A
            net.net[0].bias.zero_()
            net.net[0].bias[latent:] = inv_softplus(torch.tensor(1 - 1e-6, dtype=F64))
        prior = ConditionalPrior(net, family)
    else:
        prior = StandardNormal(latent).double()
    options = {"num_classes": cond} if condition_on == "labels" else {}
    cvae = ConditionalVAE(
        encoder, decoder, prior, Normal(s), DiagonalNormal(latent), event_shape, condition_on,
        **options,
    )  # fmt: skip
    return cvae, lg, hidden_idx


@pytest.mark.parametrize("learned_prior", [False, True])
def test_quadrant_likelihood_is_the_exact_likelihood_of_the_hidden_quadrants(learned_prior):
    """Linear nets set to a linear-Gaussian model: IS gives log p(x_hidden | x_visible)."""
    cvae, lg, hidden = linear_cvae("quadrant", (1, 4, 4), learned_prior)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 1, 4, 4, generator=g, dtype=F64)
    c = cvae.condition(x)
    wh, vh, bh = lg.W[hidden], lg.V[hidden], lg.b[hidden]
    cov = wh @ wh.T + lg.s**2 * torch.eye(len(hidden), dtype=F64)
    loc = c @ (wh @ lg.A + vh).T + bh
    x_hidden = x.reshape(10, -1)[:, hidden]
    exact = dist.MultivariateNormal(loc, covariance_matrix=cov).log_prob(x_hidden)
    for k in (1, 20):
        ll = log_likelihood(cvae.model, cvae.guide, x, num_samples=k)
        assert torch.allclose(ll.per_example, exact, atol=1e-4, rtol=0)
    assert cvae.num_data_elements() == 12


def test_labels_likelihood_is_exact_with_linear_nets():
    cvae, lg, _ = linear_cvae("labels", (5,), learned_prior=True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 5, generator=g, dtype=F64)
    y = torch.randint(3, (8,), generator=g)
    exact = lg.exact_log_px(x, torch.nn.functional.one_hot(y, 3).to(F64))
    ll = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=5)
    assert torch.allclose(ll.per_example, exact, atol=1e-4, rtol=0)


CONFIG = ModelConfig(event_shape=(1, 8, 8), latent_dim=2, hidden=(16,))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((6, 1, 8, 8), 0.4), generator=g)


def trace_pair(model, guide, *args):
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)


@pytest.mark.parametrize(
    "condition_on, learned_prior", [("labels", False), ("labels", True), ("quadrant", False)]
)
def test_sites_plates_and_shapes(images, condition_on, learned_prior):
    options = {"num_classes": 3} if condition_on == "labels" else {}
    cvae = build_conditional(CONFIG, condition_on, conditional_prior=learned_prior, **options)
    args = (images, torch.tensor([0, 1, 2, 2, 1, 0])) if condition_on == "labels" else (images,)
    guide_trace, model_trace = trace_pair(cvae.model, cvae.guide, *args)
    z = guide_trace.nodes["z"]
    assert z["value"].shape == (6, 2)
    assert [(f.name, f.dim) for f in z["cond_indep_stack"]] == [("data", -1)]
    x = model_trace.nodes["x"]
    assert x["is_observed"] and x["fn"].batch_shape == (6,) and x["fn"].event_shape == (1, 8, 8)
    assert [(f.name, f.dim) for f in x["cond_indep_stack"]] == [("data", -1)]
    assert {n for n, s in model_trace.nodes.items() if s["type"] == "sample"} == {"z", "x"}
    assert cvae.condition(*args).shape == (6, cvae.condition_dim)
    assert cvae.condition_on == condition_on and cvae.latent_dim == 2
    assert cvae.event_shape == (1, 8, 8)
    c = cvae.condition(*args)
    assert cvae.encode(images, c).batch_shape == (6,)
    assert cvae.decode(torch.zeros(4, 6, 2), c).batch_shape == (4, 6)
    recon = cvae.reconstruct(*args)
    assert recon.shape == images.shape and ((recon >= 0) & (recon <= 1)).all()
    ll = log_likelihood(cvae.model, cvae.guide, *args, num_samples=20)
    assert ll.per_example.shape == (6,) and torch.isfinite(ll.per_example).all()
    assert ll.strategy == "vectorized"
    loss = pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True).loss(
        cvae.model, cvae.guide, *args
    )
    assert math.isfinite(loss)


def test_label_sampling_shapes():
    cvae = build_conditional(CONFIG, "labels", num_classes=3)
    assert cvae.num_classes == 3 and cvae.condition_dim == 3
    assert cvae.sample(5).shape == (5, 1, 8, 8)
    assert cvae.sample(4, torch.tensor([0, 2])).shape == (4, 2, 1, 8, 8)
    assert cvae.sample(4, torch.eye(3)[[1]], mean=False).shape == (4, 1, 1, 8, 8)
    assert cvae.sample_per_class(2).shape == (3, 2, 1, 8, 8)
    floats = build_conditional(CONFIG, "labels", condition_dim=4, conditional_prior=True)
    assert floats.num_classes is None and floats.condition_dim == 4
    assert floats.sample(3, torch.randn(2, 4)).shape == (3, 2, 1, 8, 8)
    with pytest.raises(
        ConfigError,
        match=whole(
            "a model of float conditions has no distribution over them; pass y"
        ),
    ):
        floats.sample(3)


def test_a_single_float_condition_is_accepted_and_none_refused():
    one = build_conditional(CONFIG, "labels", condition_dim=1)
    assert one.condition_dim == 1 and one.num_classes is None
    assert one.sample(3, torch.randn(2, 1)).shape == (3, 2, 1, 8, 8)
    for bad in (0, True, 1.0):
        with pytest.raises(ConfigError) as info:
            build_conditional(CONFIG, "labels", condition_dim=bad)
        assert str(info.value) == f"condition_dim must be an integer of at least 1, got {bad!r}"


def test_labels_as_integers_and_one_hot_floats_give_the_same_loss(images):
    cvae = build_conditional(CONFIG, "labels", num_classes=3)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    losses = []
    for labels in (y, torch.nn.functional.one_hot(y, 3).float()):
        pyro.set_rng_seed(5)
        losses.append(pyro.infer.Trace_ELBO().loss(cvae.model, cvae.guide, images, labels))
    assert losses[0] == losses[1]


def test_quadrant_condition_hides_all_but_the_visible_quadrant(images):
    cvae = build_conditional(CONFIG, "quadrant")
    assert cvae.quadrant == 2  # Pyro's example shows the bottom-left quadrant
    c = cvae.condition(images).reshape(images.shape)
    assert torch.equal(c[..., 4:, :4], images[..., 4:, :4])
    assert (c[..., :4, :] == -1).all() and (c[..., 4:, 4:] == -1).all()
    top_right = build_conditional(CONFIG, "quadrant", quadrant=1).visible
    assert top_right[..., :4, 4:].all() and top_right.sum() == 16


def test_quadrant_mask_scores_the_hidden_pixels_only(images):
    cvae = build_conditional(CONFIG, "quadrant")
    guide_trace, model_trace = trace_pair(cvae.model, cvae.guide, images)
    site = model_trace.nodes["x"]
    z, c = guide_trace.nodes["z"]["value"], cvae.condition(images)
    logits = cvae.decoder(torch.cat([z, c], -1)).reshape(images.shape)
    per_pixel = dist.Bernoulli(logits=logits).log_prob(images)
    hidden = ~quadrant_mask((1, 8, 8), 2)
    by_hand = (per_pixel * hidden).sum((1, 2, 3))
    assert torch.allclose(site["fn"].log_prob(images), by_hand, atol=1e-5)
    flipped_visible = images.clone()
    flipped_visible[..., 4:, :4] = 1 - flipped_visible[..., 4:, :4]
    assert torch.equal(site["fn"].log_prob(flipped_visible), site["fn"].log_prob(images))
    flipped_hidden = images.clone()
    flipped_hidden[..., 0, 0] = 1 - flipped_hidden[..., 0, 0]
    assert not torch.equal(site["fn"].log_prob(flipped_hidden), site["fn"].log_prob(images))


@pytest.mark.parametrize("learned_prior", [False, True])
def test_complete_and_sample_keep_the_visible_quadrant(images, learned_prior):
    cvae = build_conditional(CONFIG, "quadrant", conditional_prior=learned_prior)
    done = cvae.complete(images)
    assert done.shape == images.shape
    assert torch.equal(done[..., 4:, :4], images[..., 4:, :4])
    many = cvae.complete(images, num_samples=3)
    assert many.shape == (3, *images.shape)
    assert torch.equal(many[..., 4:, :4], images[..., 4:, :4].expand(3, -1, -1, -1, -1))
    assert cvae.sample(2, images).shape == (2, *images.shape)


@pytest.mark.parametrize(
    "event_shape, side", [((8, 8), 8), ((64,), 8), ((784,), 28), ((3, 4, 6), None)]
)
def test_quadrant_accepts_image_shapes(event_shape, side):
    config = ModelConfig(event_shape=event_shape, latent_dim=2, hidden=(8,))
    cvae = build_conditional(config, "quadrant", quadrant=0)
    assert cvae.visible.shape == event_shape
    assert cvae.visible.sum() * 4 == math.prod(event_shape)
    if side is not None:
        square = cvae.visible.reshape(side, side)
        assert square[: side // 2, : side // 2].all()


NOT_IMAGES = (
    "condition_on='quadrant' needs images shaped (C, H, W), (H, W) or a flattened square (s*s,), "
    "but data points have shape {}; use condition_on='labels'"
)
ODD_SIDES = (
    "condition_on='quadrant' needs an even height and width to split the image into four equal "
    "quadrants, got {} x {}; crop or pad the images"
)


@pytest.mark.parametrize(
    "event_shape, message",
    [
        ((10,), NOT_IMAGES.format((10,))),
        ((7, 8), ODD_SIDES.format(7, 8)),
        ((1, 8, 5), ODD_SIDES.format(8, 5)),
        ((2, 1, 4, 4), NOT_IMAGES.format((2, 1, 4, 4))),
        ((63,), NOT_IMAGES.format((63,))),
    ],
)
def test_quadrant_refuses_data_that_are_not_even_images(event_shape, message):
    config = ModelConfig(event_shape=event_shape, latent_dim=2, hidden=(8,))
    with pytest.raises(ConfigError, match=whole(message)):
        build_conditional(config, "quadrant")


def test_refusals(images):
    with pytest.raises(
        ConfigError,
        match=whole(
            "num_classes must be an integer of at least 2, got 1"
        ),
    ):
        build_conditional(CONFIG, "labels", num_classes=1)
    with pytest.raises(
        ConfigError,
        match=whole(
            "condition_on='labels' needs exactly one of num_classes (integer labels) and "
            "condition_dim (float conditions), got num_classes=3, condition_dim=3"
        ),
    ):
        build_conditional(CONFIG, "labels", num_classes=3, condition_dim=3)
    with pytest.raises(
        ConfigError,
        match=whole(
            "condition_on='labels' needs exactly one of num_classes (integer labels) and "
            "condition_dim (float conditions), got num_classes=None, condition_dim=None"
        ),
    ):
        build_conditional(CONFIG, "labels")
    with pytest.raises(
        ConfigError,
        match=whole(
            "unknown condition_on 'pixels'; choose one of ['labels', 'quadrant']"
        ),
    ):
        build_conditional(CONFIG, "pixels")
    with pytest.raises(
        ConfigError,
        match=whole(
            "quadrant must be one of 0..3 (0 top-left, 1 top-right, 2 bottom-left, 3 "
            "bottom-right), got 4"
        ),
    ):
        build_conditional(CONFIG, "quadrant", quadrant=4)
    with pytest.raises(
        ConfigError,
        match=whole(
            "condition_on='quadrant' takes its condition from the images; drop num_classes and "
            "condition_dim"
        ),
    ):
        build_conditional(CONFIG, "quadrant", num_classes=3)
    conv = ModelConfig(event_shape=(1, 8, 8), latent_dim=2, hidden=(16,), arch="conv")
    with pytest.raises(
        ConfigError,
        match=whole(
            "the conditional VAE builds MLP nets (the condition is concatenated to their inputs), "
            "not arch 'conv'; set arch = 'mlp'"
        ),
    ):
        build_conditional(conv, "labels", num_classes=3)
    vamp = ModelConfig(event_shape=(1, 8, 8), latent_dim=2, hidden=(16,), prior="vamp")
    with pytest.raises(
        ConfigError,
        match=whole(
            "prior VampPrior is built from the encoder, but the conditional VAE's encoder reads a "
            "condition besides x; choose another prior (e.g. 'normal')"
        ),
    ):
        build_conditional(vamp, "labels", num_classes=3)
    cvae = build_conditional(CONFIG, "labels", num_classes=3)
    with pytest.raises(
        DataError,
        match=whole(
            "label 3 is outside [0, 3); labels must be class indices 0..2"
        ),
    ):
        cvae.model(images, torch.tensor([0, 1, 3, 0, 0, 0]))
    with pytest.raises(
        DataError,
        match=whole(
            "label -1 is outside [0, 3); labels must be class indices 0..2"
        ),
    ):
        cvae.guide(images, torch.tensor([0, -1, 2, 0, 0, 0]))
    with pytest.raises(
        DataError,
        match=whole(
            "condition_on='labels' needs the labels or conditions y; call model(x, y) and guide(x, "
            "y)"
        ),
    ):
        cvae.model(images)
    with pytest.raises(
        DataError,
        match=whole(
            "conditions have shape (6, 4), need (batch, 3) floats (or integer labels (batch,) for "
            "a model built with num_classes)"
        ),
    ):
        cvae.model(images, torch.zeros(6, 4))
    quadrant = build_conditional(CONFIG, "quadrant")
    with pytest.raises(
        DataError,
        match=whole(
            "condition_on='quadrant' reads its condition from the images; call the programs with x "
            "alone"
        ),
    ):
        quadrant.model(images, torch.zeros(6, dtype=torch.long))
    with pytest.raises(
        ConfigError,
        match=whole(
            "complete(x) needs a model built with condition_on='quadrant'"
        ),
    ):
        cvae.complete(images)


def test_arch_options_without_an_activation_build_softplus_hidden_layers():
    """A config whose arch options were emptied after it was checked names no activation:
    the encoder, the decoder and the learned prior's net then use softplus, the MLP arch's
    default, and compute softplus of their first layer exactly."""
    config = ModelConfig(event_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    config.arch_options = {}
    cvae = build_conditional(config, "labels", num_classes=3, conditional_prior=True)
    nets = {"encoder": cvae.encoder, "decoder": cvae.decoder, "prior": cvae.prior.net}
    for name, net in nets.items():
        kinds = [type(m).__name__ for m in net.net]
        assert kinds == ["Linear", "Softplus", "Linear"], name
    first = cvae.encoder.net[0]
    h = torch.randn(4, first.in_features)
    want = torch.log1p(torch.exp(first(h)))
    assert torch.allclose(cvae.encoder.net[1](first(h)), want, atol=1e-6)


def _quadrant_cvae():
    return build_conditional(CONFIG, "quadrant")


def _float_cvae():
    return build_conditional(CONFIG, "labels", condition_dim=2)


MORE_REFUSALS = [
    (
        "float labels",
        lambda: one_hot_labels(torch.tensor([0.0, 1.0]), 3),
        DataError,
        "labels must be integer class indices, got dtype torch.float32; convert them with "
        "y.long() (or pass one-hot float rows)",
    ),
    (
        "boolean labels",
        lambda: one_hot_labels(torch.tensor([True, False]), 3),
        DataError,
        "labels must be integer class indices, got dtype torch.bool; convert them with "
        "y.long() (or pass one-hot float rows)",
    ),
    (
        "quadrant without images",
        lambda: _quadrant_cvae().condition(None),
        DataError,
        "condition_on='quadrant' needs the images x",
    ),
    (
        "integer labels for float conditions",
        lambda: _float_cvae().condition(None, torch.tensor([0, 1])),
        DataError,
        "this model takes float conditions (batch, 2), got integer labels; build it with "
        "num_classes to pass labels",
    ),
    (
        "a single condition vector of the wrong length",
        lambda: _float_cvae().condition(None, torch.zeros(3)),
        DataError,
        "conditions have shape (3,), need (batch, 2) floats (or integer labels (batch,) for a "
        "model built with num_classes)",
    ),
    (
        "conditions with extra batch dims, the wrong last dim",
        lambda: _float_cvae().condition(None, torch.zeros(4, 2, 3)),
        DataError,
        "conditions have shape (4, 2, 3), need (batch, 2) floats (or integer labels (batch,) "
        "for a model built with num_classes)",
    ),
    (
        "quadrant sampling without images",
        lambda: _quadrant_cvae().sample(2),
        ConfigError,
        "condition_on='quadrant' samples given images: pass them as y (only their visible "
        "quadrant is read), or use complete(x)",
    ),
    (
        "samples per class without classes",
        lambda: _float_cvae().sample_per_class(2),
        ConfigError,
        "sample_per_class needs a model of class labels (num_classes)",
    ),
    (
        "a quadrant option out of range",
        lambda: MODELS["cvae"].check_options({"condition_on": "quadrant", "quadrant": 4}),
        ConfigError,
        "quadrant must be 0..3, got 4",
    ),
    (
        "a cvae on labels without num_classes",
        lambda: MODELS["cvae"]().build(CONFIG),
        ConfigError,
        "a cvae on labels needs num_classes (--model-opt num_classes=C; train_run fills it in "
        "from the data)",
    ),
]


@pytest.mark.parametrize(
    "call, exc_type, message", [c[1:] for c in MORE_REFUSALS], ids=[c[0] for c in MORE_REFUSALS]
)
def test_more_conditional_refusals_are_checked_whole(call, exc_type, message):
    with pytest.raises(exc_type, match=whole(message)):
        call()


def test_float_conditions_are_read_by_their_last_dim_whatever_the_batch_dims():
    """Float conditions (*batch, condition_dim) are taken as they are, in x's dtype: the
    length of the last dim is checked, not of the second."""
    cvae = _float_cvae()
    y = torch.arange(24.0).reshape(4, 3, 2)
    c = cvae.condition(torch.zeros(1, dtype=F64), y)
    assert c.dtype == F64 and torch.equal(c, y.to(F64))
    single = torch.tensor([0.5, -1.0])
    assert torch.equal(cvae.condition(None, single), single)


def test_a_prior_and_posterior_of_different_sizes_are_refused_whole():
    cvae = build_conditional(CONFIG, "labels", num_classes=3)
    with pytest.raises(
        ConfigError,
        match=whole(
            "prior latent_dim 5 differs from posterior latent_dim 2; build both with the same "
            "latent_dim"
        ),
    ):
        ConditionalVAE(
            cvae.encoder, cvae.decoder, StandardNormal(5), cvae.likelihood, DiagonalNormal(2),
            (1, 8, 8), "labels", num_classes=3,
        )  # fmt: skip


def test_a_labels_cvae_scores_every_element_and_a_quadrant_cvae_the_hidden_three_quarters():
    """Site "x" of a cvae on labels scores all 1 x 8 x 8 = 64 elements of a point; on the
    quadrant condition, the three hidden 4 x 4 quadrants, 48."""
    assert build_conditional(CONFIG, "labels", num_classes=3).num_data_elements() == 64
    assert build_conditional(CONFIG, "quadrant").num_data_elements() == 48


def test_a_cvae_built_by_hand_on_labels_refuses_a_quadrant_outside_0_to_3():
    """The constructor checks the quadrant whatever the condition, as build_conditional does:
    a labels cvae given quadrant 4 is refused with the whole message."""
    size = 4
    with pytest.raises(
        ConfigError,
        match=whole(
            "quadrant must be one of 0..3 (0 top-left, 1 top-right, 2 bottom-left, 3 "
            "bottom-right), got 4"
        ),
    ):
        ConditionalVAE(
            MLPEncoder((size + 3,), 4, ()), MLPDecoder(2 + 3, size, ()), StandardNormal(2),
            Normal(0.5), DiagonalNormal(2), (size,), "labels", num_classes=3, quadrant=4,
        )  # fmt: skip


def test_the_cvae_kind_checks_partial_options_and_needs_num_classes_to_build_on_labels():
    """The kind's option hook takes options without a quadrant (Pyro's bottom-left, 2, is the
    default) and refuses one outside 0..3; building on labels without num_classes is refused
    with the whole message."""
    assert ConditionalKind.check_options({}) is None
    assert ConditionalKind.check_options({"condition_on": "quadrant"}) is None
    with pytest.raises(ConfigError, match=whole("quadrant must be 0..3, got 4")):
        ConditionalKind.check_options({"condition_on": "quadrant", "quadrant": 4})
    with pytest.raises(
        ConfigError,
        match=whole(
            "a cvae on labels needs num_classes (--model-opt num_classes=C; train_run fills it "
            "in from the data)"
        ),
    ):
        ConditionalKind().build(CONFIG)
    assert ConditionalKind(num_classes=3).build(CONFIG).num_classes == 3


@pytest.mark.parametrize("num_classes", [True, 2.5, 2.0, "3"], ids=repr)
def test_a_class_count_that_is_not_an_integer_is_refused_whole(num_classes: object) -> None:
    """True, 2.5, 2.0 and "3" are no class counts, though True < 2 and 2.5 >= 2."""
    with pytest.raises(
        ConfigError,
        match=whole(f"num_classes must be an integer of at least 2, got {num_classes!r}"),
    ):
        build_conditional(CONFIG, "labels", num_classes=num_classes)


def test_the_kind_refuses_an_unknown_condition_source_whole() -> None:
    with pytest.raises(
        ConfigError,
        match=whole("unknown condition_on 'pixels'; choose one of ['labels', 'quadrant']"),
    ):
        ConditionalKind(condition_on="pixels")


def test_the_cvae_kind_s_prior_is_the_config_s_p_z_unless_a_conditional_prior_is_asked_for(
    images,
) -> None:
    """ConditionalKind() builds p(z) from the config's prior, N(0, I) at site "z" whatever the
    label; conditional_prior=True makes it a learned p(z | c), moved by the labels."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    pyro.set_rng_seed(0)
    plain = ConditionalKind(num_classes=3).build(CONFIG)
    pz = poutine.trace(plain.model).get_trace(images, labels).nodes["z"]["fn"]
    assert torch.all(pz.mean == 0) and torch.all(pz.stddev == 1)
    assert plain.conditional_prior is False
    pyro.set_rng_seed(0)
    learned = ConditionalKind(conditional_prior=True, num_classes=3).build(CONFIG)
    pz = poutine.trace(learned.model).get_trace(images, labels).nodes["z"]["fn"]
    assert learned.conditional_prior is True and not torch.all(pz.mean == 0)
