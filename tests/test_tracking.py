"""Experiment tracking: what TensorBoard and MLflow hold, read back with their own readers,
equals metrics.jsonl and results.json value by value; a resumed run is one series; a missing
extra is one line naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from refusals import whole

from pyro_vae import cli
from pyro_vae.errors import ConfigError, MissingExtraError
from pyro_vae.runs import pipeline, resume_run, train_run
from pyro_vae.runs.tracking import TRACKERS, Tracking, check_trackers, flat_config, numbers
from pyro_vae.train import TrainConfig

SMALL = {"hidden": (16,), "latent_dim": 2}
TRAIN = {"batch_size": 64, "seed": 5, "valid_num_samples": 2}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(run: Path, epochs: int, **train) -> dict:
    return train_run(
        "digits", None, TrainConfig(epochs=epochs, **TRAIN, **train), run, num_samples=5,
        progress=False, **SMALL,
    )  # fmt: skip


def _tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``logdir`` as (step, value) pairs, by TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import (
        TENSORS,
        EventAccumulator,
    )
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            out[tag] = [
                (e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)
            ]
    return out


def _tensorboard(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        TENSORS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0, IMAGES: 0})
    acc.Reload()
    return acc


def test_a_tracked_resumed_run_is_one_series_equal_to_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    uri = "sqlite:///" + str(tmp_path / "store" / "mlflow.db")
    run = tmp_path / "runs" / "tracked"
    tracked = {"track": ("tensorboard", "mlflow"), "mlflow_uri": uri, "track_samples_every": 2}
    _train(run, 2, **tracked)
    first_config = json.loads((run / "config.json").read_text())
    state = json.loads((run / "tracking.json").read_text())
    assert state["tensorboard"]["epoch"] == 2 and state["mlflow"]["epoch"] == 2
    results = resume_run(run, epochs=4, progress=False)
    # tracking changes nothing that is trained: an untracked run has the same metrics
    _train(tmp_path / "runs" / "plain", 4)
    records = _records(run)
    plain = _records(tmp_path / "runs" / "plain")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    wall = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in wall} for r in records] == [
        {k: v for k, v in r.items() if k not in wall} for r in plain
    ]
    final = numbers(json.loads((run / "results.json").read_text()))
    assert final["epochs"] == 4 and "test_elbo_stderr" in final
    assert final["test_log_likelihood_stderr"] > 0
    expected = {
        key: [(r["epoch"], float(r[key])) for r in records] for key in records[0] if key != "epoch"
    }

    # TensorBoard: one continuous series per metric, values equal (float64), and the scores
    scalars = _tensorboard_scalars(run / "tensorboard")
    for key, series in expected.items():
        assert scalars[key] == series, key
    # the scores of each finished stretch at its last epoch: after 2 epochs, then after 4
    for key, value in final.items():
        assert [step for step, _ in scalars[key]] == [2, 4], key
        assert scalars[key][-1] == (4, value), key
    acc = _tensorboard(run / "tensorboard")
    assert [e.step for e in acc.Images("samples")] == [2, 4]
    figures = {p.stem for p in run.glob("*.png")}
    assert figures and {f"figures/{name}" for name in figures} <= set(acc.Tags()["images"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    flat = flat_config(json.loads((run / "config.json").read_text()))
    assert set(hparams) == set(flat)
    assert hparams["train.lr"].number_value == flat["train.lr"]
    assert hparams["dataset"].string_value == "digits"

    # MLflow: one run, the same series, the config as parameters, the files as artifacts
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert run_id == state["mlflow"]["run_id"]
    experiment = client.get_experiment_by_name("pyro-vae")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    for key, series in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == series, key
    for key, value in final.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == [2, 4] and history[-1] == (4, value), key
    assert logged.data.params == {k: str(v) for k, v in flat_config(first_config).items()}
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint.pt", "figures", "config.json"} <= artifacts
    assert {Path(a.path).name for a in client.list_artifacts(run_id, "figures")} == {
        p.name for p in run.glob("*.png")
    }
    assert results["epochs"] == 4


def test_an_epoch_checkpointed_but_not_logged_is_logged_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    _train(run, 2, track=("tensorboard",), track_samples_every=0)
    state = json.loads((run / "tracking.json").read_text())
    state["tensorboard"]["epoch"] = 1  # as if the run stopped after epoch 2's checkpoint
    (run / "tracking.json").write_text(json.dumps(state))
    resume_run(run, epochs=3, progress=False)
    records = _records(run)
    scalars = _tensorboard_scalars(run / "tensorboard")
    for key in records[0]:
        if key != "epoch":
            # epoch 2 was logged before the stop and again on resume: the same point twice
            series = [(r["epoch"], float(r[key])) for r in records]
            assert sorted(set(scalars[key])) == series, key
            assert [step for step, _ in scalars[key]] == [1, 2, 2, 3], key


def test_default_mlflow_store_is_beside_the_runs(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from pyro_vae.runs.tracking import default_mlflow_uri

    monkeypatch.chdir(tmp_path)
    uri = default_mlflow_uri(pipeline.RunDir("runs/x"))
    assert uri == "sqlite:///" + str(tmp_path / "runs" / "mlruns" / "mlflow.db")


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(MissingExtraError, match=r"the 'mlflow' extra .*pyro-vae\[mlflow\]"):
        _train(tmp_path / "run", 1, track=("mlflow",))
    assert not (tmp_path / "run").exists()  # refused before any file was written
    argv = [
        "train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--track", "mlflow",
        "--output-dir", str(tmp_path), "--name", "cli",
    ]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'mlflow' extra" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "cli").exists()


def test_unknown_trackers_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'"):
        check_trackers(["wandb"])
    with pytest.raises(
        ConfigError,
        match=whole(
            "track must be a list of tracker names such as ['tensorboard'], got [1]"
        ),
    ):
        TrainConfig(track=[1])
    with pytest.raises(
        ConfigError,
        match=whole(
            "track_samples_every must be an integer >= 0, got -1"
        ),
    ):
        TrainConfig(track_samples_every=-1)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--track", "wandb"])
    assert info.value.code == 2 and "invalid choice: 'wandb'" in capsys.readouterr().err
    assert set(TRACKERS) >= {"tensorboard", "mlflow"}


def test_track_in_a_config_file_and_several_flags(tmp_path):
    pytest.importorskip("tensorboard")
    config = tmp_path / "run.toml"
    config.write_text('track = ["tensorboard"]\ntrack_samples_every = 1\nepochs = 1\n')
    argv = [
        "train", "--dataset", "digits", "--hidden", "16", "--num-samples", "2", "--no-progress",
        "--config", str(config), "--output-dir", str(tmp_path), "--name", "file",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    saved = json.loads((tmp_path / "file" / "config.json").read_text())
    assert saved["train"]["track"] == ["tensorboard"]
    assert (tmp_path / "file" / "tensorboard").is_dir()
    args = cli.build_parser().parse_args(["train", "--track", "tensorboard", "--track", "mlflow"])
    assert args.track == ("tensorboard", "mlflow")
    args = cli.build_parser().parse_args(["train", "--track", "mlflow", "tensorboard"])
    assert TrainConfig(track=args.track).track == ("mlflow", "tensorboard")


def test_only_rank_0_opens_trackers(tmp_path, monkeypatch):
    class OtherRank:
        is_main, distributed = False, True

    opened = []
    monkeypatch.setattr(pipeline, "current_group", lambda: OtherRank())
    monkeypatch.setattr(Tracking, "open", classmethod(lambda cls, *a: opened.append(a)))
    tracking = pipeline.open_tracking(
        pipeline.RunDir(tmp_path), TrainConfig(track=("tensorboard",)), {}
    )
    assert not opened and tracking.trackers == {}


def test_an_untracked_run_writes_no_tracking_files(tmp_path):
    _train(tmp_path / "run", 1)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert "tracking.json" not in names and "tensorboard" not in names
