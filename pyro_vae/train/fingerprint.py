"""Data fingerprints: which arrays a run was trained and scored on."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch.utils.data import Dataset

from pyro_vae.data.splits import DataSplits
from pyro_vae.data.streaming import item_tensor, point_blocks
from pyro_vae.errors import DataError

SPLITS = ("train", "valid", "test")


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's shape, dtype and values (row-major bytes), as hex."""
    h = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def dataset_digest(dataset: Dataset, block: int = 1024) -> str:
    """:func:`tensor_digest` of a dataset's items stacked in order, read ``block`` at a time.

    Equals the digest of the same points held as one tensor, so a run trained on a streamed
    file can be checked against the file loaded whole, and vice versa.
    """
    first = item_tensor(dataset[0])
    h = hashlib.sha256(f"{(len(dataset), *first.shape)} {first.dtype}".encode())
    for batch in point_blocks(dataset, block):
        h.update(batch.contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(data: DataSplits) -> dict[str, Any]:
    """``{split: {"size": N, "sha256": hex}}`` for the train, valid and test splits.

    A streamed split (a ``Dataset``) is read once, in blocks, to hash it.
    """
    record = {}
    for split in SPLITS:
        x = getattr(data, split)
        if isinstance(x, torch.Tensor):
            record[split] = {"size": int(x.shape[0]), "sha256": tensor_digest(x)}
        else:
            record[split] = {"size": len(x), "sha256": dataset_digest(x)}
    return record


def check_fingerprint(data: DataSplits, recorded: Any, where: str) -> None:
    """Refuse data whose fingerprint differs from the one a run recorded (``None``: nothing
    recorded, e.g. a run older than fingerprints; nothing to compare)."""
    if recorded is None:
        return
    now = data_fingerprint(data)
    changed = [s for s in SPLITS if not isinstance(recorded, dict) or recorded.get(s) != now[s]]
    if changed:
        raise DataError(
            f"the {', '.join(changed)} data differ from those {where} was trained on (sizes or "
            "sha256 in its config.json); restore the original data, or train a new run on these"
        )
