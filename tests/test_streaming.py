"""Streamed data: the same points as the in-memory loaders, read without loading the file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pyro_vae.data import load_array_file
from pyro_vae.data.batches import epoch_batches, epoch_order
from pyro_vae.data.streaming import ArrayShards, ImageFiles, load_streaming
from pyro_vae.errors import DataError
from pyro_vae.runtime import ProcessGroup


def test_shards_read_the_rows_of_their_concatenation_in_order(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, size=(n, 3, 4), dtype=np.uint8) for n in (5, 1, 7)]
    for i, a in enumerate(parts):
        np.save(tmp_path / f"shard-{i:02d}.npy", a)
    ds = ArrayShards(tmp_path)
    whole = np.concatenate(parts).astype(np.float32) / 255.0
    assert len(ds) == 13 and ds.event_shape == (3, 4)
    got = torch.stack([ds[i] for i in range(len(ds))])
    torch.testing.assert_close(got, torch.from_numpy(whole))
    torch.testing.assert_close(ds[-1], torch.from_numpy(whole[-1]))
    with pytest.raises(IndexError):
        ds[13]


def test_streamed_file_has_the_in_memory_splits(tmp_path):
    x = np.random.default_rng(1).random((50, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    whole = load_array_file(tmp_path / "x.npy")
    streamed = load_streaming(tmp_path / "x.npy")
    torch.testing.assert_close(streamed.valid, whole.valid)
    torch.testing.assert_close(streamed.test, whole.test)
    train = torch.stack([streamed.train[i] for i in range(len(streamed.train))])
    torch.testing.assert_close(train, whole.train)
    assert streamed.event_shape == whole.event_shape == (6,)


def test_batches_of_a_dataset_equal_batches_of_the_tensor(tmp_path):
    x = np.random.default_rng(2).random((23, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds, tensor = ArrayShards(tmp_path / "x.npy"), torch.from_numpy(x)
    order = epoch_order(23, 1, 0, ProcessGroup())
    a = list(epoch_batches(tensor, 5, order))
    b = list(epoch_batches(ds, 5, order, num_workers=0))
    assert [t.shape[0] for t in a] == [5, 5, 5, 5, 3]
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)


def test_distributed_order_covers_every_point_with_equal_steps():
    orders = [epoch_order(11, 3, 7, ProcessGroup(r, 3)) for r in range(3)]
    assert {o.numel() for o in orders} == {4}
    assert set(torch.cat(orders).tolist()) == set(range(11))
    again = epoch_order(11, 3, 7, ProcessGroup(1, 3))
    assert torch.equal(again, orders[1])
    assert not torch.equal(epoch_order(11, 4, 7, ProcessGroup(1, 3)), orders[1])


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((4, 3), dtype=np.complex64), "real numbers"),
        (np.array([[1], [2]], dtype=object), "real numbers"),
        (np.zeros(4, dtype=np.float32), "one row per data point"),
        (np.asfortranarray(np.zeros((4, 3), dtype=np.float32)), "C-ordered"),
    ],
)
def test_unusable_arrays_are_refused(tmp_path, array, fragment):
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(DataError, match=fragment):
        ArrayShards(path)


def test_truncated_file_and_fifo_are_refused_without_blocking(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((100, 10), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated"):
        ArrayShards(path)
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        ArrayShards(fifo)


def test_image_files_are_read_lazily_and_must_share_a_size(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((5, 4), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((6, 4), dtype=np.uint8)).save(tmp_path / "odd.png")
    ds = ImageFiles(sorted(tmp_path.glob("?.png")) + [tmp_path / "odd.png"])
    assert ds.event_shape == (1, 5, 4) and len(ds) == 4
    torch.testing.assert_close(ds[2], torch.full((1, 5, 4), 80 / 255.0))
    with pytest.raises(DataError, match="resize"):
        ds[3]


def test_a_file_larger_than_the_memory_budget_is_never_loaded_whole(tmp_path):
    """Reading every training batch of a 96 MB file grows the resident set by far less."""
    rows, width = 96 * 1024, 1024
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, width))
    out[:] = 7
    out.flush()
    del out
    script = textwrap.dedent(
        f"""
        import resource, torch
        from pyro_vae.data.streaming import ArrayShards
        from pyro_vae.data.batches import epoch_batches, epoch_order
        from pyro_vae.runtime import ProcessGroup
        ds = ArrayShards({str(path)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        total = 0.0
        for x in epoch_batches(ds, 4096, epoch_order(len(ds), 1, 0, ProcessGroup())):
            total += float(x.sum())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024, total)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    grown_mb, total = proc.stdout.split()
    assert float(total) == pytest.approx(rows * width * 7 / 255.0, rel=1e-5)
    assert int(grown_mb) < 48, f"resident set grew {grown_mb} MB reading a 96 MB file"


def test_a_streamed_file_has_the_fingerprint_of_the_file_loaded_whole(tmp_path):
    """data_fingerprint promises equal digests for the same points streamed or in memory;
    the digest is also written out here (sha256 of "shape dtype" and the row-major bytes)."""
    import hashlib

    from pyro_vae.train.fingerprint import data_fingerprint, dataset_digest

    x = np.random.default_rng(2).random((50, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    whole = load_array_file(tmp_path / "x.npy")
    streamed = load_streaming(tmp_path / "x.npy")
    assert data_fingerprint(streamed) == data_fingerprint(whole)
    train = whole.train
    expected = hashlib.sha256(
        f"{tuple(train.shape)} {train.dtype}".encode() + train.numpy().tobytes()
    ).hexdigest()
    assert data_fingerprint(streamed)["train"] == {"size": train.shape[0], "sha256": expected}
    # blocks that do not divide the split give the same digest
    assert dataset_digest(streamed.train, block=7) == expected
    # and a changed point changes it
    x[0, 0] += 1
    np.save(tmp_path / "y.npy", x)
    assert data_fingerprint(load_streaming(tmp_path / "y.npy")) != data_fingerprint(whole)


class _ReadHere(torch.utils.data.Dataset):
    """The rows of a tensor; records the process of every read."""

    def __init__(self, x: torch.Tensor):
        self.x, self.reads = x, []

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        self.reads.append(os.getpid())
        return self.x[i]


def test_fit_reads_a_streamed_training_split_in_this_process_by_default():
    """Without num_workers, fit starts no reader processes: each epoch reads every training
    point once, here."""
    from pyro_vae.data.streaming import StreamingSplits
    from pyro_vae.models import ModelConfig, build_vae
    from pyro_vae.train import TrainConfig, fit

    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    train = _ReadHere(x[:20])
    data = StreamingSplits("streamed", train, x[20:25], x[25:])
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    train.reads.clear()
    fit(vae, data, TrainConfig(epochs=2, batch_size=10, valid_num_samples=2), progress=False)
    assert train.reads == [os.getpid()] * 40


def _fit_refusal(train, valid: torch.Tensor, test: torch.Tensor, run: object) -> str:
    """The DataError a one-epoch fit of a 6-feature VAE with run directory ``run`` raises on
    the streamed training split ``train``."""
    from pyro_vae.data.streaming import StreamingSplits
    from pyro_vae.models import ModelConfig, build_vae
    from pyro_vae.runs import RunDir
    from pyro_vae.train import TrainConfig, fit

    data = StreamingSplits("streamed", train, valid, test)
    config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))
    with pytest.raises(DataError) as info:
        fit(build_vae(config), data, TrainConfig(epochs=1, batch_size=10), RunDir(run), config,
            progress=False)  # fmt: skip
    return str(info.value)


def test_fit_with_a_run_directory_refuses_a_bad_streamed_point_before_training(tmp_path):
    """A run with a directory hashes the streamed training split first, checking each block
    as it reads it: a NaN at point 13 is refused as read before training (whole message), and
    the run directory is never made."""
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    x[13, 2] = float("nan")
    assert _fit_refusal(_ReadHere(x[:20]), x[20:25], x[25:], tmp_path / "r") == (
        "training point 13 of the streamed split has NaN or infinite values (points 0 to 19, "
        "read before training); clean the file or drop that point"
    )
    assert not (tmp_path / "r").exists()


def test_a_bad_point_of_a_streamed_subset_is_named_by_its_row_in_the_source(tmp_path):
    """The streamed training split a subset of a source (its rows in reverse): a NaN in row 16
    of the source, point 13 of the split, is refused before training naming both."""
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    x[16, 2] = float("nan")
    train = torch.utils.data.Subset(_ReadHere(x[:30]), list(range(29, 9, -1)))
    assert _fit_refusal(train, x[20:25], x[25:], tmp_path / "r") == (
        "training point 13 (row 16 of its source) of the streamed split has NaN or infinite "
        "values (points 0 to 19, read before training); clean the file or drop that point"
    )


def test_the_digest_of_a_one_point_dataset_is_that_of_its_one_row_tensor(tmp_path):
    """A streamed split of a single point hashes as the (1, *event_shape) tensor of it."""
    from pyro_vae.train.fingerprint import dataset_digest, tensor_digest

    x = np.random.default_rng(3).random((1, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert dataset_digest(ArrayShards(tmp_path / "x.npy")) == tensor_digest(torch.from_numpy(x))


def test_a_streamed_split_is_checked_in_blocks_of_1024_points_by_default(tmp_path):
    """``dataset_digest`` reads 1,024 points at a time unless told otherwise: its ``check``
    sees blocks of 1024 and 6 points of a 1,030-point split at offsets 0 and 1024, and a NaN
    in point 1027 is refused by ``fit`` naming the block that holds it."""
    from pyro_vae.train.fingerprint import dataset_digest, tensor_digest

    x = torch.rand(1040, 6, generator=torch.Generator().manual_seed(0))
    seen = []
    digest = dataset_digest(
        _ReadHere(x[:1030]), check=lambda block, first: seen.append((first, len(block)))
    )
    assert seen == [(0, 1024), (1024, 6)]
    assert digest == tensor_digest(x[:1030])

    x[1027, 4] = float("nan")
    assert _fit_refusal(_ReadHere(x[:1030]), x[1030:1035], x[1035:], tmp_path / "r") == (
        "training point 1027 of the streamed split has NaN or infinite values (points 1024 to "
        "1029, read before training); clean the file or drop that point"
    )


def test_a_model_that_takes_labels_refuses_a_streamed_training_split_whole(tmp_path):
    """A conditional VAE on labels reads a label beside each training point, which a streamed
    split does not carry: fit refuses it before training, naming the kind and the fix."""
    from pyro_vae.data.streaming import StreamingSplits
    from pyro_vae.models import ModelConfig
    from pyro_vae.models.conditional import ConditionalKind
    from pyro_vae.train import TrainConfig, fit

    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    labels = {
        "train": torch.arange(20) % 3,
        "valid": torch.arange(5) % 3,
        "test": torch.arange(5) % 3,
    }
    data = StreamingSplits("streamed", _ReadHere(x[:20]), x[20:25], x[25:], labels=labels)
    model = ConditionalKind(num_classes=3).build(
        ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))
    )
    with pytest.raises(DataError) as info:
        fit(model, data, TrainConfig(epochs=1, batch_size=10), progress=False)
    assert str(info.value) == (
        "model 'cvae' takes labels beside each point, which a streamed training split does not "
        "carry; load the data into memory (drop --stream)"
    )
