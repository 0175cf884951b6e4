"""The pyro-vae command: generated from the library, one-line errors, config files checked."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import numpy as np
import pytest
from refusals import one_error_line, snapshot

from pyro_vae import cli
from pyro_vae.models import ModelConfig
from pyro_vae.parts import LIKELIHOODS, POSTERIORS, PRIORS
from pyro_vae.train.loop import TrainConfig


def _train(out, name, *extra):
    return [
        "train", "--dataset", "digits", "--num-samples", "2", "--no-progress",
        "--epochs", "1", "--output-dir", str(out), "--name", name, *extra,
    ]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyro-vae: error: ") and "Traceback" not in err
    return lines[0]


def test_defaults_and_choices_come_from_the_library():
    args = cli.build_parser().parse_args(["train"])
    for f in dataclasses.fields(TrainConfig):
        assert getattr(args, f.name) == f.default, f.name
    for name in ("latent_dim", "hidden", "prior", "likelihood", "posterior", "arch"):
        field = {f.name: f for f in dataclasses.fields(ModelConfig)}[name]
        assert getattr(args, name) == field.default, name
    given = cli.build_parser(track=True).parse_args(["train", "--lr", "0.1", "--prior", "vamp"])
    assert set(vars(given)) == {"command", "lr", "prior"}
    flags = ((PRIORS, "--prior"), (POSTERIORS, "--posterior"), (LIKELIHOODS, "--likelihood"))
    for registry, flag in flags:
        for name in registry:
            assert getattr(cli.build_parser().parse_args(["train", flag, name]), flag[2:]) == name


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--epochs", "x"], "invalid int value: 'x'"),
        (["train", "--prior", "nope"], "invalid choice: 'nope'"),
        (["evaluate"], "the following arguments are required: RUN_DIR"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--debug", "train", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert fragment in _one_error_line(capsys)


def _config(tmp_path, values, suffix=".json"):
    path = tmp_path / f"c{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else values)
    return str(path)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"hidden": "256"}, 'hidden must be a list of int, got "256"'),
        ({"latent_dim": True}, "latent_dim must be int, got true"),
        ({"epochs": "3"}, "epochs in config file"),
        ({"lr": [0.1]}, "lr in config file"),
        ({"overwrite": True}, "may not set 'overwrite'"),
        ({"resume": "runs/x"}, "may not set 'resume'"),
        ({"name": 5}, "name in config file"),
        ({"unknown_key": 1}, "unknown key 'unknown_key'"),
        ({"prior": {"name": "vamp", "num_pseudo_inputs": "500"}}, "num_pseudo_inputs must be int"),
        ({"prior": {"num_pseudo_inputs": 5}}, "the [prior] table needs a name"),
        (
            {"prior": "mixture", "num_pseudo_inputs": 5},
            "num_pseudo_inputs is an option of prior 'vamp'",
        ),
        (
            {"posterior": "low_rank", "posterior_options": {"rank": 1000}},
            "rank 1000 exceeds latent_dim 2",
        ),
        ({"prior": "vamp", "prior_options": {"pseudo": 5}}, "prior 'vamp' has no option 'pseudo'"),
        ({"plugins": ["not a module"]}, "is not a module name"),
        ({"plugins": ["no_such_module_here"]}, "cannot import module 'no_such_module_here'"),
    ],
)
def test_bad_config_files_are_one_line_and_exit_2(tmp_path, capsys, values, fragment):
    assert cli.main(_train(tmp_path, "a", "--config", _config(tmp_path, values))) == 2
    assert fragment in _one_error_line(capsys)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--prior", "vamp", "--prior-opt", "num_pseudo_inputs=many"], "must be int"),
        (["--prior-opt", "scale"], "takes KEY=VALUE"),
        (["--prior-opt", "df=3"], "prior 'normal' has no option 'df'"),
        (["--n-components", "3"], "--n-components is an option of prior 'mixture', not 'normal'"),
        (["--posterior", "low_rank", "--posterior-opt", "rank=9"], "exceeds latent_dim 2"),
        (["--latent-dim", "0"], "latent_dim must be at least 1"),
        (["--hidden", "100000,100000"], "would hold about 1e+10 weights"),
        (["--plugin", "no_such_module_here"], "cannot import module"),
        (["--plugin", "../evil.py"], "is not a module name"),
    ],
)
def test_bad_part_flags_are_one_line_and_exit_2(tmp_path, capsys, extra, fragment):
    assert cli.main(_train(tmp_path, "a", *extra)) == 2
    assert fragment in _one_error_line(capsys)


def test_debug_shows_the_traceback_and_still_exits_2(tmp_path, capsys):
    assert cli.main(["--debug", *_train(tmp_path, "a", "--latent-dim", "0")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].endswith("got 0")


def test_config_file_layers_under_flags_and_old_flat_keys_still_work(tmp_path, capsys):
    cfg = _config(
        tmp_path,
        'latent_dim = 3\nlr = 0.01\nprior = "mixture"\nn_components = 4\n'
        '[posterior]\nname = "iaf"\nsteps = 1\nhidden = [8]\n',
        ".toml",
    )
    argv = _train(tmp_path, "r", "--config", cfg, "--lr", "0.02", "--hidden", "8")
    argv += ["--posterior-opt", "context_dim=2"]
    assert cli.main(argv) == 0
    run = json.loads((tmp_path / "r" / "config.json").read_text())
    assert run["train"]["lr"] == 0.02 and run["model"]["latent_dim"] == 3
    assert run["model"]["prior_options"]["n_components"] == 4
    assert run["model"]["posterior_options"] == {"steps": 1, "context_dim": 2, "hidden": [8]}


def test_legacy_flags_set_the_part_options(tmp_path):
    argv = _train(tmp_path, "r", "--likelihood", "normal_learned", "--likelihood-scale", "0.3")
    argv += ["--hidden", "8", "--binarize", "none"]
    assert cli.main([*argv, "--posterior", "iaf", "--iaf-hidden", "6,6"]) == 0
    model = json.loads((tmp_path / "r" / "config.json").read_text())["model"]
    assert model["likelihood"] == "learned_normal"
    assert model["likelihood_options"] == {"scale": 0.3}
    assert model["posterior_options"]["hidden"] == [6, 6]


def test_parts_command_lists_every_part_and_its_options(capsys):
    assert cli.main(["parts"]) == 0
    out = capsys.readouterr().out
    for registry in (PRIORS, POSTERIORS, LIKELIHOODS):
        for name in registry:
            assert f"  {name} " in out
    assert "num_pseudo_inputs: int >= 1 = 50" in out


# --- round three: every refusal is one line, exit 2, and changes nothing outside the run ----


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run (each case may read it; none may change it)."""
    out = tmp_path_factory.mktemp("trained")
    assert cli.main(_train(out, "r", "--hidden", "8")) == 0
    return out / "r"


def _module(tmp, name: str, body: str) -> str:
    """A plugin module ``name`` (unique per test) under ``tmp``, importable by name."""
    module = f"{name}_{abs(hash(str(tmp))) % 10**8}"
    (tmp / f"{module}.py").write_text(body + "\n")
    return module


def _streamed_nan(tmp) -> str:
    x = (np.random.default_rng(0).random((60, 6)) > 0.5).astype(np.float32)
    x[9, 4] = np.inf  # a training point (rows 2, 3 and 11 are held out)
    np.save(tmp / "stream.npy", x)
    return str(tmp / "stream.npy")


def _version_tensor_run(tmp, trained) -> str:
    import torch

    from pyro_vae.train import load_checkpoint

    run = tmp / "copy"
    shutil.copytree(trained, run)
    state = load_checkpoint(run / "checkpoint.pt")
    state["format_version"] = torch.tensor(1)
    torch.save(state, run / "checkpoint.pt")
    return str(run)


def _nested_config(tmp) -> str:
    return _config(tmp, json.loads('{"prior": {"name": "normal", "x": ' + "[" * 9 + "]" * 9 + "}}"))


# (id, argv(tmp_path, trained run), fragment of the one stderr line); every case exits 2,
# leaves no run directory "a" and changes nothing under tmp_path or in the trained run.
CASES = [
    (
        "plugin-raises",
        lambda t, r: ["parts", "--plugin", _module(t, "boom", "raise RuntimeError('boom')")],
        "failed while importing or registering its parts (RuntimeError: boom)",
    ),
    (
        "plugin-divides-by-zero",
        lambda t, r: _train(t, "a", "--plugin", _module(t, "div", "x = 1 / 0")),
        "(ZeroDivisionError: division by zero)",
    ),
    (
        "plugin-registers-twice",
        lambda t, r: [
            "parts",
            "--plugin",
            _module(
                t,
                "dup",
                "from pyro_vae.parts import PRIORS\n"
                "@PRIORS.register('normal')\nclass Mine:\n    pass",
            ),
        ],
        "prior 'normal' is already registered",
    ),  # fmt: skip
    (
        "config-plugin-raises",
        lambda t, r: _train(
            t, "a", "--config", _config(t, {"plugins": [_module(t, "cfg", "raise KeyError(1)")]})
        ),
        "plugins in config file",
    ),
    ("evaluate-seed-negative", lambda t, r: ["evaluate", str(r), "--seed", "-1"], "--seed must"),
    ("sample-seed-huge", lambda t, r: ["sample", str(r), "--seed", str(2**40)], "--seed must"),
    ("plot-seed-word", lambda t, r: ["plot", str(r), "--kind", "samples", "--seed", "x"], "--seed"),
    (
        "particles-huge",
        lambda t, r: _train(t, "a", "--num-particles", "100000"),
        "num_particles (--num-particles) must be from 1 to 10000, got 100000",
    ),
    ("workers-negative", lambda t, r: _train(t, "a", "--num-workers", "-1"), "from 0 to 256"),
    (
        "workers-negative-in-config",
        lambda t, r: _train(t, "a", "--config", _config(t, {"num_workers": -3})),
        "got -3",
    ),
    (
        "resume-workers-negative",
        lambda t, r: ["train", "--resume", str(r), "--epochs", "2", "--num-workers", "-1"],
        "from 0 to 256",
    ),
    (
        "fp16-on-cpu",
        lambda t, r: _train(t, "a", "--precision", "fp16", "--device", "cpu"),
        "--precision fp16 needs a CUDA device",
    ),
    (
        "streamed-nan-before-the-run",
        lambda t, r: _train(t, "a", "--stream", "--dataset", _streamed_nan(t), "--batch-size", "8"),
        "(row 9 of its source) of the streamed split has NaN or infinite values (points",
    ),
    ("run-name-too-long", lambda t, r: _train(t, "n" * 300), "is 300 bytes long"),
    (
        "output-dir-is-a-file",
        lambda t, r: _train(t / "mine.txt", "a"),
        "which is a file, not a directory",
    ),
    (
        "sample-output-unknown-suffix",
        lambda t, r: ["sample", str(r), "--output", str(t / "grid.jpgx")],
        "has suffix '.jpgx'; end it in .png or .pdf",
    ),
    (
        "plot-output-no-suffix",
        lambda t, r: ["plot", str(r), "--kind", "samples", "--output", str(t / "grid")],
        "has no suffix",
    ),
    (
        "sample-output-under-a-file",
        lambda t, r: ["sample", str(r), "-n", "4", "--output", str(t / "mine.txt" / "g.png")],
        "a part of it is a file, not a folder",
    ),
    (
        "plot-output-is-a-folder",
        lambda t, r: ["plot", str(r), "--kind", "samples", "--output", str(_folder(t))],
        "is a folder",
    ),
    (
        "gap-steps-negative",
        lambda t, r: ["evaluate", str(r), "--method", "gaps", "--gap-steps", "-1"],
        "gap_steps (--gap-steps) must be an integer of at least 1, got -1",
    ),
    (
        "ais-steps-zero",
        lambda t, r: ["evaluate", str(r), "--method", "ais", "--ais-steps", "0"],
        "ais_steps (--ais-steps) must be an integer of at least 1, got 0",
    ),
    (
        "attribute-nan-strength",
        lambda t, r: [
            "plot",
            str(r),
            "--kind",
            "attribute",
            "--positive",
            "1",
            "--negative",
            "0",
            "--strengths",
            "nan,1",
            "--output",
            str(t / "attr.png"),
        ],
        "attribute strengths must be finite numbers",
    ),  # fmt: skip
    (
        "checkpoint-version-tensor",
        lambda t, r: ["evaluate", _version_tensor_run(t, r), "--num-samples", "2"],
        "format_version of type Tensor",
    ),
    ("config-nested-deeply", lambda t, r: _train(t, "a", "--config", _nested_config(t)), "nests"),
    (
        "dataset-name-with-newline",
        lambda t, r: _train(t, "a", "--dataset", str(t / "two\nlines.npy")),
        "two\\nlines.npy' does not exist",
    ),
    (
        "dataset-name-not-utf8",
        lambda t, r: _train(t, "a", "--dataset", str(t) + "/caf" + os.fsdecode(b"\xe9") + ".npy"),
        "caf\\udce9.npy",
    ),
]


def _folder(tmp):
    (tmp / "folder.png").mkdir(exist_ok=True)
    return tmp / "folder.png"


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusals_are_one_line_exit_2_and_change_nothing(
    tmp_path, capsys, monkeypatch, trained, argv, fragment
):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a plugin's import writes nothing
    (tmp_path / "mine.txt").write_text("mine")
    args = argv(tmp_path, trained)
    before, run_before = snapshot(tmp_path), snapshot(trained.parent)
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as exc:  # a usage error of the parser
        code = exc.code
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert fragment in line, line
    assert not (tmp_path / "a").exists(), "a refused run leaves no run directory behind"
    assert snapshot(tmp_path) == before and snapshot(trained.parent) == run_before
