"""Training in several processes: the loss as a module for ``DistributedDataParallel``.

Each process holds a replica of the model and draws its own batches (a disjoint shard, see
[`epoch_order`][pyro_vae.data.batches.epoch_order]) and its own latent noise (a per-rank seed). DDP
averages the gradients over the processes during ``backward``; with equal per-rank batch
sizes b, that is the gradient of the mean loss over the union of the ranks' batches:

    (1/W) sum_r grad [L_r / b] = grad [sum_r L_r / (W b)]

so W processes at batch size b take the step one process would take at batch size W b with the same
points and noise. The model's own methods (``model``/``guide``) are Pyro programs, not ``forward``:
DDP only sees the parameters through [`LossModule`][pyro_vae.train.parallel.LossModule]'s forward,
which is all it needs to synchronize them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.errors import ConfigError
from pyro_vae.runtime.distributed import (
    ProcessGroup,
    all_gather,
    all_reduce_sum,
    current_group,
)


class LossModule(nn.Module):
    """``forward(x)`` is ``loss_fn(x)``: the training objective of ``model`` on a batch.

    model: the module whose parameters are trained (registered here so DDP sees them).
    loss_fn: ``x -> (loss, reported)``, loss a differentiable scalar.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, *args: Any) -> Any:
        return self.loss_fn(x, *args)


def replicate(module: LossModule, group: ProcessGroup, device: torch.device) -> nn.Module:
    """``module`` itself in one process, else wrapped in ``DistributedDataParallel``.

    DDP broadcasts rank 0's parameters and buffers at construction, so every replica starts
    from the same weights whatever each process initialized.
    """
    if not group.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s latent noise: ``seed`` on rank 0, distinct on the others."""
    return int(seed) + 1_000_003 * int(rank)


#: ``--precision`` choices: float32 throughout, or autocast to bfloat16 / float16 in training.
PRECISIONS = ("32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, or float16 off a GPU (it needs loss scaling on CUDA)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"--precision fp16 needs a CUDA device, got {device}; use --precision bf16 or 32"
        )


@dataclass
class Engine:
    """Where and how training steps run: device, processes, precision and data loading.

    ``module`` is the loss module, replicated with DDP across processes; ``precision``
    ``bf16``/``fp16`` runs each step's forward pass under ``torch.autocast`` (float16 with
    a gradient scaler). Validation and every reported log-likelihood run outside autocast,
    in float32.
    """

    module: nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: ProcessGroup = field(default_factory=ProcessGroup)
    precision: str = "32"
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_precision(self.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        loss_fn: Callable[..., Any],
        device: torch.device,
        precision: str = "32",
        num_workers: int = 0,
    ) -> Engine:
        """The engine of ``model`` in this process's group (DDP when there are several)."""
        group = current_group()
        module = replicate(LossModule(model, loss_fn), group, device)
        return cls(module, device, group, precision, num_workers)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision context (a no-op at ``32``)."""
        if self.precision == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision])

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()``, scaled for float16; gradients are unscaled before returning."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` (through the scaler for float16, which skips overflowed steps)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Sum each value over the processes (unchanged in one process)."""
        if not self.group.distributed:
            return values
        keys = sorted(values)
        packed = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        all_reduce_sum(packed)
        return dict(zip(keys, packed.tolist(), strict=True))


class ReadOnlyRun:
    """A run's files as ranks other than 0 see them: they read the checkpoint, write nothing."""

    def __init__(self, run: Any):
        self.run = run

    def __str__(self) -> str:
        return str(self.run)

    def has_checkpoint(self) -> bool:
        return self.run.has_checkpoint()

    def load_checkpoint(self) -> dict[str, Any]:
        return self.run.load_checkpoint()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Rank 0 writes the checkpoint."""

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rank 0 writes the metrics."""

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Rank 0 writes the metrics."""

    def record_config(self, updates: dict[str, Any], defaults: dict[str, Any]) -> None:
        """Rank 0 writes config.json."""


def gather_rng_states(group: ProcessGroup) -> list[torch.Tensor]:
    """Every rank's torch generator state, in rank order (all ranks receive all)."""
    state = torch.get_rng_state()
    if not group.distributed:
        return [state]
    return all_gather(state)
