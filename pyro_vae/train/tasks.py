"""Training tasks: the loss of a batch and the validation metrics, one per way of training.

[`ELBOTask`][pyro_vae.train.tasks.ELBOTask] minimizes an objective's loss (negative ELBO, IWAE, ...
with a KL weight) on any model/guide pair, with the programs' extra arguments (labels) passed after
x; [`AutoencoderTask`][pyro_vae.train.tasks.AutoencoderTask] the reconstruction negative
log-likelihood of the deterministic baseline;
[`SemiSupervisedTask`][pyro_vae.train.semisupervised.SemiSupervisedTask] the M2 objective. Each is
registered in ``TASKS`` under the name a model kind gives as its ``task``
([`pyro_vae.models.kinds`][]); [`make_task`][pyro_vae.train.tasks.make_task] looks it up, so the
loop never asks which kind it trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.infer.objectives import Objective
from pyro_vae.models.autoencoder import Autoencoder, mean_reconstruction_nll
from pyro_vae.models.fused import FusedELBO, fused_unsupported
from pyro_vae.models.kinds import ModelKind, kind_of


@dataclass
class BatchLoss:
    """One batch's loss summed over its points (differentiable), metric sums, and values
    that hold at this step (recorded from the epoch's last step).

    A metric sum may be a 0-dim tensor on the device: the loop copies the sums of several
    steps to the host at once, so a step need not wait for the device.
    """

    loss_sum: torch.Tensor
    sums: dict[str, float | torch.Tensor] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


class TrainTask(Protocol):
    """What a model kind supplies to [`fit`][pyro_vae.train.loop.fit]."""

    #: The trained module (its parameters are optimized, its state checkpointed).
    model: torch.nn.Module
    #: History key of the minimized loss per data point, e.g. ``train_loss``.
    loss_name: str
    #: History keys shown on the progress bar (train, valid).
    headline: tuple[str, str]

    def batch_loss(self, x: torch.Tensor, progress: float, *args: torch.Tensor) -> BatchLoss:
        """x: (batch, *event_shape); ``progress``: epochs done (fractional); ``args``: the
        programs' further arguments for the same points (e.g. labels (batch,))."""

    def validate(self, valid: torch.Tensor, *args: torch.Tensor) -> dict[str, float]:
        """Validation metrics per data point; valid: (N, *event_shape), args as above."""


class ELBOTask:
    """Train a model/guide pair: minimize the objective's loss (negative ELBO, IWAE, ... with
    KL weight), the programs' arguments after x passed to both.

    ``train_elbo`` is always the true (beta = 1) ELBO, ``train_loss`` what was minimized,
    ``kl_weight`` the schedule's weight at the epoch's last step.
    """

    loss_name = "train_loss"
    headline = ("train_elbo", "valid_elbo")

    def __init__(
        self,
        vae: torch.nn.Module,
        objective: Objective,
        valid_num_samples: int = 10,
        fused: bool = True,
        kind: ModelKind | None = None,
        data: Any = None,
        seed: int = 0,
    ):
        self.model = vae
        self.objective = objective
        self.valid_num_samples = valid_num_samples
        #: The same ELBO computed straight from the parts (no tracing), where it applies:
        #: the library's own parts with the elbo/meanfield objectives (tests/test_fused.py
        #: proves the loss and gradients equal Pyro's). ``fused=False`` keeps Pyro's path.
        self.fused = None
        if fused and fused_unsupported(
            vae, objective.name, objective.num_particles, objective.free_bits
        ) is None:
            self.fused = FusedELBO(vae, objective.name == "meanfield", objective.num_particles)

    def batch_loss(self, x: torch.Tensor, progress: float, *args: torch.Tensor) -> BatchLoss:
        kl_weight = self.objective.kl_weight(progress)
        if self.fused is not None and not args:
            loss, elbo = self.fused(x, kl_weight)
            return BatchLoss(loss, {"train_elbo": elbo}, {"kl_weight": kl_weight})
        value = self.objective.loss(self.model.model, self.model.guide, x, kl_weight, *args)
        return BatchLoss(value.loss, {"train_elbo": value.elbo}, {"kl_weight": kl_weight})

    def validate(self, valid: torch.Tensor, *args: torch.Tensor) -> dict[str, float]:
        return importance_validation(self.model, valid, self.valid_num_samples, *args)


def importance_validation(
    model: torch.nn.Module, valid: torch.Tensor, k: int, *args: torch.Tensor
) -> dict[str, float]:
    """``valid_elbo`` (+- ``valid_elbo_stderr``) and ``valid_iwae<k>`` per data point: the
    K = ``k`` importance-sampled bound of ``model``'s programs on valid: (N, *event_shape),
    with their further arguments ``args`` (by the estimator's fastest route that applies)."""
    val = log_likelihood(model.model, model.guide, valid, *args, num_samples=k)
    return {
        "valid_elbo": val.elbo,
        "valid_elbo_stderr": val.elbo_stderr,
        f"valid_iwae{k}": val.mean,
    }


class AutoencoderTask:
    """Train the autoencoder baseline: minimize the reconstruction NLL -log p(x | dec(enc(x))).

    History keys: ``train_nll``, ``valid_nll`` and ``valid_nll_stderr`` (nats per point).
    """

    loss_name = "train_nll"
    headline = ("train_nll", "valid_nll")

    def __init__(self, ae: Autoencoder, objective: Objective | None = None, *_: Any, **__: Any):
        self.model = ae

    def batch_loss(self, x: torch.Tensor, progress: float, *args: torch.Tensor) -> BatchLoss:
        return BatchLoss(self.model.reconstruction_nll(x).sum())

    def validate(self, valid: torch.Tensor, *args: torch.Tensor) -> dict[str, float]:
        nll, se = mean_reconstruction_nll(self.model, valid)
        return {"valid_nll": nll, "valid_nll_stderr": se}


#: Training tasks by the name a model kind gives (``ModelKind.task``); a task class is
#: called as ``cls(model, objective, valid_num_samples, fused, kind=..., data=..., seed=...)``
#: and may set ``run_record``, a dict the run adds to its ``config.json``.
TASKS: dict[str, Any] = {"elbo": ELBOTask, "reconstruction": AutoencoderTask}


def register_task(name: str, cls: Any) -> Any:
    """Add a training task under ``name`` (a model kind names it as its ``task``)."""
    TASKS[name] = cls
    return cls


def make_task(
    model: torch.nn.Module,
    objective: Objective,
    valid_num_samples: int = 10,
    fused: bool = True,
    data: Any = None,
    seed: int = 0,
) -> TrainTask:
    """The [`TrainTask`][pyro_vae.train.tasks.TrainTask] ``model``'s kind names
    (``ModelKind.task``).

    ``data`` (a [`DataSplits`][pyro_vae.data.splits.DataSplits]) and the run's ``seed`` are given to
    tasks that choose points from the data (the labelled subset of semi-supervised training).
    """
    kind = kind_of(model)
    if kind.task not in TASKS:
        raise ConfigError(
            f"model kind {kind.name!r} trains with task {kind.task!r}, which is not registered; "
            f"known tasks: {sorted(TASKS)}"
        )
    return TASKS[kind.task](
        model, objective, valid_num_samples, fused, kind=kind, data=data, seed=seed
    )
