"""Model kinds are registry entries: every kind trains from the CLI and from a config file,
checkpoints, resumes to identical metrics and evaluates; bad input is one line and exit 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from refusals import whole
from test_cli import _one_error_line

from pyro_vae import cli
from pyro_vae.data import DataSplits
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models import MODELS, ModelConfig, build_model, kind_of
from pyro_vae.models.kinds import ModelKind, check_choice, check_labels
from pyro_vae.runs import RunDir, configured_for_data, train_run
from pyro_vae.train import TrainConfig, choose_labelled

#: Each built-in kind with options that keep the test small, and the metric it must report.
KINDS = {
    "vae": ([], "test_log_likelihood"),
    "ae": ([], "test_reconstruction_nll"),
    "cvae": (["--condition-on", "labels", "--conditional-prior", "true"], "test_log_likelihood"),
    "cvae_quadrant": (["--condition-on", "quadrant"], "test_log_likelihood"),
    "hvae": (["--layers", "4,2", "--inference", "ladder"], "test_log_likelihood"),
    "m2": (["--labels-per-class", "3"], "test_classification_error"),
}


def _train(out, name, kind, *extra, epochs=2):
    model = kind.removesuffix("_quadrant")
    return [
        "train", "--dataset", "digits", "--num-samples", "3", "--no-progress", "--seed", "1",
        "--epochs", str(epochs), "--output-dir", str(out), "--name", name, "--model", model,
        "--latent-dim", "3", "--hidden", "16", "--batch-size", "128", *extra,
    ]  # fmt: skip


def test_built_in_kinds_are_registered_with_their_options():
    assert {"vae", "ae", "cvae", "hvae", "m2"} <= set(MODELS)
    assert {"condition_on", "conditional_prior"} <= set(MODELS.entry("cvae").options)
    assert {"layers", "inference", "preset"} <= set(MODELS.entry("hvae").options)
    assert {"labels_per_class", "alpha"} <= set(MODELS.entry("m2").options)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_resumes_identically_and_evaluates(kind, tmp_path, capsys):
    extra, metric = KINDS[kind]
    assert cli.main(_train(tmp_path, "full", kind, *extra, epochs=3)) == 0
    assert cli.main(_train(tmp_path, "part", kind, *extra, epochs=2)) == 0
    capsys.readouterr()
    part = tmp_path / "part"
    assert cli.main(["train", "--resume", str(part), "--epochs", "3", "--no-progress"]) == 0
    full_dir = RunDir(tmp_path / "full")
    def timeless(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert timeless(RunDir(part).read_metrics()) == timeless(full_dir.read_metrics())
    full = full_dir.read_json(RunDir.RESULTS)
    resumed = RunDir(part).read_json(RunDir.RESULTS)
    assert resumed[metric] == full[metric]
    assert full["kind"] == kind.removesuffix("_quadrant")
    assert json.loads((part / "config.json").read_text())["model"]["kind"] == full["kind"]
    # every figure the kind lists was drawn (digits are images)
    model, _ = __import__("pyro_vae.runs", fromlist=["load_run"]).load_run(part)
    for figure in kind_of(model).figures:
        if figure != "manifold":
            assert (part / f"{figure}.png").is_file(), figure
    capsys.readouterr()
    assert cli.main(["evaluate", str(part), "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "test" in out and "run directory" in out


def test_a_config_file_names_the_kind_and_its_options(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text(
        'model = "cvae"\nlatent_dim = 2\nhidden = [16]\n[model_options]\n'
        'condition_on = "labels"\nconditional_prior = true\n'
    )
    args = ["train", "--config", str(config), "--epochs", "1", "--num-samples", "2"]
    args += ["--no-progress", "--output-dir", str(tmp_path), "--name", "c"]
    assert cli.main(args) == 0
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["kind"] == "cvae"
    assert saved["model"]["kind_options"]["conditional_prior"] is True
    assert saved["model"]["kind_options"]["num_classes"] == 10  # from the digits' labels
    table = tmp_path / "t.toml"
    table.write_text('[model]\nname = "hvae"\nlayers = [3, 2]\ninference = "ladder"\n')
    args = ["train", "--config", str(table), "--epochs", "1", "--num-samples", "2"]
    args += ["--no-progress", "--output-dir", str(tmp_path), "--name", "h", "--hidden", "8"]
    assert cli.main(args) == 0
    saved = json.loads((tmp_path / "h" / "config.json").read_text())
    assert saved["model"]["kind"] == "hvae"
    assert saved["model"]["kind_options"]["layers"] == [3, 2]


def _labelled_npz(path, y_train, y_valid=None, y_test=None):
    g = np.random.default_rng(0)
    x = g.random((len(y_train), 4, 4)).astype(np.float32)
    arrays = {"x_train": x, "y_train": np.asarray(y_train)}
    arrays["x_valid"], arrays["x_test"] = x[:10], x[:10]
    arrays["y_valid"] = np.asarray(y_valid if y_valid is not None else y_train[:10])
    arrays["y_test"] = np.asarray(y_test if y_test is not None else y_train[:10])
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case, words",
    [
        ("no labels", "needs labels"),
        ("negative label", "contain -1"),
        ("too many per class", "labels-per-class 50"),
        ("zero per class", "labels_per_class must be int >= 1"),
        ("option of another kind", "--labels-per-class is an option of model 'm2'"),
        ("bad condition", "unknown condition_on 'colour'"),
        ("unknown model", "invalid choice"),
        ("one layer", "at least 2 layers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, words, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path), "--no-progress", "--epochs", "1"]
    labels = np.arange(40) % 4
    if case == "no labels":
        np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 6)).astype(np.float32))
        args = ["train", "--dataset", str(tmp_path / "x.npy"), "--model", "cvae", *out]
    elif case == "negative label":
        bad = labels.copy()
        bad[3] = -1
        data = _labelled_npz(tmp_path / "d.npz", bad)
        args = ["train", "--dataset", str(data), "--model", "m2", *out]
    elif case == "too many per class":
        data = _labelled_npz(tmp_path / "d.npz", labels)
        args = ["train", "--dataset", str(data), "--model", "m2", "--labels-per-class", "50", *out]
    elif case == "zero per class":
        args = ["train", "--model", "m2", "--labels-per-class", "0", *out]
    elif case == "option of another kind":
        args = ["train", "--model", "cvae", "--labels-per-class", "3", *out]
    elif case == "bad condition":
        args = ["train", "--model", "cvae", "--condition-on", "colour", *out]
    elif case == "unknown model":
        args = ["train", "--model", "gan", *out]
    else:
        args = ["train", "--model", "hvae", "--layers", "4", *out]
    try:
        status = cli.main(args)
    except SystemExit as exc:  # argparse's own usage errors exit from the parser
        status = exc.code
    assert status == 2
    assert words in _one_error_line(capsys)


def test_labels_out_of_range_for_the_model_are_refused():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 6, generator=g)
    y = torch.arange(30) % 5
    data = DataSplits("five", x[:20], x[20:25], x[25:], labels={
        "train": y[:20], "valid": y[20:25], "test": y[25:]})  # fmt: skip
    config = ModelConfig((6,), kind="cvae", kind_options={"num_classes": 3})
    with pytest.raises(
        DataError,
        match=whole(
            "labels go up to 4 but model 'cvae' has num_classes=3; set num_classes to at least 5 "
            "(--model-opt num_classes=5)"
        ),
    ):
        configured_for_data(config, data)
    config = configured_for_data(ModelConfig((6,), kind="cvae"), data)
    assert config.kind_options["num_classes"] == 5


def test_the_labelled_subset_is_balanced_seeded_and_recorded(tmp_path):
    y = torch.arange(200) % 4
    a, b = choose_labelled(y, 5, seed=3), choose_labelled(y, 5, seed=3)
    assert torch.equal(a, b) and a.numel() == 20
    assert torch.bincount(y[a]).tolist() == [5, 5, 5, 5]
    assert not torch.equal(a, choose_labelled(y, 5, seed=4))
    assert choose_labelled(y, None, 0).numel() == 200
    with pytest.raises(
        DataError,
        match=whole(
            "class 0 has 50 training points, fewer than --labels-per-class 51; ask for at most 50 "
            "per class"
        ),
    ):
        choose_labelled(y, 51, 0)
    results = train_run(
        "digits", None, TrainConfig(epochs=1, batch_size=256, seed=2), tmp_path / "m2",
        num_samples=2, progress=False, kind="m2", latent_dim=2, hidden=(8,),
    )  # fmt: skip
    saved = RunDir(tmp_path / "m2").read_json(RunDir.CONFIG)
    labels = __import__("pyro_vae.data", fromlist=["load_digits"]).load_digits().labels["train"]
    assert saved["labelled_points"] == choose_labelled(labels, 10, seed=2).tolist()
    assert 0.0 <= results["test_classification_error"] <= 1.0


def test_a_run_of_a_plugin_kind_needs_its_module(tmp_path, monkeypatch):
    """A kind registered from a user's module is recorded with its module; loading the run
    without that module names it instead of guessing."""
    module = tmp_path / "my_kinds.py"
    module.write_text(
        "from pyro_vae.models import ModelKind, register_model, build_vae\n"
        "@register_model('tiny_vae')\n"
        "class TinyKind(ModelKind):\n"
        "    def __init__(self, depth: int = 1):\n"
        "        self.depth = depth\n"
        "    def build(self, config):\n"
        "        return build_vae(config)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # a module of that name imported by an earlier run in this process would not register again
    monkeypatch.delitem(sys.modules, "my_kinds", raising=False)
    args = _train(tmp_path, "p", "tiny_vae", "--plugin", "my_kinds", "--model-opt", "depth=2")
    try:
        assert cli.main(args) == 0
        saved = json.loads((tmp_path / "p" / "config.json").read_text())
        assert saved["kind"] == "tiny_vae"
        assert saved["model"]["plugins"] == {"kind": "my_kinds"}
        assert saved["model"]["kind_options"] == {"depth": 2}
        assert cli.main(["evaluate", str(tmp_path / "p"), "--num-samples", "2"]) == 0
        MODELS.unregister("tiny_vae")
        with pytest.raises(ConfigError):
            ModelConfig.from_dict(saved["model"])
    finally:
        if "tiny_vae" in MODELS:
            MODELS.unregister("tiny_vae")


def test_a_module_built_by_hand_knows_its_kind():
    config = ModelConfig((6,), latent_dim=2, kind="hvae", kind_options={"layers": (2, 1)})
    model = build_model(config)
    assert kind_of(model).name == "hvae" and kind_of(model).options()["layers"] == (2, 1)
    with pytest.raises(
        ConfigError,
        match=whole(
            "expected a pyro_vae model (a VAE, an Autoencoder or a registered model kind's "
            "module), got Linear; build one with build_model(config)"
        ),
    ):
        kind_of(torch.nn.Linear(2, 2))


def test_evaluate_methods_take_the_labels_and_refuse_what_does_not_apply(tmp_path, capsys):
    """AIS runs on a label-conditioned model with the labels as data; the inference gaps,
    which need one family per site fed by one encoder, are refused with one line."""
    args = _train(tmp_path, "c", "cvae", "--condition-on", "labels", epochs=1)
    assert cli.main(args) == 0
    capsys.readouterr()
    report = ["evaluate", str(tmp_path / "c"), "--num-points", "3", "--ais-steps", "3"]
    assert cli.main([*report, "--method", "ais", "--num-samples", "5"]) == 0
    assert "AIS" in capsys.readouterr().out
    assert cli.main([*report, "--method", "gaps", "--num-samples", "5"]) == 2
    assert "inference gaps need one posterior family" in _one_error_line(capsys)


def test_the_collapse_warning_fires_on_the_tutorials_sixty_epoch_model():
    """The digits VAE with a 4-D latent space after 60 epochs of the plain ELBO uses at most
    one of its dimensions: the warning names the remedies."""
    from pyro_vae.data import eval_data, load_digits
    from pyro_vae.infer import latent_usage
    from pyro_vae.models import build_vae
    from pyro_vae.train import fit

    data = load_digits()
    vae = build_vae(ModelConfig(event_shape=data.event_shape, latent_dim=4))
    fit(vae, data, TrainConfig(epochs=60, seed=0), progress=False)
    usage = latent_usage(vae.model, vae.guide, eval_data(vae, data.test))
    assert usage.active_units <= 1 and usage.collapsed
    warning = usage.warning()
    assert warning.startswith("posterior collapse:") and "--warmup" in warning
    assert "--free-bits" in warning and "\n" not in warning


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("cvae", ["--objective", "iwae", "--num-particles", "3"]),
        ("cvae", ["--objective", "dreg", "--num-particles", "3"]),
        ("cvae", ["--free-bits", "0.2", "--warmup", "linear", "--warmup-epochs", "1"]),
        ("cvae", ["--objective", "meanfield", "--beta", "0.5"]),
        ("hvae", ["--inference", "ladder", "--free-bits", "0.2", "--objective", "elbo"]),
        ("hvae", ["--inference", "ladder", "--objective", "meanfield"]),
        ("hvae", ["--objective", "iwae", "--num-particles", "3"]),
        ("m2", ["--objective", "meanfield"]),
    ],
)
def test_objectives_train_the_structured_kinds(kind, extra, tmp_path):
    """Labels pass to every objective as data; schedules and free bits act on each layer."""
    assert cli.main(_train(tmp_path, "o", kind, *extra, epochs=1)) == 0
    metrics = RunDir(tmp_path / "o").read_metrics()
    assert all(np.isfinite(r["train_elbo"]) for r in metrics)


@pytest.mark.parametrize(
    "kind, extra, words",
    [
        ("hvae", ["--objective", "dreg", "--num-particles", "2"],
         "gradient would be biased; use --objective iwae for this model"),
        ("hvae", ["--objective", "meanfield"], "analytic KL of site 'z1'"),
        ("hvae", ["--free-bits", "0.5"], "free bits of site 'z1'"),
        ("m2", ["--objective", "iwae", "--num-particles", "2"], "no enumerated form"),
        ("m2", ["--beta", "0.5"], "KL weight 1"),
    ],
)
def test_objectives_refuse_what_they_cannot_do_for_a_kind(kind, extra, words, tmp_path, capsys):
    assert cli.main(_train(tmp_path, "r", kind, *extra, epochs=1)) == 2
    assert words in _one_error_line(capsys)


def test_posterior_summaries_and_khat_on_the_structured_kinds():
    """Posterior summaries take the labels as data and name any layer of a hierarchy; PSIS
    k-hat reads the log weights of any kind."""
    pytest.importorskip("arviz")
    from pyro_vae.data import eval_data, load_digits
    from pyro_vae.infer import log_likelihood, posterior_inference_data, psis_khat

    data = load_digits().head(40)
    configs = {
        "hvae": ModelConfig(data.event_shape, hidden=(16,), kind="hvae",
                            kind_options={"layers": (3, 2)}),
        "cvae": configured_for_data(ModelConfig(data.event_shape, latent_dim=2, hidden=(16,),
                                                kind="cvae"), data),
    }  # fmt: skip
    for name, config in configs.items():
        model = build_model(config)
        x = eval_data(model, data.test[:3])
        args = (data.labels["test"][:3],) if name == "cvae" else ()
        site = "z2" if name == "hvae" else "z"
        idata = posterior_inference_data(
            model.model, model.guide, x[:1], *(a[:1] for a in args), num_samples=50, site=site
        )
        assert idata is not None
        ll = log_likelihood(model.model, model.guide, x, *args, num_samples=20,
                            keep_log_weights=True)  # fmt: skip
        assert psis_khat(ll.log_weights).shape == (3,)


def test_parts_lists_the_model_kinds_with_their_options(capsys):
    assert cli.main(["parts"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("models (--model NAME --model-opt KEY=VALUE):")
    for name in ("vae", "ae", "cvae", "hvae", "m2"):
        assert f"\n  {name} " in out
    assert 'condition_on: str = "labels"' in out and "labels_per_class" in out


def test_latent_usage_lines_print_what_could_not_be_estimated():
    """results.json stores a non-finite estimate as null; the printed line says undefined,
    and an estimate within rounding of zero prints as 0.000."""
    from pyro_vae.runs import METRICS

    lines = METRICS["latent_usage"].lines
    usage = {"active_units": 0, "num_units": 2, "kl": 0.01, "mutual_information": -0.0003}
    assert lines({"latent_usage": usage})[0].endswith("KL 0.010 nats; I(x; z) 0.000 nats")
    usage = {"active_units": 0, "num_units": 2, "kl": None, "mutual_information": None}
    printed = lines({"latent_usage": usage, "collapse_warning": "posterior collapse: ..."})
    assert printed[0].endswith("KL undefined; I(x; z) undefined")
    assert printed[1] == "warning: posterior collapse: ..."


def test_two_classes_are_enough_and_unnamed_data_without_labels_are_called_the_data():
    from types import SimpleNamespace

    from pyro_vae.models.kinds import check_labels

    y = torch.tensor([0, 1, 1])
    two = SimpleNamespace(name="two", labels={"train": y, "valid": y[:1], "test": y[1:]})
    assert check_labels(two, "m2") == 2
    assert check_labels(two, "cvae", num_classes=5) == 5
    with pytest.raises(DataError) as info:
        check_labels(SimpleNamespace(labels={"train": y}), "cvae")
    assert str(info.value) == (
        "model 'cvae' needs labels, but 'the data' has none for the valid, test split(s); use "
        "a data set with labels (digits, mnist, fashion-mnist, an .npz with "
        "y_train/y_valid/y_test) or another --model"
    )


def test_labels_that_hold_no_point_are_counted_as_no_classes():
    """Every split present but empty: zero classes, refused as fewer than two."""
    from types import SimpleNamespace

    from pyro_vae.models.kinds import check_labels

    empty = torch.zeros(0, dtype=torch.long)
    data = SimpleNamespace(name="none", labels={"train": empty, "valid": empty, "test": empty})
    with pytest.raises(
        DataError,
        match=whole(
            "model 'm2' needs at least 2 classes, the labels have 0"
        ),
    ):
        check_labels(data, "m2")
    assert check_labels(data, "m2", num_classes=3) == 3


def test_a_plugin_kind_that_takes_labels_has_them_checked_against_its_num_classes():
    """A kind's own for_data, not overridden: a kind with ``uses_labels`` has the data's labels
    checked against its ``num_classes`` (whole message), derives nothing from them, and one
    without a ``num_classes`` attribute accepts any number of classes from two up."""
    from types import SimpleNamespace

    from pyro_vae.models import ModelKind, build_vae, register_model
    from pyro_vae.models.kinds import build_kind

    @register_model("tiny_labelled")
    class TinyLabelled(ModelKind):
        uses_labels = True

        def __init__(self, num_classes: int | None = None):
            self.num_classes = num_classes

        def build(self, config):
            return build_vae(config)

    @register_model("tiny_labelled_any")
    class TinyLabelledAny(ModelKind):
        uses_labels = True

        def build(self, config):
            return build_vae(config)

    y = torch.arange(10) % 5
    five = SimpleNamespace(name="five", labels={"train": y, "valid": y[:5], "test": y[5:]})
    try:
        with pytest.raises(DataError) as info:
            build_kind("tiny_labelled", {"num_classes": 3}).for_data(five)
        assert str(info.value) == (
            "labels go up to 4 but model 'tiny_labelled' has num_classes=3; set num_classes to "
            "at least 5 (--model-opt num_classes=5)"
        )
        assert build_kind("tiny_labelled", {"num_classes": 5}).for_data(five) == {}
        assert build_kind("tiny_labelled_any").for_data(five) == {}
        with pytest.raises(
            DataError,
            match=whole(
                "model 'tiny_labelled_any' needs labels, but 'x' has none for the train, valid, "
                "test split(s); use a data set with labels (digits, mnist, fashion-mnist, an .npz "
                "with y_train/y_valid/y_test) or another --model"
            ),
        ):
            build_kind("tiny_labelled_any").for_data(SimpleNamespace(name="x", labels={}))
    finally:
        for name in ("tiny_labelled", "tiny_labelled_any"):
            if name in MODELS:
                MODELS.unregister(name)


def _labelled(**labels):
    from types import SimpleNamespace

    ok = torch.tensor([0, 1, 2])
    return SimpleNamespace(name="toy", labels={"train": ok, "valid": ok, "test": ok, **labels})


def _unregistered_kind_name():
    class Unregistered(ModelKind):
        pass

    return Unregistered().name


def _labels_of_no_points():
    class Labelled(ModelKind):
        uses_labels = True
        _name = "labelled_toy"

    return Labelled().program_args(None)


def _check_labels(data, num_classes=None):
    return check_labels(data, "m2", num_classes)


KIND_REFUSALS = [
    (
        "an unregistered kind",
        _unregistered_kind_name,
        ConfigError,
        "Unregistered is not a registered model kind",
    ),
    (
        "labels missing for a labelled kind",
        _labels_of_no_points,
        DataError,
        "model 'labelled_toy' needs labels for every data point",
    ),
    (
        "an unknown choice",
        lambda: check_choice("ladder", "inference", ("bottom_up", "top_down")),
        ConfigError,
        "unknown inference 'ladder'; choose one of ['bottom_up', 'top_down']",
    ),
    (
        "data without labels",
        lambda: _check_labels(type("Plain", (), {"name": "plain"})()),
        DataError,
        "model 'm2' needs labels, but 'plain' has none for the train, valid, test split(s); use "
        "a data set with labels (digits, mnist, fashion-mnist, an .npz with y_train/y_valid/"
        "y_test) or another --model",
    ),
    (
        "a labelled set missing one split",
        lambda: _check_labels(type("Part", (), {"labels": {"train": torch.tensor([0, 1])}})()),
        DataError,
        "model 'm2' needs labels, but 'the data' has none for the valid, test split(s); use a "
        "data set with labels (digits, mnist, fashion-mnist, an .npz with y_train/y_valid/y_test) "
        "or another --model",
    ),
    (
        "float labels",
        lambda: _check_labels(_labelled(valid=torch.tensor([0.0, 1.0]))),
        DataError,
        "the valid labels must be integers of shape (N,), got torch.float32 (2,); store class "
        "indices 0..C-1",
    ),
    (
        "labels of two dimensions",
        lambda: _check_labels(_labelled(test=torch.zeros(2, 3, dtype=torch.int64))),
        DataError,
        "the test labels must be integers of shape (N,), got torch.int64 (2, 3); store class "
        "indices 0..C-1",
    ),
    (
        "a negative label",
        lambda: _check_labels(_labelled(train=torch.tensor([0, -3, 1]))),
        DataError,
        "the train labels contain -3; labels must be class indices 0..C-1",
    ),
    (
        "labels past num_classes",
        lambda: _check_labels(_labelled(), num_classes=2),
        DataError,
        "labels go up to 2 but model 'm2' has num_classes=2; set num_classes to at least 3 "
        "(--model-opt num_classes=3)",
    ),
    (
        "one class only",
        lambda: _check_labels(
            _labelled(**{s: torch.tensor([0, 0]) for s in ("train", "valid", "test")})
        ),
        DataError,
        "model 'm2' needs at least 2 classes, the labels have 1",
    ),
    (
        "not a pyro_vae model",
        lambda: kind_of(torch.nn.Linear(2, 2)),
        ConfigError,
        "expected a pyro_vae model (a VAE, an Autoencoder or a registered model kind's module), "
        "got Linear; build one with build_model(config)",
    ),
]


@pytest.mark.parametrize(
    "call, exc_type, message", [c[1:] for c in KIND_REFUSALS], ids=[c[0] for c in KIND_REFUSALS]
)
def test_model_kind_refusals_are_checked_whole(call, exc_type, message):
    with pytest.raises(exc_type, match=whole(message)):
        call()
