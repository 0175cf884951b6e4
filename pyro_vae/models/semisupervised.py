"""The M2 semi-supervised VAE: a class label y beside the continuous latent z.

``model(x, y=None)``: y ~ Cat(1/C) (site ``"y"``, one-hot, observed when labels are given),
z ~ p(z), x ~ p(x | decoder([z, y])). ``guide(x, y=None)``: y ~ q(y | x) = Cat(classifier(x))
when y is not given, z ~ q(z | encoder([x, y])). ``guide_enumerated`` is the same guide with
its y site summed out exactly by Pyro's parallel enumeration. Kingma, Rezende, Mohamed &
Welling (2014), "Semi-supervised learning with deep generative models".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models.conditional import (
    broadcast_cat,
    check_mlp_arch,
    check_num_classes,
    one_hot_labels,
    refuse_bound_prior,
)
from pyro_vae.models.config import (
    ModelConfig,
    build_likelihood,
    build_posterior,
    build_prior,
)
from pyro_vae.models.kinds import ModelKind, check_labels, register_model
from pyro_vae.models.vae import local_params
from pyro_vae.parts.likelihoods import Likelihood
from pyro_vae.parts.nets import MLPDecoder, MLPEncoder
from pyro_vae.parts.options import PositiveFloat, PositiveInt, Sizes
from pyro_vae.parts.posteriors import Posterior
from pyro_vae.parts.priors import Prior

#: Weight of the labelled cross-entropy in [`m2_loss`][pyro_vae.models.semisupervised.m2_loss]: the
#: paper's alpha = 0.1 N per unlabelled point (see
#: [`m2_loss`][pyro_vae.models.semisupervised.m2_loss]).
DEFAULT_ALPHA = 50.0


class SemiSupervisedVAE(PyroModule):
    """M2: a generative model of x given a class y and a style z, with a classifier q(y | x).

        p(x, y, z) = Cat(y; 1/C) p(z) p(x | y, z),    q(y, z | x) = q(y | x) q(z | x, y)

    Sites ``"y"``, ``"z"``, ``"x"`` inside ``pyro.plate("data", batch, dim=-1)``; particles and
    enumeration dimensions go on the left. Labels y are integer class indices (batch,) or
    one-hot rows (batch, C). How y is summed out for unlabelled x is the choice of guide:

    - [`guide`][pyro_vae.models.semisupervised.SemiSupervisedVAE.guide] samples y ~ q(y | x): a
      proposal q(y | x) q(z | x, y) for importance sampling, so
      ``log_likelihood(m2.model, m2.guide, x)`` estimates log p(x) = log sum_y p(y) integral p(z)
      p(x | y, z) dz.
    - [`guide_enumerated`][pyro_vae.models.semisupervised.SemiSupervisedVAE.guide_enumerated] marks
      y ``infer={"enumerate": "parallel"}``: Pyro's ``TraceEnum_ELBO`` then sums over y exactly (y
      takes shape (C, 1, C), left of the data plate; the nets broadcast x against it), giving the
      paper's bound (eq. 7)

          -U(x) = sum_y q(y | x) [ELBO(x, y) - log q(y | x)],
          ELBO(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) - log q(z | x, y)].

    Two methods rather than a flag on the module: which guide runs is a choice of the
    inference, made at the call, so no state can leave one objective enumerating another's.

    Args:
        encoder: ``(*batch, prod(event_shape) + C) -> (*batch, posterior.num_params)``.
        decoder: ``(*batch, latent_dim + C) ->
            (*batch, likelihood.num_params * prod(event_shape))``.
        classifier: ``(*batch, *event_shape) -> (*batch, C)`` logits of q(y | x).
        prior: p(z).
        likelihood: the element-wise p(x | y, z).
        posterior: q(z | x, y).
        event_shape: shape of one data point.
        num_classes: C >= 2.

    Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative
    models", section 3.1.2.
    """

    #: its model kind's registered name ([`pyro_vae.models.kinds`][])
    kind = "m2"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        classifier: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        posterior: Posterior,
        event_shape: Sequence[int],
        num_classes: int,
    ):
        with local_params():
            super().__init__()  # the shared module context holds a local parameter state
        check_num_classes(num_classes)
        if prior.latent_dim != posterior.latent_dim:
            raise ValueError(
                f"prior latent_dim {prior.latent_dim} differs from posterior latent_dim "
                f"{posterior.latent_dim}; build both with the same latent_dim"
            )
        refuse_bound_prior(prior, "semi-supervised VAE")
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = posterior
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_classes = int(num_classes)

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def _batch_shape(self, x: torch.Tensor) -> torch.Size:
        return x.shape[: x.dim() - len(self.event_shape)]

    def _param(self) -> torch.Tensor:
        return next(self.decoder.parameters())

    def one_hot(self, y: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Labels as one-hot rows: y: (*batch,) integers or (*batch, C) floats -> (*batch, C).

        Integer labels outside [0, C) are refused; float rows are passed through.
        """
        dtype = dtype or self._param().dtype
        if not y.is_floating_point():
            return one_hot_labels(y, self.num_classes, dtype)
        if y.dim() == 0 or y.shape[-1] != self.num_classes:
            raise DataError(
                f"labels have shape {tuple(y.shape)}; pass integer class indices (batch,) or "
                f"one-hot rows (batch, {self.num_classes})"
            )
        return y.to(dtype)

    def label_prior(self, dtype: torch.dtype | None = None) -> dist.OneHotCategorical:
        """p(y) = Cat(1/C) over one-hot rows: event (C,), batch ()."""
        param = self._param()
        logits = torch.zeros(self.num_classes, dtype=dtype or param.dtype, device=param.device)
        return dist.OneHotCategorical(logits=logits)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y | x): x: (*batch, *event_shape) -> (*batch, C)."""
        return self.classifier(x)

    def classification_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log q(y | x) per data point: x: (*batch, *event_shape), y: (*batch,) labels or
        (*batch, C) rows -> (*batch,), the log-softmax taken over the C classes."""
        logits = self.classify(x)
        return -(self.one_hot(y, logits.dtype) * logits.log_softmax(-1)).sum(-1)

    def _encode(self, x: torch.Tensor, y1: torch.Tensor) -> dist.TorchDistribution:
        flat = x.reshape(*self._batch_shape(x), -1)
        return self.posterior(self.encoder(broadcast_cat(flat, y1.to(flat.dtype))))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x, y) for x: (*batch, *event_shape); batch shape ``batch``, event (latent_dim,).

        y: labels (*batch,) or one-hot rows (*batch, C); default argmax_y q(y | x).
        """
        if y is None:
            y = self.classify(x).argmax(-1)
        return self._encode(x, self.one_hot(y, x.dtype))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """p(x | y, z) for z: (*batch, latent_dim), y: labels (*batch',) or one-hot rows
        (*batch', C); batch shape broadcast(batch, batch'), event ``event_shape``."""
        zy = broadcast_cat(z, self.one_hot(y, z.dtype))
        batch = zy.shape[:-1]
        params = self.decoder(zy).reshape(*batch, self.likelihood.num_params, *self.event_shape)
        return self.likelihood(params.movedim(len(batch), -1)).to_event(len(self.event_shape))

    @local_params()
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p(x | y, z) for x: (batch, *event_shape); y: labels (batch,) observed, or
        None (y latent)."""
        obs = None if y is None else self.one_hot(y, x.dtype)
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            y1 = pyro.sample("y", self.label_prior(x.dtype), obs=obs)
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decode(z, y1), obs=x)

    def _guide(self, x: torch.Tensor, y: torch.Tensor | None, infer: dict[str, Any]) -> None:
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            if y is None:
                qy = dist.OneHotCategorical(logits=self.classify(x))
                y1 = pyro.sample("y", qy, infer=infer)
            else:
                y1 = self.one_hot(y, x.dtype)
            pyro.sample("z", self._encode(x, y1))

    @local_params()
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) q(z | x, y) for x: (batch, *event_shape); with labels y (batch,) only
        q(z | x, y) (y is observed in the model, not sampled here)."""
        self._guide(x, y, {})

    @local_params()
    def guide_enumerated(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """[`guide`][pyro_vae.models.semisupervised.SemiSupervisedVAE.guide] with site ``"y"``
        marked ``infer={"enumerate": "parallel"}``.

        Under ``TraceEnum_ELBO`` (or the library's estimators, which honour the mark) y takes all C
        values at once, shape (C, 1, C) left of the data plate, and is summed out exactly; with
        labels it is the same as [`guide`][pyro_vae.models.semisupervised.SemiSupervisedVAE.guide].
        """
        self._guide(x, y, {"enumerate": "parallel"})

    def _labels(self, n: int, y: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """One-hot labels for [`sample`][pyro_vae.models.semisupervised.SemiSupervisedVAE.sample]
        and the leading shape of the draws of z."""
        if y is None:
            labels = torch.randint(self.num_classes, (n,), device=self._param().device)
            return self.one_hot(labels), (n,)
        y1 = self.one_hot(y)
        return y1, (n, *y1.shape[:-1])

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, mean: bool = True) -> torch.Tensor:
        """Draw from p(z) p(x | y, z): (n, m, *event_shape) for labels y: (m,) or one-hot
        (m, C); (n, *event_shape) for y=None (labels drawn from p(y), one per draw).

        ``mean``: E[x | y, z] instead of a draw of x.
        """
        y1, shape = self._labels(n, y)
        px = self.decode(self.prior().sample(shape), y1)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def sample_per_class(self, n_per_class: int, mean: bool = True) -> torch.Tensor:
        """``n_per_class`` draws for each class: (num_classes, n_per_class, *event_shape)."""
        labels = torch.arange(self.num_classes, device=self._param().device)
        return self.sample(n_per_class, labels, mean).transpose(0, 1)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, y: torch.Tensor | None = None, mean: bool = True
    ) -> torch.Tensor:
        """Encode then decode: x: (batch, *event_shape) -> E[x | y, z]: (batch, *event_shape).

        y: labels, default argmax_y q(y | x); z is the mean of q(z | x, y) when ``mean``, else
        one draw.
        """
        if y is None:
            y = self.classify(x).argmax(-1)
        qz = self.encode(x, y)
        z = qz.mean if mean else qz.sample()
        return self.decode(z, y).mean

    def num_data_elements(self) -> int:
        return math.prod(self.event_shape)


def build_semisupervised(
    config: ModelConfig, num_classes: int, classifier_hidden: Sequence[int] | None = None
) -> SemiSupervisedVAE:
    """Build an M2 [`SemiSupervisedVAE`][pyro_vae.models.semisupervised.SemiSupervisedVAE] from a
    [`ModelConfig`][pyro_vae.models.config.ModelConfig].

    MLP nets of ``config.hidden`` widths: the encoder reads [flatten(x), one-hot y], the decoder
    [z, one-hot y] (mirrored widths); the classifier x -> ``classifier_hidden`` (default
    ``config.hidden``) -> C logits. Heads are sized from the parts, as in ``build_vae``.
    """
    check_mlp_arch(config, "semi-supervised VAE")
    check_num_classes(num_classes)
    hidden = tuple(config.hidden)
    classifier_widths = hidden if classifier_hidden is None else tuple(classifier_hidden)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in classifier_widths):
        raise ConfigError(
            f"classifier_hidden must be positive integer widths, got {classifier_hidden!r}"
        )
    posterior = build_posterior(config)
    likelihood = build_likelihood(config)
    prior = build_prior(config)
    size = math.prod(config.event_shape)
    act = config.arch_options.get("activation", "softplus")
    encoder = MLPEncoder((size + num_classes,), posterior.num_params, hidden, act)
    decoder = MLPDecoder(
        config.latent_dim + num_classes, likelihood.num_params * size, tuple(reversed(hidden)),
        act,
    )  # fmt: skip
    classifier = MLPEncoder(config.event_shape, num_classes, classifier_widths, act)
    return SemiSupervisedVAE(
        encoder, decoder, classifier, prior, likelihood, posterior, config.event_shape,
        num_classes,
    )  # fmt: skip


class ELBOObjective(Protocol):
    """What [`m2_loss`][pyro_vae.models.semisupervised.m2_loss] needs of an objective
    (``pyro_vae.infer.objectives.Objective``)."""

    def loss(
        self, model: Callable, guide: Callable, x: torch.Tensor, kl_weight: float, *args: Any
    ) -> tuple[torch.Tensor, float]: ...


def m2_loss(
    m2: SemiSupervisedVAE,
    objective: ELBOObjective,
    x_unlabelled: torch.Tensor,
    x_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    labelled_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The M2 loss of one unlabelled and one labelled batch, summed as below, and its parts.

    x_unlabelled: (B_u, *event_shape); x_labelled: (B_l, *event_shape); y_labelled: (B_l,) labels
    (or one-hot rows). With U(x) the bound of the enumerated guide
    ([`guide_enumerated`][pyro_vae.models.semisupervised.SemiSupervisedVAE.guide_enumerated], y
    summed out exactly) and L(x, y) the labelled ELBO (both lower bounds; the paper writes their
    negatives as L and U):

        loss = -sum_u U(x) - (B_u / B_l) [sum_l L(x, y) - alpha sum_l log q(y | x)]
        loss / B_u = mean_u(-U) + mean_l(-L) + alpha mean_l(-log q(y | x))

    Kingma et al. (2014), eq. 9: J^a = sum_l L + sum_u U + a E_l[-log q(y | x)], a = 0.1 N, the
    cross-entropy added because otherwise q(y | x) learns only from unlabelled data. The
    classifier's parameters get gradient from U and from that term alone; over one pass of the
    N_u unlabelled points (a labelled batch drawn with each unlabelled one) this loss totals
    sum_u(-U) + N_u [mean_l(-L) + alpha mean_l(-log q)] in expectation, so the classifier
    sees exactly the paper's objective when alpha = a / N_u = 0.1 N / N_u, about 0.1 when the
    unlabelled points are nearly all of the data. Unlike the paper, each labelled bound weighs
    ``labelled_weight`` N_u / N_l times more (scarce labels are oversampled, the usual
    practice; ``labelled_weight = N_l / N_u`` restores the paper's weight).

    The default alpha (``DEFAULT_ALPHA``) is 50, near the weight of Pyro's
    ``examples/vae/ss_vae_M2.py`` (``aux_loss_multiplier=46``): on MNIST with 100 labels
    (benchmarks/RESULTS.md) alpha = 0.1 let the unlabelled bound pull q(y | x) away from the
    labels (test error 30% after one epoch, 35% after three), alpha = 50 less so (25%, then
    30% after four, then falling to 16.4% after forty), against 25% for the same classifier
    trained on the labels alone.

    ``objective.loss(model, guide, x, kl_weight, *args)`` returns (loss summed over the batch,
    ELBO summed over the batch), as ``pyro_vae.infer.objectives.Objective`` does; use an ELBO
    objective (``"elbo"``, ``"meanfield"``), which sums y out with ``TraceEnum_ELBO`` and its
    q(y | x) weights (the objective keeps one Pyro ELBO per model/guide pair, so the labelled
    and unlabelled programs each get theirs).

    Returns ``(loss, parts)``: parts ``elbo_unlabelled`` (sum_u U), ``elbo_labelled``
    (sum_l L), ``classification_loss`` (sum_l -log q(y | x)) and ``correct`` (labelled points
    whose argmax q(y | x) is the label).
    """
    b_u, b_l = int(x_unlabelled.shape[0]), int(x_labelled.shape[0])
    if b_u == 0 or b_l == 0:
        raise DataError(
            f"m2_loss needs a non-empty unlabelled and labelled batch, got {b_u} and {b_l} points"
        )
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"alpha must be a non-negative finite number, got {alpha!r}")
    loss_u, elbo_u = objective.loss(m2.model, m2.guide_enumerated, x_unlabelled, 1.0)
    loss_l, elbo_l = objective.loss(m2.model, m2.guide, x_labelled, 1.0, y_labelled)
    logits = m2.classify(x_labelled)
    y1 = m2.one_hot(y_labelled, logits.dtype)
    nll = -(y1 * logits.log_softmax(-1)).sum(-1)
    loss = loss_u + (b_u / b_l) * (labelled_weight * loss_l + alpha * nll.sum())
    correct = (logits.argmax(-1) == y1.argmax(-1)).sum()
    parts = {
        "elbo_unlabelled": float(elbo_u),
        "elbo_labelled": float(elbo_l),
        "classification_loss": float(nll.detach().sum()),
        "correct": float(correct),
    }
    return loss, parts


@register_model("m2")
class SemiSupervisedKind(ModelKind):
    """Semi-supervised M2 (Kingma et al. 2014): y observed on a labelled subset and summed
    out exactly elsewhere; a classifier q(y | x) trained with weight ``alpha``.

    ``labels_per_class``: the balanced labelled subset's size per class, drawn with the run's
    seed (``None``: every training label). ``evaluate`` reports the classifier's test error
    beside the log-likelihood.
    """

    task: ClassVar[str] = "semi_supervised"
    figures: ClassVar[tuple[str, ...]] = (
        "elbo",
        "class_samples",
        "conditional_reconstructions",
        "latent",
        "kl_per_dim",
    )
    metrics: ClassVar[tuple[str, ...]] = (
        "log_likelihood",
        "classification_error",
        "latent_usage",
    )
    label: ClassVar[str] = "M2"

    def __init__(
        self,
        labels_per_class: PositiveInt | None = 10,
        alpha: PositiveFloat = DEFAULT_ALPHA,
        num_classes: PositiveInt | None = None,
        classifier_hidden: Sizes | None = None,
        labelled_weight: PositiveFloat = 1.0,
    ):
        self.labels_per_class, self.alpha = labels_per_class, alpha
        self.labelled_weight = labelled_weight
        self.num_classes, self.classifier_hidden = num_classes, classifier_hidden

    def for_data(self, data: Any) -> dict[str, Any]:
        num_classes = check_labels(data, "m2", self.num_classes)
        if self.labels_per_class is not None:
            labels = data.labels["train"]
            for c in range(num_classes):
                have = int((labels == c).sum())
                if have < self.labels_per_class:
                    raise ConfigError(
                        f"--labels-per-class {self.labels_per_class} asks for more labelled "
                        f"points than class {c} has in the training split ({have}); ask for "
                        f"at most {have}"
                    )
        return {"num_classes": num_classes}

    def build(self, config: ModelConfig) -> nn.Module:
        if self.num_classes is None:
            raise ConfigError(
                "m2 needs num_classes (--model-opt num_classes=C; train_run fills it in from "
                "the data)"
            )
        return build_semisupervised(config, self.num_classes, self.classifier_hidden)


__all__ = [
    "DEFAULT_ALPHA",
    "SemiSupervisedVAE",
    "build_semisupervised",
    "m2_loss",
]
