"""The pyro-vae command: generated from the library, one-line errors, config files checked."""

from __future__ import annotations

import dataclasses
import json

import pytest

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
        ({"hidden": "256"}, "hidden must be a list of int, got \"256\""),
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
