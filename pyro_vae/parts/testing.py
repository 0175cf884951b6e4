"""Contract checks for your own prior, likelihood or posterior family, as pytest base classes.

Subclass one, say how to make your part, and pytest runs the library's checks on it::

    from pyro_vae.parts.testing import PriorContract

    class TestStudentTPrior(PriorContract):
        def make_prior(self):
            return StudentTPrior(latent_dim=2, df=4.0)

The checks: ``forward`` returns a ``pyro.distributions`` object of the right batch and event
shapes; samples have the right shape; ``log_prob`` is finite with the right shape and
normalized (it integrates, or sums over the support, to 1, by quadrature in one and two
dimensions); gradients reach the part's parameters and its inputs; and every tensor the part
holds moves with ``.to(torch.float64)`` (a plain tensor attribute would stay behind). The
library's own parts pass them (``tests/test_parts_testing.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import constraints

#: Tolerance of the normalization checks (quadrature on a fine grid).
NORMALIZATION_ATOL = 2e-2


def integrate_density(log_prob: Any, samples: torch.Tensor, points: int = 401) -> torch.Tensor:
    """Integral of exp(log_prob) over a box around ``samples`` by the trapezoid rule.

    samples: (n, *batch, d), d = 1 or 2 -> (*batch,). The box spans the samples' range plus
    three times their spread on each side (tails beyond it are neglected).
    """
    d = samples.shape[-1]
    if d not in (1, 2):
        raise ValueError(f"quadrature is done in 1 or 2 dimensions, got {d}")
    flat = samples.reshape(samples.shape[0], -1, d)
    lo = flat.amin(dim=(0, 1)) - 3 * flat.std(dim=(0, 1)) - 1.0
    hi = flat.amax(dim=(0, 1)) + 3 * flat.std(dim=(0, 1)) + 1.0
    axes = [
        torch.linspace(float(lo[i]), float(hi[i]), points, dtype=samples.dtype) for i in range(d)
    ]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)
    batch = samples.shape[1:-1]
    z = grid.reshape(-1, *([1] * len(batch)), d).expand(-1, *batch, d)
    with torch.no_grad():
        density = log_prob(z).exp().reshape(*([points] * d), *batch)
    for i in range(d):
        density = torch.trapezoid(density, axes[-1 - i], dim=d - 1 - i)
    return density


def _check_distribution(d: Any, batch_shape: tuple, event_shape: tuple, what: str) -> None:
    assert isinstance(d, TorchDistributionMixin), (
        f"{what} must return a pyro.distributions object, got {type(d).__name__}"
    )
    assert tuple(d.batch_shape) == batch_shape, (
        f"{what} batch_shape {tuple(d.batch_shape)}, expected {batch_shape}"
    )
    assert tuple(d.event_shape) == event_shape, (
        f"{what} event_shape {tuple(d.event_shape)}, expected {event_shape}"
    )


def _check_gradients(module: torch.nn.Module, loss: torch.Tensor, what: str) -> None:
    if not loss.requires_grad:
        assert not any(p.requires_grad for p in module.parameters()), (
            f"{what}: log_prob does not depend on the parameters"
        )
        return
    loss.backward()
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{what}: no gradient reaches parameter {name!r}"
            assert torch.isfinite(p.grad).all(), f"{what}: gradient of {name!r} is not finite"


class PriorContract:
    """Checks of a prior p(z). Define
    [`make_prior`][pyro_vae.parts.testing.PriorContract.make_prior]; optionally
    [`move`][pyro_vae.parts.testing.PriorContract.move]."""

    #: Samples drawn for the shape, finiteness and normalization checks.
    num_samples: int = 2000

    def make_prior(self) -> Any:
        """A fresh prior (a ``PyroModule`` whose ``forward()`` returns p(z))."""
        raise NotImplementedError("define make_prior(self) in your test class")

    def move(self, prior: Any, dtype: torch.dtype) -> Any:
        """``prior`` converted to ``dtype``; override if it depends on other modules."""
        return prior.to(dtype)

    def test_returns_a_distribution_over_latent_dim(self):
        prior = self.make_prior()
        _check_distribution(prior(), (), (prior.latent_dim,), "prior()")

    def test_samples_and_log_prob_shapes(self):
        prior = self.make_prior()
        p = prior()
        z = p.sample((5, 3))
        assert z.shape == (5, 3, prior.latent_dim)
        lp = p.log_prob(z)
        assert lp.shape == (5, 3) and torch.isfinite(lp).all()

    def test_log_prob_is_normalized(self):
        prior = self.make_prior()
        if prior.latent_dim > 2:
            return  # quadrature only in 1 and 2 dimensions: make a 1-D or 2-D prior to check
        p = prior()
        with torch.no_grad():
            z = p.sample((self.num_samples,))
        total = float(integrate_density(p.log_prob, z))
        assert math.isclose(total, 1.0, abs_tol=NORMALIZATION_ATOL), (
            f"prior density integrates to {total:.3f}, not 1"
        )

    def test_gradients_reach_parameters(self):
        prior = self.make_prior()
        p = prior()
        with torch.no_grad():
            # A copy: flows cache the inverse of their own samples, which would skip the graph.
            z = p.sample((16,)).clone()
        _check_gradients(prior, -p.log_prob(z).mean(), "prior")

    def test_tensors_move_with_to(self):
        prior = self.move(self.make_prior(), torch.float64)
        p = prior()
        z = p.sample((4,))
        assert z.dtype == torch.float64, "a tensor of the prior did not move: register buffers"
        assert p.log_prob(z).dtype == torch.float64


class PosteriorContract:
    """Checks of a posterior family q(z | params). Define
    [`make_posterior`][pyro_vae.parts.testing.PosteriorContract.make_posterior]."""

    batch_shape: tuple[int, ...] = (3,)
    num_samples: int = 2000

    def make_posterior(self) -> Any:
        """A fresh family (``num_params`` and ``forward(params)`` returning q(z))."""
        raise NotImplementedError("define make_posterior(self) in your test class")

    def params(self, family: Any, batch: tuple[int, ...] = ()) -> torch.Tensor:
        """Encoder outputs to test with: (*batch, num_params), seeded."""
        g = torch.Generator().manual_seed(0)
        return torch.randn(*batch, family.num_params, generator=g)

    def test_returns_a_distribution_with_batch_and_event_shapes(self):
        family = self.make_posterior()
        q = family(self.params(family, self.batch_shape))
        _check_distribution(q, self.batch_shape, (family.latent_dim,), "posterior(params)")

    def test_rsample_and_log_prob_shapes(self):
        family = self.make_posterior()
        q = family(self.params(family, self.batch_shape))
        z = q.rsample((5,))
        assert z.shape == (5, *self.batch_shape, family.latent_dim)
        lp = q.log_prob(z)
        assert lp.shape == (5, *self.batch_shape) and torch.isfinite(lp).all()

    def test_log_prob_is_normalized(self):
        family = self.make_posterior()
        if family.latent_dim > 2:
            return  # quadrature only in 1 and 2 dimensions
        q = family(self.params(family, (2,)))
        with torch.no_grad():
            z = q.sample((self.num_samples,))
        totals = integrate_density(q.log_prob, z)
        assert torch.allclose(totals, torch.ones_like(totals), atol=NORMALIZATION_ATOL), (
            f"posterior densities integrate to {totals.tolist()}, not 1"
        )

    def test_gradients_reach_parameters_and_inputs(self):
        family = self.make_posterior()
        params = self.params(family, self.batch_shape).requires_grad_()
        q = family(params)
        z = q.rsample()
        _check_gradients(family, q.log_prob(z).sum() + z.square().sum(), "posterior")
        assert params.grad is not None and torch.isfinite(params.grad).all()
        assert params.grad.abs().sum() > 0, "no gradient reaches the encoder outputs"

    def test_tensors_move_with_to(self):
        family = self.make_posterior().to(torch.float64)
        q = family(self.params(family, self.batch_shape).double())
        z = q.rsample()
        assert z.dtype == torch.float64 and q.log_prob(z).dtype == torch.float64


class LikelihoodContract:
    """Checks of a likelihood p(x | params). Define ``make_likelihood``.

    Normalization is checked by summing over the support (binary, counts up to
    ``max_count``, 8-bit pixel levels) or by quadrature (real line, unit interval).
    """

    batch_shape: tuple[int, ...] = (2, 3)
    max_count: int = 400

    def make_likelihood(self) -> Any:
        raise NotImplementedError("define make_likelihood(self) in your test class")

    def params(self, likelihood: Any) -> torch.Tensor:
        """Decoder outputs to test with: (*batch_shape, num_params), seeded."""
        g = torch.Generator().manual_seed(0)
        return torch.randn(*self.batch_shape, likelihood.num_params, generator=g)

    def test_returns_an_elementwise_distribution(self):
        lik = self.make_likelihood()
        p = lik(self.params(lik))
        _check_distribution(p, self.batch_shape, (), "likelihood(params)")

    def test_samples_are_in_the_support_with_finite_log_prob(self):
        lik = self.make_likelihood()
        p = lik(self.params(lik))
        x = p.sample((4,))
        assert x.shape == (4, *self.batch_shape)
        assert bool(lik.support.check(x).all()), "samples fall outside the declared support"
        lp = p.log_prob(x)
        assert lp.shape == x.shape and torch.isfinite(lp).all()

    def test_log_prob_is_normalized(self):
        lik = self.make_likelihood()
        p = lik(self.params(lik))
        support = lik.support
        values = _support_values(support, self.max_count)
        with torch.no_grad():
            if values is not None:
                x = values.reshape(-1, *([1] * len(self.batch_shape))).expand(-1, *self.batch_shape)
                totals = p.log_prob(x.to(torch.get_default_dtype())).exp().sum(0)
            else:
                lo, hi = (0.0, 1.0) if support is constraints.unit_interval else (None, None)
                if lo is None:
                    s = p.sample((2000,))
                    lo = float(s.min() - 10 * s.std() - 1)
                    hi = float(s.max() + 10 * s.std() + 1)
                grid = torch.linspace(lo, hi, 20001)
                x = grid.reshape(-1, *([1] * len(self.batch_shape))).expand(-1, *self.batch_shape)
                totals = torch.trapezoid(p.log_prob(x).exp(), grid, dim=0)
        assert torch.allclose(totals, torch.ones_like(totals), atol=NORMALIZATION_ATOL), (
            f"likelihood masses/densities total {totals.flatten().tolist()}, not 1"
        )

    def test_gradients_reach_parameters_and_inputs(self):
        lik = self.make_likelihood()
        params = self.params(lik).requires_grad_()
        p = lik(params)
        with torch.no_grad():
            x = p.sample()
        _check_gradients(lik, -p.log_prob(x).sum(), "likelihood")
        assert params.grad is not None and torch.isfinite(params.grad).all()

    def test_tensors_move_with_to(self):
        lik = self.make_likelihood().to(torch.float64)
        p = lik(self.params(lik).double())
        x = p.sample()
        assert p.log_prob(x.double()).dtype == torch.float64


def _support_values(support: Any, max_count: int) -> torch.Tensor | None:
    """Every value of a discrete support (counts up to ``max_count``); None if continuous."""
    if support is constraints.boolean:
        return torch.tensor([0.0, 1.0])
    if support is constraints.nonnegative_integer:
        return torch.arange(max_count + 1, dtype=torch.get_default_dtype())
    levels = getattr(support, "levels", None)
    if support.is_discrete and levels is not None:
        return torch.arange(levels, dtype=torch.get_default_dtype()) / (levels - 1)
    if support.is_discrete:
        raise ValueError(f"cannot enumerate the discrete support {support}; check it by hand")
    return None
