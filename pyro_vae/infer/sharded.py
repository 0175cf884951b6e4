"""Per-example estimates over many processes: data points sharded, results gathered in order.

Any estimator whose result is a dataclass of per-example tensors (first dimension = data
points), such as :func:`~pyro_vae.infer.importance.log_likelihood`,
:func:`~pyro_vae.infer.ais.ais_log_likelihood` or :func:`~pyro_vae.infer.gaps.inference_gaps`,
runs on fixed blocks of ``block_size`` points. Block b is drawn with its own seed
(``SeedSequence([seed, b])``) on rank ``b mod world_size``, so the per-example values are the
same for any number of processes, one included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.runtime.distributed import ProcessGroup, all_reduce_sum, current_group


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` under run seed ``seed`` (independent streams per block)."""
    return int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1, np.uint64)[0] >> 1)


def sharded_estimate(
    estimator: Callable[..., Any],
    model: Callable,
    guide: Callable,
    *data: torch.Tensor,
    block_size: int = 64,
    seed: int = 0,
    group: ProcessGroup | None = None,
    **kwargs: Any,
) -> Any:
    """``estimator(model, guide, *data, **kwargs)`` computed block by block over the processes.

    data: tensors sliced together along their first dimension (N data points). Each rank
    computes the blocks ``rank, rank + world_size, ...``; the per-example tensors of every
    block are summed into place over the group (the other ranks contribute zeros, so the
    gather is exact) and every rank returns the full result, in data order.
    """
    if kwargs.get("keep_log_weights"):
        raise ConfigError(
            "sharded evaluation gathers per-example results only; drop keep_log_weights or "
            "run in one process"
        )
    if not data or not all(isinstance(d, torch.Tensor) for d in data):
        raise ConfigError("sharded_estimate needs the data as tensors (N, ...) after the guide")
    n = data[0].shape[0]
    if any(d.shape[0] != n for d in data):
        raise ConfigError(
            f"data tensors have different numbers of points {[d.shape[0] for d in data]}; "
            "slice them to the same N"
        )
    if block_size < 1:
        raise ConfigError(f"block_size must be at least 1, got {block_size}")
    group = group or current_group()
    num_blocks = math.ceil(n / block_size)
    mine = list(group.shard(num_blocks))
    results: dict[int, Any] = {}
    for b in mine or [0]:  # a rank without blocks still learns the result's shapes
        lo, hi = b * block_size, min(n, (b + 1) * block_size)
        with torch.random.fork_rng(devices=_cuda_devices(data)):
            torch.manual_seed(block_seed(seed, b))
            results[b] = estimator(model, guide, *(d[lo:hi] for d in data), **kwargs)
    first_block, first = next(iter(results.items()))
    rows = min(n, (first_block + 1) * block_size) - first_block * block_size
    gathered = {}
    for field in dataclasses.fields(first):
        value = getattr(first, field.name)
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 0 or value.shape[0] != rows:
            raise ConfigError(
                f"{type(first).__name__}.{field.name} has shape {tuple(value.shape)}, not "
                "per-example; sharded evaluation gathers per-example results only"
            )
        full = torch.zeros((n, *value.shape[1:]), dtype=value.dtype, device=value.device)
        for b in mine:
            lo, hi = b * block_size, min(n, (b + 1) * block_size)
            full[lo:hi] = getattr(results[b], field.name)
        gathered[field.name] = all_reduce_sum(full)
    return dataclasses.replace(first, **gathered)


def _cuda_devices(data: tuple[torch.Tensor, ...]) -> list[int]:
    return sorted({d.device.index or 0 for d in data if d.device.type == "cuda"})
