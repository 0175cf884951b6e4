"""Schedules of training: the KL weight (warm-up, cyclical annealing) and the learning rate.

The KL schedule lives beside the objectives that apply it ([`pyro_vae.infer.objectives`][])
and is re-exported here. Learning-rate schedules are registry entries of
``LR_SCHEDULES``: a function of the (1-based) epoch returning the factor that multiplies
``TrainConfig.lr`` for that whole epoch. A schedule depends on the epoch alone, so a resumed
run continues on it exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro_vae.errors import ConfigError
from pyro_vae.infer.objectives import WARMUPS, KLSchedule

#: Learning-rate schedules by name: epoch (1, 2, ...) -> factor on ``TrainConfig.lr``.
LR_SCHEDULES: dict[str, Callable[[int], float]] = {}


def register_lr_schedule(name: str) -> Callable[[Callable[[int], float]], Callable[[int], float]]:
    """Decorator: register ``fn(epoch) -> factor`` as the learning-rate schedule ``name``."""

    def add(fn: Callable[[int], float]) -> Callable[[int], float]:
        if name in LR_SCHEDULES:
            raise ConfigError(f"a learning-rate schedule named {name!r} is already registered")
        LR_SCHEDULES[name] = fn
        return fn

    return add


@register_lr_schedule("constant")
def constant(epoch: int) -> float:
    """The same rate every epoch: factor 1."""
    return 1.0


#: Stages of Burda et al.'s schedule: 3^0 + ... + 3^7 = 3,280 epochs.
IWAE_STAGES = 8


def iwae_stage(epoch: int) -> int:
    """The stage i of 1-based ``epoch`` under
    [`iwae_stages`][pyro_vae.train.schedules.iwae_stages]: stage i holds 3^i epochs, so epochs 1
    | 2-4 | 5-13 | 14-40 | ... are stages 0 | 1 | 2 | 3 | ... (the first eight stages are 3,280
    epochs)."""
    stage, end = 0, 1
    while epoch > end:
        stage += 1
        end += 3**stage
    return stage


@register_lr_schedule("iwae")
def iwae_stages(epoch: int) -> float:
    """Burda, Grosse & Salakhutdinov (2016), sec. 5: 3^i passes at lr * 10^(-i/7) for
    i = 0..7 (3,280 passes); past those the last stage's rate, lr * 10^-1, holds."""
    return 10.0 ** (-min(iwae_stage(epoch), IWAE_STAGES - 1) / 7)


def learning_rate(lr: float, schedule: str, epoch: int) -> float:
    """The learning rate of 1-based ``epoch``: ``lr * LR_SCHEDULES[schedule](epoch)``."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"unknown learning-rate schedule {schedule!r}; choose one of {sorted(LR_SCHEDULES)}"
        )
    return lr * LR_SCHEDULES[schedule](epoch)


__all__ = [
    "KLSchedule",
    "LR_SCHEDULES",
    "WARMUPS",
    "iwae_stage",
    "iwae_stages",
    "learning_rate",
    "register_lr_schedule",
]
