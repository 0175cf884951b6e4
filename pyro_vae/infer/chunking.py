"""How many importance samples to draw per pass: sized from bytes, not from a point count.

One pass of an estimator evaluates ``particles x batch`` samples (rows) at once. Larger passes
amortize the per-pass cost (tracing, Python) and feed the matrix products more rows; but every
intermediate tensor of a pass grows with its rows, and once a pass's tensors outgrow the processor's
cache (or a fresh allocation must be faulted in page by page) each elementwise operation runs at
memory speed. The chunk is therefore chosen from the bytes of memory one sample makes, measured on
small probe passes ([`bytes_per_sample`][pyro_vae.infer.chunking.bytes_per_sample]), so that a
pass's new tensors add up to about ``PASS_BYTES``, never fewer than ``MIN_ROWS`` rows (a matrix
product needs rows to reach its rate) and never more than ``MEMORY_BYTES``. A pass that works in
cache-sized tiles of its own (the library's MLP decoder, [`pyro_vae.models.mlp_bernoulli`][]) makes
little memory per sample and gets long passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from pyro_vae.infer.trace import log_weights

#: Bytes of new tensors one pass should make (all of them, freed or not; a pass's working
#: set at any moment is a fraction of it): measured best on a 2-core Xeon for the traced
#: MLP and digits models (benchmarks/RESULTS.md).
PASS_BYTES = 32 * 2**20
#: Fewest rows (particles x batch) per pass while the memory bound allows them.
MIN_ROWS = 512
#: Most bytes of tensors one pass may produce, whatever else asks for more.
MEMORY_BYTES = 256 * 2**20
#: Chunks of at least this many particles are rounded down to a multiple of it: a CPU
#: generator fills normal draws 16 at a time, so such chunks draw the same numbers as one
#: pass over all particles would, and an estimate does not depend on the chunking.
ALIGN = 16


class _CountBytes(TorchFunctionMode):
    """Adds up the bytes of the memory that torch functions allocate while active: each
    tensor a function returns, unless it shares memory with a tensor the function was given
    (a view, an in-place method such as ``exp_``, an ``out=`` argument) or with another it
    returns."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {_storage(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            where = _storage(t)
            if where not in seen:
                seen.add(where)
                self.total += t.untyped_storage().nbytes()
        return out


def _tensors(tree: object) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, tuple | list):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _storage(t: torch.Tensor) -> tuple[int, str]:
    return t.untyped_storage().data_ptr(), str(t.device)


def bytes_per_sample(
    run: Callable[[int], torch.Tensor],
    batch: int,
    probe: int = 2,
    device: torch.device | None = None,
) -> float:
    """Bytes of memory one particle-sample makes in a pass, measured by running it.

    ``run(k)`` evaluates ``k`` particles for ``batch`` data points (e.g. the log weights of
    a probe batch). It runs with ``probe``, ``2 * probe`` and again ``probe`` particles,
    under ``torch.no_grad`` and a forked random state (of the CPU and of ``device``), so the
    caller's random stream is unchanged. The figure is the growth from the smaller of the
    ``probe`` runs to the ``2 * probe`` run, over ``probe * batch``: what a pass makes once
    whatever its particles (the encoder's output), or only on a first call (a cache), is
    not charged to every sample. Each new tensor's memory counts once, freed or not; views,
    in-place steps and ``out=`` arguments make none (``_CountBytes``); so the figure
    bounds from above what a pass's steps allocate per sample.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    totals = []
    for k in (probe, 2 * probe, probe):
        with torch.random.fork_rng(devices=devices), torch.no_grad(), _CountBytes() as counter:
            run(k)
        totals.append(counter.total)
    growth = totals[1] - min(totals[0], totals[2])
    return max(1.0, growth / (probe * max(1, batch)))


def particle_chunk(
    sample_bytes: float,
    batch: int,
    num_samples: int,
    pass_bytes: int = PASS_BYTES,
    min_rows: int = MIN_ROWS,
    memory_bytes: int = MEMORY_BYTES,
    max_rows: int | None = None,
) -> int:
    """Particles per pass for ``batch`` data points, each particle-sample producing
    ``sample_bytes`` bytes.

    Rows (particles x batch) are ``pass_bytes / sample_bytes``, raised to ``min_rows``,
    lowered to ``memory_bytes / sample_bytes`` and to ``max_rows``; the particles are at
    least 1, at most ``num_samples``, and a multiple of ``ALIGN`` when at least that.
    """
    rows = max(pass_bytes / sample_bytes, float(min_rows))
    rows = min(rows, memory_bytes / sample_bytes)
    if max_rows is not None:
        rows = min(rows, float(max_rows))
    chunk = int(rows // max(1, batch))
    if chunk >= ALIGN:
        chunk -= chunk % ALIGN
    return min(max(1, chunk), num_samples)


def sized_particle_chunk(
    model: Callable,
    guide: Callable,
    probe: tuple,
    batch: int,
    num_samples: int,
    log_weights_fn: Callable[..., torch.Tensor] | None = None,
    max_rows: int | None = None,
    **kwargs,
) -> int:
    """The particle chunk of
    [`pyro_vae.infer.log_likelihood`][pyro_vae.infer.importance.log_likelihood] for passes over
    ``batch`` points: [`particle_chunk`][pyro_vae.infer.chunking.particle_chunk] of the bytes per
    sample ([`bytes_per_sample`][pyro_vae.infer.chunking.bytes_per_sample]) of probe passes of
    the log weights on the ``probe`` data (``log_weights_fn`` when given, else the traced
    [`log_weights`][pyro_vae.infer.trace.log_weights] with ``kwargs``), at most ``max_rows``
    rows."""
    x, rest = probe[0], probe[1:]

    def run(k: int) -> torch.Tensor:
        if log_weights_fn is not None:
            return log_weights_fn(x, k, *rest)
        return log_weights(model, guide, x, k, *rest, **kwargs)

    sample_bytes = bytes_per_sample(run, x.shape[0], device=x.device)
    return particle_chunk(sample_bytes, batch, num_samples, max_rows=max_rows)
