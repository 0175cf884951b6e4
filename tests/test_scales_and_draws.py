"""The scale factor the importance-weighted bounds share, the DReG gradient against a hand
computation, the data tiled for replicated particles, and the dependencies found between latent
sites from leaf draws.

The running example is z ~ N(0, 1), x | z ~ N(z, 1) in float64: p(x) = N(0, 2) and p(z | x) =
N(x / 2, 1/2), so with the exact posterior as guide every importance weight is p(x) itself.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from assumption_programs import exact_guide, exact_log_px
from assumption_programs import plain_model as model
from pyro import poutine
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer import dreg_loss, iwae_loss
from pyro_vae.infer.trace import (
    LatentDependencies,
    common_scale,
    latent_dependencies,
    replicate_data,
)

X = torch.tensor([[-1.5], [-0.2], [0.4], [1.1], [2.7]], dtype=torch.float64)


# --- the one scale factor of the importance-weighted bounds --------------------------------


def test_a_tensor_scale_shared_by_every_site_scales_the_whole_iwae_bound():
    """``poutine.scale`` with a one-element tensor (a minibatch factor N / B computed as a
    tensor) around model and guide: the loss is -c sum_n log p(x_n), as with a float."""
    c = torch.tensor(40.0, dtype=torch.float64)
    value = iwae_loss(poutine.scale(model, c), poutine.scale(exact_guide, c), X, 3)
    assert value.loss.item() == pytest.approx(-40.0 * float(exact_log_px(X).sum()), rel=1e-12)
    assert value.elbo == pytest.approx(float(exact_log_px(X).sum()), rel=1e-12)


def test_the_iwae_bound_refuses_a_scale_that_only_the_guide_carries():
    """The guide's sites count: z scaled by 2 in the guide alone differs from x, unscaled."""
    message = (
        "site 'x' is scaled by 1 and site 'z' by 2 (poutine.scale, an annealing factor); the "
        "iwae bound is the log of a mean of weights, so only a factor shared by every site (the "
        "minibatch factor N / B) can scale it; anneal with the objective's KL weight (--beta, "
        "--warmup) instead of the handler"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        iwae_loss(model, poutine.scale(exact_guide, 2.0), X, 3)


def three_scales():
    with poutine.scale(scale=2.0):
        pyro.sample("u", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=torch.tensor(3.0)):
        pyro.sample("v", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=0.5):
        pyro.sample("w", dist.Normal(0.0, 1.0))


def test_differing_scales_are_refused_naming_the_smallest_and_the_largest_for_the_iwae_bound():
    """Three factors (2, 3 as a tensor, 0.5): the refusal names the sites of the smallest and
    the largest, and by default speaks of the IWAE bound."""
    trace = poutine.trace(three_scales).get_trace()
    message = (
        "site 'w' is scaled by 0.5 and site 'v' by 3 (poutine.scale, an annealing factor); the "
        "IWAE bound is the log of a mean of weights, so only a factor shared by every site (the "
        "minibatch factor N / B) can scale it; anneal with the objective's KL weight (--beta, "
        "--warmup) instead of the handler"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        common_scale(trace)


def only_a_recorded_value():
    pyro.deterministic("h", torch.tensor(2.0))


def test_traces_without_sample_sites_share_the_scale_one():
    """No site carries a factor (no traces, or a trace with only a ``pyro.deterministic``
    site, which has no density): the common scale is 1."""
    assert common_scale() == 1.0
    assert common_scale(poutine.trace(only_a_recorded_value).get_trace()) == 1.0


# --- the DReG gradient --------------------------------------------------------------------


def test_the_dreg_encoder_gradient_is_the_squared_weight_sum_of_the_pathwise_terms():
    """A guide N(loc_n, exp(log_scale_n)) with free per-point parameters: DReG's gradient is
    d(-loss) / d phi = sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi) (Tucker et al. 2019),
    with d log w / dz = (x - 2 z) + (z - loc) / scale^2 for this model, computed here by hand
    from the guide's draws."""
    loc = torch.tensor([[-0.2], [0.1], [0.5], [0.2], [1.0]], dtype=torch.float64)
    loc.requires_grad_()
    log_scale = torch.tensor([[-0.5], [0.2], [-0.1], [0.3], [-0.8]], dtype=torch.float64)
    log_scale.requires_grad_()
    draws = []

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            draws.append(pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1)))

    pyro.set_rng_seed(0)
    value = dreg_loss(model, guide, X, 4)
    value.loss.backward()
    z = draws[-1].detach()  # the K particles
    assert z.shape == (4, 5, 1)
    mu, scale = loc.detach(), log_scale.detach().exp()
    normal = torch.distributions.Normal
    lw = normal(0.0, 1.0).log_prob(z) + normal(z, 1.0).log_prob(X) - normal(mu, scale).log_prob(z)
    w = torch.softmax(lw, 0)
    dlw_dz = (X - 2 * z) + (z - mu) / scale**2
    eps = (z - mu) / scale
    assert torch.allclose(loc.grad, -(w**2 * dlw_dz).sum(0), rtol=1e-10, atol=1e-12)
    expected = -(w**2 * dlw_dz * eps * scale).sum(0)
    assert torch.allclose(log_scale.grad, expected, rtol=1e-10, atol=1e-12)
    bound = torch.logsumexp(lw, 0) - math.log(4)
    assert value.loss.item() == pytest.approx(-float(bound.sum()), rel=1e-12)


# --- data tiled for replicated particles --------------------------------------------------


def test_replicated_data_tile_each_tensor_and_pass_other_values_unchanged():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    labels = torch.tensor([0, 1])
    out = replicate_data((x, 0.5, labels, "sum", None), 3)
    assert len(out) == 5
    assert torch.equal(out[0], torch.tensor([[1.0, 2.0], [3.0, 4.0]] * 3))
    assert out[1] == 0.5
    assert torch.equal(out[2], torch.tensor([0, 1, 0, 1, 0, 1]))
    assert out[3:] == ("sum", None)


# --- dependencies between latent sites ----------------------------------------------------


def chain_model(x):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    c = pyro.sample("c", dist.Normal(b, 1.0))
    pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def chain_guide(x):
    a = pyro.sample("a", dist.Normal(x, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    pyro.sample("c", dist.Normal(b, 1.0))


X1 = torch.tensor(0.3)


def test_a_guide_replayed_on_fixed_values_keeps_them_and_earlier_model_sites_count_as_parents():
    """Replayed values are kept, not redrawn: they carry no pathwise gradient, so no guide
    dependency is seen and every earlier model site counts as a parent."""
    fixed = poutine.trace(chain_guide).get_trace(X1)
    found = latent_dependencies(chain_model, poutine.replay(chain_guide, trace=fixed), X1)
    assert found == LatentDependencies(
        ("a", "b", "c"),
        {"a": set(), "b": set(), "c": set()},
        {"a": set(), "b": {"a"}, "c": {"a", "b"}},
    )


def test_a_guide_site_the_model_observes_is_not_a_latent_site():
    """The guide proposes the label y too, but the model observes it: only z is latent."""

    def labelled_model(x, y):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def labelled_guide(x, y):
        z = pyro.sample("z", dist.Normal(x, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0))

    found = latent_dependencies(labelled_model, labelled_guide, X1, torch.tensor(1.0))
    assert found == LatentDependencies(("z",), {"z": set()}, {"z": set()})


def shaped_model(x):
    a = pyro.sample("a", dist.Normal(0.0, 1.0), torch.Size([2]))
    b = pyro.sample("b", dist.Normal(a[1], 1.0), sample_shape=torch.Size([3]))
    c = pyro.sample("c", dist.Normal(b[2], 1.0))
    pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def shaped_guide(x):
    shift = pyro.param("shift", torch.tensor(0.25))
    a = pyro.sample("a", dist.Normal(x + shift, 1.0), torch.Size([2]))
    b = pyro.sample("b", dist.Normal(a[1], 1.0), sample_shape=torch.Size([3]))
    pyro.sample("c", dist.Normal(b[2], 1.0))


def test_leaf_draws_keep_the_sample_shape_given_positionally_or_by_keyword():
    """Sites drawn with a ``sample_shape`` (positional for a, keyword for b) in a guide with a
    ``pyro.param``: each leaf draw has its shape, so b reads a[1] and c reads b[2]."""
    pyro.clear_param_store()
    found = latent_dependencies(shaped_model, shaped_guide, X1)
    assert found == LatentDependencies(
        ("a", "b", "c"),
        {"a": set(), "b": {"a"}, "c": {"b"}},
        {"a": set(), "b": {"a"}, "c": {"b"}},
    )


def recording_guide(x):
    a = pyro.sample("a", dist.Normal(x, 1.0))
    h = pyro.deterministic("h", 2 * a)
    pyro.sample("b", dist.Normal(h, 1.0))


def recording_model(x):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(2 * a, 1.0))
    pyro.sample("x", dist.Normal(b, 1.0), obs=x)


def test_an_unconditioned_deterministic_site_passes_its_value_through():
    """Under ``poutine.uncondition`` the guide's ``pyro.deterministic`` site is no longer
    observed, but it is not a draw: its value stays 2 a, so b is seen to depend on a."""
    found = latent_dependencies(recording_model, poutine.uncondition(recording_guide), X1)
    assert found == LatentDependencies(
        ("a", "b"), {"a": set(), "b": {"a"}}, {"a": set(), "b": {"a"}}
    )
