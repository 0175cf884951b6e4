"""The conditional VAE: ``model(x, y)`` for p(z | c) p(x | z, c), ``guide(x, y)`` for q(z | x, c).

The condition c comes from one of two sources (``condition_on``):

- ``"labels"``: the programs take ``(x, y)``; y is integer class labels ``(batch,)`` (one-hot
  encoded) or any float conditions ``(batch, condition_dim)``.
- ``"quadrant"``: the task of Pyro's ``examples/cvae``: the programs take ``x`` alone; c is x
  with every pixel outside one visible quadrant set to -1, and site ``"x"`` scores only the
  three hidden quadrants, so the model is p(x_hidden | x_visible).

Sohn, Lee & Yan (2015), "Learning structured output representation using deep conditional
generative models".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import one_hot

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models.config import (
    ModelConfig,
    build_likelihood,
    build_posterior,
    build_prior,
)
from pyro_vae.models.kinds import ModelKind, check_choice, check_labels, register_model
from pyro_vae.models.vae import local_params
from pyro_vae.parts.likelihoods import Likelihood
from pyro_vae.parts.nets import MLPDecoder, MLPEncoder
from pyro_vae.parts.options import NonNegativeInt, PositiveInt
from pyro_vae.parts.posteriors import Posterior
from pyro_vae.parts.priors import Prior

#: Where the condition c comes from.
CONDITION_SOURCES = ("labels", "quadrant")
#: Quadrant numbers, row-major: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: The quadrant Pyro's ``examples/cvae`` shows with one input quadrant: the bottom-left.
PYRO_QUADRANT = 2
#: The value of the pixels c hides, as in Pyro's example (outside every pixel range used).
HIDDEN_VALUE = -1.0


def one_hot_labels(
    y: torch.Tensor, num_classes: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Integer class labels as one-hot rows, refusing any label outside [0, num_classes).

    y: (*batch,) integers -> (*batch, num_classes) of ``dtype`` (default: the default dtype).
    """
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(
            f"labels must be integer class indices, got dtype {y.dtype}; convert them with "
            "y.long() (or pass one-hot float rows)"
        )
    if y.numel():
        low, high = int(y.min()), int(y.max())
        bad = low if low < 0 else high if high >= num_classes else None
        if bad is not None:
            raise DataError(
                f"label {bad} is outside [0, {num_classes}); labels must be class indices "
                f"0..{num_classes - 1}"
            )
    return one_hot(y.long(), num_classes).to(dtype or torch.get_default_dtype())


def broadcast_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two feature vectors after broadcasting their leading dimensions.

    a: (*A, m), b: (*B, n) -> (*broadcast(A, B), m + n). Particle and enumeration dimensions
    on the left of one input (z, or an enumerated label) meet the data batch of the other.
    """
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1])], dim=-1)


def quadrant_image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    """The (C, H, W) image a quadrant condition splits, refusing data that are not one.

    event_shape: (C, H, W), (H, W), or (D,) with D = s^2 (a flattened square image, e.g. 784
    -> 28 x 28); H and W must be even so that the four quadrants are equal.
    """
    shape = tuple(int(s) for s in event_shape)
    if len(shape) == 3:
        image = shape
    elif len(shape) == 2:
        image = (1, *shape)
    elif len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        image = (1, side, side)
    else:
        raise ConfigError(
            f"condition_on='quadrant' needs images shaped (C, H, W), (H, W) or a flattened "
            f"square (s*s,), but data points have shape {shape}; use condition_on='labels'"
        )
    if image[1] % 2 or image[2] % 2:
        raise ConfigError(
            f"condition_on='quadrant' needs an even height and width to split the image into "
            f"four equal quadrants, got {image[1]} x {image[2]}; crop or pad the images"
        )
    return image  # type: ignore[return-value]


def quadrant_mask(event_shape: Sequence[int], quadrant: int) -> torch.Tensor:
    """The visible quadrant as a boolean mask, True on its pixels (every channel).

    event_shape: as [`quadrant_image_shape`][pyro_vae.models.conditional.quadrant_image_shape] takes
    it -> (*event_shape,) bool. Quadrants are numbered row-major (``QUADRANTS``): row
    ``quadrant // 2``, column ``quadrant % 2``.
    """
    check_quadrant(quadrant)
    c, h, w = quadrant_image_shape(event_shape)
    row, col = divmod(quadrant, 2)
    mask = torch.zeros(c, h, w, dtype=torch.bool)
    mask[:, row * h // 2 : (row + 1) * h // 2, col * w // 2 : (col + 1) * w // 2] = True
    return mask.reshape(tuple(event_shape))


def check_quadrant(quadrant: int) -> None:
    """Refuse a quadrant number outside 0..3."""
    if isinstance(quadrant, bool) or not isinstance(quadrant, int) or not 0 <= quadrant <= 3:
        names = ", ".join(f"{i} {n}" for i, n in enumerate(QUADRANTS))
        raise ConfigError(f"quadrant must be one of 0..3 ({names}), got {quadrant!r}")


def condition_size(
    condition_on: str,
    event_shape: Sequence[int],
    num_classes: int | None = None,
    condition_dim: int | None = None,
    quadrant: int = PYRO_QUADRANT,
) -> int:
    """The length of the condition vector c, refusing settings that do not fit together.

    ``"labels"``: ``num_classes`` (>= 2, c one-hot) or ``condition_dim`` (>= 1, c any float
    vector), exactly one of them. ``"quadrant"``: prod(event_shape) (c is the masked image).
    """
    if condition_on not in CONDITION_SOURCES:
        raise ConfigError(
            f"unknown condition_on {condition_on!r}; choose one of {list(CONDITION_SOURCES)}"
        )
    check_quadrant(quadrant)
    if condition_on == "quadrant":
        if num_classes is not None or condition_dim is not None:
            raise ConfigError(
                "condition_on='quadrant' takes its condition from the images; drop "
                "num_classes and condition_dim"
            )
        quadrant_image_shape(event_shape)
        return math.prod(event_shape)
    if (num_classes is None) == (condition_dim is None):
        raise ConfigError(
            "condition_on='labels' needs exactly one of num_classes (integer labels) and "
            f"condition_dim (float conditions), got num_classes={num_classes!r}, "
            f"condition_dim={condition_dim!r}"
        )
    if num_classes is not None:
        check_num_classes(num_classes)
        return int(num_classes)
    if isinstance(condition_dim, bool) or not isinstance(condition_dim, int) or condition_dim < 1:
        raise ConfigError(f"condition_dim must be an integer of at least 1, got {condition_dim!r}")
    return condition_dim


def check_num_classes(num_classes: int) -> None:
    """Refuse a class count that is not an integer of at least 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer of at least 2, got {num_classes!r}")


def check_mlp_arch(config: ModelConfig, what: str) -> None:
    """Refuse an ``arch`` other than ``mlp``: the condition joins the nets' inputs as a vector."""
    if config.arch != "mlp":
        raise ConfigError(
            f"the {what} builds MLP nets (the condition is concatenated to their inputs), not "
            f"arch {config.arch!r}; set arch = 'mlp'"
        )


def refuse_bound_prior(prior: nn.Module, what: str) -> None:
    """Refuse a prior that binds to the encoder (the VampPrior): here the encoder reads more
    than x, so pseudo-inputs of x alone cannot be encoded."""
    if callable(getattr(prior, "bind", None)):
        raise ConfigError(
            f"prior {type(prior).__name__} is built from the encoder, but the {what}'s "
            "encoder reads a condition besides x; choose another prior (e.g. 'normal')"
        )


class ConditionalPrior(PyroModule):
    """A learned conditional prior p(z | c): a posterior family applied to an MLP of c.

    c: (*batch, condition_dim) -> a distribution with batch shape ``batch`` and event
    (latent_dim,); ``net`` maps c to the family's ``num_params``.
    """

    def __init__(self, net: nn.Module, family: Posterior):
        super().__init__()
        self.net = net
        self.family = family

    @property
    def latent_dim(self) -> int:
        return self.family.latent_dim

    def forward(self, c: torch.Tensor) -> dist.TorchDistribution:
        return self.family(self.net(c))


class ConditionalVAE(PyroModule):
    """A conditional VAE composed of swappable parts.

    ``model(x, y=None)``: z ~ p(z | c) (site ``"z"``), x ~ p(x | decoder([z, c])) (site ``"x"``),
    both inside ``pyro.plate("data", batch, dim=-1)``; ``guide(x, y=None)``: z ~ q(z |
    encoder([flatten(x), c])) in the same plate, with c =
    [`condition`][pyro_vae.models.conditional.ConditionalVAE.condition] (x, y). Particles and
    enumeration dimensions go to the left of the data dimension.

        log p(x | c) >= E_q(z|x,c)[log p(x | z, c)] - KL(q(z | x, c) || p(z | c))

    (Sohn, Lee & Yan 2015). With ``condition_on="quadrant"`` site ``"x"`` is masked to the
    hidden pixels (``.mask`` on the element-wise likelihood, so its log-density is exactly
    their sum), and the importance-sampled log p at ``"x"`` is log p(x_hidden | x_visible).

    Args:
        encoder: ``(*batch, prod(event_shape) + condition_dim) -> (*batch, posterior.num_params)``.
        decoder: ``(*batch, latent_dim + condition_dim) ->
            (*batch, likelihood.num_params * prod(event_shape))``.
        prior: p(z) (a [`Prior`][pyro_vae.parts.priors.Prior]) or p(z | c)
            (a [`ConditionalPrior`][pyro_vae.models.conditional.ConditionalPrior]).
        likelihood: maps decoder parameters to an element-wise p(x | z, c).
        posterior: maps encoder outputs to q(z | x, c).
        event_shape: shape of one data point.
        condition_on: ``"labels"`` or ``"quadrant"`` (``CONDITION_SOURCES``).
        num_classes: for labels, the class count (integer labels, one-hot c); exactly one of
            it and ``condition_dim``.
        condition_dim: for labels, the length of float conditions; exactly one of it and
            ``num_classes``.
        quadrant: the visible quadrant for ``"quadrant"``, 0..3 row-major (``QUADRANTS``);
            default 2, the bottom-left, which Pyro's example shows.
    """

    #: its model kind's registered name ([`pyro_vae.models.kinds`][])
    kind = "cvae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior | ConditionalPrior,
        likelihood: Likelihood,
        posterior: Posterior,
        event_shape: Sequence[int],
        condition_on: str,
        num_classes: int | None = None,
        condition_dim: int | None = None,
        quadrant: int = PYRO_QUADRANT,
    ):
        with local_params():
            super().__init__()  # the shared module context holds a local parameter state
        if prior.latent_dim != posterior.latent_dim:
            raise ConfigError(
                f"prior latent_dim {prior.latent_dim} differs from posterior latent_dim "
                f"{posterior.latent_dim}; build both with the same latent_dim"
            )
        refuse_bound_prior(prior, "conditional VAE")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.condition_dim = condition_size(
            condition_on, self.event_shape, num_classes, condition_dim, quadrant
        )
        self.condition_on = condition_on
        self.num_classes = num_classes
        self.quadrant = quadrant if condition_on == "quadrant" else None
        self.conditional_prior = isinstance(prior, ConditionalPrior)
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = posterior
        visible = quadrant_mask(self.event_shape, quadrant) if self.quadrant is not None else None
        # Not persistent: the options rebuild it, so a checkpoint need not carry it.
        self.register_buffer("visible", visible, persistent=False)

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def _batch_shape(self, x: torch.Tensor) -> torch.Size:
        return x.shape[: x.dim() - len(self.event_shape)]

    def _dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def condition(self, x: torch.Tensor | None, y: torch.Tensor | None = None) -> torch.Tensor:
        """The condition vector c for data x and labels or conditions y.

        ``"labels"``: y: (*batch,) integer labels -> one-hot c: (*batch, num_classes), or
        y: (*batch, condition_dim) floats -> c = y; x only gives the dtype (may be None).
        ``"quadrant"``: x: (*batch, *event_shape) -> c: (*batch, prod(event_shape)), x with
        every pixel outside the visible quadrant set to -1 (as Pyro's ``examples/cvae``).
        """
        if self.condition_on == "quadrant":
            if y is not None:
                raise DataError(
                    "condition_on='quadrant' reads its condition from the images; call the "
                    "programs with x alone"
                )
            if x is None:
                raise DataError("condition_on='quadrant' needs the images x")
            c = torch.where(self.visible, x, torch.full_like(x, HIDDEN_VALUE))
            return c.reshape(*self._batch_shape(x), -1)
        if y is None:
            raise DataError(
                "condition_on='labels' needs the labels or conditions y; call model(x, y) and "
                "guide(x, y)"
            )
        dtype = x.dtype if x is not None and x.is_floating_point() else self._dtype()
        if not y.is_floating_point():
            if self.num_classes is None:
                raise DataError(
                    f"this model takes float conditions (batch, {self.condition_dim}), got "
                    f"integer labels; build it with num_classes to pass labels"
                )
            return one_hot_labels(y, self.num_classes, dtype)
        if y.dim() == 0 or y.shape[-1] != self.condition_dim:
            raise DataError(
                f"conditions have shape {tuple(y.shape)}, need (batch, {self.condition_dim}) "
                "floats (or integer labels (batch,) for a model built with num_classes)"
            )
        return y.to(dtype)

    def prior_dist(self, c: torch.Tensor) -> dist.TorchDistribution:
        """p(z | c) for c: (*batch, condition_dim): batch shape ``batch`` (a learned conditional
        prior) or () (the unconditional p(z), which the data plate broadcasts)."""
        return self.prior(c) if self.conditional_prior else self.prior()

    def _sample_prior(self, c: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """z ~ p(z | c): (*shape, *c.shape[:-1], latent_dim)."""
        if self.conditional_prior:
            return self.prior(c).sample(torch.Size(shape))
        return self.prior().sample(torch.Size(shape) + c.shape[:-1])

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, c) for x: (*batch, *event_shape), c: (*batch', condition_dim); batch shape
        broadcast(batch, batch'), event (latent_dim,)."""
        flat = x.reshape(*self._batch_shape(x), -1)
        return self.posterior(self.encoder(broadcast_cat(flat, c.to(flat.dtype))))

    def decode(
        self, z: torch.Tensor, c: torch.Tensor, hidden_only: bool = False
    ) -> dist.TorchDistribution:
        """p(x | z, c) for z: (*batch, latent_dim), c: (*batch', condition_dim); batch shape
        broadcast(batch, batch'), event ``event_shape``.

        ``hidden_only`` (quadrant): the log-density is the sum over the hidden pixels alone,
        log p(x_hidden | z, c) (the element-wise likelihood masked before its event sum).
        """
        zc = broadcast_cat(z, c.to(z.dtype))
        batch = zc.shape[:-1]
        params = self.decoder(zc).reshape(*batch, self.likelihood.num_params, *self.event_shape)
        px = self.likelihood(params.movedim(len(batch), -1))
        if hidden_only and self.visible is not None:
            px = px.mask(~self.visible)
        return px.to_event(len(self.event_shape))

    @local_params()
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z | c) p(x | z, c) for x: (batch, *event_shape), y: labels (batch,) or conditions
        (batch, condition_dim) for ``"labels"``, None for ``"quadrant"``."""
        c = self.condition(x, y)
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            z = pyro.sample("z", self.prior_dist(c))
            pyro.sample("x", self.decode(z, c, hidden_only=True), obs=x)

    @local_params()
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z | x, c) for x: (batch, *event_shape), y as in
        [`model`][pyro_vae.models.conditional.ConditionalVAE.model]."""
        c = self.condition(x, y)
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            pyro.sample("z", self.encode(x, c))

    def _sample_condition(self, n: int, y: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
        """c for [`sample`][pyro_vae.models.conditional.ConditionalVAE.sample] and the leading
        shape of the draws of z."""
        if self.condition_on == "quadrant":
            if y is None:
                raise ConfigError(
                    "condition_on='quadrant' samples given images: pass them as y (only their "
                    "visible quadrant is read), or use complete(x)"
                )
            return self.condition(y.to(self._dtype())), (n,)
        if y is None:
            if self.num_classes is None:
                raise ConfigError(
                    "a model of float conditions has no distribution over them; pass y"
                )
            labels = torch.randint(self.num_classes, (n,), device=self._device())
            return self.condition(None, labels), ()
        return self.condition(None, y), (n,)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, mean: bool = True) -> torch.Tensor:
        """Draw from p(z | c) p(x | z, c): (n, m, *event_shape), or (n, *event_shape) for y=None.

        y: labels (m,) or conditions (m, condition_dim) for ``"labels"`` (None: n labels drawn
        uniformly, one per draw); images (m, *event_shape) for ``"quadrant"`` (only their
        visible quadrant is read). ``mean``: E[x | z, c] instead of a draw of x.
        """
        c, shape = self._sample_condition(n, y)
        px = self.decode(self._sample_prior(c, shape), c)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def sample_per_class(self, n_per_class: int, mean: bool = True) -> torch.Tensor:
        """``n_per_class`` draws for each class: (num_classes, n_per_class, *event_shape)."""
        if self.num_classes is None:
            raise ConfigError("sample_per_class needs a model of class labels (num_classes)")
        labels = torch.arange(self.num_classes, device=self._device())
        return self.sample(n_per_class, labels, mean).transpose(0, 1)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, y: torch.Tensor | None = None, mean: bool = True
    ) -> torch.Tensor:
        """Encode then decode: x: (batch, *event_shape) -> E[x | z, c]: (batch, *event_shape).

        z is the mean of q(z | x, c) when ``mean`` (deterministic), else one draw.
        """
        c = self.condition(x, y)
        qz = self.encode(x, c)
        z = qz.mean if mean else qz.sample()
        return self.decode(z, c).mean

    @torch.no_grad()
    def complete(
        self, x: torch.Tensor, num_samples: int | None = None, mean: bool = True
    ) -> torch.Tensor:
        """Complete images from their visible quadrant (``"quadrant"`` only).

        x: (batch, *event_shape) -> (batch, *event_shape), or (num_samples, batch,
        *event_shape): the visible quadrant copied from x, the hidden pixels from E[x | z, c]
        (a draw of x when not ``mean``) with z ~ p(z | c), one draw per completion.
        """
        if self.visible is None:
            raise ConfigError("complete(x) needs a model built with condition_on='quadrant'")
        c = self.condition(x)
        shape = () if num_samples is None else (num_samples,)
        px = self.decode(self._sample_prior(c, shape), c)
        fill = px.mean if mean else px.sample()
        return torch.where(self.visible, x, fill)

    def num_data_elements(self) -> int:
        """How many elements of a data point site ``"x"`` scores (the hidden ones, for quadrant)."""
        if self.visible is not None:
            return int((~self.visible).sum())
        return math.prod(self.event_shape)


def build_conditional(
    config: ModelConfig,
    condition_on: str,
    num_classes: int | None = None,
    condition_dim: int | None = None,
    conditional_prior: bool = False,
    quadrant: int = PYRO_QUADRANT,
) -> ConditionalVAE:
    """Build a [`ConditionalVAE`][pyro_vae.models.conditional.ConditionalVAE] from a
    [`ModelConfig`][pyro_vae.models.config.ModelConfig] and the condition's source.

    MLP nets of ``config.hidden`` widths (the decoder mirrors them): the encoder reads
    [flatten(x), c] and outputs the posterior family's ``num_params``, the decoder reads
    [z, c] and outputs the likelihood's ``num_params`` per data element. With
    ``conditional_prior`` p(z | c) is ``config.posterior``'s family applied to an MLP of c
    (``config.prior`` is then unused); otherwise p(z) is ``config.prior``. For ``"quadrant"``
    the encoder's c repeats x's visible quadrant; it is kept so that both sources build the
    same nets.
    """
    check_mlp_arch(config, "conditional VAE")
    cdim = condition_size(condition_on, config.event_shape, num_classes, condition_dim, quadrant)
    posterior = build_posterior(config)
    likelihood = build_likelihood(config)
    act = config.arch_options.get("activation", "softplus")
    if conditional_prior:
        family = build_posterior(config)
        prior: Prior | ConditionalPrior = ConditionalPrior(
            MLPEncoder((cdim,), family.num_params, config.hidden, act), family
        )
    else:
        prior = build_prior(config)
    size = math.prod(config.event_shape)
    encoder = MLPEncoder((size + cdim,), posterior.num_params, config.hidden, act)
    decoder = MLPDecoder(
        config.latent_dim + cdim, likelihood.num_params * size, tuple(reversed(config.hidden)),
        act,
    )  # fmt: skip
    return ConditionalVAE(
        encoder, decoder, prior, likelihood, posterior, config.event_shape, condition_on,
        num_classes=num_classes, condition_dim=condition_dim, quadrant=quadrant,
    )  # fmt: skip


@register_model("cvae")
class ConditionalKind(ModelKind):
    """Conditional VAE: p(x | z, c), q(z | x, c), optionally a learned prior p(z | c).

    ``condition_on="labels"``: c is the one-hot class label, the programs take ``(x, y)``;
    ``"quadrant"``: c is one visible quadrant of the image (``quadrant`` 0..3: top-left,
    top-right, bottom-left, bottom-right), the likelihood covers the other three (Pyro's
    ``examples/cvae`` task). ``num_classes`` defaults to the data's largest label + 1.
    """

    def __init__(
        self,
        condition_on: str = "labels",
        conditional_prior: bool = False,
        num_classes: PositiveInt | None = None,
        quadrant: NonNegativeInt = PYRO_QUADRANT,
    ):
        check_choice(condition_on, "condition_on", CONDITION_SOURCES)
        self.condition_on = condition_on
        self.conditional_prior = conditional_prior
        self.num_classes = num_classes
        self.quadrant = quadrant

    @classmethod
    def check_options(cls, options: dict) -> None:
        check_choice(options.get("condition_on", "labels"), "condition_on", CONDITION_SOURCES)
        if not 0 <= options.get("quadrant", PYRO_QUADRANT) <= 3:
            raise ConfigError(f"quadrant must be 0..3, got {options['quadrant']}")

    @property
    def uses_labels(self) -> bool:  # type: ignore[override]
        return self.condition_on == "labels"

    @property
    def figures(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.uses_labels:
            return ("elbo", "class_samples", "conditional_reconstructions", "kl_per_dim")
        return ("elbo", "completions", "kl_per_dim")

    @property
    def label(self) -> str:  # type: ignore[override]
        return "conditional VAE"

    def for_data(self, data: Any) -> dict[str, Any]:
        if not self.uses_labels:
            return {}
        return {"num_classes": check_labels(data, "cvae", self.num_classes)}

    def build(self, config: ModelConfig) -> nn.Module:
        if self.uses_labels and self.num_classes is None:
            raise ConfigError(
                "a cvae on labels needs num_classes (--model-opt num_classes=C; train_run "
                "fills it in from the data)"
            )
        return build_conditional(
            config,
            self.condition_on,
            num_classes=self.num_classes if self.uses_labels else None,
            conditional_prior=self.conditional_prior,
            quadrant=self.quadrant,
        )


__all__ = [
    "CONDITION_SOURCES",
    "PYRO_QUADRANT",
    "QUADRANTS",
    "ConditionalPrior",
    "ConditionalVAE",
    "broadcast_cat",
    "build_conditional",
    "condition_size",
    "one_hot_labels",
    "quadrant_image_shape",
    "quadrant_mask",
]
