"""Data sets as [`DataSplits`][pyro_vae.data.splits.DataSplits]: the embedded digits, array
files, image sets, binarization."""

from pyro_vae.data.arrays import (
    load_array_file,
    load_digits,
)
from pyro_vae.data.binarize import (
    BINARIZE_MODES,
    BINARIZE_SEED,
    binarize_splits,
    dynamic_binarize,
    eval_data,
    static_binarize,
)
from pyro_vae.data.catalog import (
    DATASETS,
    load_dataset,
)
from pyro_vae.data.images import (
    CIFAR_TRAIN_BATCHES,
    DOWNLOAD_TIMEOUT,
    IDX_NAMES,
    IMAGE_DATASETS,
    IMAGE_FOLDER_SUFFIXES,
    SYSTEM_DATA_DIRS,
    ImageDataset,
    candidate_dirs,
    default_data_dir,
    find_idx_files,
    load_idx_folder,
    load_image_dataset,
    load_image_folder,
    network_available,
    read_cifar_batch,
    read_idx,
)
from pyro_vae.data.splits import SPLIT_SEED, DataSplits, split_indices

__all__ = [
    "SPLIT_SEED",
    "DataSplits",
    "split_indices",
    "BINARIZE_SEED",
    "dynamic_binarize",
    "static_binarize",
    "BINARIZE_MODES",
    "binarize_splits",
    "eval_data",
    "load_digits",
    "load_array_file",
    "IDX_NAMES",
    "IMAGE_FOLDER_SUFFIXES",
    "read_idx",
    "find_idx_files",
    "load_idx_folder",
    "ImageDataset",
    "IMAGE_DATASETS",
    "SYSTEM_DATA_DIRS",
    "default_data_dir",
    "candidate_dirs",
    "DOWNLOAD_TIMEOUT",
    "network_available",
    "CIFAR_TRAIN_BATCHES",
    "read_cifar_batch",
    "load_image_dataset",
    "load_image_folder",
    "DATASETS",
    "load_dataset",
]
