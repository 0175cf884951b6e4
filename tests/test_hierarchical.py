"""The hierarchical VAE against known answers: two-layer linear-Gaussian models, the ladder merge.

z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, S1), x | z1 ~ N(W z1 + b, s^2 I) has
p(x) = N(W a + b, W (A A^T + S1) W^T + s^2 I) and a Gaussian posterior over (z1, z2), so an
exact guide gives log p(x) for every K and an inflated one a bound that rises with K.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from refusals import whole
from torch import nn

from pyro_vae import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer import log_likelihood
from pyro_vae.models import hierarchical
from pyro_vae.models.hierarchical import (
    IWAE_TWO_LAYER,
    HierarchicalVAE,
    build_hierarchical,
    precision_weighted,
)
from pyro_vae.parts.likelihoods import Normal
from pyro_vae.parts.posteriors import DiagonalNormal, FullRankNormal
from pyro_vae.parts.priors import StandardNormal

F64 = torch.float64


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.expm1(y))


class TwoLayerGaussian:
    """z2 ~ N(0, I_d2), z1 | z2 ~ N(A z2 + a, S1), x | z1 ~ N(W z1 + b, s^2 I_D), exactly.

    The posterior factorizes as q(z1 | x) q(z2 | z1) with q(z2 | z1) = p(z2 | z1) (x is
    independent of z2 given z1): q(z1 | x) = N(S (P1^-1 a + W^T (x - b) / s^2), S) with
    P1 = A A^T + S1, S = (P1^-1 + W^T W / s^2)^-1; p(z2 | z1) = N(C (z1 - a), I - C A),
    C = A^T P1^-1.
    """

    def __init__(self, d1: int = 3, d2: int = 2, data_dim: int = 5, s: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.d1, self.d2, self.D, self.s = d1, d2, data_dim, s
        self.A = torch.randn(d1, d2, generator=g, dtype=F64)
        self.a = torch.randn(d1, generator=g, dtype=F64)
        m = 0.4 * torch.randn(d1, d1, generator=g, dtype=F64)
        self.S1 = m @ m.T + 0.3 * torch.eye(d1, dtype=F64)
        self.W = torch.randn(data_dim, d1, generator=g, dtype=F64)
        self.b = torch.randn(data_dim, generator=g, dtype=F64)
        self.set_derived()

    def set_derived(self) -> None:
        eye2 = torch.eye(self.d2, dtype=F64)
        self.P1 = self.A @ self.A.T + self.S1
        p1_inv = torch.linalg.inv(self.P1)
        self.S = torch.linalg.inv(p1_inv + self.W.T @ self.W / self.s**2)
        self.post_gain = self.S @ self.W.T / self.s**2  # z1 mean = gain (x - b) + offset
        self.post_offset = self.S @ p1_inv @ self.a
        self.C = self.A.T @ p1_inv
        self.R = eye2 - self.C @ self.A
        self.S_tril = torch.linalg.cholesky(self.S)
        self.R_tril = torch.linalg.cholesky(self.R)
        self.S1_tril = torch.linalg.cholesky(self.S1)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.P1 @ self.W.T + self.s**2 * torch.eye(self.D, dtype=F64)
        return dist.MultivariateNormal(self.W @ self.a + self.b, cov).log_prob(x)

    def z1_mean(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b) @ self.post_gain.T + self.post_offset

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(self.d2, dtype=F64), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.MultivariateNormal(z2 @ self.A.T + self.a,
                                                           scale_tril=self.S1_tril))
            pyro.sample("x", dist.Normal(z1 @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, inflate: float = 1.0) -> None:
        """The exact posterior, both factors' scales times ``inflate``."""
        with pyro.plate("data", x.shape[0], dim=-1):
            z1 = pyro.sample(
                "z1", dist.MultivariateNormal(self.z1_mean(x), scale_tril=inflate * self.S_tril)
            )
            loc = (z1 - self.a) @ self.C.T
            pyro.sample("z2", dist.MultivariateNormal(loc, scale_tril=inflate * self.R_tril))

    def sample_x(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n, self.d2, generator=g, dtype=F64)
        e1 = torch.randn(n, self.d1, generator=g, dtype=F64)
        z1 = z2 @ self.A.T + self.a + e1 @ self.S1_tril.T
        return z1 @ self.W.T + self.b + self.s * torch.randn(n, self.D, generator=g, dtype=F64)


# 1. The estimator on plain two-layer programs -------------------------------------------------


@pytest.fixture(scope="module")
def lg() -> TwoLayerGaussian:
    return TwoLayerGaussian()


@pytest.mark.parametrize("k", [1, 10, 100])
def test_exact_guide_gives_exact_log_px_for_every_k(lg, k):
    x = lg.sample_x(12)
    est = log_likelihood(lg.model, lg.guide, x, num_samples=k)
    assert torch.allclose(est.per_example, lg.exact_log_px(x), atol=1e-4, rtol=0)


def test_inflated_guide_is_a_bound_that_rises_with_k(lg):
    c = 2.0
    x = lg.sample_x(2000)
    exact = lg.exact_log_px(x)

    def inflated(x: torch.Tensor) -> None:
        lg.guide(x, inflate=c)

    def se(values: torch.Tensor) -> float:
        return float(values.std() / math.sqrt(values.numel()))

    gap1 = log_likelihood(lg.model, inflated, x, num_samples=1).per_example - exact
    est100 = log_likelihood(lg.model, inflated, x, num_samples=100)
    gap100 = est100.per_example - exact
    head = slice(0, 200)  # K = 5000 on fewer points keeps the test fast
    gap5000 = log_likelihood(lg.model, inflated, x[head], num_samples=5000).per_example
    gap5000 = gap5000 - exact[head]
    assert float(gap1.mean()) < float(gap100.mean()) - 3 * se(gap100 - gap1)
    # K = 100 lies below log p(x), which K = 5000 matches within its noise.
    assert float(gap100.mean()) < -3 * se(gap100)
    assert abs(float(gap5000.mean())) < 3 * se(gap5000)
    # Both factors inflated by c: the joint covariance is c^2 times the posterior's, so
    # KL(q || p(z | x)) = k/2 (c^2 - 1 - 2 log c), k = d1 + d2, for every x.
    k_dim = lg.d1 + lg.d2
    kl = k_dim / 2 * (c**2 - 1 - 2 * math.log(c))
    elbo_gap = est100.elbo_per_example - exact
    assert abs(float(elbo_gap.mean()) + kl) < 4 * se(elbo_gap)


# 2. HierarchicalVAE set to the linear-Gaussian model: the closed form ----------------------------


def _affine(net: nn.Module) -> nn.Linear:
    """The single affine map of a net built with no hidden layers."""
    assert len(net) == 2 and len(net[0]) == 0
    return net[1]


def _set_linear(layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


def _full_rank_raw(tril: torch.Tensor) -> torch.Tensor:
    """FullRankNormal's raw triangle for the Cholesky factor ``tril`` (rows of tril_indices)."""
    d = tril.shape[-1]
    raw = tril.clone()
    raw.diagonal().copy_(_inv_softplus(tril.diagonal() - 1e-5))
    rows, cols = torch.tril_indices(d, d)
    return raw[rows, cols]


def test_bottom_up_hvae_with_exact_weights_gives_exact_log_px():
    lg = TwoLayerGaussian(seed=3)
    s1 = torch.tensor([0.7, 0.5, 0.9], dtype=F64)
    lg.S1 = torch.diag(s1**2)  # the conditional family is diagonal
    lg.set_derived()
    d1, d2, D = lg.d1, lg.d2, lg.D
    hvae = HierarchicalVAE(
        (D,), (d1, d2), ((), ()), Normal(scale=lg.s), StandardNormal(d2),
        [FullRankNormal(d1), FullRankNormal(d2)], [DiagonalNormal(d1)], "bottom_up",
    ).double()  # fmt: skip
    zeros = torch.zeros
    _set_linear(
        _affine(hvae.conditionals[0]),
        torch.cat([lg.A, zeros(d1, d2, dtype=F64)]),
        torch.cat([lg.a, _inv_softplus(s1 - 1e-6)]),
    )
    _set_linear(_affine(hvae.decoder), lg.W, lg.b)
    n1, n2 = d1 * (d1 + 1) // 2, d2 * (d2 + 1) // 2
    _set_linear(
        _affine(hvae.encoders[0]),
        torch.cat([lg.post_gain, zeros(n1, D, dtype=F64)]),
        torch.cat([lg.post_offset - lg.post_gain @ lg.b, _full_rank_raw(lg.S_tril)]),
    )
    _set_linear(
        _affine(hvae.encoders[1]),
        torch.cat([lg.C, zeros(n2, d1, dtype=F64)]),
        torch.cat([-lg.C @ lg.a, _full_rank_raw(lg.R_tril)]),
    )
    x = lg.sample_x(10)
    for k in (1, 10):
        est = log_likelihood(hvae.model, hvae.guide, x, num_samples=k)
        assert est.strategy == "vectorized"
        assert torch.allclose(est.per_example, lg.exact_log_px(x), atol=1e-6, rtol=0)


def orthogonal_model() -> TwoLayerGaussian:
    """W with orthogonal columns and diagonal A, S1: independent coordinates, so every exact
    conditional (bottom-up or the ladder's merge) is a diagonal normal."""
    g = torch.Generator().manual_seed(5)
    D, d = 5, 2
    U, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=F64))
    lg = TwoLayerGaussian(d1=d, d2=d, data_dim=D, s=0.5)
    lg.U, lg.Dj = U, torch.tensor([1.5, 0.8], dtype=F64)
    lg.alpha, lg.s1 = torch.tensor([1.2, -0.6], dtype=F64), torch.tensor([0.6, 0.9], dtype=F64)
    lg.A, lg.a, lg.S1 = torch.diag(lg.alpha), torch.tensor([0.3, -0.5], dtype=F64), torch.diag(
        lg.s1**2
    )
    lg.W = U * lg.Dj
    lg.set_derived()
    return lg


def exact_diagonal_hvae(lg: TwoLayerGaussian, inference: str) -> HierarchicalVAE:
    """The HVAE with linear nets set to ``lg`` (from :func:`orthogonal_model`) and its exact
    posterior, all families diagonal."""
    d, D, s = lg.d1, lg.D, lg.s
    hvae = HierarchicalVAE(
        (D,), (d, d), ((), ()), Normal(scale=s), StandardNormal(d),
        [DiagonalNormal(d), DiagonalNormal(d)], [DiagonalNormal(d)], inference,
    ).double()  # fmt: skip
    zeros_dd, zeros = torch.zeros(d, d, dtype=F64), torch.zeros(d, D, dtype=F64)
    _set_linear(
        _affine(hvae.conditionals[0]),
        torch.cat([lg.A, zeros_dd]),
        torch.cat([lg.a, _inv_softplus(lg.s1 - 1e-6)]),
    )
    _set_linear(_affine(hvae.decoder), lg.W, lg.b)
    if inference == "bottom_up":
        assert torch.allclose(lg.S, torch.diag(lg.S.diagonal()))
        _set_linear(
            _affine(hvae.encoders[0]),
            torch.cat([lg.post_gain, zeros]),
            torch.cat([lg.post_offset - lg.post_gain @ lg.b,
                       _inv_softplus(lg.S.diagonal().sqrt() - 1e-6)]),
        )
        _set_linear(
            _affine(hvae.encoders[1]),
            torch.cat([lg.C, zeros_dd]),
            torch.cat([-lg.C @ lg.a, _inv_softplus(lg.R.diagonal().sqrt() - 1e-6)]),
        )
        return hvae
    U, Dj, alpha = lg.U, lg.Dj, lg.alpha
    assert len(hvae.trunks[0]) == 0 and len(hvae.trunks[1]) == 0
    # y = U^T (x - b) = Dj z1 + noise(s^2): the message about z1 is N(y / Dj, (s / Dj)^2) ...
    _set_linear(
        hvae.heads[0],
        torch.cat([U.T / Dj[:, None], zeros]),
        torch.cat([-(U.T @ lg.b) / Dj, _inv_softplus(s / Dj - 1e-6)]),
    )
    # ... and y = Dj alpha z2 + Dj a + noise(v), v = Dj^2 s1^2 + s^2, gives p(z2 | x).
    v = Dj**2 * lg.s1**2 + s**2
    prec = 1 + (Dj * alpha) ** 2 / v
    gain = Dj * alpha / v / prec
    _set_linear(
        hvae.heads[1],
        torch.cat([gain[:, None] * U.T, zeros]),
        torch.cat([-gain * (U.T @ lg.b + Dj * lg.a), _inv_softplus(prec.rsqrt() - 1e-6)]),
    )
    return hvae


@pytest.mark.parametrize("inference", ["bottom_up", "ladder"])
def test_diagonal_hvae_with_exact_weights_gives_exact_log_px(inference):
    lg = orthogonal_model()
    hvae = exact_diagonal_hvae(lg, inference)
    x = lg.sample_x(10)
    for k in (1, 10):
        est = log_likelihood(hvae.model, hvae.guide, x, num_samples=k)
        assert torch.allclose(est.per_example, lg.exact_log_px(x), atol=1e-6, rtol=0)


# 2b. Sites, plates and gradients of the built model ---------------------------------------------


def _small(inference: str, layers=(4, 3), **kwargs) -> HierarchicalVAE:
    config = ModelConfig(event_shape=(1, 2, 3), hidden=(8,))
    return build_hierarchical(config, layers, inference=inference, **kwargs)


@pytest.fixture(scope="module")
def bits() -> torch.Tensor:
    return torch.randint(0, 2, (5, 1, 2, 3), generator=torch.Generator().manual_seed(0)).float()


@pytest.mark.parametrize("inference", ["bottom_up", "ladder"])
@pytest.mark.parametrize("layers", [(4, 3), (4, 3, 2)])
def test_sites_plates_and_gradients(inference, layers, bits):
    hvae = _small(inference, layers)
    names = tuple(f"z{i + 1}" for i in range(len(layers)))
    assert hvae.latent_sites == names and hvae.layers == layers and hvae.latent_dim == 4
    guide_trace = poutine.trace(hvae.guide).get_trace(bits)
    model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(bits)
    order = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert order == [*reversed(names), "x"]
    for trace in (guide_trace, model_trace):
        for name in names:
            site = trace.nodes[name]
            assert site["value"].shape == (5, layers[int(name[1:]) - 1])
            assert [(f.name, f.dim) for f in site["cond_indep_stack"]] == [("data", -1)]
    x = model_trace.nodes["x"]
    assert x["is_observed"] and x["fn"].event_shape == (1, 2, 3) and x["fn"].batch_shape == (5,)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(hvae.model, hvae.guide, bits)
    assert torch.isfinite(loss)
    params = dict(hvae.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    missing = [n for n, g in zip(params, grads, strict=True) if g is None or not g.abs().sum() > 0]
    assert not missing
    assert not list(pyro.get_param_store().keys())  # parameters live in the modules


@pytest.mark.parametrize("inference", ["bottom_up", "ladder"])
def test_vectorized_particles_on_the_left(inference, bits):
    hvae = _small(inference, (4, 3, 2))
    with pyro.plate("particles", 7, dim=-2):
        guide_trace = poutine.trace(hvae.guide).get_trace(bits)
        model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(bits)
    assert guide_trace.nodes["z1"]["value"].shape == (7, 5, 4)
    assert model_trace.nodes["z1"]["fn"].batch_shape == (7, 5)
    assert model_trace.nodes["x"]["fn"].batch_shape == (7, 5)
    est = log_likelihood(hvae.model, hvae.guide, bits, num_samples=20)
    assert est.strategy == "vectorized" and est.per_example.shape == (5,)


# 3. The ladder's guide is the precision-weighted merge ---------------------------------------


@pytest.mark.parametrize("layers", [(4, 3), (4, 3, 2)])
def test_ladder_guide_is_the_precision_weighted_merge(layers, bits):
    hvae = _small("ladder", layers, activation="softplus")
    guide_trace = poutine.trace(hvae.guide).get_trace(bits)
    model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(bits)
    n = len(layers)
    with torch.no_grad():
        d, hats = bits.reshape(5, -1), []
        for i in range(n):
            d = hvae.trunks[i](d)
            loc, raw = hvae.heads[i](d).split(layers[i], -1)
            hats.append((loc, nn.functional.softplus(raw) + 1e-6))
        top = guide_trace.nodes[f"z{n}"]["fn"].base_dist
        assert torch.allclose(top.loc, hats[-1][0]) and torch.allclose(top.scale, hats[-1][1])
        for level in range(n - 1, 0, -1):
            z_above = guide_trace.nodes[f"z{level + 1}"]["value"]
            loc_p, raw_p = hvae.conditionals[level - 1](z_above).split(layers[level - 1], -1)
            scale_p = nn.functional.softplus(raw_p) + 1e-6
            # the model's own p(z_l | z_{l+1}) at the guide's sample: the shared network
            prior = model_trace.nodes[f"z{level}"]["fn"].base_dist
            assert torch.allclose(prior.loc, loc_p) and torch.allclose(prior.scale, scale_p)
            loc_h, scale_h = hats[level - 1]
            var = 1 / (scale_h**-2 + scale_p**-2)
            q = guide_trace.nodes[f"z{level}"]["fn"].base_dist
            assert torch.allclose(q.scale, var.sqrt(), atol=1e-6)
            assert torch.allclose(q.loc, (loc_h * scale_h**-2 + loc_p * scale_p**-2) * var,
                                  atol=1e-5)


def test_precision_weighted_is_the_normalized_product():
    g = torch.Generator().manual_seed(0)
    la, lb = torch.randn(3, generator=g), torch.randn(3, generator=g)
    sa, sb = torch.rand(3, generator=g) + 0.2, torch.rand(3, generator=g) + 0.2
    loc, scale = precision_weighted(la, sa, lb, sb)
    z = torch.linspace(-3, 3, 7)[:, None]
    log_prod = dist.Normal(la, sa).log_prob(z) + dist.Normal(lb, sb).log_prob(z)
    diff = log_prod - dist.Normal(loc, scale).log_prob(z)  # constant in z
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-4)


# 4. Trace_ELBO and TraceMeanField_ELBO agree in expectation ----------------------------------


def _elbo_mean_and_se(elbo_cls, hvae, x, repeats: int = 16, particles: int = 4000):
    values = torch.stack([
        torch.as_tensor(elbo_cls(
            num_particles=particles, vectorize_particles=True, max_plate_nesting=1
        ).loss(hvae.model, hvae.guide, x))
        for _ in range(repeats)
    ])  # fmt: skip
    return float(values.mean()), float(values.std() / math.sqrt(repeats))


def test_trace_and_mean_field_elbo_agree_for_the_ladder(bits):
    # The ladder's guide samples top-down in the model's order, so the analytic KL of each
    # layer given the layer above is exact.
    pyro.set_rng_seed(1)
    hvae = _small("ladder", (3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pyro warns when the mean-field order check fails
        mf, mf_se = _elbo_mean_and_se(pyro.infer.TraceMeanField_ELBO, hvae, bits)
    tr, tr_se = _elbo_mean_and_se(pyro.infer.Trace_ELBO, hvae, bits)
    assert abs(mf - tr) < 4 * math.hypot(mf_se, tr_se)


@pytest.mark.parametrize("inference", ["bottom_up", "ladder"])
def test_elbos_with_the_exact_posterior(inference):
    # With the exact posterior as guide log w = log p(x) for every draw: Trace_ELBO is exact
    # with no variance, and a valid TraceMeanField_ELBO has the same expectation.
    lg = orthogonal_model()
    hvae = exact_diagonal_hvae(lg, inference)
    x = lg.sample_x(6)
    exact_loss = -float(lg.exact_log_px(x).sum())
    tr, tr_se = _elbo_mean_and_se(pyro.infer.Trace_ELBO, hvae, x, repeats=2, particles=10)
    assert tr == pytest.approx(exact_loss, abs=1e-5) and tr_se < 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mf, mf_se = _elbo_mean_and_se(pyro.infer.TraceMeanField_ELBO, hvae, x)
    mean_field_warned = any("mean field" in str(w.message) for w in caught)
    if inference == "ladder":
        # top-down in the model's order: each layer's analytic KL given the layer above is exact
        assert not mean_field_warned
        assert abs(mf - exact_loss) < 4 * mf_se
    else:
        # z2 ~ q(z2 | z1) depends on z1, so KL(q(z1 | x) || p(z1 | z2)) at that z2 is not
        # E[log q(z1 | x) - log p(z1 | z2)]: TraceMeanField_ELBO is biased (here by about
        # 2 nats on 6 points) and Pyro only warns; train bottom-up HVAEs with Trace_ELBO or IWAE.
        assert mean_field_warned
        assert mf - exact_loss > 1.0 and mf - exact_loss > 20 * mf_se


# 5. Refusals -------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"layers": (4,)},
            "a hierarchical VAE needs at least 2 stochastic layers, got layers=[4]; use build_vae "
            "for one",
        ),
        (
            {"layers": (4, 0)},
            "layer sizes must be positive integers, got layers=[4, 0]",
        ),
        (
            {"layers": (4, 3), "activation": "sigmoid"},
            "unknown activation 'sigmoid'; choose one of ['softplus', 'tanh', 'relu', 'gated']",
        ),
        (
            {"layers": (4, 3), "inference": "top_down"},
            "unknown inference 'top_down'; choose one of ['bottom_up', 'ladder']",
        ),
        (
            {"layers": (4, 3), "layer_hidden": ((8,),)},
            "hidden has 1 lists of widths but there are 2 layers; give one per layer (hidden[0] "
            "for the x <-> z1 nets)",
        ),
        (
            {"layers": (4, 3), "layer_hidden": ((8,), (0,))},
            "hidden widths must be lists of positive integers, got (0,) in hidden=((8,), (0,))",
        ),
        (
            {"layers": (4, 3), "inference": "ladder", "posteriors": ("diagonal", "full_rank")},
            "inference 'ladder' merges diagonal normals, but posteriors[1] is 'full_rank'; set it "
            "to 'diagonal' or use inference 'bottom_up'",
        ),
        (
            {"layers": (4, 3), "inference": "ladder", "conditional_prior": "low_rank"},
            "inference 'ladder' merges diagonal normals, but conditional_prior is 'low_rank'; set "
            "it to 'diagonal' or use inference 'bottom_up'",
        ),
        (
            {"layers": (4, 3), "posteriors": ("diagonal",)},
            "posteriors must name one family per layer (2), got ('diagonal',)",
        ),
    ],
)
def test_builder_refusals(kwargs, message):
    with pytest.raises(ConfigError) as exc:
        build_hierarchical(ModelConfig(event_shape=(6,), hidden=(8,)), **kwargs)
    assert _one_line(exc) == message


@pytest.mark.parametrize("role", ["posteriors", "conditional_priors"])
def test_constructor_refuses_a_ladder_of_non_diagonal_families(role: str) -> None:
    """The refusal names the role and index of the first non-diagonal family: a posterior, or
    a conditional prior."""
    families = {
        "posteriors": [DiagonalNormal(3), DiagonalNormal(2)],
        "conditional_priors": [DiagonalNormal(3)],
    }
    families[role][0] = FullRankNormal(3)
    with pytest.raises(ConfigError) as exc:
        HierarchicalVAE(
            (6,), (3, 2), ((8,), (8,)), Normal(), StandardNormal(2),
            families["posteriors"], families["conditional_priors"], "ladder",
        )  # fmt: skip
    assert _one_line(exc) == (
        f"inference 'ladder' merges diagonal normals, but {role}[0] is FullRankNormal; use the "
        "'diagonal' family for every layer or inference 'bottom_up'"
    )


def test_constructor_refuses_a_prior_bound_to_the_top_posterior_without_the_ladder():
    from pyro_vae.parts.priors import VampPrior

    def build(inference: str) -> HierarchicalVAE:
        return HierarchicalVAE(
            (6,), (3, 2), ((8,), (8,)), Normal(), VampPrior(2, (6,), num_pseudo_inputs=4),
            [DiagonalNormal(3), DiagonalNormal(2)], [DiagonalNormal(3)], inference,
        )  # fmt: skip

    with pytest.raises(ConfigError) as exc:
        build("bottom_up")
    assert _one_line(exc) == (
        "prior VampPrior is bound to q(z2 | x), which inference 'bottom_up' reaches only "
        "through samples of the layers below; use inference 'ladder' or another prior (e.g. "
        "'normal', 'mixture', 'flow')"
    )
    assert build("ladder").inference == "ladder"


def test_vamp_prior_only_with_the_ladder(bits):
    config = ModelConfig(event_shape=(1, 2, 3), hidden=(8,), prior="vamp",
                         prior_options={"num_pseudo_inputs": 4})
    with pytest.raises(ConfigError) as exc:
        build_hierarchical(config, (4, 3))
    assert _one_line(exc) == (
        "prior 'vamp' needs q(z2 | x) as a function of x, which inference 'bottom_up' reaches only "
        "through samples of the layers below; use inference 'ladder' or another prior (e.g. "
        "'normal', 'mixture', 'flow')"
    )
    hvae = build_hierarchical(config, (4, 3), inference="ladder")
    assert hvae.top_prior().components.batch_shape == (4,)
    est = log_likelihood(hvae.model, hvae.guide, bits, num_samples=8)
    assert torch.isfinite(est.per_example).all()
    assert "top_prior.pseudo_inputs" in dict(hvae.named_parameters())


def test_other_priors_and_families_build(bits):
    config = ModelConfig(event_shape=(1, 2, 3), hidden=(8,), prior="mixture",
                         prior_options={"n_components": 3})
    hvae = build_hierarchical(config, (4, 3), posteriors=("full_rank", "low_rank"),
                              conditional_prior="full_rank", activation="relu")
    assert isinstance(hvae.posteriors[0], FullRankNormal)
    assert isinstance(hvae.conditional_priors[0], FullRankNormal)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(hvae.model, hvae.guide, bits)
    assert torch.isfinite(loss)


# 6. The VAE-like methods and Burda et al.'s architecture ---------------------------------------


@pytest.mark.parametrize("inference", ["bottom_up", "ladder"])
def test_methods_shapes(inference, bits):
    hvae = _small(inference, (4, 3, 2))
    qz = hvae.encode(bits)
    assert qz.batch_shape == (5,) and qz.event_shape == (4,)
    assert hvae.decode(torch.zeros(7, 5, 4)).batch_shape == (7, 5)
    assert hvae.decode(torch.zeros(7, 5, 4)).event_shape == (1, 2, 3)
    assert hvae.sample(6).shape == (6, 1, 2, 3)
    assert set(hvae.sample(6, mean=False).unique().tolist()) <= {0.0, 1.0}
    recon = hvae.reconstruct(bits)
    assert recon.shape == bits.shape and torch.equal(recon, hvae.reconstruct(bits))
    assert hvae.reconstruct(bits, mean=False).shape == bits.shape
    assert hvae.num_data_elements() == 6 and hvae.event_shape == (1, 2, 3)
    assert hvae.likelihood.binarize


def test_iwae_two_layer_architecture():
    hvae = build_hierarchical(ModelConfig(event_shape=(784,)), **IWAE_TWO_LAYER)
    assert hvae.layers == (100, 50) and hvae.activation == "tanh"

    def dense(*widths: int) -> int:
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))

    expected = (
        dense(784, 200, 200, 2 * 100)  # q(z1 | x): mean and log-scale heads
        + dense(100, 100, 100, 2 * 50)  # q(z2 | z1)
        + dense(50, 100, 100, 2 * 100)  # p(z1 | z2)
        + dense(100, 200, 200, 784)  # p(x | z1), Bernoulli logits
    )
    assert sum(p.numel() for p in hvae.parameters()) == expected == 521_084
    assert sum(isinstance(m, nn.Tanh) for m in hvae.modules()) == 8
    assert hvae.sample(2).shape == (2, 784)


@pytest.mark.parametrize("objective", ["meanfield", "free_bits", "dreg"])
def test_objectives_refuse_a_bottom_up_guide_they_would_bias(objective, bits):
    """Analytic KL and free bits score p(z1 | z2) at a z2 the bottom-up guide draws from z1;
    DReG drops q(z2 | z1)'s dependence on z1: each refuses, naming the sites, before a step."""
    from pyro_vae.infer.objectives import make_objective

    hvae = _small("bottom_up")
    name, options = {
        "meanfield": ("meanfield", {}),
        "free_bits": ("elbo", {"free_bits": 0.1}),
        "dreg": ("dreg", {}),
    }[objective]
    particles = 4 if name == "dreg" else 1
    chosen = make_objective(name, particles, **options)
    with pytest.raises(ConfigError) as info:
        chosen.loss(hvae.model, hvae.guide, bits)
    biased = (
        "{} of site 'z1' is taken against p(z1 | z2) at the guide's draw of 'z2', which the "
        "guide makes after 'z1' (from it), so it would be biased; use --objective elbo without "
        "free bits, or a guide that draws 'z2' first (a top-down guide, e.g. --inference ladder)"
    )
    assert _one_line(info) == {
        "meanfield": biased.format("meanfield's analytic KL"),
        "free_bits": biased.format("free bits"),
        "dreg": (
            "dreg assumes the guide's latent sites are conditionally independent given the data, "
            "but q(z2 | ...) depends on the draw of 'z1', so its encoder gradient would be "
            "biased; use --objective iwae for this model"
        ),
    }[objective]


@pytest.mark.parametrize("objective", ["meanfield", "free_bits"])
def test_top_down_guides_pass_the_mean_field_check(objective, bits):
    """The ladder guide draws z2 before z1, as the model does: analytic KL is exact there."""
    from pyro_vae.infer.objectives import make_objective

    hvae = _small("ladder")
    options = {"free_bits": 0.1} if objective == "free_bits" else {}
    chosen = make_objective("elbo" if objective == "free_bits" else objective, 1, **options)
    value = chosen.loss(hvae.model, hvae.guide, bits)
    assert torch.isfinite(value.loss)


def test_dependencies_are_read_from_the_programs(bits):
    """The dependency analysis finds q(z2 | z1) in the bottom-up guide and p(z1 | z2) in the
    model; a one-layer VAE's guide has no dependent site."""
    from pyro_vae.infer.trace import latent_dependencies
    from pyro_vae.models import build_vae

    hvae = _small("bottom_up")
    deps = latent_dependencies(hvae.model, hvae.guide, bits)
    assert deps.order == ("z1", "z2")
    assert deps.guide_parents == {"z1": set(), "z2": {"z1"}}
    assert deps.model_parents["z1"] == {"z2"}
    assert deps.mean_field_conflict() == ("z1", "z2")
    vae = build_vae(ModelConfig(event_shape=tuple(bits.shape[1:]), latent_dim=2))
    one = latent_dependencies(vae.model, vae.guide, bits)
    assert one.dependent_guide_site() is None and one.mean_field_conflict() is None


def test_dependencies_of_sites_that_share_a_transform_of_their_parent():
    """q(z2 | z1) and q(z3 | z1) both read exp(z1): each site's gradient pass keeps the shared
    graph for the next, and both find z1 (z3 none other); the model's sites are independent."""
    from pyro_vae.infer.trace import latent_dependencies

    def model(x):
        with pyro.plate("data", x.shape[0]):
            for name in ("z1", "z2", "z3"):
                pyro.sample(name, dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(torch.zeros(x.shape[0]), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x, 1.0))
            h = torch.exp(z1)
            pyro.sample("z2", dist.Normal(h, 1.0))
            pyro.sample("z3", dist.Normal(2.0 * h, 1.0))

    deps = latent_dependencies(model, guide, torch.zeros(3))
    assert deps.order == ("z1", "z2", "z3")
    assert deps.guide_parents == {"z1": set(), "z2": {"z1"}, "z3": {"z1"}}
    assert deps.model_parents == {"z1": set(), "z2": set(), "z3": set()}


def test_the_likelihood_is_built_with_the_config_s_likelihood_options():
    """likelihood_options reach the hierarchical VAE's likelihood: a normal likelihood of
    scale 0.3 (not the default 0.1) scores x under N(mean, 0.3^2) per element."""
    config = ModelConfig(event_shape=(1, 2, 3), hidden=(8,), likelihood="normal",
                         likelihood_options={"scale": 0.3})  # fmt: skip
    hvae = build_hierarchical(config, (4, 3))
    assert isinstance(hvae.likelihood, Normal) and hvae.likelihood.scale == 0.3
    z = torch.randn(5, 4)
    x = torch.randn(5, 1, 2, 3)
    px = hvae.decode(z)
    want = dist.Normal(px.mean, 0.3).log_prob(x).sum((-3, -2, -1))
    assert torch.allclose(px.log_prob(x), want, atol=1e-5)


def test_the_hvae_preset_is_checked_and_fixes_the_architecture():
    """kind_options preset 'iwae' builds Burda et al.'s two layers; an unknown preset, and a
    preset given with either of the sizes it fixes, are refused with the whole message."""
    from pyro_vae.models import build_model

    config = ModelConfig(event_shape=(784,), kind="hvae", kind_options={"preset": "iwae"})
    assert config.kind_options["preset"] == "iwae"
    hvae = build_model(config)
    assert hvae.layers == IWAE_TWO_LAYER["layers"] == (100, 50)
    with pytest.raises(
        ConfigError,
        match=whole(
            "unknown preset 'vae'; choose one of ['iwae']"
        ),
    ):
        ModelConfig(event_shape=(784,), kind="hvae", kind_options={"preset": "vae"})
    for key, value in [("layers", (3, 2)), ("upper_hidden", (7,))]:
        options = {"preset": "iwae", key: value}
        fixed = rf"^preset 'iwae' fixes the architecture; drop {key} or the preset$"
        with pytest.raises(ConfigError, match=fixed):
            ModelConfig(event_shape=(784,), kind="hvae", kind_options=options)


def _hvae(top=2, posteriors=(3, 2), conditional_priors=(3,), inference="bottom_up"):
    return HierarchicalVAE(
        (6,), (3, 2), ((8,), (8,)), Normal(), StandardNormal(top),
        [DiagonalNormal(d) for d in posteriors], [DiagonalNormal(d) for d in conditional_priors],
        inference,
    )  # fmt: skip


MORE_REFUSALS = [
    (
        "a merge of a non-normal",
        lambda: hierarchical.normal_params(dist.Laplace(torch.zeros(2), 1.0).to_event(1)),
        "the ladder merge needs a diagonal normal, got Independent; use the 'diagonal' family",
    ),
    (
        "a top prior of another size",
        lambda: _hvae(top=4),
        "the top prior has latent_dim 4 but z2 has size 2; build the prior with latent_dim=2",
    ),
    (
        "too few posteriors",
        lambda: _hvae(posteriors=(3,)),
        "posteriors has 1 families but 2 are needed (sizes [3, 2])",
    ),
    (
        "a conditional prior of another size",
        lambda: _hvae(conditional_priors=(5,)),
        "conditional_priors[0] has latent_dim 5 but its layer has size 3; build it with "
        "latent_dim=3",
    ),
    (
        "an unknown inference given to the constructor",
        lambda: _hvae(inference="top_down"),
        "unknown inference 'top_down'; choose one of ['bottom_up', 'ladder']",
    ),
    (
        "layers as text",
        lambda: hierarchical.check_layers("4,2"),
        "layers must be a list of latent sizes like [100, 50], got '4,2'",
    ),
    (
        "hidden widths as a number",
        lambda: hierarchical.check_hidden(8, 2),
        "hidden must hold one list of widths per layer, like [[200, 200], [100, 100]], got 8",
    ),
    (
        "a convolutional arch",
        lambda: build_hierarchical(
            ModelConfig(event_shape=(1, 8, 8), hidden=(8,), arch="conv"), (4, 2)
        ),
        "a hierarchical VAE builds MLP networks, but arch is 'conv'; set arch 'mlp'",
    ),
    (
        "one layer in the kind's options",
        lambda: ModelConfig(event_shape=(6,), kind="hvae", kind_options={"layers": [4]}),
        "a hierarchical VAE needs at least 2 layers, got layers=[4]; use --model vae for one",
    ),
]


@pytest.mark.parametrize(
    "call, message", [c[1:] for c in MORE_REFUSALS], ids=[c[0] for c in MORE_REFUSALS]
)
def test_more_hierarchical_refusals_are_checked_whole(call, message):
    with pytest.raises(ConfigError, match=whole(message)):
        call()


def test_layers_of_the_configs_posterior_family_get_its_options_and_other_families_theirs():
    """posterior 'low_rank' with rank 1 in the config: both layers (sizes 4 and 2) that use it
    have rank-1 factors, D (2 + 1) parameters, where the default rank would be min(2, D) = 2;
    a layer naming another family ('full_rank') gets that family's defaults."""
    config = ModelConfig(
        event_shape=(6,), latent_dim=4, hidden=(8,), posterior="low_rank",
        posterior_options={"rank": 1},
    )  # fmt: skip
    hvae = build_hierarchical(config, (4, 2))
    assert [q.rank for q in hvae.posteriors] == [1, 1]
    assert [q.num_params for q in hvae.posteriors] == [12, 6]
    mixed = build_hierarchical(config, (4, 2), posteriors=("full_rank", "low_rank"))
    assert isinstance(mixed.posteriors[0], FullRankNormal) and mixed.posteriors[1].rank == 1


def test_an_unknown_activation_given_to_the_constructor_is_refused_whole():
    with pytest.raises(
        ConfigError,
        match=whole(
            f"unknown activation 'sigmoid'; choose one of {list(hierarchical.ACTIVATIONS)}"
        ),
    ):
        HierarchicalVAE(
            (6,), (3, 2), ((8,), (8,)), Normal(), StandardNormal(2),
            [DiagonalNormal(3), DiagonalNormal(2)], [DiagonalNormal(3)], activation="sigmoid",
        )  # fmt: skip


def test_the_kind_refuses_an_unknown_inference_when_its_options_are_checked():
    """The option hook refuses it before any model is built, with the whole message."""
    message = "unknown inference 'top_down'; choose one of ['bottom_up', 'ladder']"
    kind = hierarchical.HierarchicalKind
    assert kind.check_options({}) is None and kind.check_options({"inference": "ladder"}) is None
    with pytest.raises(ConfigError, match=whole(message)):
        kind.check_options({"inference": "top_down"})
    with pytest.raises(ConfigError, match=whole(message)):
        ModelConfig(event_shape=(6,), kind="hvae", kind_options={"inference": "top_down"})


class _NoMeanFamily(DiagonalNormal):
    """A diagonal normal pushed through tanh: a family whose distribution has no ``mean``."""

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.TransformedDistribution(
            super().forward(params), [dist.transforms.TanhTransform()]
        )


def test_bottom_up_encode_is_the_first_layer_s_posterior_of_x_alone():
    """Bottom-up q(z1 | x) is posteriors[0] on encoders[0](x): with one affine encoder it is
    N(W x + b, softplus(.) + 1e-6) in closed form, and no layer above is evaluated (a top
    family without a mean, which a pass through the means would need, does not matter)."""
    torch.manual_seed(0)
    hvae = HierarchicalVAE(
        (2, 3), (3, 2), ((), (4,)), Normal(), StandardNormal(2),
        [DiagonalNormal(3), _NoMeanFamily(2)], [DiagonalNormal(3)],
    )  # fmt: skip
    x = torch.randn(5, 2, 3)
    layer = _affine(hvae.encoders[0])
    params = x.reshape(5, 6) @ layer.weight.detach().T + layer.bias.detach()
    with torch.no_grad():
        q = hvae.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    torch.testing.assert_close(q.mean, params[:, :3])
    torch.testing.assert_close(q.stddev, torch.nn.functional.softplus(params[:, 3:]) + 1e-6)
    with pytest.raises(NotImplementedError):  # a pass through the means meets the top family
        hvae.reconstruct(x)
