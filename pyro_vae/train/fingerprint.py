"""Data fingerprints: which arrays a run was trained and scored on, and that every process of
a ``torchrun`` job holds the same ones."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from pyro_vae.data.splits import DataSplits
from pyro_vae.data.streaming import item_tensor, point_blocks
from pyro_vae.errors import DataError
from pyro_vae.runtime.distributed import ProcessGroup, all_gather, current_group

SPLITS = ("train", "valid", "test")


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's shape, dtype and values (row-major bytes), as hex."""
    h = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


#: ``check(block, first)``: refuses a block of points ``(n, *event_shape)`` whose first point is
#: point ``first`` of its split, naming the point (see
#: [`data_fingerprint`][pyro_vae.train.fingerprint.data_fingerprint]).
BlockCheck = Callable[[torch.Tensor, int], None]


def dataset_digest(dataset: Dataset, block: int = 1024, check: BlockCheck | None = None) -> str:
    """[`tensor_digest`][pyro_vae.train.fingerprint.tensor_digest] of a dataset's items stacked in
    order, read ``block`` at a time.

    Equals the digest of the same points held as one tensor, so a run trained on a streamed
    file can be checked against the file loaded whole, and vice versa. ``check`` sees every
    block as it is read.
    """
    first = item_tensor(dataset[0])
    h = hashlib.sha256(f"{(len(dataset), *first.shape)} {first.dtype}".encode())
    for i, batch in enumerate(point_blocks(dataset, block)):
        if check is not None:
            check(batch, i * block)
        h.update(batch.contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(data: DataSplits, check_streamed: BlockCheck | None = None) -> dict[str, Any]:
    """``{split: {"size": N, "sha256": hex}}`` for the train, valid and test splits.

    A streamed split (a ``Dataset``) is read once, in blocks, to hash it; ``check_streamed``
    checks each of its blocks on that one pass (so a NaN in the middle of a streamed file is
    found before training, not at its step).
    """
    record = {}
    for split in SPLITS:
        x = getattr(data, split)
        if isinstance(x, torch.Tensor):
            record[split] = {"size": int(x.shape[0]), "sha256": tensor_digest(x)}
        else:
            record[split] = {"size": len(x), "sha256": dataset_digest(x, check=check_streamed)}
    return record


def check_same_data_on_every_rank(
    fingerprint: dict[str, Any], group: ProcessGroup | None = None
) -> None:
    """Refuse, on every rank of a ``torchrun`` job, data that differ between the ranks.

    Each rank's [`data_fingerprint`][pyro_vae.train.fingerprint.data_fingerprint] (sizes and sha256
    of each split) is gathered; when a rank's differs from rank 0's, every rank raises the same
    [`DataError`][pyro_vae.errors.DataError] naming the ranks and splits that differ. A no-op in one
    process.
    """
    group = group or current_group()
    if not group.distributed:
        return
    digests = [hashlib.sha256(repr(fingerprint.get(split)).encode()).digest() for split in SPLITS]
    mine = torch.tensor([list(d) for d in digests], dtype=torch.int64)
    every = all_gather(mine)
    ranks = [r for r, other in enumerate(every) if not torch.equal(other, every[0])]
    if ranks:
        splits = sorted(
            {
                SPLITS[i]
                for r in ranks
                for i in range(len(SPLITS))
                if not torch.equal(every[r][i], every[0][i])
            },
            key=SPLITS.index,
        )
        raise DataError(
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of "
            f"{group.world_size} hold{'' if len(ranks) > 1 else 's'} {' and '.join(splits)} data "
            "that differ from rank 0's (sizes or sha256); give every process the same data set "
            "(the same files at the same paths on every machine)"
        )


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
