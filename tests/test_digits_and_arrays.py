"""The embedded digits and users' array files."""

import numpy as np
import pytest
import torch

from pyro_vae.data import load_array_file, load_dataset, load_digits, static_binarize
from pyro_vae.errors import DataError


def test_digits_split_is_fixed_and_scaled():
    a, b = load_digits(), load_digits()
    assert a.event_shape == (1, 8, 8)
    assert (a.train.shape[0], a.valid.shape[0], a.test.shape[0]) == (1437, 180, 180)
    assert torch.equal(a.test, b.test)
    assert float(a.train.min()) == 0.0 and float(a.train.max()) == 1.0
    assert a.labels["test"].shape == (180,)


def test_static_binarization_is_fixed():
    x = load_digits().test
    b1, b2 = static_binarize(x), static_binarize(x)
    assert torch.equal(b1, b2)
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    # Mean of the draws matches the intensities (binomial standard error).
    n = x.numel()
    se = float((x * (1 - x)).sum().sqrt() / n)
    assert abs(float(b1.mean() - x.mean())) < 4 * se


def test_npy_is_split(tmp_path):
    x = np.random.default_rng(0).random((50, 3, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    d = load_dataset(str(tmp_path / "a.npy"))
    assert d.event_shape == (3, 4)
    assert d.train.shape[0] + d.valid.shape[0] + d.test.shape[0] == 50
    rows = torch.cat([d.train, d.valid, d.test]).reshape(50, -1)
    assert torch.equal(rows.sort(0).values, torch.as_tensor(x).reshape(50, -1).sort(0).values)


def test_npz_named_splits_and_uint8(tmp_path):
    tr = np.full((20, 4), 255, dtype=np.uint8)
    te = np.zeros((5, 4), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", train=tr, test=te)
    d = load_array_file(tmp_path / "b.npz")
    assert d.test.shape == (5, 4) and float(d.test.max()) == 0.0
    assert float(d.train.max()) == 1.0  # 8-bit scaled to [0, 1]
    assert d.train.shape[0] + d.valid.shape[0] == 20


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: np.save(p / "c.npy", np.arange(10.0)), "one row per data point"),
        (lambda p: np.savez(p / "c.npz", a=np.ones((5, 2)), b=np.ones((5, 2))), "train/valid/test"),
        (lambda p: np.save(p / "c.npy", np.array([["a", "b"]] * 4)), "not numeric"),
        (lambda p: np.save(p / "c.npy", np.ones((2, 3))), "at least 3"),
    ],
)
def test_bad_array_files(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(DataError, match=message):
        load_array_file(path)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("no-such-set")
