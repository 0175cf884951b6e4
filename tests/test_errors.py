"""Bad inputs at the library's edges and the CLI: each raises one clear, one-line error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import cli
from pyro_vae.analysis.latent_space import apply_attribute
from pyro_vae.analysis.plots import check_figure_path
from pyro_vae.data import DataSplits, load_array_file, load_dataset
from pyro_vae.data.files import write_atomically
from pyro_vae.data.images import read_idx
from pyro_vae.errors import CheckpointError, ConfigError, DataError, PyroVAEError, TrainingError
from pyro_vae.infer import log_likelihood
from pyro_vae.infer.report import inference_report
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.models.config import build_model, load_config_file
from pyro_vae.parts.registry import import_plugins
from pyro_vae.runs import RunDir, check_size, load_run, train_run
from pyro_vae.train import TrainConfig, fit, load_checkpoint, restore_model

ROOT = Path(__file__).resolve().parents[1]
EVENT = (6,)


def tiny_vae(likelihood: str = "bernoulli"):
    torch.manual_seed(0)
    return build_vae(
        ModelConfig(event_shape=EVENT, latent_dim=2, hidden=(8,), likelihood=likelihood)
    )


def tiny_data(n: int = 20, event=EVENT, fill=None) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n + 10, *event), generator=g)
    if fill is not None:
        x = torch.full_like(x, fill)
    return DataSplits("tiny", x[:n], x[n : n + 5], x[n + 5 :])


def _ll(data, **kw):
    vae = tiny_vae()
    return log_likelihood(vae.model, vae.guide, data, num_samples=kw.pop("num_samples", 3), **kw)


def _ll_plain_model(data):
    # A model given as a plain function (no VAE behind it): the traced shapes are checked.
    vae = tiny_vae()
    return log_likelihood(lambda x: vae.model(x), lambda x: vae.guide(x), data, num_samples=3)


def _fit(data, num_workers: int = 0, **config):
    return fit(
        tiny_vae(),
        data,
        TrainConfig(**{"epochs": 1, "batch_size": 5, **config}),
        progress=False,
        num_workers=num_workers,
    )


def _splits(train, valid=None, test=None):
    ok = torch.rand(4, *EVENT)
    return DataSplits("bad", train, ok if valid is None else valid, ok if test is None else test)


def _saved(tmp: Path, name: str, array) -> str:
    path = tmp / name
    np.save(path, array, allow_pickle=True)
    return str(path)


NAN = torch.rand(10, *EVENT).index_put_(
    (torch.tensor([3]), torch.tensor([1])), torch.tensor(float("nan"))
)

# (id, call(tmp_path), exception type, the whole message: {tmp} stands for tmp_path; a
# pattern for the whole line where a part varies from run to run)
LIBRARY_CASES = [
    (
        "ll-numpy",
        lambda t: _ll(np.zeros((4, 6), np.float32)),
        DataError,
        "data must be a torch.Tensor, got ndarray; convert it with torch.as_tensor(x, "
        "dtype=torch.float32)",
    ),
    (
        "ll-list",
        lambda t: _ll([[0.0] * 6]),
        DataError,
        "data must be a torch.Tensor, got list; convert it with torch.as_tensor(x, "
        "dtype=torch.float32)",
    ),
    (
        "ll-int-dtype",
        lambda t: _ll(torch.ones(4, 6, dtype=torch.int64)),
        DataError,
        "data has dtype torch.int64, need a floating-point tensor; convert it with x.float() "
        "(divide 8-bit pixels by 255)",
    ),
    (
        "ll-1d",
        lambda t: _ll(torch.rand(6)),
        DataError,
        "data has shape (6,); need (N, *event_shape) with one row per data point (use "
        "x.unsqueeze(-1) for scalar data points)",
    ),
    (
        "ll-empty",
        lambda t: _ll(torch.rand(0, 6)),
        DataError,
        "data has no data points (shape (0, 6)); pass at least one data point",
    ),
    (
        "ll-nan",
        lambda t: _ll(NAN),
        DataError,
        "data contains 1 NaN or infinite values; clean or impute the data first",
    ),
    (
        "ll-inf",
        lambda t: _ll(torch.full((3, 6), float("inf"))),
        DataError,
        "data contains 18 NaN or infinite values; clean or impute the data first",
    ),
    (
        "ll-wrong-event",
        lambda t: _ll(torch.rand(4, 7)),
        DataError,
        "data points have shape (7,) but the model expects (6,); reshape the data to (N, 6) or "
        "build the model with the data's event_shape",
    ),
    (
        "ll-extra-dim",
        lambda t: _ll(torch.rand(4, 1, 6)),
        DataError,
        "data points have shape (1, 6) but the model expects (6,); reshape the data to (N, 6) or "
        "build the model with the data's event_shape",
    ),
    (
        "ll-plain-extra-dim",
        lambda t: _ll_plain_model(torch.rand(4, 2, 6)),
        DataError,
        "data is broadcast at site 'z' (values (2, 2, 2), distribution (2, 2)); pass data shaped "
        "(N, *event_shape) as in training",
    ),
    (
        "ll-plain-wrong-event",
        lambda t: _ll_plain_model(torch.rand(4, 5)),
        DataError,
        "the model cannot read data of shape [(2, 5)] (mat1 and mat2 shapes cannot be multiplied "
        "(2x5 and 6x8)); pass data shaped (N, *event_shape) as in training",
    ),
    (
        "ll-zero-samples",
        lambda t: _ll(torch.rand(4, 6), num_samples=0),
        ConfigError,
        "num_samples must be an integer of at least 1, got 0",
    ),
    (
        "ll-float-samples",
        lambda t: _ll(torch.rand(4, 6), num_samples=2.5),
        ConfigError,
        "num_samples must be an integer of at least 1, got 2.5",
    ),
    (
        "ll-zero-batch",
        lambda t: _ll(torch.rand(4, 6), batch_size=0),
        ConfigError,
        "batch_size must be an integer of at least 1, got 0",
    ),
    (
        "latent-zero",
        lambda t: ModelConfig(event_shape=EVENT, latent_dim=0),
        ConfigError,
        "latent_dim must be at least 1, got 0",
    ),
    (
        "hidden-zero",
        lambda t: ModelConfig(event_shape=EVENT, hidden=(0,)),
        ConfigError,
        "hidden must be at least 1, got [0]",
    ),
    (
        "unknown-likelihood",
        lambda t: ModelConfig(event_shape=EVENT, likelihood="gamma"),
        ConfigError,
        "unknown likelihood 'gamma'; choose one of ['bernoulli', 'continuous_bernoulli', "
        "'discretized_logistic', 'heteroscedastic_normal', 'laplace', 'learned_normal', "
        "'negative_binomial', 'normal', 'poisson']",
    ),
    (
        "epochs-zero",
        lambda t: TrainConfig(epochs=0),
        ConfigError,
        "epochs must be at least 1, got 0",
    ),
    (
        "lr-nan",
        lambda t: TrainConfig(lr=float("nan")),
        ConfigError,
        "learning rate must be a positive number, got nan",
    ),
    (
        "clip-negative",
        lambda t: TrainConfig(clip_grad=-1.0),
        ConfigError,
        "clip_grad (--clip-grad) must be a positive finite number, got -1.0",
    ),
    (
        "particles-zero",
        lambda t: TrainConfig(num_particles=0),
        ConfigError,
        "num_particles must be an integer of at least 1, got 0",
    ),
    (
        "fit-batch-too-big",
        lambda t: _fit(tiny_data(), batch_size=50),
        ConfigError,
        "batch size 50 exceeds the 20 training points; lower --batch-size",
    ),
    (
        "fit-shape-mismatch",
        lambda t: _fit(tiny_data(event=(7,))),
        DataError,
        "data points have shape (7,) but the model expects (6,); build the model with the data's "
        "event_shape",
    ),
    (
        "fit-outside-support",
        lambda t: _fit(tiny_data(fill=3.0)),
        DataError,
        "Bernoulli likelihood needs values in [0, 1]; data range [3, 3] is outside it; rescale the "
        "data or choose another --likelihood",
    ),
    (
        "fit-not-splits",
        lambda t: _fit(torch.rand(20, 6)),
        DataError,
        "fit needs a pyro_vae.data.DataSplits, got Tensor; wrap tensors with DataSplits(name, "
        "train, valid, test) or use load_dataset",
    ),
    (
        "splits-empty",
        lambda t: _splits(torch.rand(0, 6)),
        DataError,
        "the train split of 'bad' has no data points (shape (0, 6)); pass at least one data point",
    ),
    (
        "splits-int",
        lambda t: _splits(torch.ones(5, 6, dtype=torch.uint8)),
        DataError,
        "the train split of 'bad' has dtype torch.uint8, need a floating-point tensor; convert it "
        "with x.float() (divide 8-bit pixels by 255)",
    ),
    (
        "splits-nan",
        lambda t: _splits(torch.rand(5, 6), valid=NAN),
        DataError,
        "the valid split of 'bad' contains 1 NaN or infinite values; clean or impute the data "
        "first",
    ),
    (
        "splits-shape",
        lambda t: _splits(torch.rand(5, 6), test=torch.rand(5, 3)),
        DataError,
        "the test split has data-point shape (3,) but train has (6,); every split needs the same "
        "shape",
    ),
    (
        "dataset-unknown",
        lambda t: load_dataset("imagenet"),
        DataError,
        "unknown data set 'imagenet'; use one of ['digits', 'cifar10', 'fashion-mnist', 'kmnist', "
        "'mnist'], the path of a .npy/.npz file, or a folder of images",
    ),
    (
        "file-missing",
        lambda t: load_array_file(t / "nope.npy"),
        DataError,
        "data file '{tmp}/nope.npy' does not exist; check the path",
    ),
    (
        "file-object-dtype",
        lambda t: load_array_file(_saved(t, "o.npy", np.array([{}, {}], dtype=object))),
        DataError,
        "'{tmp}/o.npy' holds a pickled (object) array, which is never loaded because unpickling "
        "runs code; save numeric arrays with numpy.save/savez",
    ),
    (
        "file-1d",
        lambda t: load_array_file(_saved(t, "v.npy", np.arange(10.0))),
        DataError,
        "{tmp}/v.npy: array has shape (10,); need (N, features...) with one row per data point",
    ),
    (
        "checkpoint-missing",
        lambda t: load_checkpoint(t / "none.pt"),
        CheckpointError,
        "no checkpoint at '{tmp}/none.pt'; train a model there first",
    ),
    (
        "run-missing",
        lambda t: load_run(t / "no-run"),
        CheckpointError,
        "run directory '{tmp}/no-run' does not exist; check the path",
    ),
    (
        "rundir-exists",
        lambda t: RunDir(_nonempty(t)).create(),
        ConfigError,
        "run directory '{tmp}/run' already exists; pass --overwrite to replace it, --resume to "
        "continue it, or choose another --name",
    ),
    (
        "rundir-overwrite-foreign",
        lambda t: RunDir(_nonempty(t)).create(overwrite=True),
        ConfigError,
        "--overwrite refused: '{tmp}/run' is not a pyro-vae run directory (no .pyro-vae-run or "
        "config.json + checkpoint); remove it yourself or choose another --name",
    ),
    (
        "run-name-parent",
        lambda t: RunDir.named(t, ".."),
        ConfigError,
        "run name '..' must be a single directory name (no '/', '.' or '..'); choose a plain "
        "--name such as digits-beta2",
    ),
    (
        "run-name-nested",
        lambda t: RunDir.named(t, "a/b"),
        ConfigError,
        "run name 'a/b' must be a single directory name (no '/', '.' or '..'); choose a plain "
        "--name such as digits-beta2",
    ),
    (
        "run-name-empty",
        lambda t: RunDir.named(t, ""),
        ConfigError,
        "run name must be a non-empty string, got ''",
    ),
    (
        "run-locked",
        lambda t: _locked_twice(t),
        CheckpointError,
        # the holder's pid, host and start time vary: a pattern for the whole line
        re.compile(
            r"run directory '\{tmp\}/r' is in use by another process \(pid \d+ on \S+ since "
            r"\S+\); wait for it to finish or stop it, then retry"
        ),
    ),
    (
        "seed-negative",
        lambda t: TrainConfig(seed=-1),
        ConfigError,
        "seed must be in [0, 4294967295], got -1; pick a smaller one",
    ),
    (
        "seed-huge",
        lambda t: TrainConfig(seed=2**64),
        ConfigError,
        "seed must be in [0, 4294967295], got 18446744073709551616; pick a smaller one",
    ),
    (
        "seed-float",
        lambda t: TrainConfig(seed=0.5),
        ConfigError,
        "seed must be an integer, got 0.5",
    ),
    (
        "epochs-str",
        lambda t: TrainConfig(epochs="3"),
        ConfigError,
        "epochs must be at least 1, got '3'",
    ),
    (
        "lr-bool",
        lambda t: TrainConfig(lr=True),
        ConfigError,
        "learning rate must be a positive number, got True",
    ),
    (
        "fit-run-dir-path",
        lambda t: fit(tiny_vae(), tiny_data(), TrainConfig(batch_size=10), run_dir=str(t)),
        ConfigError,
        "fit's run_dir must be a pyro_vae.runs.RunDir, got str; pass run_dir=RunDir(path)",
    ),
    (
        "fit-not-a-model",
        lambda t: fit(object(), tiny_data(), TrainConfig()),
        ConfigError,
        "expected a pyro_vae model (a VAE, an Autoencoder or a registered model kind's module), "
        "got object; build one with build_model(config)",
    ),
    (
        "checkpoint-compressed",
        lambda t: load_checkpoint(_zip_bomb(t)),
        CheckpointError,
        "checkpoint '{tmp}/bomb.pt' declares 4194304 bytes once inflated (limit 1056996) or "
        "compressed members ['archive/data.pkl']; torch.save never writes that: refused",
    ),
    (
        "checkpoint-not-a-table",
        lambda t: restore_model(tiny_vae(), [1, 2], "x"),
        CheckpointError,
        "checkpoint in 'x' holds no model state table; restore it or retrain",
    ),
    (
        "checkpoint-int-weights",
        lambda t: restore_model(tiny_vae(), _int_state(), "x"),
        CheckpointError,
        "checkpoint in 'x': 'encoder.net.0.weight' is torch.int64, the model expects "
        "torch.float32; the file was altered, restore it or retrain",
    ),
    (
        "size-huge",
        lambda t: check_size(10**9, "-n (samples drawn)"),
        ConfigError,
        "-n (samples drawn) must be an integer from 1 to 10000, got 1000000000",
    ),
    # a wrong type at a public entry point: one PyroVAEError line, not an AttributeError
    (
        "build-vae-dict",
        lambda t: build_vae({"event_shape": EVENT}),
        ConfigError,
        "a model is built from a pyro_vae.ModelConfig, got dict; pass ModelConfig(event_shape=..., "
        "**options) (ModelConfig.from_dict reads a dict)",
    ),
    (
        "build-model-dict",
        lambda t: build_model({"latent_dim": 2}),
        ConfigError,
        "a model is built from a pyro_vae.ModelConfig, got dict; pass ModelConfig(event_shape=..., "
        "**options) (ModelConfig.from_dict reads a dict)",
    ),
    (
        "fit-config-dict",
        lambda t: fit(tiny_vae(), tiny_data(), {"epochs": 1}),
        ConfigError,
        "fit's config must be a pyro_vae.train.TrainConfig, got dict; pass TrainConfig(**options)",
    ),
    (
        "fit-workers-negative",
        lambda t: _fit(tiny_data(), num_workers=-1),
        ConfigError,
        "num_workers (--num-workers) must be from 0 to 256, got -1; use 0 to read in the training "
        "process",
    ),
    (
        "fit-workers-over-256",
        lambda t: _fit(tiny_data(), num_workers=257),
        ConfigError,
        "num_workers (--num-workers) must be from 0 to 256, got 257; use 0 to read in the training "
        "process",
    ),
    (
        "train-run-model-dict",
        lambda t: _train_run(t, model_config={"latent_dim": 2}),
        ConfigError,
        "model_config must be a pyro_vae.ModelConfig or None, got dict; pass "
        "ModelConfig(event_shape=..., **options)",
    ),
    (
        "train-run-config-dict",
        lambda t: _train_run(t, train_config={"epochs": 1}),
        ConfigError,
        "train_config must be a pyro_vae.train.TrainConfig, got dict; pass TrainConfig(**options)",
    ),
    (
        "train-run-workers-negative",
        lambda t: _train_run(t, num_workers=-2),
        ConfigError,
        "num_workers (--num-workers) must be from 0 to 256, got -2; use 0 to read in the training "
        "process",
    ),
    (
        "train-run-fp16-on-cpu",
        lambda t: _train_run(t, train_config=TrainConfig(epochs=1, batch_size=5, precision="fp16")),
        ConfigError,
        "--precision fp16 needs a CUDA device, got cpu; use --precision bf16 or 32",
    ),
    (
        "train-run-device-missing",
        lambda t: _train_run(t, device="cuda:7") if not torch.cuda.is_available() else _raise(),
        ConfigError,
        "device 'cuda:7' asked for, but this torch sees no CUDA GPU; use --device cpu (or auto), "
        "or install a CUDA build of torch",
    ),
    (
        "epochs-float",
        lambda t: TrainConfig(epochs=2.0),
        ConfigError,
        "epochs must be at least 1, got 2.0",
    ),
    (
        "particles-huge",
        lambda t: TrainConfig(num_particles=10**6),
        ConfigError,
        "num_particles (--num-particles) must be from 1 to 10000, got 1000000; each step holds "
        "that many samples per point",
    ),
    (
        "valid-samples-huge",
        lambda t: TrainConfig(valid_num_samples=10**9),
        ConfigError,
        "valid_num_samples (--valid-num-samples) must be from 1 to 1000000, got 1000000000; each "
        "step holds that many samples per point",
    ),
    (
        "ll-float64",
        lambda t: _ll(torch.rand(4, 6, dtype=torch.float64).round()),
        DataError,
        "the programs fail on data of dtype float64 with a dtype error (mat1 and mat2 must have "
        "the same dtype, but got Double and Float); convert the data to the model's dtype "
        "(x.float()) or the model to the data's (model.double())",
    ),
    (
        "gap-steps-negative",
        lambda t: _report(t, gap_steps=-1),
        ConfigError,
        "gap_steps (--gap-steps) must be an integer of at least 1, got -1",
    ),
    (
        "ais-steps-zero",
        lambda t: _report(t, ais_steps=0),
        ConfigError,
        "ais_steps (--ais-steps) must be an integer of at least 1, got 0",
    ),
    (
        "report-points-zero",
        lambda t: _report(t, num_points=0),
        ConfigError,
        "num_points (--num-points) must be an integer of at least 1, got 0",
    ),
    (
        "attribute-nan-strength",
        lambda t: apply_attribute(tiny_vae(), torch.rand(2, 6), torch.ones(2), [1.0, float("nan")]),
        ConfigError,
        "attribute strengths must be finite numbers, got [1.0, nan]; pass e.g. -2,-1,0,1,2",
    ),
    (
        "idx-short-header",
        lambda t: read_idx(_short_idx(t)),
        DataError,
        "IDX file '{tmp}/short-idx3-ubyte' is 8 bytes, shorter than its header of 3 sizes (16 "
        "bytes); the file is truncated, re-download it",
    ),
    (
        "checkpoint-version-tensor",
        lambda t: load_checkpoint(_versioned(t, torch.tensor([1, 1]))),
        CheckpointError,
        "checkpoint '{tmp}/v.pt' has a format_version of type Tensor, not an integer; it was not "
        "written by pyro-vae: restore it from a backup or retrain",
    ),
    (
        "checkpoint-version-scalar-tensor",
        lambda t: load_checkpoint(_versioned(t, torch.tensor(1))),
        CheckpointError,
        "checkpoint '{tmp}/v.pt' has a format_version of type Tensor, not an integer; it was not "
        "written by pyro-vae: restore it from a backup or retrain",
    ),
    (
        "config-deeply-nested",
        lambda t: load_config_file(_nested(t, 10)),
        ConfigError,
        "config file '{tmp}/nested.json' nests tables or lists more than 8 deep; options are at "
        "most a table of tables of lists: flatten it",
    ),
    (
        "config-beyond-parser",
        lambda t: load_config_file(_nested(t, 10**5)),
        ConfigError,
        "config file '{tmp}/nested.json' nests tables or lists more than 8 deep; options are at "
        "most a table of tables of lists: flatten it",
    ),
    (
        "run-name-too-long",
        lambda t: RunDir.named(t, "n" * 256),
        ConfigError,
        "run name 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'... is 256 bytes long, more than the "
        "255 a file name may have; choose a shorter --name",
    ),
    (
        "output-under-a-file",
        lambda t: write_atomically(_file(t) / "x.png", lambda f: None),
        ConfigError,
        "cannot write output path '{tmp}/a-file/x.png': a part of it is a file, not a folder; "
        "choose another path",
    ),
    (
        "output-is-a-folder",
        lambda t: write_atomically(t, lambda f: None),
        ConfigError,
        "cannot write output path '{tmp}': it is a folder; choose another path",
    ),
    (
        "figure-unknown-suffix",
        lambda t: check_figure_path(t / "f.jpgx"),
        ConfigError,
        "figure path '{tmp}/f.jpgx' has suffix '.jpgx'; end it in .png or .pdf",
    ),
    (
        "figure-no-suffix",
        lambda t: check_figure_path(t / "f"),
        ConfigError,
        "figure path '{tmp}/f' has no suffix; end it in .png or .pdf",
    ),
    (
        "stream-truncated-while-reading",
        lambda t: _truncated_while_reading(t),
        DataError,
        "'{tmp}/s.npy' was truncated or replaced while being read: row 19 has 3 of its 24 bytes; "
        "leave the file unchanged while training, or restore it",
    ),
    (
        "stream-changed-after-opening",
        lambda t: _changed_after_opening(t),
        DataError,
        "'{tmp}/s.npy' changed after it was opened (size, time or file differ); leave the file "
        "unchanged while training, or restore it",
    ),
    (
        "stream-nan-in-the-middle",
        lambda t: _fit(_streamed_with_nan(t), batch_size=4),
        DataError,
        "training point 0 (row 17 of its source) of the streamed split has NaN or infinite values "
        "(in training batch 7 of epoch 1); clean the file or drop that point",
    ),
    (
        "plugin-raises",
        lambda t: import_plugins([_plugin(t, "raises", "raise RuntimeError('boom')")]),
        ConfigError,
        # the module's name carries a number that varies
        re.compile(
            r"--plugin: module 'plugin_raises_\d+' failed while importing or registering its parts "
            r"\(RuntimeError: boom\); fix the module or drop it"
        ),
    ),
    (
        "rendezvous-timeout-not-a-number",
        lambda t: _rendezvous_timeout("soon"),
        ConfigError,
        "PYRO_VAE_RENDEZVOUS_TIMEOUT='soon' is not a number of seconds above 0 and below a week; "
        "set it like 120",
    ),
]


def _raise():
    raise ConfigError("cuda:7 exists here; nothing to refuse")


def _train_run(tmp: Path, **kw):
    options = {
        "model_config": None,
        "train_config": TrainConfig(epochs=1, batch_size=5),
        "run_dir": tmp / "r",
        "progress": False,
        "data": tiny_data(),
        "num_samples": 2,
    }
    options.update(kw)
    try:
        return train_run("tiny", **options)
    finally:
        assert not (tmp / "r").exists(), "a refused run leaves no run directory behind"


def _report(tmp: Path, **kw):
    vae = tiny_vae()
    return inference_report(vae.model, vae.guide, torch.rand(4, 6).round(), "gaps", **kw)


def _short_idx(tmp: Path) -> Path:
    path = tmp / "short-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 5]))  # three sizes announced, one given
    return path


def _versioned(tmp: Path, version) -> Path:
    path = tmp / "v.pt"
    torch.save({"format_version": version, "epoch": 1}, path)
    return path


def _nested(tmp: Path, depth: int) -> Path:
    path = tmp / "nested.json"
    path.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    return path


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("mine")
    return path


def _rows(tmp: Path, n: int = 20):
    from pyro_vae.data.streaming import NpyRows

    np.save(tmp / "s.npy", np.random.default_rng(0).random((n, 6)).astype(np.float32))
    return NpyRows(tmp / "s.npy")


def _truncated_while_reading(tmp: Path):
    rows = _rows(tmp)
    rows.row(0)
    with open(tmp / "s.npy", "r+b") as f:
        f.truncate(rows.offset + 19 * rows.row_bytes + 3)
    return rows.row(19)


def _changed_after_opening(tmp: Path):
    rows = _rows(tmp)
    np.save(tmp / "s.npy", np.zeros((20, 6), np.float32))  # replaced before the first read
    return rows.row(0)


def _streamed_with_nan(tmp: Path):
    from pyro_vae.data.streaming import load_streaming

    x = (np.random.default_rng(0).random((40, 6)) > 0.5).astype(np.float32)
    x[17, 2] = np.nan
    np.save(tmp / "n.npy", x)
    data = load_streaming(tmp / "n.npy")
    assert bool(torch.isfinite(data.valid).all() and torch.isfinite(data.test).all())
    return data


def _plugin(tmp: Path, name: str, body: str) -> str:
    module = f"plugin_{name}_{abs(hash(str(tmp))) % 10**8}"
    (tmp / f"{module}.py").write_text(body + "\n")
    sys.path.insert(0, str(tmp))
    return module


def _rendezvous_timeout(text: str):
    from pyro_vae.runtime.distributed import TIMEOUT_VARIABLE, rendezvous_timeout

    os.environ[TIMEOUT_VARIABLE] = text
    try:
        return rendezvous_timeout()
    finally:
        del os.environ[TIMEOUT_VARIABLE]


def _locked_twice(tmp: Path) -> None:
    run = RunDir(tmp / "r")
    with run.lock(), run.lock():
        pass


def _zip_bomb(tmp: Path) -> Path:
    import zipfile

    path = tmp / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 2**22)
    return path


def _int_state() -> dict:
    state = tiny_vae().state_dict()
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].to(torch.int64)
    return state


def _nonempty(tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    return run


@pytest.mark.parametrize(
    "call, exc_type, expected", [c[1:] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES]
)
def test_library_refuses_bad_input(tmp_path, call, exc_type, expected):
    """The whole message, word for word ({tmp} stands for the test's folder)."""
    with pytest.raises(exc_type) as info:
        call(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, PyroVAEError)
    if isinstance(expected, re.Pattern):
        pattern = expected.pattern.replace(r"\{tmp\}", re.escape(str(tmp_path)))
        assert re.fullmatch(pattern, message), message
    else:
        assert message == expected.replace("{tmp}", str(tmp_path))
    assert "\n" not in message


def test_fit_refuses_data_of_another_dtype_than_the_model_s_whole():
    # the splits hold float32 (DataSplits converts them); the model is float64
    with pytest.raises(DataError) as info:
        fit(tiny_vae().double(), tiny_data(), TrainConfig(epochs=1, batch_size=5), progress=False)
    assert str(info.value) == (
        "the train split has dtype torch.float32 but the model's parameters torch.float64; "
        "convert the data (x.float() for float32) or the model"
    )


def test_fit_refuses_a_config_that_is_not_a_train_config_whole():
    with pytest.raises(ConfigError) as info:
        fit(tiny_vae(), tiny_data(), {"epochs": 1}, progress=False)
    assert str(info.value) == (
        "fit's config must be a pyro_vae.train.TrainConfig, got dict; pass TrainConfig(**options)"
    )


def test_fit_refuses_float16_for_a_model_on_the_cpu_whole():
    """Without a device, fit trains where the model is: a CPU model, so fp16 is refused
    naming the CPU."""
    with pytest.raises(ConfigError) as info:
        fit(tiny_vae(), tiny_data(), TrainConfig(batch_size=10, precision="fp16"), progress=False)
    assert str(info.value) == (
        "--precision fp16 needs a CUDA device, got cpu; use --precision bf16 or 32"
    )


def test_fit_accepts_256_reader_processes_the_largest_count_allowed():
    """256 is inside the range that 257 is refused for; in-memory data never start them."""
    result = _fit(tiny_data(), num_workers=256)
    assert [record["epoch"] for record in result.history] == [1]


def test_run_dir_keeps_files_unless_overwrite_and_overwrites_only_runs(tmp_path):
    run = _nonempty(tmp_path)
    with pytest.raises(ConfigError, match="pass --overwrite"):
        RunDir(run).create()
    with pytest.raises(ConfigError, match="not a pyro-vae run directory"):
        RunDir(run).create(overwrite=True)
    assert (run / "keep.txt").read_text() == "precious"
    RunDir(run / "made").create()
    (run / "made" / "old.png").write_text("from the earlier run")
    RunDir(run / "made").create(overwrite=True)
    assert [p.name for p in (run / "made").iterdir()] == [RunDir.MARKER]


def _array_file(tmp: Path, name: str, array: np.ndarray) -> str:
    path = tmp / name
    np.save(path, array)
    return str(path)


def _resumable_run(tmp: Path) -> str:
    out = tmp / "runs"
    assert cli.main(_train(out, "r", "--epochs", "1")) == 0
    return str(out / "r")


def _truncated_run(tmp: Path) -> str:
    run = Path(_resumable_run(tmp))
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    return str(run)


def _train(out: Path, name: str, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "digits", "--hidden", "8", "--num-samples", "2", "--no-progress",
        "--output-dir", str(out), "--name", name, *extra,
    ]  # fmt: skip


# (id, argv(tmp_path), fragment of the one stderr line); every case exits with code 2.
CLI_CASES = [
    ("epochs-zero", lambda t: _train(t, "a", "--epochs", "0"), "epochs must be at least 1"),
    ("batch-too-big", lambda t: _train(t, "a", "--batch-size", "100000"), "exceeds the 1437"),
    ("lr-negative", lambda t: _train(t, "a", "--lr", "-1"), "learning rate must be a positive"),
    ("lr-nan", lambda t: _train(t, "a", "--lr", "nan"), "learning rate must be a positive"),
    ("latent-zero", lambda t: _train(t, "a", "--latent-dim", "0"), "latent_dim must be at least 1"),
    ("clip-zero", lambda t: _train(t, "a", "--clip-grad", "0"), "clip_grad (--clip-grad) must be"),
    ("particles-zero", lambda t: _train(t, "a", "--num-particles", "0"), "num_particles"),
    ("num-samples-zero", lambda t: _train(t, "a", "--num-samples", "0"), "--num-samples must be"),
    ("dataset-unknown", lambda t: _train(t, "a", "--dataset", "cifar"), "unknown data set 'cifar'"),
    ("dataset-missing", lambda t: _train(t, "a", "--dataset", str(t / "x.npy")), "does not exist"),
    (
        "dataset-nan",
        lambda t: _train(t, "a", "--dataset", _array_file(t, "n.npy", np.full((30, 4), np.nan))),
        "NaN or infinite",
    ),
    (
        "dataset-outside-support",
        lambda t: _train(
            t, "a", "--batch-size", "8", "--dataset", _array_file(t, "o.npy", np.full((30, 4), 7.0))
        ),
        "Bernoulli likelihood needs values in [0, 1]",
    ),
    (
        "run-dir-exists",
        lambda t: _train(_nonempty(t).parent, "run", "--epochs", "1"),
        "--overwrite",
    ),
    ("evaluate-missing", lambda t: ["evaluate", str(t / "nowhere")], "does not exist"),
    ("evaluate-truncated", lambda t: ["evaluate", _truncated_run(t)], "is truncated, corrupted"),
    ("resume-missing", lambda t: ["train", "--resume", str(t / "nowhere")], "does not exist"),
    (
        "resume-conflict",
        lambda t: ["train", "--resume", _resumable_run(t), "--lr", "0.1"],
        "--lr cannot be combined with --resume",
    ),
    (
        "non-finite-training",
        lambda t: _train(t, "nan", "--likelihood", "normal", "--lr", "1e8", "--epochs", "2"),
        "at epoch 1, step",
    ),
    ("resume-truncated", lambda t: ["train", "--resume", _truncated_run(t)], "truncated"),
]


@pytest.mark.parametrize(
    "argv, fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, argv, fragment):
    args = argv(tmp_path)
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyro-vae: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in err
    if "--name" in args and args[args.index("--name") + 1] == "a":
        assert not (tmp_path / "a").exists(), "a refused run leaves no run directory behind"


def test_cli_debug_shows_the_exception(tmp_path, capsys):
    # --debug adds the traceback; bad input still exits 2.
    assert cli.main(["--debug", *_train(tmp_path, "a", "--epochs", "0")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError: epochs must be at least 1" in err


def test_cli_bad_flag_value_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(_train(tmp_path, "a", "--hidden", "abc"))
    assert info.value.code == 2
    assert "hidden sizes must be integers" in capsys.readouterr().err


def test_cli_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", *_train(tmp_path, "a", "--latent-dim", "0")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pyro-vae: error: latent_dim must be at least 1, got 0"
    ]


class _PoisonAfter:
    """Multiplies a tensor by NaN from the ``n``-th training-mode call on (0-based)."""

    def __init__(self, module: torch.nn.Module, n: int):
        self.module, self.n, self.calls = module, n, 0

    def __call__(self, value: torch.Tensor) -> torch.Tensor:
        if self.module.training:
            self.calls += 1
            if self.calls > self.n:
                return value * float("nan")
        return value


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path, where):
    vae, data = tiny_vae(), tiny_data()
    # 20 points, batch 10: two steps per epoch, so call 3 is epoch 2, step 0.
    poison = _PoisonAfter(vae, 2)
    if where == "loss":
        vae.decoder.register_forward_hook(lambda m, i, out: poison(out))
    else:
        vae.decoder.net[0].weight.register_hook(poison)
    config = TrainConfig(epochs=3, batch_size=10, valid_num_samples=2)
    with pytest.raises(TrainingError) as info:
        fit(vae, data, config, run_dir=RunDir(tmp_path), progress=False)
    problem = "training loss" if where == "loss" else "gradient norm"
    assert str(info.value) == (
        f"{problem} is nan at epoch 2, step 0; the last good checkpoint is kept in "
        f"{str(tmp_path)!r}; lower --lr, pass --clip-grad (e.g. 10), or check the data scale"
    )
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
