"""Training in several processes: the loss as a module for ``DistributedDataParallel``.

Each process holds a replica of the model and draws its own batches (a disjoint shard, see
:func:`~pyro_vae.data.batches.epoch_order`) and its own latent noise (a per-rank seed). DDP
averages the gradients over the processes during ``backward``; with equal per-rank batch
sizes b, that is the gradient of the mean loss over the union of the ranks' batches:

    (1/W) sum_r grad [L_r / b] = grad [sum_r L_r / (W b)]

so W processes at batch size b take the step one process would take at batch size W b with
the same points and noise. The model's own methods (``model``/``guide``) are Pyro programs,
not ``forward``: DDP only sees the parameters through :class:`LossModule`'s forward, which is
all it needs to synchronize them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.runtime.distributed import ProcessGroup


class LossModule(nn.Module):
    """``forward(x)`` is ``loss_fn(x)``: the training objective of ``model`` on a batch.

    model: the module whose parameters are trained (registered here so DDP sees them).
    loss_fn: ``x -> (loss, reported)``, loss a differentiable scalar.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor) -> Any:
        return self.loss_fn(x)


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
