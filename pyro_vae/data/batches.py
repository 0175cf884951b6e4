"""Training batches of one epoch, from a tensor in memory or a streamed ``Dataset``.

One order for both: a permutation of the N training points, from torch's global generator in
one process (so a run's batches follow from its seed and resume continues them), or, with
several processes, ``DistributedSampler``'s rule: a permutation seeded by ``seed + epoch``,
padded to a multiple of the world size, every ``world_size``-th index from ``rank``. A tensor
is indexed directly; a ``Dataset`` goes through a ``DataLoader`` with that order (workers,
pinned memory). Batches arrive on ``device`` (non-blocking copies from pinned memory).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from pyro_vae.data.streaming import collate_points, point_blocks
from pyro_vae.runtime.devices import to_device
from pyro_vae.runtime.distributed import ProcessGroup


def epoch_order(n: int, epoch: int, seed: int, group: ProcessGroup) -> torch.Tensor:
    """Indices of this process's training points for ``epoch``, in batch order: (n_rank,).

    One process: ``torch.randperm(n)`` from the global generator. Several: the permutation
    of ``torch.Generator().manual_seed(seed + epoch)``, padded by wrapping to a multiple of
    the world size and strided by rank, as ``torch.utils.data.DistributedSampler`` does, so
    every rank takes the same number of steps.
    """
    if not group.distributed:
        return torch.randperm(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    total = math.ceil(n / group.world_size) * group.world_size
    perm = torch.cat([perm, perm[: total - n]]) if total > n else perm
    return perm[group.rank :: group.world_size]


def num_points(train: torch.Tensor | Dataset) -> int:
    """N, the number of training points of a tensor or a dataset."""
    return train.shape[0] if isinstance(train, torch.Tensor) else len(train)


def epoch_batches(
    train: torch.Tensor | Dataset,
    batch_size: int,
    order: torch.Tensor,
    device: torch.device | None = None,
    *,
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Batches ``(b, *event_shape)`` of ``train`` taken in ``order``, ``batch_size`` at a time.

    The last batch may be shorter. A ``Dataset`` is read by a ``DataLoader`` over the same
    order (``num_workers`` reader processes; pinned memory when the device is CUDA).
    """
    device = device or torch.device("cpu")
    if isinstance(train, torch.Tensor):
        for i in range(0, order.numel(), batch_size):
            yield to_device(train[order[i : i + batch_size]], device)
        return
    loader = DataLoader(
        train,
        batch_size=batch_size,
        sampler=order.tolist(),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_points,
        # its own generator: drawing the workers' base seed must not advance the global
        # stream, or a streamed run's latent noise would differ from an in-memory run's
        generator=torch.Generator(),
    )
    for x in loader:
        yield to_device(x, device)


def first_points(split: torch.Tensor | Dataset, n: int) -> torch.Tensor:
    """The first ``n`` points of a split as one tensor ``(min(n, N), *event_shape)``."""
    if isinstance(split, torch.Tensor):
        return split[:n]
    return torch.cat(list(point_blocks(split, limit=n)))
