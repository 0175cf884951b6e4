"""Data loaders: IDX files (gzipped and plain), torchvision-style folders, the offline-missing
message, array files with labels, folders of images, and binarization."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    binarize_splits,
    load_array_file,
    load_dataset,
    load_idx_folder,
    load_image_dataset,
    load_image_folder,
    read_idx,
)
from pyro_vae.data import images as image_data
from pyro_vae.errors import DataError


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """The IDX format: 0x00 0x00 0x08 ndim, big-endian uint32 sizes, uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def make_idx_folder(folder, n_train=60, n_test=12, side=6, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        write_idx(folder / name, a, compress)
    return arrays


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test; the network is reported absent."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(image_data, "network_available", lambda *a, **k: False)
    monkeypatch.setattr(image_data, "_download", forbidden)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a-idx3-ubyte", a, compress)
    path = tmp_path / ("a-idx3-ubyte.gz" if compress else "a-idx3-ubyte")
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic number"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "t", np.zeros((4, 2, 2)), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_gives_scaled_images_labels_and_a_fixed_valid_split(tmp_path, compress):
    arrays = make_idx_folder(tmp_path, compress=compress)
    data = load_idx_folder(tmp_path, "toy", valid_size=10)
    assert data.train.shape == (50, 1, 6, 6) and data.valid.shape == (10, 1, 6, 6)
    assert data.test.shape == (12, 1, 6, 6)
    expected_test = torch.as_tensor(arrays["t10k-images-idx3-ubyte"] / 255.0, dtype=torch.float32)
    torch.testing.assert_close(data.test[:, 0], expected_test)
    torch.testing.assert_close(
        data.labels["test"], torch.as_tensor(arrays["t10k-labels-idx1-ubyte"])
    )
    # train + valid is a permutation of the original training set, images kept with labels
    x_all = torch.cat([data.train, data.valid])[:, 0].reshape(60, -1)
    y_all = torch.cat([data.labels["train"], data.labels["valid"]])
    orig = torch.as_tensor(arrays["train-images-idx3-ubyte"] / 255.0, dtype=torch.float32)
    for x, y in zip(x_all, y_all, strict=True):
        i = int(((orig.reshape(60, -1) - x).abs().sum(1)).argmin())
        assert int(arrays["train-labels-idx1-ubyte"][i]) == int(y)
    again = load_idx_folder(tmp_path, "toy", valid_size=10)
    torch.testing.assert_close(again.valid, data.valid)
    by_path = load_dataset(str(tmp_path))  # a folder of IDX files given as --dataset
    torch.testing.assert_close(by_path.test, data.test)


def test_named_data_set_found_in_torchvision_layout_without_network(tmp_path, no_network):
    make_idx_folder(tmp_path / "KMNIST" / "raw")
    data = load_image_dataset("kmnist", data_dir=tmp_path)
    assert data.name == "kmnist" and data.train.shape[1:] == (1, 6, 6)
    assert set(data.labels) == {"train", "valid", "test"}


def test_system_dataset_folder_is_found_automatically(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(image_data, "SYSTEM_DATA_DIRS", (tmp_path / "share",))
    make_idx_folder(tmp_path / "share" / "fashion-mnist", compress=True)
    data = load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    assert data.name == "fashion-mnist" and data.test.shape == (12, 1, 6, 6)
    assert data.label_names[0] == "T-shirt/top" and len(data.label_names) == 10


@pytest.mark.parametrize("download", [True, False])
def test_missing_offline_data_set_gives_one_clear_message(
    tmp_path, monkeypatch, no_network, download
):
    monkeypatch.setattr(image_data, "SYSTEM_DATA_DIRS", (tmp_path / "share",))
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine", download=download)
    message = str(info.value)
    assert "\n" not in message
    assert (
        str(tmp_path / "mine") in message and str(tmp_path / "share" / "fashion-mnist") in message
    )
    assert "apt-get install dataset-fashion-mnist" in message
    assert ("no network" if download else "downloads are off") in message


def test_missing_cifar_offline_names_its_folder(tmp_path, no_network):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_array_file_labels_single_array(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 3)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_array_file(tmp_path / "d.npz")
    assert data.train.shape[0] + data.valid.shape[0] + data.test.shape[0] == 40
    for split in ("train", "valid", "test"):
        xs, ys = getattr(data, split), data.labels[split]
        for row, label in zip(xs, ys, strict=True):
            i = int((torch.as_tensor(x) - row).abs().sum(1).argmin())
            assert y[i] == int(label)


def test_array_file_labels_named_splits_and_bad_labels(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "s.npz",
        x_train=rng.random((30, 2)),
        y_train=np.arange(30) % 3,
        x_test=rng.random((6, 2)),
        y_test=np.arange(6) % 3,
    )
    data = load_array_file(tmp_path / "s.npz")
    assert data.labels["test"].tolist() == [0, 1, 2, 0, 1, 2]
    assert len(data.labels["train"]) == data.train.shape[0]
    np.savez(tmp_path / "b.npz", x=rng.random((10, 2)), y=np.arange(9))
    with pytest.raises(DataError, match="labels"):
        load_array_file(tmp_path / "b.npz")


def _save_images(folder, arrays, mode):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode=mode).save(folder / f"{i}.png")


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        _save_images(tmp_path / label, rng.integers(0, 256, (5, 4, 7), dtype=np.uint8), "L")
    data = load_image_folder(tmp_path)
    n = data.train.shape[0] + data.valid.shape[0] + data.test.shape[0]
    assert n == 10 and data.train.shape[1:] == (1, 4, 7)
    assert 0.0 <= float(data.train.min()) and float(data.train.max()) <= 1.0
    all_labels = torch.cat([data.labels[s] for s in ("train", "valid", "test")])
    assert sorted(all_labels.tolist()) == [0] * 5 + [1] * 5
    assert data.label_names == ["a", "b"]


def test_image_folder_rgb_and_mixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    _save_images(tmp_path / "rgb", rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8), "RGB")
    data = load_dataset(str(tmp_path / "rgb"))
    assert data.train.shape[1:] == (3, 5, 5) and data.labels == {}
    _save_images(tmp_path / "mixed", [np.zeros((5, 5), np.uint8), np.zeros((6, 5), np.uint8)], "L")
    (tmp_path / "mixed" / "2.png").write_bytes((tmp_path / "mixed" / "0.png").read_bytes())
    with pytest.raises(DataError, match="differ in size"):
        load_image_folder(tmp_path / "mixed")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "none")


def test_binarization_modes(tmp_path):
    np.save(tmp_path / "g.npy", np.full((50, 4), 0.5, dtype=np.float32))
    data = load_array_file(tmp_path / "g.npy")
    assert binarize_splits(data, "none") is data and binarize_splits(data, "dynamic") is data
    static = binarize_splits(data, "static")
    again = binarize_splits(data, "static")
    for split in ("train", "valid", "test"):
        x = getattr(static, split)
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(x, getattr(again, split))
    # one seeded draw of Bernoulli(0.5): the mean of 200 values is within 4 standard errors
    assert abs(float(static.train.mean()) - 0.5) < 4 * 0.5 / np.sqrt(static.train.numel())
    with pytest.raises(DataError, match="unknown binarization"):
        binarize_splits(data, "sometimes")


def test_binarize_choice_must_fit_the_likelihood():
    from pyro_vae.errors import ConfigError
    from pyro_vae.models import ModelConfig
    from pyro_vae.runs.pipeline import check_binarize

    bern = ModelConfig(event_shape=(4,), likelihood="bernoulli")
    normal = ModelConfig(event_shape=(4,), likelihood="normal")
    for config, mode in ((bern, "dynamic"), (bern, "static"), (normal, "none"), (normal, "static")):
        check_binarize(config, mode)
    for config, mode in ((bern, "none"), (normal, "dynamic"), (bern, "often")):
        with pytest.raises(ConfigError):
            check_binarize(config, mode)


def test_cifar10_batches_are_read_as_rgb_planes(tmp_path, no_network):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*image_data.CIFAR_TRAIN_BATCHES, "test_batch"]:
        data = np.zeros((4, 3072), dtype=np.uint8)
        data[:, :1024] = 255  # the red plane of every image
        with open(folder / name, "wb") as f:  # protocol 2, as in the official archive
            pickle.dump({"data": data, "labels": [0, 1, 2, 3]}, f, protocol=2)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.train.shape[1:] == (3, 32, 32) and data.test.shape == (4, 3, 32, 32)
    assert data.train.shape[0] + data.valid.shape[0] == 20
    assert bool((data.test[:, 0] == 1).all()) and bool((data.test[:, 1:] == 0).all())
    assert data.labels["test"].tolist() == [0, 1, 2, 3] and data.label_names[0] == "airplane"
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="re-extract"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- files are untrusted: nothing runs, nothing blocks, nothing is silently changed ---------


class RunsCode:
    """Unpickling this calls ``os.mkdir(path)``: a stand-in for any code a file could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def write_cifar(folder, payload=None, protocol=2):
    import pickle

    folder.mkdir(exist_ok=True)
    for name in [*image_data.CIFAR_TRAIN_BATCHES, "test_batch"]:
        batch = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}
        if payload is not None and name == "test_batch":
            batch["labels"] = payload
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_cifar_batches_of_every_pickle_protocol_are_read(tmp_path, protocol, no_network):
    write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.test.shape == (2, 3, 32, 32)


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path, no_network):
    """A run's config can name a data_dir it ships: its batches must not execute anything."""
    marker = tmp_path / "code-ran"
    write_cifar(tmp_path / "cifar-10-batches-py", payload=RunsCode(marker))
    with pytest.raises(DataError, match=r"global \w+\.mkdir is not part of the CIFAR") as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="refused"):
        image_data.read_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        "builtins eval",
        "os system",
        "subprocess Popen",
        "numpy load",
        "torch load",
    ],
)
def test_cifar_unpickler_admits_no_other_global(tmp_path, payload):
    """Hand-written GLOBAL opcodes: each names a callable and is refused before lookup."""
    module, name = payload.split()
    raw = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=f"global {module}.{name} is not part"):
        image_data.read_cifar_batch(path)


def test_oversized_or_wrong_typed_cifar_batches_are_refused(tmp_path):
    import pickle

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.float64), "labels": [0, 1]}))
    with pytest.raises(DataError, match="not a uint8 array"):
        image_data.read_cifar_batch(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="not a dict"):
        image_data.read_cifar_batch(path)
    with open(path, "wb") as f:
        f.truncate(image_data.CIFAR_MAX_BYTES + 1)
    with pytest.raises(DataError, match="more than the official"):
        image_data.read_cifar_batch(path)


def finishes(fn, seconds=20.0):
    """Run ``fn`` in a daemon thread: (finished in time, the exception it raised or None)."""
    import threading

    outcome = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), outcome.get("error")


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("kind", ["npy", "idx", "cifar", "image"])
def test_a_fifo_is_refused_instead_of_blocking(tmp_path, kind):
    import os

    if kind == "npy":
        os.mkfifo(tmp_path / "x.npy")
        call = lambda: load_array_file(tmp_path / "x.npy")  # noqa: E731
    elif kind == "idx":
        os.mkfifo(tmp_path / "train-images-idx3-ubyte")
        call = lambda: read_idx(tmp_path / "train-images-idx3-ubyte")  # noqa: E731
    elif kind == "cifar":
        os.mkfifo(tmp_path / "data_batch_1")
        call = lambda: image_data.read_cifar_batch(tmp_path / "data_batch_1")  # noqa: E731
    else:
        from PIL import Image

        Image.new("L", (4, 4)).save(tmp_path / "a.png")
        os.mkfifo(tmp_path / "b.png")
        call = lambda: load_image_folder(tmp_path)  # noqa: E731
    done, error = finishes(call)
    assert done, f"reading a FIFO ({kind}) blocked"
    assert isinstance(error, DataError) and "FIFO, not a regular file" in str(error)


def test_a_folder_named_like_an_array_file_is_refused(tmp_path):
    (tmp_path / "x.npy").mkdir()
    with pytest.raises(DataError, match="is a folder, not a regular file"):
        load_array_file(tmp_path / "x.npy")
    with pytest.raises(DataError, match="does not exist"):
        load_array_file(tmp_path / "missing.npy")


@pytest.mark.parametrize("suffix", ["npy", "npz"])
def test_pickled_arrays_are_refused(tmp_path, suffix):
    """An object array is stored pickled; loading it would run code."""
    x = np.empty((4, 2), dtype=object)
    x[:] = 1.0
    path = tmp_path / f"p.{suffix}"
    if suffix == "npy":
        np.save(path, x, allow_pickle=True)
    else:
        np.savez(path, train=x)
    with pytest.raises(DataError, match="pickled"):
        load_array_file(path)


def test_complex_arrays_are_refused_not_truncated_to_their_real_part(tmp_path):
    x = (np.ones((10, 3)) + 2j * np.ones((10, 3))).astype(np.complex64)
    np.save(tmp_path / "c.npy", x)
    with pytest.raises(DataError, match="complex"):
        load_array_file(tmp_path / "c.npy")
    np.save(tmp_path / "t.npy", np.ones((10, 3), dtype="m8[s]"))
    with pytest.raises(DataError, match="not numeric"):
        load_array_file(tmp_path / "t.npy")


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_data_splits_refuse_complex_and_sparse_and_convert_float64():
    from pyro_vae.data import DataSplits

    x = torch.rand(6, 4, dtype=torch.float64)
    d = DataSplits("f64", x, x[:2], x[:2])
    assert d.train.dtype == torch.float32 and torch.allclose(d.train.double(), x, atol=1e-7)
    with pytest.raises(DataError, match="complex"):
        DataSplits("c", torch.ones(4, 2, dtype=torch.complex64), x[:2], x[:2])
    with pytest.raises(DataError, match="sparse"):
        DataSplits("s", torch.eye(4).to_sparse(), x[:2], x[:2])
    with pytest.raises(DataError, match="sparse"):
        DataSplits("s", x.float(), torch.eye(4).to_sparse_csr(), x[:2])


def test_float64_array_files_train_as_float32(tmp_path):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((20, 3)))
    assert load_array_file(tmp_path / "d.npy").train.dtype == torch.float32


def test_dynamic_binarization_draws_afresh_each_call():
    """Two draws of a 0.5-intensity image differ where exactly one is 1: P = 2 * 0.5 * 0.5."""
    from pyro_vae.data import dynamic_binarize

    x = torch.full((4, 1, 50, 50), 0.5)
    torch.manual_seed(0)
    a, b = dynamic_binarize(x), dynamic_binarize(x)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    differ = float((a != b).float().mean())
    # 10,000 pixels: standard error sqrt(0.25 / 10000) = 0.005, so +-0.03 is six of them
    assert abs(differ - 0.5) < 0.03
    assert abs(float(a.mean()) - 0.5) < 0.03


def test_head_keeps_the_first_points_and_their_labels():
    from pyro_vae.data import load_digits

    data = load_digits()
    small = data.head(10)
    assert small.train.shape[0] == small.valid.shape[0] == small.test.shape[0] == 10
    assert torch.equal(small.test, data.test[:10])
    assert torch.equal(small.labels["train"], data.labels["train"][:10])
    with pytest.raises(DataError, match="at least 1"):
        data.head(0)


def test_to_device_blocks_the_host_except_on_copies_to_a_cuda_device():
    """Only a copy to a CUDA device is made without blocking; a copy into host memory blocks,
    so a batch from a GPU is complete before the host reads it."""
    from pyro_vae.runtime.devices import to_device

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[torch.device, bool]] = []

        def to(self, device: torch.device, non_blocking: bool = False) -> Recorder:
            self.calls.append((device, non_blocking))
            return self

    seen = Recorder()
    for device in (torch.device("cpu"), torch.device("cuda", 1), torch.device("meta")):
        assert to_device(seen, device) is seen
    assert seen.calls == [
        (torch.device("cpu"), False),
        (torch.device("cuda", 1), True),
        (torch.device("meta"), False),
    ]
    x = torch.arange(3.0)
    assert to_device(x, torch.device("cpu")) is x
