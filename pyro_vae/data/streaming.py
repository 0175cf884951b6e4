"""Data that need not fit in memory: training points read on demand through ``torch.utils.data``.

A [`StreamingSplits`][pyro_vae.data.streaming.StreamingSplits] is a
[`DataSplits`][pyro_vae.data.splits.DataSplits] whose ``train`` split is a
``torch.utils.data.Dataset`` (each item one data point ``(*event_shape)``, float in the likelihood's
support) while ``valid`` and ``test`` are tensors in memory (a tenth of the data each, and so their
fixed binarization is the very draw the in-memory path scores). The fit loop reads training batches
through a ``DataLoader`` (workers, pinned memory, non-blocking copies); everything else is
unchanged.

Sources: a ``.npy`` file read row by row or a folder of ``.npy`` shards
([`ArrayShards`][pyro_vae.data.streaming.ArrayShards]), a folder of image files
([`ImageFiles`][pyro_vae.data.streaming.ImageFiles]), or any user ``Dataset`` (items are tensors or
``(tensor, label)`` pairs).
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pyro_vae.data.splits import DataSplits, split_indices
from pyro_vae.errors import DataError
from pyro_vae.validation import check_tensor


def _regular_file(path: Path) -> Path:
    """Refuse a path that is missing or not a regular file (a FIFO would block a reader)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r} ({exc.strerror}); check the path") from exc
    if not stat.S_ISREG(mode):
        raise DataError(f"{str(path)!r} is not a regular file; pass a .npy file or a folder")
    return path


class NpyRows:
    """Rows of one ``.npy`` file read on demand with ``os.pread`` (no pickles, no memory map).

    Only the header is read up front; row i is read from disk when asked for, so neither
    the process's memory nor its resident set grows with the file.
    """

    def __init__(self, path: Path):
        self.path = _regular_file(path)
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
        except (ValueError, OSError) as exc:
            raise DataError(
                f"cannot read {str(path)!r} as a .npy array ({exc}); re-save it"
            ) from exc
        if (
            dtype.hasobject
            or np.issubdtype(dtype, np.complexfloating)
            or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
        ):
            raise DataError(
                f"{str(path)!r} has dtype {dtype}; need real numbers (uint8 pixels or floats)"
            )
        if len(shape) < 2 or fortran:
            raise DataError(
                f"{str(path)!r} holds a {'Fortran-ordered ' if fortran else ''}array of shape "
                f"{shape}; need a C-ordered (N, features...) array, one row per data point"
            )
        self.shape, self.dtype = tuple(int(s) for s in shape), dtype
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        info = self.path.stat()
        if info.st_size < self.offset + self.shape[0] * self.row_bytes:
            raise DataError(f"{str(path)!r} is truncated ({info.st_size} bytes); re-save it")
        #: What the file was when its header was read: a reader refuses a file changed since.
        self.identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        self._fd: int | None = None

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` as an array of shape ``shape[1:]``."""
        if self._fd is None:  # opened lazily, so each DataLoader worker has its own
            fd = os.open(self.path, os.O_RDONLY)
            info = os.fstat(fd)
            if (info.st_ino, info.st_size, info.st_mtime_ns) != self.identity:
                os.close(fd)
                raise DataError(
                    f"{str(self.path)!r} changed after it was opened (size, time or file "
                    "differ); leave the file unchanged while training, or restore it"
                )
            self._fd = fd
        raw = os.pread(self._fd, self.row_bytes, self.offset + i * self.row_bytes)
        if len(raw) != self.row_bytes:
            raise DataError(
                f"{str(self.path)!r} was truncated or replaced while being read: row {i} has "
                f"{len(raw)} of its {self.row_bytes} bytes; leave the file unchanged while "
                "training, or restore it"
            )
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape[1:])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}


class ArrayShards(Dataset):
    """Data points from one ``.npy`` file or a folder of ``.npy`` shards, in order.

    Item i: ``(*event_shape)`` float32; ``uint8`` arrays are scaled from 0..255 to [0, 1].
    Only the rows asked for are read from disk, so the files may exceed memory.
    """

    def __init__(self, source: str | Path):
        source = Path(source)
        if source.is_dir():
            paths = sorted(p for p in source.iterdir() if p.suffix == ".npy")
            if not paths:
                raise DataError(f"no .npy shards in {str(source)!r}; save arrays with numpy.save")
        else:
            paths = [source]
        self.arrays = [NpyRows(p) for p in paths]
        shapes = {a.shape[1:] for a in self.arrays}
        if len(shapes) > 1:
            raise DataError(
                f"shards in {str(source)!r} have different data-point shapes {sorted(shapes)}; "
                "save every shard with the same shape"
            )
        self.event_shape = self.arrays[0].shape[1:]
        self.offsets = np.cumsum([0] + [a.shape[0] for a in self.arrays]).tolist()
        self.nbytes = sum(a.shape[0] * a.row_bytes for a in self.arrays)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        shard = bisect.bisect_right(self.offsets, index) - 1
        row = self.arrays[shard].row(index - self.offsets[shard])
        x = torch.from_numpy(row.astype(np.float32))
        return x / 255.0 if row.dtype == np.uint8 else x


class ImageFiles(Dataset):
    """Image files read one at a time: item i is ``(C, H, W)`` float32 in [0, 1].

    Grayscale images give C = 1, ``rgb=True`` reads C = 3; every image must have the size of
    the first (sizes are never changed).
    """

    def __init__(self, paths: Sequence[str | Path], rgb: bool = False):
        from PIL import Image

        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no image files given; pass a folder with images")
        self.mode = "RGB" if rgb else "L"
        with Image.open(self.paths[0]) as im:
            self.size = im.size
        c = 3 if rgb else 1
        self.event_shape = (c, self.size[1], self.size[0])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as im:
                if im.size != self.size:
                    raise DataError(
                        f"image {path.name!r} is {im.size[0]}x{im.size[1]}, the others "
                        f"{self.size[0]}x{self.size[1]}; resize them all to one size"
                    )
                a = np.asarray(im.convert(self.mode), dtype=np.float32) / 255.0
        except OSError as exc:
            raise DataError(
                f"cannot read image {str(path)!r} ({exc}); remove or re-save it"
            ) from exc
        return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def item_tensor(item) -> torch.Tensor:
    """A data point from a dataset item: the tensor itself, or the first of a (x, label) pair."""
    if isinstance(item, tuple | list):
        item = item[0]
    if not isinstance(item, torch.Tensor):
        item = torch.as_tensor(np.asarray(item))
    return item


def collate_points(items: list) -> torch.Tensor:
    """Stack dataset items into a batch ``(batch, *event_shape)`` of floats."""
    batch = torch.stack([item_tensor(i) for i in items])
    if not batch.is_floating_point():
        raise DataError(
            f"dataset items have dtype {batch.dtype}; return float tensors (divide 8-bit "
            "pixels by 255)"
        )
    return batch


def point_blocks(
    dataset: Dataset, block: int = 1024, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """The first ``limit`` (default all) points of ``dataset`` in order, as tensors
    ``(<= block, *event_shape)``: one way to read a dataset a block at a time."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for lo in range(0, n, block):
        yield collate_points([dataset[i] for i in range(lo, min(n, lo + block))])


def materialize(dataset: Dataset, what: str, batch_size: int = 1024) -> torch.Tensor:
    """All points of ``dataset`` stacked into one tensor ``(N, *event_shape)``."""
    if len(dataset) == 0:
        raise DataError(f"the {what} split is empty; provide more data points")
    return torch.cat(list(point_blocks(dataset, batch_size)))


class StreamingSplits(DataSplits):
    """Training points streamed from a ``Dataset``; validation and test points in memory.

    train: Dataset of N items ``(*event_shape)``; valid, test: (n, *event_shape) tensors.
    """

    def __init__(
        self,
        name: str,
        train: Dataset,
        valid: torch.Tensor,
        test: torch.Tensor,
        labels: dict[str, torch.Tensor] | None = None,
        label_names: list[str] | None = None,
    ):
        self.name, self.train, self.valid, self.test = name, train, valid, test
        self.labels = dict(labels or {})
        self.label_names = label_names
        self.__post_init__()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.valid.shape[1:])

    def __post_init__(self) -> None:
        if len(self.train) == 0:
            raise DataError(f"the train split of {self.name!r} is empty; provide more data")
        shape = tuple(item_tensor(self.train[0]).shape)
        for split in ("valid", "test"):
            check_tensor(getattr(self, split), f"the {split} split of {self.name!r}", shape)


def streaming_splits(dataset: Dataset, name: str) -> StreamingSplits:
    """Split a dataset 80/10/10 by the fixed split of the in-memory loaders.

    The same indices as [`split_indices`][pyro_vae.data.splits.split_indices], so a file read
    streaming or whole gives the same three splits; validation and test points are read into memory.
    """
    tr, va, te = split_indices(len(dataset))
    return StreamingSplits(
        name,
        Subset(dataset, tr.tolist()),
        materialize(Subset(dataset, va.tolist()), "valid"),
        materialize(Subset(dataset, te.tolist()), "test"),
    )


def load_streaming(source: str | Path) -> StreamingSplits:
    """A ``.npy`` file, a folder of ``.npy`` shards or a folder of images, streamed.

    The training split stays on disk; see
    [`StreamingSplits`][pyro_vae.data.streaming.StreamingSplits].
    """
    source = Path(source)
    if source.is_dir() and not any(p.suffix == ".npy" for p in source.iterdir()):
        from pyro_vae.data.images import IMAGE_FOLDER_SUFFIXES

        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_FOLDER_SUFFIXES)
        if not files:
            raise DataError(f"no .npy shards or images in {str(source)!r}")
        return streaming_splits(ImageFiles(files), source.name)
    return streaming_splits(ArrayShards(source), source.stem)
