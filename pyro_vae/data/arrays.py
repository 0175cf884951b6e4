"""Readers of in-memory data: the embedded 8x8 digits and users' ``.npy``/``.npz`` array files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.files import check_regular_file
from pyro_vae.data.splits import SPLIT_SEED, DataSplits, split_indices
from pyro_vae.errors import DataError


def load_digits() -> DataSplits:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn).

    Scaled from 0..16 to [0, 1], shape (N, 1, 8, 8); fixed split 1,437 / 180 / 180.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    tr, va, te = split_indices(x.shape[0])
    return DataSplits(
        "digits", x[tr], x[va], x[te], labels={"train": y[tr], "valid": y[va], "test": y[te]}
    )


def _as_float(array: np.ndarray, source: str) -> torch.Tensor:
    if array.dtype.kind == "c":
        # float32(complex) keeps only the real part: a silently different data set
        raise DataError(
            f"{source}: array dtype {array.dtype} is complex; save the part to model "
            "(array.real, array.imag or numpy.abs(array)) as a real array"
        )
    if array.dtype.kind not in "uif":
        raise DataError(f"{source}: array dtype {array.dtype} is not numeric; save a numeric array")
    if array.ndim < 2:
        raise DataError(
            f"{source}: array has shape {array.shape}; need (N, features...) with one row per "
            "data point"
        )
    x = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if array.dtype == np.uint8:
        x = x / 255.0  # 8-bit pixels -> [0, 1]
    return x


_SPLIT_KEYS = {
    "train": ("train", "x_train"),
    "valid": ("valid", "val", "validation", "x_valid", "x_val"),
    "test": ("test", "x_test"),
}
_LABEL_KEYS = {
    "all": ("y", "labels"),
    "train": ("y_train", "labels_train"),
    "valid": ("y_valid", "y_val", "labels_valid", "labels_val"),
    "test": ("y_test", "labels_test"),
}


def _as_labels(array: np.ndarray, n: int, key: str, source: str) -> torch.Tensor:
    if array.ndim != 1 or array.shape[0] != n or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{source}: labels {key!r} have shape {array.shape} and dtype {array.dtype}; need "
            f"{n} integers, one per data point"
        )
    return torch.as_tensor(array, dtype=torch.long)


def _has_numpy_header(path: Path) -> bool:
    """True when the file starts like a ``.npy`` (magic string) or an ``.npz`` (a zip)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x93NUMPY", b"PK\x03\x04"))


def load_array_file(path: str | Path) -> DataSplits:
    """A user's ``.npy`` (one array, split 80/10/10) or ``.npz`` file.

    An ``.npz`` with ``train`` (or ``x_train``) and optionally ``valid``/``val`` and ``test``
    keys uses those splits (a missing one is cut from train); an ``.npz`` with a single array
    is split like an ``.npy``. ``uint8`` arrays are scaled from 0..255 to [0, 1].
    Integer labels (used by the figures only) come from ``y``/``labels`` next to a single
    array, or ``y_train``/``y_valid``/``y_test`` next to named splits.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise DataError(
            f"data file {str(path)!r} is not .npy or .npz; save the array with numpy.save/savez"
        )
    check_regular_file(path)
    try:
        # allow_pickle=False: an object array would be unpickled, which runs the file's code
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {"x": loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except ValueError as exc:
        if "allow_pickle" not in str(exc) or not _has_numpy_header(path):
            # numpy takes any file without its header for a pickle: say what it really is
            raise DataError(
                f"cannot read {str(path)!r} as a numpy file (no .npy/.npz header); re-save it "
                "with numpy.save/savez"
            ) from exc
        raise DataError(
            f"{str(path)!r} holds a pickled (object) array, which is never loaded because "
            "unpickling runs code; save numeric arrays with numpy.save/savez"
        ) from None
    except Exception as exc:  # numpy raises several types for unreadable files
        raise DataError(f"cannot read {str(path)!r} as a numpy file ({exc}); re-save it") from exc
    name = path.stem
    label_arrays = {
        split: next((arrays.pop(k) for k in keys if k in arrays), None)
        for split, keys in _LABEL_KEYS.items()
    }
    found = {
        split: next((arrays[k] for k in keys if k in arrays), None)
        for split, keys in _SPLIT_KEYS.items()
    }
    if found["train"] is None:
        if len(arrays) != 1:
            raise DataError(
                f"{str(path)!r} holds arrays {sorted(arrays)}; name them train/valid/test or "
                "save a single array"
            )
        x = _as_float(next(iter(arrays.values())), str(path))
        tr, va, te = split_indices(x.shape[0])
        labels = {}
        if label_arrays["all"] is not None:
            y = _as_labels(label_arrays["all"], x.shape[0], "y", str(path))
            labels = {"train": y[tr], "valid": y[va], "test": y[te]}
        return DataSplits(name, x[tr], x[va], x[te], labels=labels)
    train = _as_float(found["train"], str(path))
    splits = {"train": train}
    labels: dict[str, torch.Tensor] = {}
    for split in ("train", "valid", "test"):
        if found[split] is not None:
            splits[split] = _as_float(found[split], str(path))
            if label_arrays[split] is not None:
                labels[split] = _as_labels(
                    label_arrays[split], splits[split].shape[0], f"y_{split}", str(path)
                )
    missing = [split for split in ("valid", "test") if split not in splits]
    if missing:
        # Carve only the missing splits from train, 10% each, so no data point is dropped.
        n = train.shape[0]
        if n < len(missing) + 1:
            raise DataError(f"{str(path)!r}: {n} training points are too few to split")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
        cut = max(1, round(0.1 * n))
        y = labels.get("train")
        for i, split in enumerate(missing):
            idx = perm[i * cut : (i + 1) * cut]
            splits[split] = train[idx]
            if y is not None:
                labels[split] = y[idx]
        rest = perm[len(missing) * cut :]
        splits["train"] = train[rest]
        if y is not None:
            labels["train"] = y[rest]
    if set(labels) != {"train", "valid", "test"}:
        labels = {}  # figures need labels for every split or none
    return DataSplits(name, splits["train"], splits["valid"], splits["test"], labels=labels)
