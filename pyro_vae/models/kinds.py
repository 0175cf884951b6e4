"""Model kinds by name: what a model is built from, how it trains, what it draws and reports.

A model kind is a registry entry, like a prior or a likelihood ([`pyro_vae.parts.registry`][]).
Its class's constructor keywords are the kind's own options (``--model-opt KEY=VALUE``, their
own flags such as ``--condition-on``, or a ``[model]`` table in a config file), type-checked by
their annotations. The class says, by name, everything the layers above need, so that none of
them switches on the kind:

- [`ModelKind.build`][pyro_vae.models.kinds.ModelKind.build]: the module (its ``model``/``guide``
  Pyro programs, ``likelihood``, ``event_shape``) from a
  [`ModelConfig`][pyro_vae.models.config.ModelConfig];
- ``ModelKind.task``: the training task (``train.tasks.TASKS``): ``elbo`` minimizes an
  objective on the programs, ``reconstruction`` the autoencoder's NLL, ``semi_supervised`` the
  M2 objective on labelled and unlabelled batches;
- [`ModelKind.program_args`][pyro_vae.models.kinds.ModelKind.program_args]: what the programs take
  after ``x`` (labels for a model conditioned on them);
- ``ModelKind.figures`` and ``ModelKind.metrics``: names in the figure and metric
  registries (``analysis.figures.FIGURES``, ``runs.metrics.METRICS``).

A user's own kind registers the same way, from a plugin module::

    @register_model("my_vae")
    class MyKind(ModelKind):
        def __init__(self, depth: int = 2): ...
        def build(self, config): return MyModule(config.event_shape, config.latent_dim, ...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.parts.registry import Registry

#: Model kinds: built from a ModelConfig; their options are their constructor's keywords.
MODELS = Registry("model", shared=())
register_model = MODELS.register


class ModelKind:
    """One kind of model. Subclasses set the class attributes and implement
    [`build`][pyro_vae.models.kinds.ModelKind.build].

    ``uses_labels``: the programs take integer labels ``y: (batch,)`` after ``x``, so every
    split needs labels. ``scores_likelihood``: the module is a probabilistic model whose
    importance-sampled log p(x) is meaningful (an autoencoder has none).
    """

    #: the training task's name (``pyro_vae.train.tasks.TASKS``)
    task: ClassVar[str] = "elbo"
    #: figures a run of this kind draws (``pyro_vae.analysis.run_figures.FIGURES``), in order
    figures: ClassVar[tuple[str, ...]] = (
        "elbo",
        "samples",
        "reconstructions",
        "latent",
        "interpolation",
        "manifold",
        "kl_per_dim",
    )
    #: metrics ``evaluate`` and ``results.json`` report (``pyro_vae.runs.metrics.METRICS``)
    metrics: ClassVar[tuple[str, ...]] = ("log_likelihood", "latent_usage")
    #: the history key recorded as ``final_<key>`` in results.json
    final_metric: ClassVar[str] = "valid_elbo"
    #: how titles, progress bars and messages name the kind
    label: ClassVar[str] = "VAE"
    uses_labels: ClassVar[bool] = False
    scores_likelihood: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """The registered name of this kind."""
        found = getattr(self, "_name", None) or next(
            (n for n in MODELS if MODELS[n] is type(self)), None
        )
        if found is None:
            raise ConfigError(f"{type(self).__name__} is not a registered model kind")
        return found

    def options(self) -> dict[str, Any]:
        """This instance's options, as the registry checked them."""
        return dict(getattr(self, "_options", {}))

    def build(self, config: Any) -> nn.Module:  # pragma: no cover - abstract
        """The module for ``config`` (a [`ModelConfig`][pyro_vae.models.config.ModelConfig])."""
        raise NotImplementedError

    def for_data(self, data: Any) -> dict[str, Any]:
        """Options this kind derives from the data (e.g. the number of classes), given
        ``data`` (a [`DataSplits`][pyro_vae.data.splits.DataSplits]); checks the data it needs."""
        if self.uses_labels:
            check_labels(data, self.name, getattr(self, "num_classes", None))
        return {}

    def gap_parts(self, model: nn.Module) -> tuple[Any, Any] | None:
        """The guide's posterior family and its amortized parameters for the inference gaps
        ([`inference_gaps`][pyro_vae.infer.gaps.inference_gaps]), or ``None`` where the kind's
        guide is not one family per site fed by one encoder (then the gaps are refused)."""
        return None

    def split_args(self, data: Any, split: str) -> tuple[torch.Tensor, ...]:
        """The programs' arguments after x for every point of ``split`` of ``data`` (a
        [`DataSplits`][pyro_vae.data.splits.DataSplits]): its labels for a kind that takes them,
        each (N_split, ...); ``()`` otherwise."""
        if not self.uses_labels:
            return ()
        return self.program_args(data.labels.get(split))

    def program_args(self, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """What the programs take after x for points with these ``labels``: (batch,) or None."""
        if not self.uses_labels:
            return ()
        if labels is None:
            raise DataError(f"model {self.name!r} needs labels for every data point")
        return (labels,)


def check_choice(value: Any, name: str, allowed: Sequence[str]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``
    ([`ConfigError`][pyro_vae.errors.ConfigError], one line)."""
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {list(allowed)}")


def check_labels(data: Any, kind: str, num_classes: int | None = None) -> int:
    """Refuse data without integer labels in [0, num_classes) on every split; returns the
    number of classes (``num_classes``, or the largest label + 1).

    data: a [`DataSplits`][pyro_vae.data.splits.DataSplits] with ``labels`` ``{split: (N_split,)}``.
    """
    labels = getattr(data, "labels", None) or {}
    missing = [s for s in ("train", "valid", "test") if s not in labels]
    if missing:
        raise DataError(
            f"model {kind!r} needs labels, but {getattr(data, 'name', 'the data')!r} has none for "
            f"the {', '.join(missing)} split(s); use a data set with labels (digits, mnist, "
            "fashion-mnist, an .npz with y_train/y_valid/y_test) or another --model"
        )
    top = 0
    for split in ("train", "valid", "test"):
        y = labels[split]
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
            raise DataError(
                f"the {split} labels must be integers of shape (N,), got {y.dtype} "
                f"{tuple(y.shape)}; store class indices 0..C-1"
            )
        if y.numel() and int(y.min()) < 0:
            raise DataError(
                f"the {split} labels contain {int(y.min())}; labels must be class indices "
                "0..C-1"
            )
        if y.numel():
            top = max(top, int(y.max()) + 1)
    if num_classes is not None and top > num_classes:
        raise DataError(
            f"labels go up to {top - 1} but model {kind!r} has num_classes={num_classes}; "
            f"set num_classes to at least {top} (--model-opt num_classes={top})"
        )
    if top < 2 and num_classes is None:
        raise DataError(f"model {kind!r} needs at least 2 classes, the labels have {top}")
    return num_classes if num_classes is not None else top


def build_kind(name: str, options: Mapping[str, Any] | None = None) -> ModelKind:
    """The kind ``name`` with its (checked) options."""
    kind = MODELS.build(name, options)
    kind._name = MODELS.canonical(name)
    kind._options = MODELS.check_options(name, options)
    return kind


def kind_of(model: nn.Module) -> ModelKind:
    """The kind of a built module: from its ``kind`` name and ``kind_options``.

    Modules built by [`build_model`][pyro_vae.models.config.build_model] carry both; the library's
    classes carry their kind's name (``VAE.kind == "vae"``), so a module built by hand works too.
    """
    name = getattr(model, "kind", None)
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(
            f"expected a pyro_vae model (a VAE, an Autoencoder or a registered model kind's "
            f"module), got {type(model).__name__}; build one with build_model(config)"
        )
    return build_kind(name, getattr(model, "kind_options", None))


__all__ = [
    "MODELS",
    "ModelKind",
    "build_kind",
    "check_choice",
    "check_labels",
    "kind_of",
    "register_model",
]
