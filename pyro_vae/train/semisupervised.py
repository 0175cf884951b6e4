"""Semi-supervised training (M2, Kingma et al. 2014): unlabelled batches, a labelled subset,
and the classifier's weighted term.

Each step takes the loop's batch of training points as unlabelled (their labels are never
read) and a batch of the labelled subset drawn with replacement from torch's global generator
(so a resumed run draws the same ones). The loss is
[`m2_loss`][pyro_vae.models.semisupervised.m2_loss]: per step,
mean_u(-U(x)) + mean_l(-L(x, y)) + alpha * mean_l(-log q(y | x)), where U sums y out by
parallel enumeration (Pyro's ``TraceEnum_ELBO``).

The labelled subset: ``labels_per_class`` points of every class, chosen from the training split
with the run's seed (a generator of its own, so the choice does not move the training stream);
``None`` takes every training label. The chosen indices are recorded in the run's
``config.json`` (``labelled_points``).
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_vae.data.binarize import dynamic_binarize
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.objectives import Objective
from pyro_vae.models.kinds import ModelKind
from pyro_vae.models.semisupervised import m2_loss
from pyro_vae.runtime.devices import to_device
from pyro_vae.train.tasks import BatchLoss, importance_validation, register_task


def choose_labelled(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Indices of a balanced labelled subset: ``per_class`` points of each class, sorted.

    labels: (N,) integer classes. The choice is a function of ``seed`` alone (its own
    generator). ``per_class=None`` takes every point. Refuses a class with fewer points.
    """
    if per_class is None:
        return torch.arange(labels.numel())
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        if members.numel() < per_class:
            raise DataError(
                f"class {c} has {members.numel()} training points, fewer than "
                f"--labels-per-class {per_class}; ask for at most {members.numel()} per class"
            )
        pick = torch.randperm(members.numel(), generator=generator)[:per_class]
        chosen.append(members[pick])
    return torch.sort(torch.cat(chosen)).values


class SemiSupervisedTask:
    """Train M2 on unlabelled batches plus draws from the labelled subset.

    History keys: ``train_loss`` (minimized, per step as above), ``train_elbo`` (the
    unlabelled ELBO per point, y summed out), ``train_labelled_elbo`` and
    ``train_classification_nll`` (per labelled point), ``train_labelled_accuracy``;
    ``valid_elbo``, ``valid_iwae<K>`` and ``valid_error`` (the classifier's error on the
    validation split).
    """

    loss_name = "train_loss"
    headline = ("train_elbo", "valid_elbo")

    def __init__(
        self,
        m2: torch.nn.Module,
        objective: Objective,
        valid_num_samples: int = 10,
        fused: bool = True,
        *,
        kind: ModelKind,
        data: Any = None,
        seed: int = 0,
    ):
        if data is None or "train" not in getattr(data, "labels", {}):
            raise DataError("semi-supervised training needs the training labels; pass data")
        if objective.name not in ("elbo", "meanfield"):
            raise ConfigError(
                f"M2 sums the label out of the ELBO exactly (TraceEnum_ELBO); objective "
                f"{objective.name!r} has no enumerated form here: use --objective elbo or "
                "meanfield"
            )
        schedule = objective.schedule
        if schedule.beta != 1.0 or schedule.warmup != "none":
            raise ConfigError(
                "M2's enumerated ELBO is trained with KL weight 1; drop --beta and --warmup"
            )
        self.model = m2
        self.objective = objective
        self.valid_num_samples = valid_num_samples
        self.alpha = float(kind.alpha)
        self.labelled_weight = float(getattr(kind, "labelled_weight", 1.0))
        labels = data.labels["train"]
        index = choose_labelled(labels, kind.labels_per_class, seed)
        self.labelled_x = data.train[index]
        self.labelled_y = labels[index]
        self.valid_y = data.labels["valid"]
        #: What the run records in config.json: which training points carry their label.
        self.run_record = {"labelled_points": index.tolist()}

    def batch_loss(self, x: torch.Tensor, progress: float, *args: torch.Tensor) -> BatchLoss:
        if self.objective.kl_weight(progress) != 1.0:
            raise ConfigError(
                "M2's enumerated ELBO is trained with KL weight 1; drop --beta and --warmup"
            )
        n = self.labelled_y.numel()
        pick = torch.randint(n, (min(x.shape[0], n),))
        x_l = to_device(self.labelled_x[pick], x.device)
        y_l = to_device(self.labelled_y[pick], x.device)
        if self.model.likelihood.binarize:
            x_l = dynamic_binarize(x_l)
        loss, parts = m2_loss(
            self.model, self.objective, x, x_l, y_l, self.alpha, self.labelled_weight
        )
        # labelled sums are per labelled point once the loop divides by the unlabelled count
        per = x.shape[0] / y_l.shape[0]
        return BatchLoss(
            loss,
            {
                "train_elbo": parts["elbo_unlabelled"],
                "train_labelled_elbo": parts["elbo_labelled"] * per,
                "train_classification_nll": parts["classification_loss"] * per,
                "train_labelled_accuracy": parts["correct"] * per,
            },
        )

    @torch.no_grad()
    def validate(self, valid: torch.Tensor, *args: torch.Tensor) -> dict[str, float]:
        y = self.valid_y.to(valid.device)
        error = float((self.model.classify(valid).argmax(-1) != y).double().mean())
        scores = importance_validation(self.model, valid, self.valid_num_samples)
        return {**scores, "valid_error": error}


register_task("semi_supervised", SemiSupervisedTask)

__all__ = ["SemiSupervisedTask", "choose_labelled"]
