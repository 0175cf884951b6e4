"""Issue 9's done-means: a new prior is one class plus one registration line, and it trains,
saves, evaluates from Python, a config file and the command line; a run names its plugin
module but never imports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyro_vae.cli import main
from pyro_vae.errors import ConfigError
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.parts import PRIORS, Registry, register_prior

ROOT = Path(__file__).resolve().parents[1]

# The whole of a user's new prior with one new option, `df`: one class, one registration line.
PLUGIN = textwrap.dedent(
    '''
    import pyro.distributions as dist
    import torch

    from pyro_vae.parts import Prior, register_prior


    @register_prior("student_t")
    class StudentTPrior(Prior):
        """p(z) = prod_i StudentT(z_i; df, 0, 1)."""

        def __init__(self, latent_dim: int, df: float = 4.0):
            super().__init__(latent_dim)
            self.df = df
            self.register_buffer("loc", torch.zeros(latent_dim))
            self.register_buffer("scale", torch.ones(latent_dim))

        def forward(self):
            return dist.StudentT(self.df, self.loc, self.scale).to_event(1)
    '''
)
MODULE = "my_student_priors"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("plugins")
    (where / f"{MODULE}.py").write_text(PLUGIN)
    sys.path.insert(0, str(where))
    yield where
    sys.path.remove(str(where))
    if "student_t" in PRIORS:
        PRIORS.unregister("student_t")
    sys.modules.pop(MODULE, None)


def _train_args(out: Path, name: str, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "digits", "--epochs", "2", "--hidden", "8", "--num-samples", "2",
        "--no-progress", "--output-dir", str(out), "--name", name, *extra,
    ]  # fmt: skip


def test_new_prior_trains_from_the_cli_with_plugin_then_evaluates(plugin_dir, tmp_path, capsys):
    args = _train_args(tmp_path, "cli", "--plugin", MODULE, "--prior", "student_t")
    assert main([*args, "--prior-opt", "df=7.5"]) == 0
    model = json.loads((tmp_path / "cli" / "config.json").read_text())["model"]
    assert model["prior"] == "student_t" and model["prior_options"] == {"df": 7.5}
    assert model["plugins"] == {"prior": MODULE}
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "cli"), "--num-samples", "2", "--plugin", MODULE]) == 0
    assert "test log-likelihood" in capsys.readouterr().out


def test_new_prior_trains_from_a_config_file(plugin_dir, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'plugins = ["{MODULE}"]\nlatent_dim = 3\nepochs = 1\n'
        '[prior]\nname = "student_t"\ndf = 3.0\n'
    )
    assert main([*_train_args(tmp_path, "file", "--config", str(cfg)), "--epochs", "1"]) == 0
    run = json.loads((tmp_path / "file" / "config.json").read_text())
    assert run["model"]["prior_options"] == {"df": 3.0} and run["model"]["latent_dim"] == 3
    assert run["train"]["epochs"] == 1
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "file"), "--num-samples", "2"]) == 0


def test_new_prior_builds_and_round_trips_from_python(plugin_dir):
    __import__(MODULE)
    config = ModelConfig(event_shape=(4,), prior="student_t", prior_options={"df": 5})
    assert config.prior_options == {"df": 5.0}
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert build_vae(again).prior.df == 5.0
    with pytest.raises(ConfigError, match="prior 'student_t' has no option 'nu'"):
        ModelConfig(event_shape=(4,), prior="student_t", prior_options={"nu": 5})
    with pytest.raises(ConfigError, match="option df must be float"):
        ModelConfig(event_shape=(4,), prior="student_t", prior_options={"df": "5"})


def test_a_run_directory_never_imports_the_module_it_names(tmp_path):
    """config.json names a module that would leave a mark if imported: nothing imports it."""
    evil = tmp_path / "evil_parts.py"
    mark = tmp_path / "imported"
    evil.write_text(f"open({str(mark)!r}, 'w').write('ran')\n")
    run = tmp_path / "run"
    run.mkdir()
    model = ModelConfig(event_shape=(1, 8, 8)).to_dict()
    model.update(prior="sneaky", plugins={"prior": "evil_parts"})
    (run / "config.json").write_text(json.dumps({"dataset": "digits", "model": model}))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "OMP_NUM_THREADS": "1"}
    for command in (["evaluate", str(run)], ["sample", str(run)], ["train", "--resume", str(run)]):
        proc = subprocess.run(
            [sys.executable, "-m", "pyro_vae", *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "'sneaky' comes from module 'evil_parts'" in lines[0]
        assert "--plugin evil_parts" in lines[0]
        assert not mark.exists()


def test_registering_is_one_call_or_a_decorator_and_names_are_checked():
    registry = Registry("widget", shared=("latent_dim",))

    class Widget:
        def __init__(self, latent_dim: int, width: int = 3, tag: str | None = None):
            self.latent_dim, self.width, self.tag = latent_dim, width, tag

    registry.register("widget", Widget, aliases=("old_widget",))
    assert registry.canonical("old_widget") == "widget"
    assert list(registry.entry("widget").options) == ["width", "tag"]
    built = registry.build("old_widget", {"width": 5}, latent_dim=2)
    assert (built.latent_dim, built.width, built.tag) == (2, 5, None)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("widget", type("Other", (), {}))
    with pytest.raises(ConfigError, match="lowercase"):
        registry.register("Bad Name", Widget)
    with pytest.raises(ConfigError, match="widget 'widget' option width must be int"):
        registry.build("widget", {"width": True}, latent_dim=2)
    with pytest.raises(ConfigError, match="unknown widget 'nope'; choose one of"):
        registry.canonical("nope")

    class Gadget:
        def __init__(self, size: int = 2):
            self.size = size

        @classmethod
        def check_options(cls, options):  # takes none of the shared sizes
            if options["size"] % 2:
                raise ValueError("size must be even")

    registry.register("gadget", Gadget)
    assert registry.build("gadget", {"size": 4}, latent_dim=2).size == 4
    with pytest.raises(ConfigError, match="widget 'gadget': size must be even"):
        registry.check_options("gadget", {"size": 3}, latent_dim=2)


def test_every_builtin_part_builds_with_only_its_defaults():
    for name in PRIORS:
        config = ModelConfig(event_shape=(1, 4, 4), prior=name)
        assert config.prior_options == {
            k: o.default for k, o in PRIORS.entry(name).options.items()
        }
        build_vae(config)


def test_decorator_registration_from_python_registers_under_the_name():
    @register_prior("test_only_flat")
    class Flat(PRIORS["normal"]):
        pass

    try:
        assert PRIORS["test_only_flat"] is Flat
        assert ModelConfig(event_shape=(3,), prior="test_only_flat").plugins() == {
            "prior": __name__
        }
    finally:
        PRIORS.unregister("test_only_flat")
    assert "test_only_flat" not in PRIORS


def test_tensor_options_are_recorded_as_numbers_and_unrecordable_defaults_left_out():
    import torch

    config = ModelConfig(
        event_shape=(3,), prior="learned_normal", prior_options={"loc": torch.tensor([1.0, 2.0])}
    )
    assert config.to_dict()["prior_options"] == {"loc": [1.0, 2.0], "scale": 1.0}
    assert build_vae(config).prior.loc.tolist() == [1.0, 2.0]
    registry = Registry("widget", shared=())
    zeros = torch.zeros(2)

    class Widget:
        def __init__(self, table: torch.Tensor = zeros):
            self.table = table

    registry.register("widget", Widget)
    assert registry.check_options("widget", {}) == {}  # the constructor keeps its default
