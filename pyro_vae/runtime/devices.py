"""Devices by name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

import os
import re
from pathlib import Path

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
    available raises [`ConfigError`][pyro_vae.errors.ConfigError] with the devices that are.
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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: a copy to a CUDA device does not block the host
    (``non_blocking``; the GPU's stream orders it before the kernels that read it); any other
    copy does, since a copy from a GPU into host memory that did not block could be read by
    the host before it is complete."""
    return tensor.to(device, non_blocking=device.type == "cuda")


#: Cache size assumed where the operating system does not report one (bytes).
DEFAULT_CACHE_BYTES = 1 << 20


def cache_bytes(level: int = 2) -> int:
    """Bytes of one core's data cache at ``level`` (1, 2 or 3), as the system reports it.

    Read from ``os.sysconf`` (Linux, glibc) or ``/sys/devices/system/cpu/cpu0/cache``;
    ``DEFAULT_CACHE_BYTES`` where neither says.
    """
    name = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE", 3: "SC_LEVEL3_CACHE_SIZE"}
    try:
        size = int(os.sysconf(name[level]))
    except (KeyError, ValueError, OSError, AttributeError):
        size = 0
    if size > 0:
        return size
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) != level:
                continue
            if (index / "type").read_text().strip() not in ("Data", "Unified"):
                continue
            text = (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            return int(text.rstrip("KMG")) * scale
        except (OSError, ValueError):
            continue
    return DEFAULT_CACHE_BYTES
