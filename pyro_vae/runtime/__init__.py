"""Where the numbers are computed: devices and processes (torch.distributed).

The bottom layer beside [`pyro_vae.errors`][]: every layer above may ask which device to use
and which rank it is, and nothing here imports the rest of the library.
"""

from pyro_vae.runtime.devices import DEVICE_CHOICES, resolve_device
from pyro_vae.runtime.distributed import (
    ProcessGroup,
    all_reduce_sum,
    close_group,
    current_group,
    init_from_environment,
    leave_group,
)

__all__ = [
    "DEVICE_CHOICES",
    "resolve_device",
    "ProcessGroup",
    "all_reduce_sum",
    "close_group",
    "current_group",
    "init_from_environment",
    "leave_group",
]
