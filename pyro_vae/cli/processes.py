"""The processes of a ``torchrun`` job: a command joins their group and leaves it at the end."""

from __future__ import annotations


def join_processes(device: str):
    """This process's group: under ``torchrun`` (``WORLD_SIZE`` > 1) join it on ``device``'s
    backend (NCCL for CUDA, gloo otherwise); a group of one otherwise."""
    from pyro_vae.runtime import init_from_environment, resolve_device

    return init_from_environment(resolve_device(device))


def leave_processes(wait: bool) -> None:
    """Leave a torchrun process group this command joined (the ranks meet first)."""
    from pyro_vae.runtime.distributed import leave_group

    leave_group(wait=wait)
