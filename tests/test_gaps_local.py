"""The per-point optimization behind the inference gaps: its defaults and its steps against
Adam's update in closed form, the masks it carries, and the masks read off a guide's sites."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer.gaps import _tiled, guide_masks, optimize_local, site_mask


def gaussian_model(x, keep=None):
    """z ~ N(0, 1), x ~ N(z, 1) per point: d/dz log p(x, z) = x - 2 z, and the posterior is
    N(x / 2, 1/2). Points where ``keep`` is False are left out of the model."""
    with pyro.plate("data", x.shape[0]), poutine.mask(mask=True if keep is None else keep):
        z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def point_family(params):
    """A point mass at params (batch, 1): log q = 0, z = the parameter itself, so the gradient
    of each point's ELBO is d/dz log p(x, z) at the parameter, with no noise."""
    return dist.Delta(params, event_dim=1)


def normal_family(params):
    """N(loc, exp(log_sd)): params (batch, 2) = (loc, log_sd)."""
    return dist.Normal(params[..., :1], params[..., 1:].exp()).to_event(1)


def test_optimize_local_runs_500_adam_steps_at_lr_0_01_decayed_to_a_tenth_by_default():
    """Far from the optimum (x = 10^6, gradient x - 2 z ~ 10^6, constant to 10^-5) Adam moves a
    parameter by the step size itself at every step; the step decays linearly from lr to lr / 10
    over ``num_steps`` (factor 1 - 0.9 t / T at step t), so T = 500 steps of lr = 0.01 move it
    by 0.01 * (500 - 0.9 * 499 / 2) = 2.7545 (501 steps: 2.76), in plate "data" with
    vectorized particles."""
    x = torch.full((2, 1), 1e6, dtype=torch.float64)
    init = torch.tensor([[0.0], [-1.0]], dtype=torch.float64)
    out = optimize_local(gaussian_model, {"z": point_family}, (x,), {"z": init}, particle_dim=-2)
    assert set(out) == {"z"} and out["z"].shape == (2, 1) and not out["z"].requires_grad
    moved = 0.01 * (500 - 0.9 * 499 / 2)
    assert torch.allclose(out["z"], init + moved, rtol=0, atol=1e-4)


def test_optimize_local_draws_16_particles_per_step_by_default():
    """Under one seed, the default run is the run with num_particles=16, and not the one with 17
    (the particles' noise moves Adam's later steps)."""
    x = torch.tensor([[0.4], [-1.2], [2.0]])
    init = torch.cat([x, torch.zeros_like(x)], -1)

    def run(**options):
        pyro.set_rng_seed(3)
        return optimize_local(
            gaussian_model, {"z": normal_family}, (x,), {"z": init}, num_steps=4, **options
        )["z"]

    default = run()
    assert torch.equal(default, run(num_particles=16))
    assert not torch.allclose(default, run(num_particles=17), rtol=0, atol=1e-7)


def test_each_point_follows_the_gradient_of_its_own_elbo_unscaled():
    """One Adam step moves a parameter by lr * g / (|g| + eps), eps = 1e-8, g the gradient of
    the loss; with gradients of the size of eps the step shows g's scale. The loss is the sum
    over points of each point's mean over particles, so g is minus that point's d/dz log p(x, z)
    = -2 z at x = 0: 1e-8 * (1, 3, -2) here, steps lr * (1/2, 3/4, -2/3)."""
    x = torch.zeros(3, 1, dtype=torch.float64)
    init = torch.tensor([[-0.5e-8], [-1.5e-8], [1e-8]], dtype=torch.float64)
    out = optimize_local(
        gaussian_model, {"z": point_family}, (x,), {"z": init}, num_steps=1, num_particles=2,
        lr=0.1,
    )  # fmt: skip
    steps = 0.1 * torch.tensor([[1 / 2], [3 / 4], [-2 / 3]], dtype=torch.float64)
    assert torch.allclose(out["z"], init + steps, rtol=1e-6, atol=0)


def test_a_point_the_masks_leave_out_keeps_its_starting_parameters():
    """Point 1 masked out of the model and (``masks``) of the local guide has no ELBO term, so
    its parameters stay exactly where they started; the others reach their posterior
    N(x / 2, 1/2) from a start away from it."""
    x = torch.tensor([[0.6], [1.4], [-1.0]])
    keep = torch.tensor([True, False, True])
    init = torch.cat([x, torch.zeros_like(x)], -1)
    pyro.set_rng_seed(0)
    out = optimize_local(
        gaussian_model, {"z": normal_family}, (x,), {"z": init}, num_steps=200, lr=0.05,
        particle_dim=-2, masks={"z": keep}, keep=keep,
    )["z"]  # fmt: skip
    assert torch.equal(out[1], init[1])
    assert torch.allclose(out[keep, 0], x[keep, 0] / 2, atol=0.05)
    assert torch.allclose(out[keep, 1], torch.full((2,), 0.5 * math.log(0.5)), atol=0.05)


def test_tiled_repeats_a_batch_to_the_replicated_rows_and_leaves_the_rest():
    """(batch, ...) tensors are tiled along dim 0 to ``rows``; one row (broadcasts), as many rows
    as asked, a scalar and a non-tensor are returned as they are."""
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(_tiled(t, 6), t.repeat(3, 1))
    flags = torch.tensor([True, False])
    assert torch.equal(_tiled(flags, 4), torch.tensor([True, False, True, False]))
    one = torch.tensor([[5.0, 6.0]])
    assert _tiled(one, 4) is one
    assert _tiled(t, 2) is t
    scalar = torch.tensor(True)
    assert _tiled(scalar, 4) is scalar
    assert _tiled(None, 4) is None
    assert _tiled(True, 4) is True


def test_site_mask_combines_every_mask_of_a_site_over_whole_events():
    """The handler's mask and every ``.mask`` in the distribution, each reduced over the event
    dims of the ``Independent`` wrappers outside it (all of them, nested ones added up), are
    combined into one mask of the batch shape; a mask that drops part of an event is refused."""
    n = 4
    keep_a = torch.tensor([True, True, False, True])
    keep_b = torch.tensor([True, False, True, True])
    handler = torch.tensor([True, True, True, False])
    over_event = keep_b[:, None, None].expand(n, 2, 3)
    inner = dist.Normal(torch.zeros(n, 2, 3), 1.0).mask(over_event)
    nested = dist.Independent(dist.Independent(inner, 1), 1).mask(keep_a)

    def guide():
        with pyro.plate("data", n), poutine.mask(mask=handler):
            pyro.sample("z", nested)
            pyro.sample("w", dist.Normal(torch.zeros(n), 1.0))

    trace = poutine.trace(guide).get_trace()
    assert torch.equal(site_mask("z", trace.nodes["z"]), keep_a & keep_b & handler)
    assert torch.equal(site_mask("w", trace.nodes["w"]), handler)
    plain = poutine.trace(lambda: pyro.sample("v", dist.Normal(0.0, 1.0))).get_trace()
    assert site_mask("v", plain.nodes["v"]) is None

    # the same mask varying over the outer event dim only: still part of each event
    part = torch.tensor([True, False])[None, :, None].expand(n, 2, 3)
    partial = dist.Independent(
        dist.Independent(dist.Normal(torch.zeros(n, 2, 3), 1.0).mask(part), 1), 1
    )
    partial_trace = poutine.trace(lambda: pyro.sample("u", partial)).get_trace()
    with pytest.raises(ConfigError, match=whole(
        "guide site 'u' masks part of its event (.mask inside .to_event); the local posterior "
        "keeps or drops whole draws, so mask whole data points (a mask of the batch shape)"
    )):  # fmt: skip
        site_mask("u", partial_trace.nodes["u"])


def test_guide_masks_runs_the_guide_with_the_keyword_arguments():
    """The guide's keyword arguments reach the traced pass: its mask comes from ``keep=``."""

    def guide(x, keep=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0).mask(keep))

    x = torch.zeros(3, 1)
    keep = torch.tensor([False, True, False])
    assert torch.equal(guide_masks(guide, ["z"], (x,), keep=keep)["z"], keep)
