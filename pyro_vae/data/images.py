"""Image data sets: MNIST, Fashion-MNIST, KMNIST, CIFAR-10, IDX files and folders of images.

Every loader returns a [`DataSplits`][pyro_vae.data.splits.DataSplits] of float images
``(N, C, H, W)`` in [0, 1] with integer labels kept for the figures. Files already on disk are
always used first (a torchvision root, a folder of the standard IDX files, gzipped or not, and
Debian's ``/usr/share/datasets/<name>/``); a download is tried only when nothing is found, downloads
are allowed, and the network answers.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.files import check_regular_file
from pyro_vae.data.splits import SPLIT_SEED, DataSplits
from pyro_vae.errors import DataError

#: IDX element types (the third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGE_FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its stored shape.

    Format (LeCun et al., MNIST): magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
    uint32 sizes, then the data in C order.
    """
    path = check_regular_file(path, "IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {str(path)!r} ({exc}); re-download it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex()}); "
            "point to the original train-images-idx3-ubyte style files"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"IDX file {str(path)!r} is {len(raw)} bytes, shorter than its header of {ndim} "
            f"sizes ({header} bytes); the file is truncated, re-download it"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {str(path)!r} holds {len(raw) - header} data bytes but its header "
            f"{shape} needs {expected}; the file is truncated, re-download it"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four standard IDX files in ``folder`` (each plain or ``.gz``), or ``None``."""
    found: dict[str, Path] = {}
    for split, names in IDX_NAMES.items():
        for kind, stem in zip(("images", "labels"), names, strict=True):
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[f"{split}_{kind}"] = candidate
                    break
            else:
                return None
    return found


def load_idx_folder(
    folder: str | Path, name: str | None = None, valid_size: int = 10_000
) -> DataSplits:
    """MNIST-style IDX files in ``folder`` -> train (minus a seeded validation set), valid, test.

    Images ``(N, 1, H, W)`` scaled from 0..255 to [0, 1]; ``valid_size`` training images,
    chosen by a fixed seed, form the validation split.
    """
    folder = Path(folder)
    files = find_idx_files(folder)
    if files is None:
        raise DataError(
            f"{str(folder)!r} lacks the IDX files {[n for p in IDX_NAMES.values() for n in p]} "
            "(plain or .gz); put all four there"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"IDX {split} images {x.shape} and labels {y.shape} in {str(folder)!r} do not "
                "match (need (N, H, W) images and N labels)"
            )
    x_train = torch.as_tensor(arrays["train_images"].astype(np.float32) / 255.0).unsqueeze(1)
    x_test = torch.as_tensor(arrays["test_images"].astype(np.float32) / 255.0).unsqueeze(1)
    y_train = torch.as_tensor(arrays["train_labels"].astype(np.int64))
    y_test = torch.as_tensor(arrays["test_labels"].astype(np.int64))
    return _carve_valid(name or folder.name, x_train, y_train, x_test, y_test, valid_size)


def _carve_valid(name, x_train, y_train, x_test, y_test, valid_size: int) -> DataSplits:
    n = x_train.shape[0]
    n_valid = min(valid_size, max(1, n // 6))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, va = perm[n_valid:], perm[:n_valid]
    return DataSplits(
        name,
        x_train[tr],
        x_train[va],
        x_test,
        labels={"train": y_train[tr], "valid": y_train[va], "test": y_test},
    )


@dataclass(frozen=True)
class ImageDataset:
    """A named image data set: its torchvision class, validation size and install hints."""

    torchvision_class: str
    valid_size: int
    idx: bool  # stored as the four IDX files
    hint: str = ""
    label_names: tuple[str, ...] | None = None


IMAGE_DATASETS = {
    "mnist": ImageDataset("MNIST", 10_000, True),
    "fashion-mnist": ImageDataset(
        "FashionMNIST",
        10_000,
        True,
        "or on Debian/Ubuntu: apt-get install dataset-fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
        + ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": ImageDataset(
        "KMNIST",
        10_000,
        True,
        label_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
    "cifar10": ImageDataset(
        "CIFAR10",
        5_000,
        False,
        label_names=("airplane", "automobile", "bird", "cat", "deer")
        + ("dog", "frog", "horse", "ship", "truck"),
    ),
}

#: Where Debian's dataset packages put their files (``dataset-fashion-mnist``).
SYSTEM_DATA_DIRS = (Path("/usr/share/datasets"),)


def default_data_dir() -> Path:
    """``$PYRO_VAE_DATA_DIR``, else ``~/.cache/pyro-vae/data``."""
    env = os.environ.get("PYRO_VAE_DATA_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/pyro-vae/data").expanduser()


def candidate_dirs(name: str, data_dir: Path) -> list[Path]:
    """Every folder searched for the IDX files of ``name``, in order."""
    spec = IMAGE_DATASETS[name]
    dirs = [
        data_dir,
        data_dir / name,
        data_dir / spec.torchvision_class / "raw",  # torchvision's layout
        data_dir / name / spec.torchvision_class / "raw",
    ]
    dirs += [root / name for root in SYSTEM_DATA_DIRS]
    return dirs


#: Seconds a stalled download may wait on the network before it counts as failed.
DOWNLOAD_TIMEOUT = 60.0


def network_available(host: str = "github.com", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection opens within ``timeout`` seconds (no data is sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cifar_present(root: Path) -> bool:
    folder = root / "cifar-10-batches-py"
    names = [*CIFAR_TRAIN_BATCHES, "test_batch"]
    return all((folder / n).is_file() for n in names)


CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


#: The largest CIFAR-10 batch file read (the official ones are about 31 MB).
CIFAR_MAX_BYTES = 64 * 2**20


class CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's pickled batches without running any code from the file.

    A pickle calls whatever global it names; a batch of the official archive names only
    numpy's array reconstructor, ``numpy.ndarray`` and ``numpy.dtype`` (its dict, lists,
    strings and integers are plain pickle opcodes), and a batch re-saved by Python 3 with
    protocol 2 adds ``_codecs.encode`` for its bytes. Those are admitted; any other global
    is refused (``pickle.UnpicklingError``) without being imported or looked up.
    """

    #: (module, name) -> the object it stands for; numpy 2 moved ``numpy.core`` to ``numpy._core``.
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        """The admitted global ``module.name``; anything else is refused, never imported."""
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not part of the CIFAR-10 format"
            ) from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file of CIFAR-10's python version -> (images (n, 3, 32, 32) uint8, labels (n,)).

    The file is a pickled dict with ``data`` (n, 3072: the red, green, blue planes of each 32x32
    image) and ``labels``. It is read by [`CifarUnpickler`][pyro_vae.data.images.CifarUnpickler],
    which admits only the numpy array reconstructors the format uses, so a crafted file cannot run
    code.
    """
    path = check_regular_file(path, "CIFAR-10 batch")
    size = path.stat().st_size
    if size > CIFAR_MAX_BYTES:
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} has {size} bytes, more than the official files' "
            f"{CIFAR_MAX_BYTES}; re-extract cifar-10-python.tar.gz"
        )
    try:
        batch = CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        if not isinstance(batch, dict):
            raise TypeError(f"a {type(batch).__name__}, not a dict")
        data, labels = batch["data"], batch["labels"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError("data is not a uint8 array")
        labels = np.asarray(labels, dtype=np.int64)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} was refused ({exc}); it is not an official batch "
            "file, re-extract cifar-10-python.tar.gz"
        ) from None
    except (OSError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"cannot read CIFAR-10 batch {str(path)!r} ({type(exc).__name__}: {exc}); "
            "re-extract cifar-10-python.tar.gz"
        ) from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} has data {data.shape} and labels {labels.shape}; "
            "expected (n, 3072) and (n,); re-extract cifar-10-python.tar.gz"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: Path, download: bool) -> DataSplits:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (downloaded there first if ``download``)."""
    if download:
        import torchvision

        for train in (True, False):
            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
    folder = root / "cifar-10-batches-py"
    train = [read_cifar_batch(folder / name) for name in CIFAR_TRAIN_BATCHES]
    x_test, y_test = read_cifar_batch(folder / "test_batch")

    def as_float(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a).float() / 255.0

    return _carve_valid(
        "cifar10",
        as_float(np.concatenate([x for x, _ in train])),
        torch.as_tensor(np.concatenate([y for _, y in train])),
        as_float(x_test),
        torch.as_tensor(y_test),
        IMAGE_DATASETS["cifar10"].valid_size,
    )


def _download(name: str, data_dir: Path) -> None:
    """torchvision's own download into ``data_dir`` (its ``<Class>/raw`` layout)."""
    import torchvision

    cls = getattr(torchvision.datasets, IMAGE_DATASETS[name].torchvision_class)
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # torchvision's urllib calls have no timeout
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def load_image_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = True
) -> DataSplits:
    """MNIST, Fashion-MNIST, KMNIST or CIFAR-10: local files first, else a download.

    Searches [`candidate_dirs`][pyro_vae.data.images.candidate_dirs] (``data_dir``, default
    [`default_data_dir`][pyro_vae.data.images.default_data_dir]), then downloads through torchvision
    into ``data_dir`` when ``download`` and the network answers. Otherwise raises one
    [`DataError`][pyro_vae.errors.DataError] naming every folder searched and how to get the data.
    """
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown image data set {name!r}; choose one of {sorted(IMAGE_DATASETS)}")
    spec = IMAGE_DATASETS[name]
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    data = _find_or_download(name, spec, root, download)
    data.label_names = list(spec.label_names) if spec.label_names else None
    return data


def _find_or_download(name: str, spec: ImageDataset, root: Path, download: bool) -> DataSplits:
    if spec.idx:
        searched = candidate_dirs(name, root)
        for folder in searched:
            if find_idx_files(folder) is not None:
                return load_idx_folder(folder, name, spec.valid_size)
    else:
        searched = [root / "cifar-10-batches-py"]
        if _cifar_present(root):
            return _load_cifar10(root, download=False)
    reason = "downloads are off" if not download else "there is no network"
    if download and network_available():
        try:
            if spec.idx:
                _download(name, root)
                return load_idx_folder(root / spec.torchvision_class / "raw", name, spec.valid_size)
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
            try:
                return _load_cifar10(root, download=True)
            finally:
                socket.setdefaulttimeout(previous)
        except (OSError, RuntimeError) as exc:
            reason = f"the download failed ({str(exc).splitlines()[0][:120]})"
    where = ", ".join(str(p) for p in searched)
    files = "the four IDX files (train/t10k images and labels, .gz or plain)"
    what = files if spec.idx else "the extracted cifar-10-python.tar.gz"
    hint = f" {spec.hint}" if spec.hint else ""
    raise DataError(
        f"data set {name!r} not found and {reason}; looked in: {where}. Put {what} in one of "
        f"these folders (--data-dir), or run once online to download{(';' + hint) if hint else ''}"
    )


def load_image_folder(folder: str | Path, name: str | None = None) -> DataSplits:
    """A folder of same-size images -> (N, C, H, W) in [0, 1], split 80/10/10 by a fixed seed.

    Images directly in ``folder`` are unlabelled; images in subfolders are labelled by the
    subfolder (sorted names -> 0, 1, ...). Grayscale images give C = 1; if any image has
    colour, all are read as RGB (C = 3). Sizes are never changed: mixed sizes are refused.
    """
    from PIL import Image

    from pyro_vae.data.splits import split_indices

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} does not exist; check the path")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    groups = [(i, sorted(c.iterdir())) for i, c in enumerate(classes)] or [
        (-1, sorted(folder.iterdir()))
    ]
    files = [
        (label, p) for label, ps in groups for p in ps if p.suffix.lower() in IMAGE_FOLDER_SUFFIXES
    ]
    if not files:
        raise DataError(
            f"no images ({', '.join(IMAGE_FOLDER_SUFFIXES)}) in {str(folder)!r} or its "
            "subfolders; add image files"
        )
    images = []
    for _, p in files:
        check_regular_file(p, "image")
        try:
            with Image.open(p) as im:
                images.append(im.copy())
        except OSError as exc:
            raise DataError(f"cannot read image {str(p)!r} ({exc}); remove or re-save it") from exc
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        first = files[0][1]
        odd = next(p for (_, p), im in zip(files, images, strict=True) if im.size != images[0].size)
        raise DataError(
            f"images in {str(folder)!r} differ in size ({str(first.name)!r} is "
            f"{images[0].size[0]}x{images[0].size[1]}, {str(odd.name)!r} is "
            f"{[im.size for (_, p), im in zip(files, images, strict=True) if p == odd][0]}); "
            "resize them all to one size first"
        )
    gray = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in images)
    mode = "L" if gray else "RGB"
    arrays = []
    for im in images:
        a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    x = torch.as_tensor(np.stack(arrays))
    tr, va, te = split_indices(x.shape[0])
    labels = {}
    if classes:
        y = torch.tensor([label for label, _ in files], dtype=torch.long)
        labels = {"train": y[tr], "valid": y[va], "test": y[te]}
    names = [c.name for c in classes] or None
    return DataSplits(name or folder.name, x[tr], x[va], x[te], labels=labels, label_names=names)
