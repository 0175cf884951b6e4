"""Random-number state: capture and restore every generator training draws from.

Training draws minibatch orders, binarizations and latent samples from torch's global
generator (and, for tensors on a GPU, from each CUDA device's generator); Python's ``random``
and NumPy's global generator are captured too, so a resumed run continues the very same random
stream as an uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import CheckpointError


def get_rng_state() -> dict[str, Any]:
    """The state of torch's, Python's and NumPy's global generators, as checkpoint-safe values.

    Only tensors, numbers, strings, lists and dicts: ``torch.load(weights_only=True)`` reads it.
    """
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from [`get_rng_state`][pyro_vae.train.rng.get_rng_state]'s output."""
    try:
        torch.set_rng_state(state["torch"])
        version, mt, gauss = state["python"]
        if any(not 0 <= int(v) < 2**32 for v in mt):  # setstate would keep the low 32 bits
            raise ValueError("the Python state holds values outside [0, 2**32)")
        random.setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        keys = keys.numpy()
        if keys.size and (keys.min() < 0 or keys.max() >= 2**32):
            # get_rng_state writes NumPy's uint32 key; a value outside it is not a key
            raise ValueError("the NumPy key holds values outside [0, 2**32)")
        np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
        cuda = state.get("cuda")
        if cuda is not None:
            if not torch.cuda.is_available() or torch.cuda.device_count() < len(cuda):
                raise CheckpointError(
                    f"the checkpoint holds the random state of {len(cuda)} CUDA device(s) and "
                    "this machine has fewer, so the run cannot continue identically; resume it "
                    "on a machine with that many GPUs, or start a new run"
                )
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint's random-number state is unreadable ({exc}); it is corrupted, "
            "restart the run with --overwrite"
        ) from exc
