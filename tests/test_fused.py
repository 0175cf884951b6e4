"""The fused ELBO equals Pyro's traced ELBO: same loss and every parameter gradient, same noise."""

from __future__ import annotations

import copy
import itertools

import pyro
import pytest
import torch
from refusals import whole
from torch import nn

from pyro_vae import VAE
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.models.fused import fused_elbo_loss, fused_unsupported
from pyro_vae.parts import LIKELIHOODS, POSTERIORS, PRIORS

EVENT_SHAPE = (1, 3, 3)
# Every prior x likelihood x posterior the fast path claims, with the MLP nets. The nets are
# black boxes to the fused loss (only the parts' distributions enter it), so the conv nets are
# checked with each part at least once rather than the whole product again.
COMBOS = list(itertools.product(sorted(PRIORS), sorted(LIKELIHOODS), sorted(POSTERIORS), ["mlp"]))
COMBOS += sorted(
    {(p, "bernoulli", "diagonal", "conv") for p in PRIORS}
    | {("normal", lik, "diagonal", "conv") for lik in LIKELIHOODS}
    | {("normal", "bernoulli", post, "conv") for post in POSTERIORS}
)


def _data_for(likelihood: str, n: int = 6) -> torch.Tensor:
    """Tiny data in the likelihood's support."""
    g = torch.Generator().manual_seed(1)
    shape = (n, *EVENT_SHAPE)
    if likelihood in ("poisson", "negative_binomial"):
        return torch.poisson(torch.full(shape, 3.0), generator=g)
    if likelihood == "discretized_logistic":
        return torch.randint(0, 256, shape, generator=g).float() / 255
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.rand(shape, generator=g), generator=g)
    if likelihood == "continuous_bernoulli":
        return torch.rand(shape, generator=g)
    return torch.randn(shape, generator=g)


def _vae(prior: str, likelihood: str, posterior: str, arch: str) -> VAE:
    pyro.set_rng_seed(0)
    config = ModelConfig.from_dict(
        dict(
            event_shape=list(EVENT_SHAPE),
            latent_dim=2,
            hidden=[8],
            prior=prior,
            likelihood=likelihood,
            posterior=posterior,
            arch=arch,
            channels=[4],
            n_components=3,
            num_pseudo_inputs=3,
            iaf_context=4,
            iaf_hidden=[8],
        )
    )
    return build_vae(config)


def _loss_and_grads(vae: VAE, fn, seed: int = 123):
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_same(vae: VAE, pyro_fn, fused_fn) -> None:
    ref_loss, ref_grads = _loss_and_grads(vae, pyro_fn)
    loss, grads = _loss_and_grads(vae, fused_fn)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)


def _scaled(fn, kl_weight: float):
    """Pyro's KL weighting, as the objectives apply it: scale the latent site's log-densities."""
    from pyro_vae.infer.objectives import LatentScale

    return LatentScale(kl_weight)(fn)


@pytest.mark.parametrize("prior,likelihood,posterior,arch", COMBOS)
def test_fused_matches_trace_elbo_with_same_noise(prior, likelihood, posterior, arch):
    vae = _vae(prior, likelihood, posterior, arch)
    assert fused_unsupported(vae, "elbo") is None
    x = _data_for(likelihood)
    elbo = pyro.infer.Trace_ELBO()
    _assert_same(
        vae,
        lambda: elbo.differentiable_loss(vae.model, vae.guide, x),
        lambda: fused_elbo_loss(vae, x)[0],
    )


@pytest.mark.parametrize("prior,likelihood,posterior,arch", COMBOS)
def test_fused_analytic_kl_matches_mean_field_elbo(prior, likelihood, posterior, arch):
    vae = _vae(prior, likelihood, posterior, arch)
    assert fused_unsupported(vae, "meanfield") is None
    x = _data_for(likelihood)
    elbo = pyro.infer.TraceMeanField_ELBO()
    _assert_same(
        vae,
        lambda: elbo.differentiable_loss(vae.model, vae.guide, x),
        lambda: fused_elbo_loss(vae, x, analytic_kl=True)[0],
    )


# 2 is the smallest count that averages over particles, 3 one more
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("analytic", [False, True])
@pytest.mark.parametrize("posterior", sorted(POSTERIORS))
def test_fused_kl_weight_and_particles_match_pyro(posterior, analytic, k):
    vae = _vae("learned_normal", "bernoulli", posterior, "mlp")
    x = _data_for("bernoulli")
    cls = pyro.infer.TraceMeanField_ELBO if analytic else pyro.infer.Trace_ELBO
    # max_plate_nesting given, so Pyro does not run the programs once (drawing noise) to guess it
    elbo = cls(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    _assert_same(
        vae,
        lambda: elbo.differentiable_loss(_scaled(vae.model, 0.3), _scaled(vae.guide, 0.3), x),
        lambda: fused_elbo_loss(vae, x, 0.3, analytic_kl=analytic, num_particles=k)[0],
    )


def test_fused_true_elbo_is_the_unweighted_loss():
    vae = _vae("normal", "bernoulli", "diagonal", "mlp")
    x = _data_for("bernoulli")
    pyro.set_rng_seed(5)
    loss, elbo = fused_elbo_loss(vae, x, kl_weight=1.0, analytic_kl=True)
    torch.testing.assert_close(elbo, -loss.detach())
    pyro.set_rng_seed(5)
    weighted, elbo_w = fused_elbo_loss(vae, x, kl_weight=0.0, analytic_kl=True)
    torch.testing.assert_close(elbo_w, elbo)
    assert not elbo_w.requires_grad
    assert weighted.item() < -elbo.item()  # dropping the KL (> 0) lowers the loss


def test_diagonal_normal_kl_is_the_closed_form():
    vae = _vae("normal", "bernoulli", "diagonal", "mlp")
    x = _data_for("bernoulli")
    qz = vae.encode(x)
    mu, sigma = qz.mean, qz.stddev
    kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * sigma.log()).sum()
    pyro.set_rng_seed(7)
    _, elbo_analytic = fused_elbo_loss(vae, x, analytic_kl=True)
    pyro.set_rng_seed(7)
    z = qz.rsample()
    recon = vae.decode(z).log_prob(x).sum()
    torch.testing.assert_close(elbo_analytic, (recon - kl).detach(), rtol=1e-5, atol=1e-4)


class _MyVAE(VAE):
    pass


def test_fused_refuses_what_it_does_not_claim():
    """Each reason whole: the model's class, each part's role and class, the objective, free
    bits and the particle count."""
    vae = _vae("normal", "bernoulli", "diagonal", "mlp")
    objectives = "['elbo', 'meanfield']"
    assert fused_unsupported(vae, "iwae") == f"the objective 'iwae' is not one of {objectives}"
    assert fused_unsupported(vae, "dreg") == f"the objective 'dreg' is not one of {objectives}"
    assert fused_unsupported(vae, "elbo", free_bits=0.5) == "free bits use their own loss"
    assert fused_unsupported(vae, "elbo", num_particles=0) == (
        "num_particles must be at least 1, got 0"
    )
    sub = _MyVAE(vae.encoder, vae.decoder, vae.prior, vae.likelihood, vae.posterior)
    assert fused_unsupported(sub) == "the model is a _MyVAE, not a pyro_vae VAE"
    assert fused_unsupported(nn.Linear(2, 2)) == "the model is a Linear, not a pyro_vae VAE"

    parts = {"prior": vae.prior, "likelihood": vae.likelihood, "posterior": vae.posterior}
    for role, part in parts.items():
        own_part = copy.deepcopy(part)  # the same part, of a user's subclass
        own_part.__class__ = type(f"My{role.title()}", (type(part),), {})
        own = VAE(vae.encoder, vae.decoder, **{**parts, role: own_part})
        assert fused_unsupported(own) == (
            f"the {role} My{role.title()} is not one of the library's own"
        )


# --- the fused log weights of importance sampling -------------------------------------------


@pytest.mark.parametrize("prior,likelihood,posterior,arch", COMBOS)
def test_fused_log_weights_match_the_traced_ones_with_same_noise(
    prior, likelihood, posterior, arch
):
    from pyro_vae.infer.trace import log_weights
    from pyro_vae.models.fused import FusedLogWeights

    vae = _vae(prior, likelihood, posterior, arch).eval()
    x = _data_for(likelihood)
    with torch.no_grad():
        pyro.set_rng_seed(7)
        ref = log_weights(vae.model, vae.guide, x, 5, particle_dim=-2)
        pyro.set_rng_seed(7)
        lw = FusedLogWeights(vae)(x, 5)
    assert lw.shape == ref.shape == (5, x.shape[0])
    torch.testing.assert_close(lw, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("posterior", sorted(POSTERIORS))
def test_log_likelihood_with_fused_log_weights_equals_the_traced_estimate(posterior):
    from pyro_vae.infer import log_likelihood
    from pyro_vae.models.fused import fused_log_weights

    vae = _vae("normal", "bernoulli", posterior, "mlp").eval()
    x = _data_for("bernoulli", n=9)
    fast = fused_log_weights(vae)
    assert fast is not None
    results = []
    for fn in (None, fast):
        pyro.set_rng_seed(3)
        results.append(
            log_likelihood(
                vae.model, vae.guide, x, num_samples=40, batch_size=4, particle_chunk=16,
                keep_log_weights=True, log_weights_fn=fn,
            )
        )  # fmt: skip
    ref, got = results
    torch.testing.assert_close(got.log_weights, ref.log_weights, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.per_example, ref.per_example, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.ess, ref.ess, rtol=1e-4, atol=1e-4)


def test_fused_log_weights_are_refused_where_the_fused_path_does_not_apply():
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.fused import FusedLogWeights, fused_log_weights

    class Custom(VAE):
        pass

    vae = _vae("normal", "bernoulli", "diagonal", "mlp")
    custom = Custom.__new__(Custom)
    custom.__dict__.update(vae.__dict__)
    assert fused_log_weights(custom) is None
    with pytest.raises(
        ConfigError,
        match=whole(
            "the fused log weights do not apply: the model is a Custom, not a pyro_vae VAE; use "
            "the traced estimator"
        ),
    ):
        FusedLogWeights(custom)


# --- the same on parts that have moved from their initial values --------------------------
# A freshly built learned prior is still N(0, I) and a fresh likelihood's learned scale is 1,
# so a fused-path bug in how those parameters enter (a prior's loc read as zero, a scale's
# transform skipped) passes every test above; here each part of every kind is perturbed.

PART_KINDS = sorted(
    {(p, "bernoulli", "diagonal") for p in PRIORS}
    | {("normal", lik, "diagonal") for lik in LIKELIHOODS}
    | {("normal", "bernoulli", post) for post in POSTERIORS}
)


def _perturbed(vae: VAE, seed: int = 11, size: float = 0.3) -> VAE:
    """Every parameter moved by N(0, size^2) noise, as training would move it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(size * torch.randn(p.shape, generator=g))
    return vae


@pytest.mark.parametrize("prior,likelihood,posterior", PART_KINDS)
def test_fused_and_traced_agree_on_perturbed_parts(prior, likelihood, posterior):
    from pyro_vae.infer.trace import log_weights
    from pyro_vae.models.fused import FusedLogWeights

    vae = _perturbed(_vae(prior, likelihood, posterior, "mlp"))
    x = _data_for(likelihood)
    fresh = _vae(prior, likelihood, posterior, "mlp")
    fresh_params = dict(fresh.named_parameters())
    for n, p in vae.named_parameters():  # the perturbation really moved every part
        assert not torch.equal(p, fresh_params[n]), n
    elbo = pyro.infer.Trace_ELBO()
    _assert_same(
        vae,
        lambda: elbo.differentiable_loss(vae.model, vae.guide, x),
        lambda: fused_elbo_loss(vae, x)[0],
    )
    vae.eval()
    with torch.no_grad():
        pyro.set_rng_seed(7)
        ref = log_weights(vae.model, vae.guide, x, 5, particle_dim=-2)
        pyro.set_rng_seed(7)
        lw = FusedLogWeights(vae)(x, 5)
    torch.testing.assert_close(lw, ref, rtol=1e-5, atol=1e-4)


def test_the_fused_elbo_refuses_what_it_does_not_support_whole():
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.fused import FusedELBO

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    with pytest.raises(
        ConfigError,
        match=whole(
            "the fused ELBO does not apply: num_particles must be at least 1, got 0; use the Pyro "
            "objective"
        ),
    ):
        FusedELBO(vae, num_particles=0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal"])
def test_fused_loss_without_the_latent_term_is_exactly_the_traced_log_likelihood_term(likelihood):
    """With kl_weight 0 the fused loss is -sum_n log p(x_n | z_n) alone, summed as Pyro's
    ``Independent.log_prob`` and ``log_prob_sum`` sum it (each point's event first, then the
    points): bit for bit the traced model's site "x" at the same draws of z."""
    from pyro import poutine

    vae = _vae("normal", likelihood, "diagonal", "mlp")
    x = _data_for(likelihood, 16)
    with torch.no_grad():
        pyro.set_rng_seed(5)
        loss, _ = fused_elbo_loss(vae, x, kl_weight=0.0)
        pyro.set_rng_seed(5)
        guide = poutine.trace(vae.guide).get_trace(x)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
        traced = model.nodes["x"]["fn"].log_prob(x).sum()
    assert torch.equal(loss, -traced)


def test_fused_route_takes_a_vae_s_own_programs_on_its_data_alone_by_default():
    """With only the programs and the data, a VAE's own model and guide get the fused log
    weights; asking for the replicate strategy, or passing other programs, gets the reason
    why not, whole."""
    from pyro_vae.models.fused import FusedLogWeights, fused_route

    vae = _vae("normal", "bernoulli", "diagonal", "mlp")
    x = _data_for("bernoulli")
    assert isinstance(fused_route(vae.model, vae.guide, (x,), {}), FusedLogWeights)
    assert fused_route(vae.model, vae.guide, (x,), {}, strategy="replicate") == (
        "strategy 'replicate' was asked for"
    )
    assert fused_route(vae.guide, vae.model, (x,), {}) == (
        "the programs are not one pyro_vae VAE's own model and guide"
    )


def test_fused_elbo_estimates_the_latent_term_at_the_draws_by_default():
    """``FusedELBO(vae)`` without ``analytic_kl`` is Pyro's ``Trace_ELBO``: log p(z) - log q(z | x)
    at the draws, not the closed-form KL of ``TraceMeanField_ELBO``."""
    from pyro_vae.models.fused import FusedELBO

    vae = _vae("normal", "bernoulli", "diagonal", "mlp")
    x = _data_for("bernoulli")
    losses = []
    with torch.no_grad():
        for fn in (
            lambda: FusedELBO(vae)(x)[0],
            lambda: pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x),
            lambda: pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x),
        ):
            pyro.set_rng_seed(4)
            losses.append(fn())
    default, monte_carlo, analytic = losses
    torch.testing.assert_close(default, monte_carlo, rtol=1e-5, atol=1e-4)
    assert abs(default.item() - analytic.item()) > 0.1


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal"])
def test_fused_log_weights_draw_on_the_posterior_s_device_whatever_the_default_device(likelihood):
    """Under another default device (``torch.set_default_device``, here "meta") the normal
    draws of a CPU model are still made on the CPU: the same log weights as without it, through
    the decoder's tiles (Bernoulli) and the plain decoder (normal)."""
    from pyro_vae.models.fused import FusedLogWeights

    vae = _vae("normal", likelihood, "diagonal", "mlp").eval()
    x = _data_for(likelihood)
    fused = FusedLogWeights(vae)
    with torch.no_grad():
        pyro.set_rng_seed(2)
        ref = fused(x, 7)
        pyro.set_rng_seed(2)
        with torch.device("meta"):
            got = fused(x, 7)
    assert got.device == torch.device("cpu")
    assert torch.equal(got, ref)


def test_fused_log_weights_score_bernoulli_pixels_in_tiles_without_running_the_decoder(
    monkeypatch,
) -> None:
    """Under torch.no_grad a plain MLP decoder's Bernoulli pixels are scored by its tiled
    log-density (MLPBernoulliLogProb), which never runs the decoder module; with autograd on
    the decoder runs once. Both give the traced log weights."""
    from pyro_vae.infer.trace import log_weights
    from pyro_vae.models.fused import FusedLogWeights
    from pyro_vae.parts.nets import MLPDecoder

    vae = _vae("normal", "bernoulli", "diagonal", "mlp").eval()
    x = _data_for("bernoulli")
    fused = FusedLogWeights(vae)
    assert fused.tiled is not None
    with torch.no_grad():
        pyro.set_rng_seed(7)
        ref = log_weights(vae.model, vae.guide, x, 5, particle_dim=-2)
    calls: list[torch.Size] = []
    forward = MLPDecoder.forward

    def counted(self: MLPDecoder, z: torch.Tensor) -> torch.Tensor:
        calls.append(z.shape)
        return forward(self, z)

    monkeypatch.setattr(MLPDecoder, "forward", counted)
    for grad, runs in ((False, 0), (True, 1)):
        calls.clear()
        pyro.set_rng_seed(7)
        with torch.set_grad_enabled(grad):
            lw = fused(x, 5)
        assert len(calls) == runs
        torch.testing.assert_close(lw.detach(), ref, rtol=1e-5, atol=1e-4)
