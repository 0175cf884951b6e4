"""Resume and determinism: a killed run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny, tiny_run

from pyro_vae import cli
from pyro_vae.errors import ConfigError
from pyro_vae.runs import resume_run
from pyro_vae.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WALL_TIME = {"seconds", "train_seconds"}


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_TIME} for line in lines]


def _results(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    return {k: v for k, v in results.items() if k not in WALL_TIME}


def _train_args(out: Path, name: str) -> list[str]:
    return [
        "train", "--dataset", "digits", "--epochs", "8", "--hidden", "64,32",
        "--batch-size", "16", "--num-samples", "10", "--seed", "3", "--no-progress",
        "--output-dir", str(out), "--name", name,
    ]  # fmt: skip


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", *_train_args(tmp_path, "killed")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = killed / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (killed / "results.json").exists(), "the run must be killed before it ends"
    done = load_checkpoint(killed / "checkpoint.pt")["epoch"]
    assert 1 <= done < 8

    resumed = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--resume", str(killed), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert list(killed.glob(".*.tmp")) == []

    # The uninterrupted run with the same seed, in this process.
    assert cli.main(_train_args(tmp_path, "full")) == 0
    full = tmp_path / "full"
    assert len(_metrics(full)) == 8
    assert _metrics(killed) == _metrics(full)
    assert _results(killed) == _results(full)


def test_same_seed_gives_identical_results_and_another_seed_does_not(tmp_path):
    a, b, c = (tiny_run(tmp_path, n, 2, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert _metrics(a) == _metrics(b) and _results(a) == _results(b)
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for k, v in sa["model_state"].items():
        assert torch.equal(v, sb["model_state"][k])
    assert _metrics(a) != _metrics(c)


def test_resume_extends_a_finished_run_exactly(tmp_path):
    full = tiny_run(tmp_path, "full", 3)
    short = tiny_run(tmp_path, "short", 2)
    data, _ = tiny()
    resume_run(short, epochs=3, progress=False, data=data)
    assert _metrics(short) == _metrics(full)
    assert _results(short) == _results(full)
    assert json.loads((short / "config.json").read_text())["train"]["epochs"] == 3


def test_resume_drops_metrics_past_the_checkpoint_and_torn_lines(tmp_path):
    full = tiny_run(tmp_path, "full", 3)
    short = tiny_run(tmp_path, "short", 2)
    # As if killed after writing epoch 3's metrics but before its checkpoint, mid-line.
    with open(short / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "train_elbo": 0.0}) + "\n" + '{"epoch": 4, "tra')
    data, _ = tiny()
    resume_run(short, epochs=3, progress=False, data=data)
    assert _metrics(short) == _metrics(full)


@pytest.mark.parametrize(
    "key, value",
    [
        ("lr", 0.5),
        # a changed seed would silently continue a different random stream from the checkpoint's
        ("seed", 1),
    ],
)
def test_resume_refuses_changed_training_settings(tmp_path, key, value):
    run = tiny_run(tmp_path, "run", 1)
    config = json.loads((run / "config.json").read_text())
    config["train"][key] = value
    (run / "config.json").write_text(json.dumps(config))
    data, _ = tiny()
    with pytest.raises(ConfigError) as info:
        resume_run(run, progress=False, data=data)
    assert str(info.value) == (
        f"cannot resume {str(run)!r} with different training settings [{key!r}]; resume with the "
        "run's own configuration or start a new run"
    )


def test_resume_refuses_fewer_epochs_than_already_trained(tmp_path):
    run = tiny_run(tmp_path, "run", 2)
    data, _ = tiny()
    with pytest.raises(ConfigError) as info:
        resume_run(run, epochs=1, progress=False, data=data)
    assert str(info.value) == (
        f"{str(run)!r} has already trained 2 epochs, more than the 1 asked for; "
        "pass --epochs 2 or more"
    )
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2


def test_resume_refuses_a_different_model(tmp_path):
    run = tiny_run(tmp_path, "run", 1)
    config = json.loads((run / "config.json").read_text())
    config["model"]["likelihood"] = "normal"  # same parameter shapes, another model
    (run / "config.json").write_text(json.dumps(config))
    data, _ = tiny()
    with pytest.raises(ConfigError) as info:
        resume_run(run, progress=False, data=data)
    assert str(info.value) == (
        f"cannot resume {str(run)!r} with a model differing from its checkpoint's in "
        "['likelihood', 'likelihood_options']; resume with the run's own config.json or start a "
        "new run"
    )


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    full = tiny_run(tmp_path, "full", 2)
    early = tiny_run(tmp_path, "early", 2)
    # As if killed during epoch 1: a config but no checkpoint and no metrics yet.
    for name in ("checkpoint.pt", "metrics.jsonl", "results.json"):
        (early / name).unlink()
    data, _ = tiny()
    resume_run(early, progress=False, data=data)
    assert _metrics(early) == _metrics(full)


def test_gradient_clipping_changes_training_and_is_recorded(tmp_path):
    plain = tiny_run(tmp_path, "plain", 1)
    clipped = tiny_run(tmp_path, "clipped", 1, clip_grad=0.01)
    assert _metrics(plain) != _metrics(clipped)
    assert load_checkpoint(clipped / "checkpoint.pt")["train_config"]["clip_grad"] == 0.01


@pytest.mark.parametrize(
    "damage",
    [
        lambda rng: rng.pop("numpy"),
        lambda rng: rng.__setitem__("torch", torch.zeros(3, dtype=torch.uint8)),
        lambda rng: rng.__setitem__("python", [3, [1, 2], None]),
    ],
    ids=["missing generator", "torch state cut short", "python state cut short"],
)
def test_resume_refuses_a_corrupt_random_state_with_a_checkpoint_error(tmp_path, damage):
    from pyro_vae.errors import CheckpointError
    from pyro_vae.train.checkpoint import save_checkpoint

    run = tiny_run(tmp_path, "run", 1)
    state = load_checkpoint(run / "checkpoint.pt")
    key = next(k for k in state if "rng" in k)
    damage(state[key])
    save_checkpoint(run / "checkpoint.pt", state)
    data, _ = tiny()
    # the reason in the parentheses is Python's or torch's own; the rest is checked whole
    unreadable = (
        r"^the checkpoint's random-number state is unreadable \(.+\); it is corrupted, restart "
        r"the run with --overwrite\Z"
    )
    with pytest.raises(CheckpointError, match=unreadable):
        resume_run(run, epochs=2, progress=False, data=data)


def test_per_rank_generator_states_are_checkpointed_only_with_several_processes(
    tmp_path, monkeypatch
):
    """A one-process run's checkpoint holds its generator state once (``rng_state``), whether
    the epoch ends with this process's engine or with none; with two processes (the other
    rank's state given by a stand-in for the gather, in this process) it holds each rank's,
    rank 1 resumes its own, and one process refuses to resume it, as two processes refuse
    the one-process run's."""
    from types import SimpleNamespace

    import pyro_vae.train.parallel as parallel
    from pyro_vae.errors import CheckpointError
    from pyro_vae.models import build_vae
    from pyro_vae.runs import RunDir
    from pyro_vae.runtime import ProcessGroup
    from pyro_vae.train import TrainConfig
    from pyro_vae.train.loop import end_epoch, restore_rank_stream

    run = tiny_run(tmp_path, "run", 1)
    assert "rank_rng_states" not in load_checkpoint(run / "checkpoint.pt")
    _, model_config = tiny()
    vae = build_vae(model_config)
    optimizer = torch.optim.Adam(vae.parameters())
    config = TrainConfig(epochs=1)

    def end(name: str, engine) -> tuple[RunDir, dict]:
        store = RunDir(tmp_path / name)
        store.path.mkdir()
        end_epoch(vae, optimizer, config, model_config, [{"epoch": 1}], store, engine)
        return store, store.load_checkpoint()

    assert "rank_rng_states" not in end("alone", None)[1]
    mine = torch.get_rng_state()
    other = torch.Generator().manual_seed(9).get_state()
    monkeypatch.setattr(parallel, "all_gather", lambda state: [state, other])
    store, state = end("two", SimpleNamespace(group=ProcessGroup(0, 2)))
    saved = state["rank_rng_states"]
    assert len(saved) == 2 and torch.equal(saved[0], mine) and torch.equal(saved[1], other)
    restore_rank_stream(state, store, SimpleNamespace(group=ProcessGroup(1, 2)))
    assert torch.equal(torch.get_rng_state(), other)
    with pytest.raises(CheckpointError) as info:
        restore_rank_stream(state, store, None)
    assert str(info.value) == (
        f"{store} was trained by 2 process(es) and this resume runs 1, so it cannot continue "
        "identically; resume it with torchrun --nproc_per_node=2"
    )
    alone = RunDir(run)
    with pytest.raises(CheckpointError) as info:
        restore_rank_stream(
            alone.load_checkpoint(), alone, SimpleNamespace(group=ProcessGroup(1, 2))
        )
    assert str(info.value) == (
        f"{alone} was trained by 1 process(es) and this resume runs 2, so it cannot continue "
        "identically; resume it without torchrun"
    )


def test_the_epochs_of_a_two_process_engine_checkpoint_every_rank_s_generator(
    tmp_path, monkeypatch
):
    """Training epochs with an engine of two processes (rank 0 here; the collectives given
    by stand-ins in this process: the other rank's sums equal to this one's, its generator
    state a fixed one) checkpoints this rank's generator state as the epoch left it and the
    other rank's, in rank order."""
    import pyro_vae.train.parallel as parallel
    from pyro_vae.models import build_vae
    from pyro_vae.runs import RunDir
    from pyro_vae.runtime import ProcessGroup
    from pyro_vae.train import TrainConfig
    from pyro_vae.train.loop import run_epochs
    from pyro_vae.train.parallel import Engine, LossModule
    from pyro_vae.train.tasks import make_task

    other = torch.Generator().manual_seed(9).get_state()
    monkeypatch.setattr(parallel, "all_gather", lambda state: [state, other])
    monkeypatch.setattr(parallel, "all_reduce_sum", lambda packed: packed.mul_(2))
    data, model_config = tiny()
    torch.manual_seed(0)
    vae = build_vae(model_config)
    config = TrainConfig(epochs=1, batch_size=8, valid_num_samples=3)
    task = make_task(vae, config.make_objective(), config.valid_num_samples)
    engine = Engine(LossModule(vae, task.batch_loss), torch.device("cpu"), ProcessGroup(0, 2))
    store = RunDir(tmp_path / "two")
    store.path.mkdir()
    optimizer = torch.optim.Adam(vae.parameters())
    run_epochs(task, optimizer, data, config, [], store, model_config, False, engine)
    saved = store.load_checkpoint()["rank_rng_states"]
    assert len(saved) == 2
    assert torch.equal(saved[0], torch.get_rng_state())  # nothing drawn after the last epoch
    assert torch.equal(saved[1], other)


def _pop_optimizer_state(state):
    state.pop("optimizer_state")


def _poison_a_weight(state):
    state["model_state"]["decoder.net.0.bias"][0] = float("nan")


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            _pop_optimizer_state,
            "checkpoint in {run!r} lacks ['optimizer_state']; it was not written by this version "
            "of fit, so it cannot be resumed: start again with --overwrite",
        ),
        (
            lambda state: state.__setitem__("kind", "ae"),
            "checkpoint in {run!r} is of a 'ae' model, not 'vae'; resume with the run's own "
            "config.json",
        ),
        (
            lambda state: state.__setitem__("history", []),
            "checkpoint in {run!r} is inconsistent (epoch 1, 0 metric records); start again with "
            "--overwrite",
        ),
        (
            _poison_a_weight,
            "checkpoint in {run!r}: 'decoder.net.0.bias' holds NaN or infinite values; restore "
            "an earlier checkpoint or retrain",
        ),
    ],
    ids=["no optimizer state", "another kind", "history cut short", "a weight turned NaN"],
)
def test_resume_refuses_a_checkpoint_it_cannot_continue_whole(tmp_path, damage, message):
    from pyro_vae.errors import CheckpointError
    from pyro_vae.train.checkpoint import save_checkpoint

    run = tiny_run(tmp_path, "run", 1)
    state = load_checkpoint(run / "checkpoint.pt")
    damage(state)
    save_checkpoint(run / "checkpoint.pt", state)
    data, _ = tiny()
    with pytest.raises(CheckpointError) as info:
        resume_run(run, epochs=2, progress=False, data=data)
    assert str(info.value) == message.format(run=str(run))


def test_resume_refuses_an_optimizer_state_of_another_model_whole(tmp_path):
    from pyro_vae.errors import CheckpointError
    from pyro_vae.train.checkpoint import save_checkpoint

    run = tiny_run(tmp_path, "run", 1)
    state = load_checkpoint(run / "checkpoint.pt")
    state["optimizer_state"] = {"state": {}, "param_groups": []}
    save_checkpoint(run / "checkpoint.pt", state)
    data, _ = tiny()
    # torch's own reason sits in the parentheses; the rest is checked whole
    pattern = (
        "^"
        + re.escape(f"the optimizer state in {str(run)!r} does not match the model (")
        + ".+"
        + re.escape("); start again with --overwrite")
        + r"\Z"
    )
    with pytest.raises(CheckpointError, match=pattern):
        resume_run(run, epochs=2, progress=False, data=data)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_a_checkpoint_whose_model_table_predates_model_kinds_resumes_as_its_recorded_kind(kind):
    """A model table written before model kinds had a key of their own takes the kind the
    checkpoint records beside it ("ae"), or a VAE where it records none (checkpoints before
    model kinds were VAEs): resuming with the same model and settings is accepted, and a
    different model is refused naming the differing key, whole message."""
    from dataclasses import asdict

    from pyro_vae.models import ModelConfig
    from pyro_vae.train import TrainConfig
    from pyro_vae.train.loop import check_resumable

    model_config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,), kind=kind)
    table = model_config.to_dict()
    assert table.pop("kind") == kind
    config = TrainConfig(epochs=2)
    state = {
        "model_config": table, "train_config": asdict(config), "model_state": {},
        "optimizer_state": {}, "epoch": 1, "history": [{}], "rng_state": None,
    }  # fmt: skip
    if kind != "vae":
        state["kind"] = kind
    assert check_resumable(state, "runs/old", kind, config, model_config) is None
    wider = ModelConfig(event_shape=(6,), latent_dim=3, hidden=(8,), kind=kind)
    with pytest.raises(ConfigError) as info:
        check_resumable(state, "runs/old", kind, config, wider)
    assert str(info.value) == (
        "cannot resume 'runs/old' with a model differing from its checkpoint's in "
        "['latent_dim']; resume with the run's own config.json or start a new run"
    )


@pytest.mark.parametrize("saved", [True, False], ids=["model saved", "no model saved"])
def test_resume_with_a_model_config_on_one_side_only_continues_the_run(tmp_path, saved):
    """A checkpoint written with a model config resumed without one, or one written without
    a model config resumed with one, has nothing to compare: it is resumed, and ends where an
    uninterrupted run of 2 epochs ends."""
    from pyro_vae.models import build_vae
    from pyro_vae.runs import RunDir
    from pyro_vae.train import TrainConfig, fit

    data, model_config = tiny()

    def run(epochs: int, path: Path, with_model: bool, resume: bool) -> list[dict]:
        torch.manual_seed(1)
        config = TrainConfig(epochs=epochs, batch_size=8, seed=0, valid_num_samples=3)
        saved_config = model_config if with_model else None
        result = fit(
            build_vae(model_config), data, config, RunDir(path), saved_config,
            progress=False, resume=resume,
        )  # fmt: skip
        return [{k: v for k, v in r.items() if k not in WALL_TIME} for r in result.history]

    run(1, tmp_path / "r", saved, resume=False)
    assert (load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model_config"] is None) != saved
    resumed = run(2, tmp_path / "r", not saved, resume=True)
    assert resumed == run(2, tmp_path / "full", saved, resume=False)


def test_a_read_only_run_reads_the_checkpoint_and_writes_nothing(tmp_path):
    """The run directory as ranks other than 0 see it: named, and its checkpoint read, as
    the run itself; its writes leave every file as it was; a fault names the run and its
    kept checkpoint."""
    from pyro_vae.runs import RunDir
    from pyro_vae.train.loop import training_fault
    from pyro_vae.train.parallel import ReadOnlyRun

    path = tiny_run(tmp_path, "run", 1)
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    run = ReadOnlyRun(RunDir(path))
    assert str(run) == str(RunDir(path)) == str(path)
    assert run.has_checkpoint()
    state = run.load_checkpoint()
    assert state["epoch"] == 1 and len(state["history"]) == 1
    for key, value in load_checkpoint(path / "checkpoint.pt")["model_state"].items():
        assert torch.equal(state["model_state"][key], value), key
    run.save_checkpoint({**state, "epoch": 2})
    run.write_metrics([])
    run.append_metrics({"epoch": 2})
    run.record_config({"train": {}}, {})
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    assert str(training_fault("training loss is nan", 2, 3, run)) == (
        f"training loss is nan at epoch 2, step 3; the last good checkpoint is kept in "
        f"{str(path)!r}; lower --lr, pass --clip-grad (e.g. 10), or check the data scale"
    )
    fresh = ReadOnlyRun(RunDir(tmp_path / "fresh"))
    assert str(fresh) == str(tmp_path / "fresh") and not fresh.has_checkpoint()


def test_resume_refuses_data_that_differ_from_those_a_fit_recorded(tmp_path):
    """A run written by ``fit`` itself (run directory and model config, no pipeline) records
    its data's fingerprint under ``data_fingerprint``; resuming it on other data of the same
    shape is refused before anything is trained, and config.json is left as it was."""
    from pyro_vae.errors import DataError
    from pyro_vae.models import build_vae
    from pyro_vae.runs import RunDir
    from pyro_vae.train import TrainConfig, data_fingerprint, fit

    data, model_config = tiny()
    path = tmp_path / "run"
    config = TrainConfig(epochs=1, batch_size=8, seed=0, valid_num_samples=3)
    fit(build_vae(model_config), data, config, RunDir(path), model_config, progress=False)
    recorded = (path / "config.json").read_text()
    assert json.loads(recorded)["data_fingerprint"] == data_fingerprint(data)
    other, _ = tiny(seed=1)
    with pytest.raises(DataError) as info:
        resume_run(path, epochs=2, progress=False, data=other)
    assert str(info.value) == (
        f"the train, valid, test data differ from those {path} was trained on (sizes or "
        "sha256 in its config.json); restore the original data, or train a new run on these"
    )
    assert (path / "config.json").read_text() == recorded
