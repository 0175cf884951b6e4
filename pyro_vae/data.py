"""Data sets: the embedded digits, users' array files, and binarization.

Every split is a float tensor ``(N, *event_shape)``; image data are ``(N, C, H, W)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .validation import check_tensor

#: The seed of the fixed train/validation/test split and of the fixed evaluation binarization.
SPLIT_SEED = 0
BINARIZE_SEED = 1234


@dataclass
class DataSplits:
    """A data set split three ways. Each split: (N, *event_shape), float32."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Names of the integer labels (index = label), for legends; ``None`` if unnamed.
    label_names: list[str] | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def __post_init__(self) -> None:
        for split in ("train", "valid", "test"):
            x = check_tensor(getattr(self, split), f"the {split} split of {self.name!r}")
            if x.shape[0] == 0:
                raise DataError(
                    f"the {split} split of {self.name!r} is empty; provide more data points"
                )
            if tuple(x.shape[1:]) != tuple(self.train.shape[1:]):
                raise DataError(
                    f"the {split} split has data-point shape {tuple(x.shape[1:])} but train has "
                    f"{tuple(self.train.shape[1:])}; every split needs the same shape"
                )
            if not torch.isfinite(x).all():
                raise DataError(
                    f"the {split} split of {self.name!r} contains NaN or infinite values; "
                    "clean or impute the data first"
                )


def split_indices(n: int, fractions: tuple[float, float] = (0.1, 0.1), seed: int = SPLIT_SEED):
    """A fixed permutation of ``range(n)`` cut into train, validation and test indices."""
    if n < 3:
        raise DataError(f"need at least 3 data points to split into train/valid/test, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(fractions[0] * n))
    n_test = max(1, round(fractions[1] * n))
    return perm[n_valid + n_test :], perm[:n_valid], perm[n_valid : n_valid + n_test]


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
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
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


def load_array_file(path: str | Path) -> DataSplits:
    """A user's ``.npy`` (one array, split 80/10/10) or ``.npz`` file.

    An ``.npz`` with ``train`` (or ``x_train``) and optionally ``valid``/``val`` and ``test``
    keys uses those splits (a missing one is cut from train); an ``.npz`` with a single array
    is split like an ``.npy``. ``uint8`` arrays are scaled from 0..255 to [0, 1].
    Integer labels (used by the figures only) come from ``y``/``labels`` next to a single
    array, or ``y_train``/``y_valid``/``y_test`` next to named splits.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist; check the path")
    if path.suffix not in (".npy", ".npz"):
        raise DataError(
            f"data file {str(path)!r} is not .npy or .npz; save the array with numpy.save/savez"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for unreadable files
        raise DataError(f"cannot read {str(path)!r} as a numpy file ({exc}); re-save it") from exc
    name = path.stem
    if isinstance(loaded, np.ndarray):
        arrays = {"x": loaded}
    else:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
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


DATASETS = {"digits": load_digits}


def load_dataset(
    name_or_path: str, data_dir: str | Path | None = None, download: bool = True
) -> DataSplits:
    """A data set by name or path.

    Names: ``digits`` (shipped with scikit-learn) and the image sets of
    :data:`pyro_vae.image_data.IMAGE_DATASETS` (``mnist``, ``fashion-mnist``, ``kmnist``,
    ``cifar10``; looked for under ``data_dir``, downloaded there only if missing and
    ``download``). Paths: a ``.npy``/``.npz`` file, a folder of the four MNIST-style IDX
    files, or a folder of images.
    """
    from .image_data import (
        IMAGE_DATASETS,
        find_idx_files,
        load_idx_folder,
        load_image_dataset,
        load_image_folder,
    )

    if name_or_path in DATASETS:
        return DATASETS[name_or_path]()
    if name_or_path in IMAGE_DATASETS:
        return load_image_dataset(name_or_path, data_dir=data_dir, download=download)
    if Path(name_or_path).is_dir():
        if find_idx_files(Path(name_or_path)) is not None:
            return load_idx_folder(name_or_path)
        return load_image_folder(name_or_path)
    if name_or_path.endswith((".npy", ".npz")) or Path(name_or_path).exists():
        return load_array_file(name_or_path)
    raise DataError(
        f"unknown data set {name_or_path!r}; use one of {sorted(DATASETS) + sorted(IMAGE_DATASETS)}"
        ", the path of a .npy/.npz file, or a folder of images"
    )


def dynamic_binarize(x: torch.Tensor) -> torch.Tensor:
    """A fresh Bernoulli draw per element: x in [0, 1] -> {0, 1}. Call once per batch."""
    return torch.bernoulli(x)


def static_binarize(x: torch.Tensor, seed: int = BINARIZE_SEED) -> torch.Tensor:
    """One fixed, seeded Bernoulli draw per element, the same on every call."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=gen).to(x.device)


BINARIZE_MODES = ("dynamic", "static", "none")


def binarize_splits(data: DataSplits, mode: str, seed: int = BINARIZE_SEED) -> DataSplits:
    """Apply a binarization choice to every split of data in [0, 1].

    ``dynamic``: unchanged here; Bernoulli-type likelihoods draw a fresh binarization of each
    training batch (and score one fixed draw). ``static``: one seeded draw per split, kept for
    the whole run. ``none``: unchanged (gray values, for likelihoods of continuous data).
    """
    if mode not in BINARIZE_MODES:
        raise DataError(f"unknown binarization {mode!r}; choose one of {list(BINARIZE_MODES)}")
    if mode != "static":
        return data
    for split in ("train", "valid", "test"):
        x = getattr(data, split)
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise DataError(
                f"static binarization needs data in [0, 1], the {split} split has range "
                f"[{float(x.min()):g}, {float(x.max()):g}]; rescale or use --binarize none"
            )
    return DataSplits(
        data.name,
        static_binarize(data.train, seed),
        static_binarize(data.valid, seed + 1),
        static_binarize(data.test, seed + 2),
        labels=dict(data.labels),
        label_names=data.label_names,
    )
