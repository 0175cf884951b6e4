"""Learning-rate schedules and Adam's epsilon: the rate of each epoch on known values, the
rate a run actually used (read back from its checkpoint), exact resume on a schedule, and
one-line refusals."""

from __future__ import annotations

import pytest
import torch
from refusals import whole
from tiny_runs import tiny, tiny_run

from pyro_vae.cli import main
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_model
from pyro_vae.runs import RunDir, resume_run
from pyro_vae.train import TrainConfig, fit, load_checkpoint
from pyro_vae.train.schedules import LR_SCHEDULES, iwae_stage, learning_rate

# Burda et al. (2016): 3^i epochs at 1e-3 * 10^(-i/7); the values written out by hand.
BURDA = {
    1: 1e-3,
    2: 7.196856730011521e-4,
    4: 7.196856730011521e-4,
    5: 5.179474679231212e-4,
    13: 5.179474679231212e-4,
    14: 3.727593720314941e-4,
    40: 3.727593720314941e-4,
    41: 2.6826957952797275e-4,
    3280: 1e-4,
    3281: 1e-4,
    10_000: 1e-4,
}


@pytest.mark.parametrize("epoch, rate", sorted(BURDA.items()))
def test_iwae_schedule_gives_the_papers_rate_of_each_epoch(epoch, rate):
    assert learning_rate(1e-3, "iwae", epoch) == pytest.approx(rate, rel=1e-12)


def test_iwae_stages_last_three_to_the_i_epochs():
    stages = [iwae_stage(e) for e in range(1, 3281)]
    assert [stages.count(i) for i in range(8)] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert stages == sorted(stages)


def test_constant_schedule_keeps_the_rate():
    assert {learning_rate(3e-4, "constant", e) for e in (1, 7, 500)} == {3e-4}
    assert set(LR_SCHEDULES) >= {"constant", "iwae"}


@pytest.mark.parametrize("epochs", [1, 2, 4, 5])
def test_a_run_steps_at_its_epochs_rate_and_adam_eps(tmp_path, epochs):
    run = tiny_run(tmp_path, "r", epochs, lr_schedule="iwae", adam_eps=1e-4)
    groups = load_checkpoint(run / "checkpoint.pt")["optimizer_state"]["param_groups"]
    assert groups[0]["lr"] == pytest.approx(BURDA[epochs], rel=1e-12)
    assert groups[0]["eps"] == 1e-4


def test_resume_on_a_schedule_ends_where_an_uninterrupted_run_does(tmp_path):
    full = tiny_run(tmp_path, "full", 5, lr_schedule="iwae")
    short = tiny_run(tmp_path, "short", 3, lr_schedule="iwae")
    data, _ = tiny()
    resume_run(short, epochs=5, progress=False, data=data)
    a = load_checkpoint(full / "checkpoint.pt")["model_state"]
    b = load_checkpoint(short / "checkpoint.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a schedule is a training setting: resuming may not change it
    _, model_config = tiny()
    changed = TrainConfig(epochs=6, batch_size=8, valid_num_samples=3, lr_schedule="constant")
    with pytest.raises(ConfigError) as info:
        fit(build_model(model_config), data, changed, RunDir(short), model_config,
            progress=False, resume=True)  # fmt: skip
    assert str(info.value) == (
        f"cannot resume {str(short)!r} with different training settings ['lr_schedule']; resume "
        "with the run's own configuration or start a new run"
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "lr_schedule",
            "cosine",
            "unknown learning-rate schedule 'cosine'; choose one of ['constant', 'iwae']",
        ),
        ("adam_eps", 0.0, "adam_eps must be a positive number, got 0.0"),
        ("adam_eps", float("nan"), "adam_eps must be a positive number, got nan"),
        ("adam_eps", True, "adam_eps must be a positive number, got True"),
        ("adam_eps", "1e-8", "adam_eps must be a positive number, got '1e-8'"),
    ],
)
def test_bad_schedule_or_eps_is_refused(field, value, message):
    with pytest.raises(ConfigError, match=whole(message)):
        TrainConfig(**{field: value})


def test_cli_refuses_an_unknown_schedule_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--epochs", "1", "--lr-schedule", "cosine", "--output-dir", str(tmp_path)])
    code = exit_.value.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cosine" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_trains_a_papers_row_from_flags(tmp_path):
    """The options a published row needs reach the run's config.json and its optimizer."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=(rng.random((40, 6)) * 255).astype(np.uint8),
             x_valid=(rng.random((8, 6)) * 255).astype(np.uint8),
             x_test=(rng.random((8, 6)) * 255).astype(np.uint8))  # fmt: skip
    code = main(
        ["train", "--dataset", str(path), "--epochs", "2", "--batch-size", "20",
         "--hidden", "5,5", "--latent-dim", "2", "--arch-opt", "activation=gated",
         "--lr-schedule", "iwae", "--adam-eps", "1e-4", "--num-samples", "5",
         "--output-dir", str(tmp_path), "--name", "row", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    config = json.loads((tmp_path / "row" / "config.json").read_text())
    assert config["train"]["lr_schedule"] == "iwae" and config["train"]["adam_eps"] == 1e-4
    assert config["model"]["arch_options"] == {"activation": "gated"}
    groups = load_checkpoint(tmp_path / "row" / "checkpoint.pt")["optimizer_state"]["param_groups"]
    assert groups[0]["lr"] == pytest.approx(BURDA[2], rel=1e-12)


@pytest.mark.parametrize(
    "epoch, stage",
    [(1, 0), (2, 1), (4, 1), (5, 2), (13, 2), (14, 3), (40, 3), (41, 4), (121, 4), (122, 5),
     (3280, 7), (3281, 8), (9841, 8), (9842, 9)],
)  # fmt: skip
def test_iwae_stage_of_known_epochs(epoch, stage):
    """Stage i lasts 3^i epochs, so it ends at epoch 3^0 + ... + 3^i = (3^(i+1) - 1) / 2:
    1, 4, 13, 40, 121, ..., 3280, 9841; the stage keeps counting past the schedule's eight."""
    assert (3 ** (stage + 1) - 1) // 2 >= epoch > (3**stage - 1) // 2
    assert iwae_stage(epoch) == stage
