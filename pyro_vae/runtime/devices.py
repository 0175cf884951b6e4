"""Devices by name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

import re

import torch

from pyro_vae.errors import ConfigError

#: What ``--device`` accepts (``cuda:N`` for any N).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` a name stands for, checked to exist on this machine.

    ``auto`` (or ``None``) is the first of ``cuda`` (the current CUDA device; under torchrun
    ``cuda:LOCAL_RANK``), ``mps``, ``cpu`` that is available. A named device that is not
    available raises :class:`~pyro_vae.errors.ConfigError` with the devices that are.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if not isinstance(name, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(
            f"unknown device {name!r}; use one of auto, cpu, cuda, cuda:N (N a GPU index), mps"
        )
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} asked for, but this torch sees no CUDA GPU; use --device cpu "
                "(or auto), or install a CUDA build of torch"
            )
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} "
                f"CUDA GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available; use --device cpu")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
