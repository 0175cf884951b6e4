"""Processes: one per device, started by ``torchrun``; rank 0 is the one that writes files.

With ``torchrun --nproc_per_node=N -m pyro_vae train ...`` each process reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address from its environment;
[`init_from_environment`][pyro_vae.runtime.distributed.init_from_environment] joins the group (NCCL
on CUDA, gloo on CPU). Without those variables everything here describes a group of one process, so
single-process code needs no special case.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pyro_vae.errors import ConfigError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the training processes.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 alone writes checkpoints, metrics and figures.
        world_size: number of processes.
        local_rank: index of this process on its machine (its GPU index under torchrun).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op in a group of one)."""
        if self.distributed:
            dist.barrier()

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (e.g. a run name with rank 0's clock in it)."""
        if not self.distributed:
            return text
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)
        size = torch.tensor([data.numel()]) if self.is_main else torch.zeros(1, dtype=torch.int64)
        _broadcast(size)
        buffer = data if self.is_main else torch.zeros(int(size), dtype=torch.int64)
        _broadcast(buffer)
        return bytes(buffer.tolist()).decode("utf-8")

    def shard(self, n: int) -> range:
        """The items ``0..n-1`` this rank handles: every ``world_size``-th from ``rank``."""
        return range(self.rank, n, self.world_size)


def current_group() -> ProcessGroup:
    """The initialized torch.distributed group as a
    [`ProcessGroup`][pyro_vae.runtime.distributed.ProcessGroup] (one process if none)."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
        )
    return ProcessGroup()


def init_from_environment(device: torch.device) -> ProcessGroup:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Backend: NCCL when ``device`` is CUDA, gloo otherwise. Returns the group (of one process
    when ``WORLD_SIZE`` is unset or 1). Idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_group()
    if not dist.is_available():
        raise ConfigError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process"
        )
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError(
            "WORLD_SIZE is set but MASTER_ADDR is not; start the processes with torchrun "
            "(e.g. torchrun --nproc_per_node=2 -m pyro_vae train ...)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seconds = rendezvous_timeout()
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as exc:  # DistStoreError and gloo's timeouts among them
        where = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '?')}"
        raise ConfigError(
            f"rank {os.environ.get('RANK', '?')} of {world} found no group at the rendezvous "
            f"{where} within {seconds:g} s ({_first_line(exc)}); start every process (torchrun "
            f"--nproc_per_node, --nnodes), or wait longer with {TIMEOUT_VARIABLE}=SECONDS"
        ) from exc
    global _JOINED
    _JOINED = True
    return current_group()


#: Whether [`init_from_environment`][pyro_vae.runtime.distributed.init_from_environment] created the
#: default group (then it may leave it).
_JOINED = False

#: The environment variable that bounds the wait for every process at the rendezvous (and
#: for each collective afterwards), in seconds.
TIMEOUT_VARIABLE = "PYRO_VAE_RENDEZVOUS_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def rendezvous_timeout() -> float:
    """Seconds to wait for the other processes (``TIMEOUT_VARIABLE``, default 600)."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 7 * 24 * 3600:
        raise ConfigError(
            f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds above 0 and below a week; "
            "set it like 120"
        )
    return seconds


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def close_group(wait: bool = True) -> None:
    """Destroy the current process group, whoever created it, so that its threads end here.

    With ``wait`` the ranks first meet at a barrier, so none closes its connections while
    another still uses them. Closing explicitly matters: a gloo group left to the
    interpreter's teardown can abort the process at exit ("terminate called without an
    active exception", SIGABRT) after the work is done. The objects that still hold the group
    (a ``DistributedDataParallel`` replica and its reducer, kept alive by reference cycles
    until the interpreter's last collection) are collected first, so the group's threads are
    joined here, by its own destructor, not during teardown. A no-op where no group is
    initialized.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait:
            dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def leave_group(wait: bool = True) -> None:
    """Leave the process group
    [`init_from_environment`][pyro_vae.runtime.distributed.init_from_environment] joined, if it did,
    by [`close_group`][pyro_vae.runtime.distributed.close_group]; a group the caller created is
    left alone."""
    global _JOINED
    if not _JOINED:
        return
    try:
        close_group(wait)
    finally:
        _JOINED = False


def collective_device() -> torch.device:
    """Where collectives run: the current CUDA device for NCCL, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast(value: torch.Tensor) -> None:
    """Rank 0's ``value`` into ``value`` on every rank (in place)."""
    moved = value.to(collective_device())
    dist.broadcast(moved, src=0)
    if moved is not value:
        value.copy_(moved)


def all_gather(value: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``value`` (same shape and dtype on each), in rank order, on every rank;
    ``[value]`` in a group of one. The tensors come back on ``value``'s device."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    on = collective_device()
    parts = [torch.empty_like(value, device=on) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, value.to(on))
    return [p.to(value.device) for p in parts]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum ``value`` over every process (in place, returned); unchanged in a group of one.

    gloo reduces CPU tensors and NCCL CUDA tensors: the tensor is moved for the reduction
    and back.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    on = (
        torch.device("cuda", torch.cuda.current_device())
        if (dist.get_backend() == "nccl")
        else torch.device("cpu")
    )
    moved = value.to(on)
    dist.all_reduce(moved)
    if moved is not value:
        value.copy_(moved)
    return value
