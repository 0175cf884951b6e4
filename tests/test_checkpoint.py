"""Checkpoints: atomic writes, safe loading, and a clear error for every kind of bad file."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from refusals import whole

from pyro_vae.data import DataSplits
from pyro_vae.errors import CheckpointError
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.runs import load_run, train_run
from pyro_vae.train import (
    FORMAT_VERSION,
    TrainConfig,
    checkpoint,
    load_checkpoint,
    restore_model,
    save_checkpoint,
)


class _Exploit:
    """Unpickling this object would create ``marker``: the code a checkpoint must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _state() -> dict:
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(4,), latent_dim=2, hidden=(3,)))
    return {"model_state": vae.state_dict(), "epoch": 3, "history": [{"epoch": 1, "x": 0.5}]}


def test_round_trip_keeps_tensors_and_records_the_format_version(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["epoch"] == 3 and loaded["history"] == state["history"]
    for k, v in state["model_state"].items():
        assert torch.equal(loaded["model_state"][k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file left behind"


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match=whole("disk full")):
        save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_checkpoint_that_runs_code_on_unpickling_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format_version": FORMAT_VERSION, "model_state": _Exploit(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    # The file really is an exploit: plain unpickling runs its code.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Exploit(probe)))
    assert probe.exists()
    with pytest.raises(CheckpointError, match=_unloadable(path)):
        load_checkpoint(path)
    assert not marker.exists()


def _unloadable(path) -> str:
    """The whole refusal of a checkpoint torch cannot load; the reason in the middle is torch's
    own (it varies with torch's version)."""
    return (
        "^"
        + re.escape(
            f"cannot load checkpoint {str(path)!r}: it is truncated, corrupted, or holds objects "
            "other than tensors (refused: they could run code) ("
        )
        + ".+"
        + re.escape("); restore it from a backup or retrain")
        + r"\Z"
    )


def test_a_refused_global_is_named_without_torch_s_advice_to_load_unsafely(tmp_path, monkeypatch):
    """torch's refusal of a pickled global puts the reason on its "WeightsUnpickler error:"
    line, after paragraphs of advice (load with weights_only=False); the refusal keeps that
    reason's first sentence alone, from a real exploit and from a refusal of known text."""
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "model_state": _Exploit(tmp_path / "m")}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "Weights only load failed" not in str(info.value)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(
            "Weights only load failed. Re-running `torch.load` with `weights_only` set to "
            "`False` will likely succeed.\n\t(2) Alternatively, check the steps below.\n\t"
            "WeightsUnpickler error: Unsupported global: GLOBAL os.system was not an allowed "
            "global by default. Please use `torch.serialization.add_safe_globals`.\n\nCheck "
            "the documentation of torch.load."
        )

    monkeypatch.setattr(checkpoint.torch, "load", refuse)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"cannot load checkpoint {str(path)!r}: it is truncated, corrupted, or holds objects "
        "other than tensors (refused: they could run code) (Unsupported global: GLOBAL "
        "os.system was not an allowed global by default); restore it from a backup or retrain"
    )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:100], id="truncated-header"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: bytes(64) + b[64:], id="zeroed-header"),
        pytest.param(lambda b: b"this is not a checkpoint\n" * 10, id="text"),
    ],
)
def test_damaged_checkpoints_are_refused(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=_unloadable(path)) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_wrong_format_version_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {str(path)!r} has format version {FORMAT_VERSION + 1}, this pyro-vae reads "
        f"version {FORMAT_VERSION}; use the matching pyro-vae release"
    )


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 1}], ids=["not-a-dict", "no-version"])
def test_foreign_files_are_refused(tmp_path, content):
    path = tmp_path / "c.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{str(path)!r} is not a pyro-vae checkpoint (no format_version)"


def test_wrong_architecture_is_refused_naming_the_first_difference(tmp_path):
    """The refusal names the first tensor that differs (shape, or missing on either side) and
    counts the rest, from the two state tables, not torch's heading line."""
    state = _state()["model_state"]  # hidden (3,)
    other = build_vae(ModelConfig(event_shape=(4,), latent_dim=2, hidden=(5,)))
    advice = "rebuild the model with the checkpoint's configuration or retrain"
    cases = [
        # the two hidden layers' weights and biases: 6 tensors of other shapes
        (state, "'encoder.net.0.weight' has shape (3, 4) in the file and (5, 4) in the model, "
                "and 5 more differ"),
        # 10 tensors missing, 1 the model does not have
        ({"bogus": torch.zeros(1)}, "the file lacks 'encoder.net.0.weight', and 10 more differ"),
    ]  # fmt: skip
    for table, reason in cases:
        with pytest.raises(CheckpointError) as info:
            restore_model(other, table, "c.pt")
        assert str(info.value) == (
            f"checkpoint in 'c.pt' does not match the model's architecture ({reason}); {advice}"
        )


def test_an_architecture_mismatch_names_one_difference_or_the_loader_s_reason_whole():
    """One difference is named alone, two with "1 more differs"; where the tables agree in
    names and shapes but the loader refuses anyway, the first line of its reason (whole; the
    exception's type for an empty one)."""
    advice = "rebuild the model with the checkpoint's configuration or retrain"
    with pytest.raises(CheckpointError) as info:
        restore_model(torch.nn.Linear(4, 2), torch.nn.Linear(3, 2).state_dict(), "c.pt")
    assert str(info.value) == (
        "checkpoint in 'c.pt' does not match the model's architecture ('weight' has shape "
        f"(2, 3) in the file and (2, 4) in the model); {advice}"
    )
    extra = {**torch.nn.Linear(3, 2).state_dict(), "scale": torch.ones(1)}
    with pytest.raises(CheckpointError) as info:
        restore_model(torch.nn.Linear(3, 2), extra, "c.pt")
    assert str(info.value) == (
        "checkpoint in 'c.pt' does not match the model's architecture (the file has 'scale', "
        f"which the model lacks); {advice}"
    )
    with pytest.raises(CheckpointError) as info:
        restore_model(torch.nn.Linear(3, 2), {"weight": torch.zeros(2, 3)}, "c.pt")
    assert str(info.value) == (
        "checkpoint in 'c.pt' does not match the model's architecture (the file lacks 'bias'); "
        f"{advice}"
    )
    wrong_both = {"weight": torch.zeros(2, 2), "bias": torch.zeros(3)}
    with pytest.raises(CheckpointError) as info:
        restore_model(torch.nn.Linear(3, 2), wrong_both, "c.pt")
    assert str(info.value) == (
        "checkpoint in 'c.pt' does not match the model's architecture ('weight' has shape "
        f"(2, 2) in the file and (2, 3) in the model, and 1 more differs); {advice}"
    )

    class Refusing(torch.nn.Linear):
        def __init__(self, error: Exception):
            super().__init__(3, 2)
            self.error = error

        def load_state_dict(self, *args, **kwargs):
            raise self.error

    state = torch.nn.Linear(3, 2).state_dict()
    for error, reason in [
        (RuntimeError("  layout 2 is not layout 1  "), "layout 2 is not layout 1"),
        (AttributeError(), "AttributeError"),
    ]:
        with pytest.raises(CheckpointError) as info:
            restore_model(Refusing(error), state, "d.pt")
        assert str(info.value) == (
            f"checkpoint in 'd.pt' does not match the model's architecture ({reason}); {advice}"
        )


def _tiny_run(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 4, generator=g)
    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    config = ModelConfig(event_shape=(4,), latent_dim=2, hidden=(3,))
    train = TrainConfig(epochs=1, batch_size=10, valid_num_samples=2)
    train_run("tiny", config, train, tmp_path / "run", num_samples=2, progress=False, data=data)
    return tmp_path / "run"


def test_run_checkpoint_stores_version_and_configuration_and_reloads(tmp_path):
    run = _tiny_run(tmp_path)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["format_version"] == FORMAT_VERSION
    assert state["model_config"]["hidden"] == [3]
    assert state["train_config"]["batch_size"] == 10
    vae, config = load_run(run)
    assert config["dataset"] == "tiny"
    for k, v in vae.state_dict().items():
        assert torch.equal(v, state["model_state"][k])


def test_run_whose_config_no_longer_matches_its_checkpoint_is_refused(tmp_path):
    run = _tiny_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden"] = [7]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"differs from the checkpoint's model in \['hidden'\]"
    ):
        load_run(run)


def test_the_random_state_round_trips_every_generator_exactly():
    import random

    import numpy as np

    from pyro_vae.train.rng import get_rng_state, set_rng_state

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    state = get_rng_state()
    expected = (torch.rand(3), random.random(), np.random.standard_normal(2))
    torch.manual_seed(9)
    random.seed(9)
    np.random.seed(9)
    set_rng_state(state)
    got = (torch.rand(3), random.random(), np.random.standard_normal(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    assert np.array_equal(got[2], expected[2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_cuda_random_state_on_a_machine_without_it_is_refused_whole():
    from pyro_vae.errors import CheckpointError
    from pyro_vae.train.rng import get_rng_state, set_rng_state

    state = {**get_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}
    with pytest.raises(CheckpointError) as info:
        set_rng_state(state)
    assert str(info.value) == (
        "the checkpoint holds the random state of 2 CUDA device(s) and this machine has "
        "fewer, so the run cannot continue identically; resume it on a machine with that many "
        "GPUs, or start a new run"
    )


@pytest.mark.parametrize(
    "damage",
    ["missing", "wrong type", "numpy key too large", "numpy key negative", "python", "python -"],
)
def test_an_unreadable_random_state_is_one_checkpoint_error(damage):
    """A damaged state is refused, never restored wrapped: a NumPy key value outside uint32
    (NumPy would take it modulo 2**32) and a Python state value outside 32 bits included."""
    from pyro_vae.train.rng import get_rng_state, set_rng_state

    state = get_rng_state()
    if damage == "missing":
        del state["python"]
    elif damage == "wrong type":
        state["numpy"] = state["numpy"][:3]
    elif damage.startswith("numpy key"):
        name, keys, *rest = state["numpy"]
        keys = keys.clone()
        keys[5] = 2**32 + 7 if damage.endswith("large") else -1
        state["numpy"] = (name, keys, *rest)
    else:
        version, mt, gauss = state["python"]
        state["python"] = (version, (2**40 if damage == "python" else -1, *mt[1:]), gauss)
    with pytest.raises(CheckpointError) as info:
        set_rng_state(state)
    message = str(info.value)
    assert message.startswith("the checkpoint's random-number state is unreadable (")
    assert message.endswith("); it is corrupted, restart the run with --overwrite")
    reasons = {
        "numpy key too large": "the NumPy key holds values outside [0, 2**32)",
        "numpy key negative": "the NumPy key holds values outside [0, 2**32)",
        "python": "the Python state holds values outside [0, 2**32)",
    }
    if damage in reasons:
        assert message == (
            f"the checkpoint's random-number state is unreadable ({reasons[damage]}); it is "
            "corrupted, restart the run with --overwrite"
        )


def _linear_state(**changes):
    state = torch.nn.Linear(3, 2).state_dict()
    return {**state, **changes}


@pytest.mark.parametrize(
    "model_state, message",
    [
        (
            [1, 2],
            "checkpoint in 'c.pt' holds no model state table; restore it or retrain",
        ),
        (
            _linear_state(bias=[0.0, 0.0]),
            "checkpoint in 'c.pt': 'bias' is a list, not a tensor; restore the checkpoint or "
            "retrain",
        ),
        (
            _linear_state(weight=torch.zeros(2, 3, dtype=torch.float64)),
            "checkpoint in 'c.pt': 'weight' is torch.float64, the model expects torch.float32; "
            "the file was altered, restore it or retrain",
        ),
        (
            _linear_state(bias=torch.tensor([0.0, float("inf")])),
            "checkpoint in 'c.pt': 'bias' holds NaN or infinite values; restore an earlier "
            "checkpoint or retrain",
        ),
    ],
    ids=["not-a-table", "not-a-tensor", "other-dtype", "infinite"],
)
def test_restore_model_refusals_are_checked_whole(model_state, message):
    with pytest.raises(CheckpointError, match=whole(message)):
        restore_model(torch.nn.Linear(3, 2), model_state, "c.pt")


def test_a_zip_checkpoint_with_a_corrupted_directory_is_refused_whole(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    data = bytearray(path.read_bytes())
    directory = data.rindex(b"PK\x01\x02")  # the last central-directory entry
    data[directory : directory + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    pattern = (
        "^"
        + re.escape(f"checkpoint {str(path)!r} is a corrupted zip file (")
        + ".+"  # zipfile's own reason
        + re.escape("); restore it or retrain")
        + r"\Z"
    )
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_members_declaring_exactly_the_inflation_limit_load_and_one_byte_more_is_refused(
    tmp_path, monkeypatch
):
    """The limit is inclusive: with the cap set to the total its members declare, a torch.save
    checkpoint loads; with the cap one byte lower it is refused (whole message)."""
    import zipfile

    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    with zipfile.ZipFile(path) as archive:
        declared = sum(m.file_size for m in archive.infolist())
    assert declared < 2 * path.stat().st_size + 2**20  # the cap is the limit that binds
    monkeypatch.setattr(checkpoint, "MAX_INFLATED_BYTES", declared)
    assert load_checkpoint(path)["format_version"] == FORMAT_VERSION
    monkeypatch.setattr(checkpoint, "MAX_INFLATED_BYTES", declared - 1)
    message = (
        f"checkpoint {str(path)!r} declares {declared} bytes once inflated (limit "
        f"{declared - 1}) or compressed members []; torch.save never writes that: refused"
    )
    with pytest.raises(CheckpointError, match=whole(message)):
        load_checkpoint(path)
