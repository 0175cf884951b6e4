"""The entry point to every data set: names and paths to
[`DataSplits`][pyro_vae.data.splits.DataSplits].

This module imports the readers ([`arrays`][pyro_vae.data.arrays],
[`images`][pyro_vae.data.images]); readers never import it back.
"""

from __future__ import annotations

from pathlib import Path

from pyro_vae.data.arrays import load_array_file, load_digits
from pyro_vae.data.images import (
    IMAGE_DATASETS,
    find_idx_files,
    load_idx_folder,
    load_image_dataset,
    load_image_folder,
)
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import DataError

DATASETS = {"digits": load_digits}


def load_dataset(
    name_or_path: str, data_dir: str | Path | None = None, download: bool = True
) -> DataSplits:
    """A data set by name or path.

    Names: ``digits`` (shipped with scikit-learn) and the image sets of
    ``pyro_vae.data.images.IMAGE_DATASETS`` (``mnist``, ``fashion-mnist``, ``kmnist``,
    ``cifar10``; looked for under ``data_dir``, downloaded there only if missing and
    ``download``). Paths: a ``.npy``/``.npz`` file, a folder of the four MNIST-style IDX
    files, or a folder of images.
    """
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
