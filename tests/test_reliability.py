"""A run directory handed over by someone else: every load checks what it reads.

Edited configs, altered weights, zip bombs, other data, failed resumes, huge sizes, tiny
splits and unprintable names each end in one PyroVAEError line, never in a wrong number.
"""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch
from refusals import whole

from pyro_vae import cli
from pyro_vae.data import DataSplits, load_digits
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.runs import (
    RunDir,
    check_size,
    load_run,
    load_run_data,
    resume_run,
    train_run,
    write_figures,
)
from pyro_vae.train import TrainConfig, fit, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """A one-epoch run on the full digits, as `pyro-vae train` would write it."""
    path = tmp_path_factory.mktemp("runs") / "r"
    config = ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(8,))
    train = TrainConfig(epochs=1, batch_size=256, valid_num_samples=2)
    train_run("digits", config, train, path, num_samples=4, progress=False, data=digits)
    return RunDir(path)


def copy_run(run: RunDir, dest) -> RunDir:
    import shutil

    shutil.copytree(run.path, dest)
    return RunDir(dest)


def test_edited_likelihood_is_refused_on_load(run, tmp_path):
    edited = copy_run(run, tmp_path / "e")
    config = edited.read_json(RunDir.CONFIG)
    config["model"]["likelihood"] = "normal"  # same parameter shapes, another model
    edited.write_json(RunDir.CONFIG, config)
    with pytest.raises(CheckpointError, match=r"differs from the checkpoint's model in \['like"):
        load_run(edited.path)


def test_edited_kind_is_refused_on_load(run, tmp_path):
    edited = copy_run(run, tmp_path / "e")
    config = edited.read_json(RunDir.CONFIG)
    config["kind"] = "ae"
    edited.write_json(RunDir.CONFIG, config)
    with pytest.raises(CheckpointError, match=r"names kind 'ae'"):
        load_run(edited.path)


@pytest.mark.parametrize(
    "alter, tail",
    [
        (
            lambda t: t.to(torch.int64),
            "is torch.int64, the model expects torch.float32; the file was altered, restore it or "
            "retrain",
        ),
        (
            lambda t: t.to(torch.float64),
            "is torch.float64, the model expects torch.float32; the file was altered, restore it "
            "or retrain",
        ),
        (
            lambda t: torch.full_like(t, float("nan")),
            "holds NaN or infinite values; restore an earlier checkpoint or retrain",
        ),
        (
            lambda t: torch.full_like(t, float("inf")),
            "holds NaN or infinite values; restore an earlier checkpoint or retrain",
        ),
    ],
    ids=["int64", "float64", "nan", "inf"],
)
def test_altered_weights_are_refused_on_load(run, tmp_path, alter, tail):
    edited = copy_run(run, tmp_path / "e")
    state = load_checkpoint(edited.file(RunDir.CHECKPOINT))
    key = next(k for k in state["model_state"] if k.endswith("weight"))
    state["model_state"][key] = alter(state["model_state"][key])
    state.pop("format_version")
    save_checkpoint(edited.file(RunDir.CHECKPOINT), state)
    with pytest.raises(CheckpointError) as info:
        load_run(edited.path)
    assert str(info.value) == f"checkpoint in {str(edited.path)!r}: {key!r} {tail}"


def test_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    bomb = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (32 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bomb)
    limit = 2 * bomb.stat().st_size + 2**20  # twice the file and a mebibyte, under the cap
    assert str(info.value) == (
        f"checkpoint {str(bomb)!r} declares 33554432 bytes once inflated (limit {limit}) or "
        "compressed members ['archive/data.pkl']; torch.save never writes that: refused"
    )


def test_torch_save_checkpoints_pass_the_inflation_check(run):
    assert load_checkpoint(run.file(RunDir.CHECKPOINT))["epoch"] == 1


def test_fingerprint_is_recorded_and_other_data_are_refused(run, digits):
    config = run.read_json(RunDir.CONFIG)
    assert config["data_fingerprint"]["train"]["size"] == digits.train.shape[0]
    assert load_run_data(config).train.shape == digits.train.shape
    swapped = {**config, "data_fingerprint": {**config["data_fingerprint"]}}
    swapped["data_fingerprint"]["test"] = {"size": 180, "sha256": "0" * 64}
    with pytest.raises(
        DataError,
        match=whole(
            "the test data differ from those the run of 'digits' was trained on (sizes or sha256 "
            "in its config.json); restore the original data, or train a new run on these"
        ),
    ):
        load_run_data(swapped)


def test_ranks_holding_other_data_are_named_by_the_rank_check(monkeypatch):
    """The check every rank of a torchrun job makes, in this process: the other ranks' split
    digests come from a stand-in for all_gather. The same data on every rank pass; ranks
    whose data differ from rank 0's are named with the splits that differ."""
    import pyro_vae.train.fingerprint as fingerprints
    from pyro_vae.runtime import ProcessGroup

    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, generator=g)
    same = fingerprints.data_fingerprint(DataSplits("a", x[:6], x[6:9], x[9:]))
    train = fingerprints.data_fingerprint(DataSplits("a", x[:6].flip(0), x[6:9], x[9:]))
    test = fingerprints.data_fingerprint(DataSplits("a", x[:6], x[6:9], x[9:] + 1))

    def digests(fingerprint):
        """The tensor this rank contributes to the gather."""
        seen = []
        monkeypatch.setattr(fingerprints, "all_gather", lambda value: seen.append(value) or [value])
        fingerprints.check_same_data_on_every_rank(fingerprint, ProcessGroup(0, 2))
        return seen[0]

    def check(*ranks):
        gathered = [digests(f) for f in ranks]
        monkeypatch.setattr(fingerprints, "all_gather", lambda value: gathered)
        group = ProcessGroup(0, len(ranks))
        fingerprints.check_same_data_on_every_rank(ranks[0], group)

    check(same, same)
    check(same, same, same, same)
    tail = (
        "that differ from rank 0's (sizes or sha256); give every process the same data set "
        "(the same files at the same paths on every machine)"
    )
    with pytest.raises(DataError) as info:
        check(same, same, train, same)
    assert str(info.value) == f"rank 2 of 4 holds train data {tail}"
    with pytest.raises(DataError) as info:
        check(same, test, same, train)
    assert str(info.value) == f"ranks 1, 3 of 4 hold train and test data {tail}"


def test_failed_resume_leaves_config_json_untouched(run, tmp_path, digits):
    copy = copy_run(run, tmp_path / "c")
    before = copy.file(RunDir.CONFIG).read_bytes()
    other = DataSplits("digits", digits.train.flip(0), digits.valid, digits.test)
    with pytest.raises(DataError) as info:
        resume_run(copy.path, epochs=3, progress=False, data=other)
    assert str(info.value) == (
        f"the train data differ from those {copy.path} was trained on (sizes or sha256 in its "
        "config.json); restore the original data, or train a new run on these"
    )
    config = copy.read_json(RunDir.CONFIG)
    config["train"]["lr"] = 0.5  # a setting the checkpoint disagrees with
    copy.write_json(RunDir.CONFIG, config)
    edited = copy.file(RunDir.CONFIG).read_bytes()
    with pytest.raises(ConfigError) as info:
        resume_run(copy.path, epochs=3, progress=False, data=digits)
    assert str(info.value) == (
        f"cannot resume {str(copy.path)!r} with different training settings ['lr']; resume with "
        "the run's own configuration or start a new run"
    )
    assert copy.file(RunDir.CONFIG).read_bytes() == edited != before


@pytest.mark.parametrize("seed", [-1, 2**32, 10**30, True, 1.5])
def test_negative_huge_or_non_integer_seeds_are_refused(seed):
    if isinstance(seed, int) and not isinstance(seed, bool):
        message = f"seed must be in [0, {2**32 - 1}], got {seed}; pick a smaller one"
    else:
        message = f"seed must be an integer, got {seed!r}"
    with pytest.raises(ConfigError, match=whole(message)):
        TrainConfig(seed=seed)


@pytest.mark.parametrize(
    "value, name",
    [
        (10**9, "-n (samples drawn)"),
        (10**8, "--steps (interpolation steps)"),
        (10**12, "--num-samples (importance samples per point)"),
        (0, "-n (samples drawn)"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(value, name):
    with pytest.raises(ConfigError, match=r"must be an integer from 1 to \d+"):
        check_size(value, name)


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "-n", str(10**9)],
        ["plot", "--kind", "interpolation", "--steps", str(10**8)],
        ["evaluate", "--num-samples", str(10**12)],
    ],
    ids=["sample", "interpolation", "evaluate"],
)
def test_cli_refuses_absurd_sizes_in_one_line(run, capsys, argv):
    code = cli.main([argv[0], str(run.path), *argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "must be an integer from 1 to" in err[0]


@pytest.mark.parametrize("n_test", [0, 1])
def test_splits_too_small_for_a_run_are_refused_before_training(tmp_path, digits, n_test):
    if n_test == 0:
        with pytest.raises(DataError):  # DataSplits itself refuses an empty split
            DataSplits("few", digits.train[:12], digits.valid[:2], digits.test[:0])
        return
    few = DataSplits("few", digits.train[:12], digits.valid[:2], digits.test[:n_test])
    config = ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(8,))
    with pytest.raises(DataError, match="test split of 'few' has 1 point"):
        train_run("few", config, TrainConfig(epochs=1, batch_size=4), tmp_path / "r", data=few)
    assert not (tmp_path / "r").exists()


def test_undecodable_data_name_is_shown_escaped_in_figures(run, tmp_path, digits):
    model, _ = load_run(run.path)
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    data = DataSplits(name, digits.train[:64], digits.valid[:16], digits.test[:16])
    history = [json.loads(line) for line in run.file(RunDir.METRICS).read_text().splitlines()]
    written = write_figures(model, data, history, RunDir(tmp_path / "f"), fmt="png")
    assert written and all(p.is_file() for p in written)


def test_checkpoint_from_before_model_kinds_resumes_as_a_vae(run, tmp_path, digits):
    old = copy_run(run, tmp_path / "old")
    state = load_checkpoint(old.file(RunDir.CHECKPOINT))
    state.pop("format_version"), state.pop("kind")
    save_checkpoint(old.file(RunDir.CHECKPOINT), state)
    results = resume_run(old.path, epochs=2, progress=False, data=digits)
    assert results["epochs"] == 2 and load_checkpoint(old.file(RunDir.CHECKPOINT))["kind"] == "vae"


# --- round three: streamed files that change under a run, checks before anything is written --


def _streamed(tmp_path, n: int = 120, bad_row: int | None = None):
    from pyro_vae.data.streaming import load_streaming

    x = (np.random.default_rng(0).random((n, 6)) > 0.5).astype(np.float32)
    if bad_row is not None:
        x[bad_row, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    return load_streaming(tmp_path / "x.npy")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_streamed_file_truncated_while_training_names_the_file_and_the_step(
    tmp_path, num_workers
):
    data = _streamed(tmp_path)  # its valid and test points are read; the file stays open
    with open(tmp_path / "x.npy", "r+b") as f:
        f.truncate(200)
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    with pytest.raises(DataError) as info:
        fit(
            vae, data, TrainConfig(epochs=1, batch_size=16), progress=False, num_workers=num_workers
        )
    # the file's own refusal says truncated or changed, whichever the read meets first
    assert re.fullmatch(
        re.escape(f"cannot read training batch 0 of epoch 1: {str(tmp_path / 'x.npy')!r} ")
        + r"(was truncated or replaced while being read: row \d+ has \d+ of its 24 bytes|"
        + re.escape("changed after it was opened (size, time or file differ)")
        + ")"
        + re.escape("; leave the file unchanged while training, or restore it"),
        str(info.value),
    ), str(info.value)


@pytest.mark.parametrize(
    "error, reason", [(OSError(), "OSError"), (ValueError(" \n "), "ValueError")]
)
def test_a_batch_read_error_without_a_message_is_named_by_its_type(error, reason):
    """A batch whose read raises an error with no text is refused naming the step, the epoch
    and the error's type; the batches before it are yielded with their steps."""
    from pyro_vae.train.loop import named_batches

    def batches():
        yield torch.zeros(2)
        yield torch.ones(2)
        raise error

    got = []
    with pytest.raises(DataError) as info:
        for step, x in named_batches(batches(), epoch=3):
            got.append((step, x.tolist()))
    assert got == [(0, [0.0, 0.0]), (1, [1.0, 1.0])]
    assert str(info.value) == f"cannot read training batch 2 of epoch 3: {reason}"
    assert info.value.__cause__ is error


def test_nan_in_the_middle_of_a_streamed_file_is_refused_before_the_run_directory(tmp_path):
    data = _streamed(tmp_path, bad_row=9)  # row 9 falls in the training split
    config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))
    with pytest.raises(
        DataError,
        match=whole(
            "training point 82 (row 9 of its source) of the streamed split has NaN or infinite "
            "values (points 0 to 95, read before training); clean the file or drop that point"
        ),
    ):
        train_run("x", config, TrainConfig(epochs=1, batch_size=16), tmp_path / "r", data=data)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"num_workers": -1},
            "num_workers (--num-workers) must be from 0 to 256, got -1; use 0 to read in the "
            "training process",
        ),
        ({"num_workers": 1.5}, "num_workers must be an integer from 0 to 256, got 1.5"),
        (
            {"device": "tpu"},
            "unknown device 'tpu'; use one of auto, cpu, cuda, cuda:N (N a GPU index), mps",
        ),
        ({"fmt": "svgz"}, "unknown figure format 'svgz'; choose one of ['png', 'pdf']"),
    ],
    ids=["workers-negative", "workers-float", "device-unknown", "format-unknown"],
)
def test_refused_settings_leave_no_run_directory(tmp_path, digits, options, message):
    config = ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(8,))
    with pytest.raises(ConfigError) as info:
        train_run("digits", config, TrainConfig(epochs=1), tmp_path / "r", data=digits, **options)
    assert str(info.value) == message
    assert not (tmp_path / "r").exists()


def test_a_finished_run_leaves_no_temporary_files(run):
    assert not [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")]
    assert len(run.read_metrics()) == 1
