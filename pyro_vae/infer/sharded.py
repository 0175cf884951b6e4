"""Per-example estimates over many processes: data points sharded, results gathered in order.

Any estimator whose result is a dataclass of per-example tensors (first dimension = data points),
such as [`log_likelihood`][pyro_vae.infer.importance.log_likelihood],
[`ais_log_likelihood`][pyro_vae.infer.ais.ais_log_likelihood] or
[`inference_gaps`][pyro_vae.infer.gaps.inference_gaps], runs on fixed blocks of ``block_size``
points. Block b is drawn with its own seed (``SeedSequence([seed, b])``) on rank
``b mod world_size``, so the per-example values are the same for any number of processes, one
included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.runtime.distributed import ProcessGroup, all_reduce_sum, current_group


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` under run seed ``seed`` (independent streams per block)."""
    return int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1, np.uint64)[0] >> 1)


def sharded_estimate(
    estimator: Callable[..., Any],
    model: Callable,
    guide: Callable,
    *data: torch.Tensor | Dataset | DataLoader,
    block_size: int = 64,
    seed: int = 0,
    group: ProcessGroup | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> Any:
    """``estimator(model, guide, *data, **kwargs)`` computed block by block over the processes.

    data: tensors sliced together along their first dimension (N data points); or one
    ``Dataset`` (items: a tensor, or a tuple of per-example inputs), read ``block_size`` items
    at a time; or one ``DataLoader``, whose batches are the blocks. Each rank computes the
    blocks ``rank, rank + world_size, ...`` (moved to ``device`` if given); the per-example
    tensors of every block are summed into place over the group (the other ranks contribute
    zeros, so the gather is exact) and every rank returns the full result, in data order.
    Data with no points is refused (``DataError``).
    """
    if kwargs.get("keep_log_weights"):
        raise ConfigError(
            "sharded evaluation gathers per-example results only; drop keep_log_weights or "
            "run in one process"
        )
    if block_size < 1:
        raise ConfigError(f"block_size must be at least 1, got {block_size}")
    group = group or current_group()
    results: list[tuple[int, int, Any]] = []
    n = 0
    for b, (lo, hi, fetch) in enumerate(_blocks(data, block_size)):
        n = hi
        if b % group.world_size != group.rank:
            continue
        inputs = _on(fetch(), device)
        with torch.random.fork_rng(devices=_cuda_devices(inputs)):
            _seed_block(block_seed(seed, b), inputs)
            results.append((lo, hi, estimator(model, guide, *inputs, **kwargs)))
    if n == 0:
        raise DataError(
            "no data points to evaluate; pass a non-empty tensor, Dataset or DataLoader"
        )
    if not results:  # more processes than blocks: this rank still learns the result's shapes
        lo, hi, fetch = next(iter(_blocks(data, block_size)))
        results.append((lo, lo, estimator(model, guide, *_on(fetch(), device), **kwargs)))
    return _gather(results, n)


def _gather(results: list[tuple[int, int, Any]], n: int) -> Any:
    """One result of N points from per-block results (lo, hi, result), summed over ranks.

    A block with ``hi == lo`` contributes nothing (it only gives the result's shapes).
    """
    first = results[0][2]
    gathered = {}
    for field in dataclasses.fields(first):
        value = getattr(first, field.name)
        if not isinstance(value, torch.Tensor):
            continue
        full = None
        for lo, hi, result in results:
            part = getattr(result, field.name)
            if hi > lo and (part.dim() == 0 or part.shape[0] != hi - lo):
                raise ConfigError(
                    f"{type(first).__name__}.{field.name} has shape {tuple(part.shape)} for "
                    f"{hi - lo} points, not per-example; sharded evaluation gathers "
                    "per-example results only"
                )
            if full is None:
                full = part.new_zeros((n, *part.shape[1:]))
            if hi > lo:
                full[lo:hi] = part
        gathered[field.name] = all_reduce_sum(full)
    return dataclasses.replace(first, **gathered)


def _blocks(data: tuple, block_size: int) -> Iterator[tuple[int, int, Callable[[], tuple]]]:
    """(lo, hi, fetch) for consecutive blocks of the data; ``fetch()`` returns the inputs."""
    if len(data) == 1 and isinstance(data[0], DataLoader):
        lo = 0
        for batch in data[0]:
            inputs = _as_inputs(batch)
            hi = lo + inputs[0].shape[0]
            yield lo, hi, (lambda inputs=inputs: inputs)
            lo = hi
        return
    if len(data) == 1 and isinstance(data[0], Dataset) and not isinstance(data[0], torch.Tensor):
        dataset = data[0]
        n = len(dataset)
        for lo in range(0, n, block_size):
            hi = min(n, lo + block_size)
            yield (
                lo,
                hi,
                (
                    lambda lo=lo, hi=hi: _as_inputs(
                        default_collate([dataset[i] for i in range(lo, hi)])
                    )
                ),
            )
        return
    if not data or not all(isinstance(d, torch.Tensor) for d in data):
        raise ConfigError(
            "pass the data as tensors (N, ...), one torch Dataset or one DataLoader after the guide"
        )
    n = data[0].shape[0]
    if any(d.shape[0] != n for d in data):
        raise ConfigError(
            f"data tensors have different numbers of points {[d.shape[0] for d in data]}; "
            "slice them to the same N"
        )
    for lo in range(0, n, block_size):
        hi = min(n, lo + block_size)
        yield lo, hi, (lambda lo=lo, hi=hi: tuple(d[lo:hi] for d in data))


def _as_inputs(batch: Any) -> tuple[torch.Tensor, ...]:
    """A batch as the estimator's positional inputs: a tensor, or a tuple/list of tensors."""
    inputs = tuple(batch) if isinstance(batch, tuple | list) else (batch,)
    if not all(isinstance(v, torch.Tensor) for v in inputs):
        raise ConfigError(
            "dataset items must be tensors or tuples of tensors (x, labels, ...); convert them "
            "in the dataset's __getitem__ or the loader's collate_fn"
        )
    return inputs


def _on(inputs: tuple[torch.Tensor, ...], device) -> tuple[torch.Tensor, ...]:
    return inputs if device is None else tuple(v.to(device) for v in inputs)


def _seed_block(seed: int, inputs: tuple[torch.Tensor, ...]) -> None:
    """Seed the generators a block's draws use, and no others: the CPU's, each CUDA device
    holding one of the inputs (those ``fork_rng`` saved, so the caller gets them back as they
    were), and any other accelerator (``mps``) holding one. ``torch.manual_seed`` would also
    reseed every GPU the block does not use, whose state no fork saved."""
    torch.random.default_generator.manual_seed(seed)
    for index in _cuda_devices(inputs):
        with torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
    for kind in sorted({v.device.type for v in inputs} - {"cpu", "cuda"}):
        seed_device = getattr(getattr(torch, kind, None), "manual_seed", None)
        if seed_device is not None:  # mps, xpu (``meta`` has no generator)
            seed_device(seed)


def _cuda_devices(data: tuple[torch.Tensor, ...]) -> list[int]:
    return sorted({d.device.index or 0 for d in data if d.device.type == "cuda"})
