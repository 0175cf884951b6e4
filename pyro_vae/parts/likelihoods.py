"""Likelihoods p(x | decoder output): map decoder parameters to an element-wise distribution.

Contract: a likelihood declares ``num_params``, how many decoder outputs it needs per
data element, so the decoder's head is sized from it. ``forward(params)`` takes
``params: (*batch, *event_shape, num_params)`` and returns a distribution with
``batch_shape == (*batch, *event_shape)`` and no event dimensions; the VAE declares the
event dimensions. ``log_prob`` is exact and normalized.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints
from torch.nn.functional import logsigmoid, softplus

from pyro_vae.errors import DataError
from pyro_vae.parts.options import PositiveFloat
from pyro_vae.parts.registry import LIKELIHOODS, register_likelihood


class Likelihood(PyroModule):
    """Base class. Subclasses set ``num_params`` and ``support`` and define ``forward``."""

    num_params: int = 1
    support: constraints.Constraint = constraints.real
    #: Data in [0, 1] are treated as probabilities and binarized (Bernoulli-type likelihoods).
    binarize: bool = False

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise [`DataError`][pyro_vae.errors.DataError] unless every value of ``x`` is in this
        likelihood's support.

        The message names the likelihood, what it needs and the data's actual range.
        """
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
                f"{name} likelihood needs {_describe(support)}; data range [{lo:g}, {hi:g}]"
                f"{_problem(support, x)}; rescale the data or choose another --likelihood"
            )


def _describe(support: constraints.Constraint) -> str:
    if support is constraints.unit_interval:
        return "values in [0, 1]"
    if support is constraints.real:
        return "finite real values"
    if support is constraints.boolean:
        return "binary values 0 or 1"
    if support is constraints.nonnegative_integer:
        return "non-negative integer counts"
    if isinstance(support, _PixelGrid):
        return f"8-bit pixel values k/{support.levels - 1} in [0, 1]"
    return str(support)


def _problem(support: constraints.Constraint, x: torch.Tensor) -> str:
    """A short clause saying which values break the support, e.g. ' has non-integers'."""
    if support is constraints.nonnegative_integer or support is constraints.boolean:
        if bool((x != x.round()).any()):
            return " has non-integers"
        return " has values outside the support"
    if isinstance(support, _PixelGrid) and bool(((x >= 0) & (x <= 1)).all()):
        return f" has values between the {support.levels} levels"
    return " is outside it"


class _PixelGrid(constraints.Constraint):
    """Values k / (levels - 1), k = 0..levels-1 (8-bit pixels scaled to [0, 1])."""

    is_discrete = True

    def __init__(self, levels: int = 256):
        self.levels = int(levels)

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * (self.levels - 1)
        # Tolerance covers float32 rounding of k/255.
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-3)


@register_likelihood("bernoulli")
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


@register_likelihood("normal")
class Normal(Likelihood):
    """p(x | mu) = N(x; mu, s^2) with a fixed scale ``s``, one output (the mean) per element."""

    num_params = 1
    support = constraints.real

    def __init__(self, scale: PositiveFloat = 0.1):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"Normal likelihood scale must be positive, got {scale}")
        self.scale = float(scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = params[..., 0]
        return dist.Normal(loc, torch.full_like(loc, self.scale))


@register_likelihood("learned_normal", aliases=("normal_learned",))
class LearnedScaleNormal(Likelihood):
    """p(x | mu) = N(x; mu, s^2) with one learned scale ``s`` shared by all elements.

    s = softplus(raw) + 1e-4, initialized at ``scale``.
    """

    num_params = 1
    support = constraints.real

    def __init__(self, scale: PositiveFloat = 0.1):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"Normal likelihood scale must be positive, got {scale}")
        raw = math.log(math.expm1(max(scale - 1e-4, 1e-6)))
        self.raw_scale = nn.Parameter(torch.tensor(raw))

    @property
    def scale(self) -> torch.Tensor:
        return softplus(self.raw_scale) + 1e-4

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = params[..., 0]
        return dist.Normal(loc, self.scale.expand_as(loc))


class _LocScale(Likelihood):
    """A location-scale family with both parameters from the decoder, element by element.

    params[..., 0] is the location, the scale is softplus(params[..., 1]) + ``min_scale``.
    """

    num_params = 2
    support = constraints.real
    family: type[dist.TorchDistribution]

    def __init__(self, min_scale: PositiveFloat = 1e-3):
        super().__init__()
        self.min_scale = float(min_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return self.family(params[..., 0], softplus(params[..., 1]) + self.min_scale)


@register_likelihood("heteroscedastic_normal", aliases=("normal_hetero",))
class HeteroscedasticNormal(_LocScale):
    """p(x | mu, s) = N(x; mu, s^2) with a per-element scale from the decoder.

    params[..., 0] is the mean, s = softplus(params[..., 1]) + ``min_scale``.
    """

    family = dist.Normal


@register_likelihood("laplace")
class Laplace(_LocScale):
    """p(x | mu, b) = Laplace(x; mu, b), b = softplus(params[..., 1]) + ``min_scale``."""

    family = dist.Laplace


class _ContinuousBernoulliLogits(dist.ContinuousBernoulli):
    """Continuous Bernoulli whose normalizer is computed from the logits, stable everywhere.

    With lambda = sigmoid(l), C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = l / tanh(l/2),
    so log C = log|l| - log|tanh(l/2)| (no cancellation at extreme l), and near l = 0 the
    Taylor series l / tanh(l/2) = 2 + l^2/6 - l^4/360 + O(l^6).
    """

    def _cont_bern_log_norm(self) -> torch.Tensor:
        lg = self.logits
        small = lg.abs() < 1e-2
        safe = torch.where(small, torch.ones_like(lg), lg)
        exact = safe.abs().log() - torch.tanh(safe / 2).abs().log()
        l2 = lg * lg
        taylor = torch.log(2 + l2 / 6 - l2 * l2 / 360)
        return torch.where(small, taylor, exact)


@register_likelihood("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """p(x | l) = C(lambda) lambda^x (1 - lambda)^(1 - x) on [0, 1], lambda = sigmoid(l).

    The normalizing constant C is included, so ``log_prob`` is a density on [0, 1]; no
    binarization. Loaiza-Ganem & Cunningham (2019), "The continuous Bernoulli".
    """

    num_params = 1
    support = constraints.unit_interval

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _ContinuousBernoulliLogits(logits=params[..., 0], validate_args=False)


class _DiscretizedLogisticDist(TorchDistribution):
    """Logistic(mu, s) discretized to ``levels`` bins of [0, 1]; the end bins take the tails.

    Bin k (value k / (levels - 1)) has mass F(x + h) - F(x - h), h = 1 / (2 (levels - 1)),
    F the logistic CDF; the first bin is F(h), the last 1 - F(1 - h). Salimans et al. (2017).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, levels: int = 256):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.levels = int(levels)
        super().__init__(self.loc.shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return _PixelGrid(self.levels)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return type(self)(self.loc.expand(shape), self.scale.expand(shape), self.levels)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(1e-6, 1 - 1e-6)
            y = self.loc + self.scale * (u.log() - (-u).log1p())
            k = (y * (self.levels - 1)).round().clamp(0, self.levels - 1)
            return k / (self.levels - 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        h = 0.5 / (self.levels - 1)
        upper = (value + h - self.loc) / self.scale
        lower = (value - h - self.loc) / self.scale
        # log(sigmoid(a) - sigmoid(b)), a > b, via the tail that avoids cancellation:
        # on the right use sigmoid(-b) - sigmoid(-a) instead.
        right = (upper + lower) > 0
        a = torch.where(right, -lower, upper)
        b = torch.where(right, -upper, lower)
        log_a = logsigmoid(a)
        log_mid = log_a + torch.log(-torch.expm1(logsigmoid(b) - log_a))
        log_first = logsigmoid(upper)  # F(h): all mass below the first bin's upper edge
        log_last = logsigmoid(-lower)  # 1 - F(1 - h)
        k = (value * (self.levels - 1)).round()
        return torch.where(k <= 0, log_first, torch.where(k >= self.levels - 1, log_last, log_mid))


@register_likelihood("discretized_logistic")
class DiscretizedLogistic(Likelihood):
    """8-bit pixels in [0, 1] (multiples of 1/255): a logistic discretized to 256 bins.

    params[..., 0] is the location, scale = softplus(params[..., 1]) + 1e-3. Exact bin
    masses sum to 1 over the 256 levels. Salimans et al. (2017), PixelCNN++.
    """

    num_params = 2
    support = _PixelGrid(256)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _DiscretizedLogisticDist(params[..., 0], softplus(params[..., 1]) + 1e-3)


@register_likelihood("poisson")
class Poisson(Likelihood):
    """Counts: p(x | r) = Poisson(x; rate), rate = softplus(params[..., 0]) + 1e-6."""

    num_params = 1
    support = constraints.nonnegative_integer

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Poisson(softplus(params[..., 0]) + 1e-6, validate_args=False)


@register_likelihood("negative_binomial")
class NegativeBinomial(Likelihood):
    """Counts: NegativeBinomial(x; total_count r, logits l), overdispersed relative to Poisson.

    r = softplus(params[..., 1]) + 1e-4, l = params[..., 0]; mean r exp(l), var mean (1 + exp(l)).
    """

    num_params = 2
    support = constraints.nonnegative_integer

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        total = softplus(params[..., 1]) + 1e-4
        return dist.NegativeBinomial(total, logits=params[..., 0], validate_args=False)

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "Bernoulli",
    "ContinuousBernoulli",
    "Normal",
    "LearnedScaleNormal",
    "HeteroscedasticNormal",
    "Laplace",
    "DiscretizedLogistic",
    "Poisson",
    "NegativeBinomial",
]
