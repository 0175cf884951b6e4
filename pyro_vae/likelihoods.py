"""Likelihoods p(x | decoder output): map decoder parameters to an element-wise distribution.

Contract: a likelihood declares ``num_params``, how many decoder outputs it needs per
data element, so the decoder's head is sized from it. ``forward(params)`` takes
``params: (*batch, *event_shape, num_params)`` and returns a distribution with
``batch_shape == (*batch, *event_shape)`` and no event dimensions; the VAE declares the
event dimensions. ``log_prob`` is exact and normalized.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch.distributions import constraints

from .errors import DataError


class Likelihood(PyroModule):
    """Base class. Subclasses set ``num_params`` and ``support`` and define ``forward``."""

    num_params: int = 1
    support: constraints.Constraint = constraints.real
    #: Data in [0, 1] are treated as probabilities and binarized (Bernoulli-type likelihoods).
    binarize: bool = False

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless every value of ``x`` is in this likelihood's support."""
        name = type(self).__name__
        if not torch.isfinite(x).all():
            raise DataError(
                f"data contain NaN or infinite values; the {name} likelihood needs finite data: "
                "clean or impute the array first"
            )
        support = constraints.unit_interval if self.binarize else self.support
        if not bool(support.check(x).all()):
            lo, hi = float(x.min()), float(x.max())
            raise DataError(
                f"data range [{lo:g}, {hi:g}] is outside the {name} likelihood's support "
                f"({_describe(support)}); rescale the data or choose another --likelihood"
            )


def _describe(support: constraints.Constraint) -> str:
    if support is constraints.unit_interval:
        return "values in [0, 1]"
    if support is constraints.real:
        return "finite real values"
    return str(support)


class Bernoulli(Likelihood):
    """p(x | l) = Bernoulli(x; sigmoid(l)), one logit per element.

    Data in [0, 1] are read as pixel intensities: training draws a fresh binarization each
    batch and evaluation uses one fixed, seeded binarization (see ``pyro_vae.data``).
    """

    num_params = 1
    support = constraints.boolean
    binarize = True

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params[..., 0], validate_args=False)


class Normal(Likelihood):
    """p(x | mu) = N(x; mu, s^2) with a fixed scale ``s``, one output (the mean) per element."""

    num_params = 1
    support = constraints.real

    def __init__(self, scale: float = 0.1):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"Normal likelihood scale must be positive, got {scale}")
        self.scale = float(scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = params[..., 0]
        return dist.Normal(loc, torch.full_like(loc, self.scale))


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": Bernoulli, "normal": Normal}
