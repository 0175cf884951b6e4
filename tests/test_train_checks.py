"""The training package's checks and plumbing pinned whole: refusal messages, the arguments
fit_autoencoder hands on, the random-state capture of CUDA generators, the registries of
schedules and tasks, and the M2 task's defaults and draws."""

from __future__ import annotations

from types import SimpleNamespace

import pyro
import pytest
import torch
from refusals import whole

from pyro_vae.data import DataSplits
from pyro_vae.errors import CheckpointError, ConfigError, DataError, TrainingError
from pyro_vae.infer.objectives import make_objective
from pyro_vae.models import ModelConfig, build_autoencoder, build_vae
from pyro_vae.models.semisupervised import build_semisupervised
from pyro_vae.runs import RunDir
from pyro_vae.train import TrainConfig, fit, fit_autoencoder

ADVICE = "lower --lr, pass --clip-grad (e.g. 10), or check the data scale"


def six_feature_data() -> DataSplits:
    """30 points of 6 uniform values (20 / 5 / 5)."""
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    return DataSplits("tiny", x[:20], x[20:25], x[25:])


class KeptRun:
    """A run directory as the fault messages see it: its name, and a checkpoint kept."""

    def __str__(self) -> str:
        return "runs/kept"

    def has_checkpoint(self) -> bool:
        return True


def timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_fit_autoencoder_writes_the_run_directory_and_resumes_where_an_uninterrupted_run_ends(
    tmp_path,
):
    """With a run directory and a model config, fit_autoencoder records config.json and
    checkpoints; resumed to 3 epochs (from a model initialized differently: the checkpoint
    replaces its weights), it ends bitwise where an uninterrupted 3-epoch run ends, keeping
    the first 2 records it had written."""
    data = six_feature_data()
    config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,), kind="ae")
    train = dict(batch_size=10, seed=3)

    torch.manual_seed(0)
    full = build_autoencoder(config)
    uninterrupted = fit_autoencoder(full, data, TrainConfig(epochs=3, **train), progress=False)

    run = RunDir(tmp_path / "ae")
    torch.manual_seed(0)
    first = fit_autoencoder(build_autoencoder(config), data, TrainConfig(epochs=2, **train), run,
                            config, progress=False)  # fmt: skip
    assert run.read_json(RunDir.CONFIG)["model"] == config.to_dict()
    assert run.has_checkpoint()

    torch.manual_seed(1)
    resumed_ae = build_autoencoder(config)
    resumed = fit_autoencoder(resumed_ae, data, TrainConfig(epochs=3, **train), run, config,
                              progress=False, resume=True)  # fmt: skip
    assert resumed.history[:2] == first.history
    assert timeless(resumed.history) == timeless(uninterrupted.history)
    got, want = resumed_ae.state_dict(), full.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_loader_s_reason_is_its_first_sentence_cut_at_160_characters_or_the_error_s_type():
    from pyro_vae.train.checkpoint import _reason

    assert _reason(RuntimeError()) == "RuntimeError"
    assert _reason(ValueError("  \n ")) == "ValueError"
    assert _reason(RuntimeError("a" * 200)) == "a" * 160
    assert _reason(RuntimeError("b" * 160 + "c")) == "b" * 160
    assert _reason(RuntimeError("first. second")) == "first"
    refused = RuntimeError(
        "Weights only load failed.\nWeightsUnpickler error: Unsupported global: GLOBAL "
        "os.system. Check the docs\nmore"
    )
    assert _reason(refused) == "Unsupported global: GLOBAL os.system"


def test_a_state_mismatch_counts_the_differences_after_the_first():
    from pyro_vae.train.checkpoint import state_mismatch

    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(4)}
    assert state_mismatch(expected, dict(expected)) is None
    assert state_mismatch(expected, {"b": torch.zeros(3), "c": torch.zeros(4)}) == (
        "the file lacks 'a'"
    )
    assert state_mismatch(expected, {"c": torch.zeros(4)}) == (
        "the file lacks 'a', and 1 more differs"
    )
    assert state_mismatch(expected, {}) == "the file lacks 'a', and 2 more differ"
    assert state_mismatch(expected, {"a": torch.zeros(5), "d": torch.zeros(1)}) == (
        "'a' has shape (5,) in the file and (2,) in the model, and 3 more differ"
    )


def test_a_non_finite_step_names_its_epoch_step_and_the_kept_checkpoint_whole():
    from pyro_vae.train.loop import check_finite_step

    with pytest.raises(
        TrainingError,
        match=whole(
            "training loss is nan at epoch 3, step 7; the last good checkpoint is kept in "
            f"'runs/kept'; {ADVICE}"
        ),
    ):
        check_finite_step(torch.tensor(float("nan")), None, 3, 7, KeptRun())
    with pytest.raises(
        TrainingError,
        match=whole(
            "gradient norm is inf at epoch 2, step 0; the last good checkpoint is kept in "
            f"'runs/kept'; {ADVICE}"
        ),
    ):
        check_finite_step(torch.tensor(1.5), torch.tensor(float("inf")), 2, 0, KeptRun())


def test_a_fault_outside_a_step_names_the_epoch_alone():
    """A non-finite parameter is found after the epoch's steps: the message names the epoch
    and no step."""
    from pyro_vae.train.loop import training_fault

    fault = training_fault("parameter 'w' became non-finite", 4, None, None)
    assert isinstance(fault, TrainingError)
    assert str(fault) == f"parameter 'w' became non-finite at epoch 4; {ADVICE}"
    kept = training_fault("parameter 'w' became non-finite", 4, None, KeptRun())
    assert str(kept) == (
        "parameter 'w' became non-finite at epoch 4; the last good checkpoint is kept in "
        f"'runs/kept'; {ADVICE}"
    )


def test_fit_refuses_data_of_another_dtype_than_the_model_s_parameters_whole():
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))).double()
    with pytest.raises(
        DataError,
        match=whole(
            "the train split has dtype torch.float32 but the model's parameters torch.float64; "
            "convert the data (x.float() for float32) or the model"
        ),
    ):
        fit(vae, six_feature_data(), TrainConfig(epochs=1, batch_size=10), progress=False)


def test_streamed_points_of_the_wrong_shape_are_refused_whole_naming_where_they_were_read():
    from pyro_vae.train.loop import check_points

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    where = "in training batch 2 of epoch 1"
    with pytest.raises(
        DataError,
        match=whole(
            f"the streamed training points {where} points have shape (5,) but the model "
            "expects (6,); reshape the data to (N, 6) or build the model with the data's "
            "event_shape"
        ),
    ):
        check_points(vae, torch.rand(4, 5), where, str)
    # one value per point, one of them NaN: refused for its shape, not as a bad point
    with pytest.raises(
        DataError,
        match=whole(
            f"the streamed training points {where} has shape (3,); need (N, *event_shape) with "
            "one row per data point (use x.unsqueeze(-1) for scalar data points)"
        ),
    ):
        check_points(vae, torch.tensor([0.5, float("nan"), 0.2]), where, str)


def test_the_random_state_holds_the_cuda_generators_only_once_cuda_is_in_use(monkeypatch):
    """CUDA present but not yet initialized: no CUDA state is taken (taking it would
    initialize CUDA); initialized: every device's state is."""
    from pyro_vae.train.rng import get_rng_state

    def untouched():
        raise AssertionError("read the CUDA generators")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", untouched)
    assert sorted(get_rng_state()) == ["numpy", "python", "torch"]
    devices = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: devices)
    state = get_rng_state()
    assert sorted(state) == ["cuda", "numpy", "python", "torch"]
    assert state["cuda"] is devices


def test_cuda_generator_states_are_restored_where_the_machine_has_as_many_devices(monkeypatch):
    """A machine with one CUDA device restores a checkpoint's one CUDA state, and refuses
    (whole) a checkpoint holding two."""
    from pyro_vae.train.rng import get_rng_state, set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    one = [torch.full((16,), 7, dtype=torch.uint8)]
    set_rng_state({**get_rng_state(), "cuda": one})
    assert restored == [one]
    with pytest.raises(
        CheckpointError,
        match=whole(
            "the checkpoint holds the random state of 2 CUDA device(s) and this machine has "
            "fewer, so the run cannot continue identically; resume it on a machine with that "
            "many GPUs, or start a new run"
        ),
    ):
        set_rng_state({**get_rng_state(), "cuda": one * 2})
    assert restored == [one]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_after_a_restored_random_state_repeat_those_after_the_saved_point():
    from pyro_vae.train.rng import get_rng_state, set_rng_state

    torch.cuda.manual_seed_all(3)
    torch.rand(1, device="cuda")  # CUDA initialized: its generators are part of the state
    state = get_rng_state()
    expected = torch.rand(5, device="cuda")
    torch.cuda.manual_seed_all(9)
    set_rng_state(state)
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def test_a_registered_learning_rate_schedule_is_the_one_used_and_a_name_is_taken_once():
    from pyro_vae.train.schedules import LR_SCHEDULES, learning_rate, register_lr_schedule

    def halving(epoch: int) -> float:
        return 0.5**epoch

    try:
        assert register_lr_schedule("halving-per-epoch")(halving) is halving
        assert LR_SCHEDULES["halving-per-epoch"] is halving
        assert learning_rate(0.2, "halving-per-epoch", 3) == 0.2 * 0.125
        with pytest.raises(
            ConfigError,
            match=whole("a learning-rate schedule named 'halving-per-epoch' is already registered"),
        ):
            register_lr_schedule("halving-per-epoch")(lambda epoch: 1.0)
        assert LR_SCHEDULES["halving-per-epoch"] is halving
    finally:
        LR_SCHEDULES.pop("halving-per-epoch", None)


def test_a_registered_task_is_the_one_make_task_builds(monkeypatch):
    from pyro_vae.train.tasks import TASKS, AutoencoderTask, make_task, register_task

    class CountingTask(AutoencoderTask):
        pass

    monkeypatch.setitem(TASKS, "reconstruction", AutoencoderTask)
    assert register_task("reconstruction", CountingTask) is CountingTask
    assert TASKS["reconstruction"] is CountingTask
    config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,), kind="ae")
    ae = build_autoencoder(config)
    task = make_task(ae, make_objective("elbo"))
    assert type(task) is CountingTask and task.model is ae


M2_CONFIG = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))


def labelled_toy_data() -> SimpleNamespace:
    """Six training points of 6 values with labels 0, 0, 0, 1, 1, 2 (valid: the same)."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    train = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    return SimpleNamespace(
        name="toy", train=train, labels={"train": labels, "valid": labels, "test": labels}
    )


def m2_task(**options):
    from pyro_vae.models import MODELS
    from pyro_vae.train.semisupervised import SemiSupervisedTask

    pyro.set_rng_seed(0)
    m2 = build_semisupervised(M2_CONFIG, num_classes=3, classifier_hidden=(5,))
    kind = MODELS["m2"](num_classes=3, labels_per_class=None)
    return SemiSupervisedTask(
        m2, make_objective("elbo"), kind=kind, data=labelled_toy_data(), **options
    )


def test_an_m2_task_validates_with_10_importance_samples_by_default():
    task = m2_task()
    assert task.valid_num_samples == 10
    valid = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    scores = task.validate(valid)
    assert sorted(scores) == ["valid_elbo", "valid_elbo_stderr", "valid_error", "valid_iwae10"]
    assert sorted(m2_task(valid_num_samples=3).validate(valid)) == [
        "valid_elbo", "valid_elbo_stderr", "valid_error", "valid_iwae3"
    ]  # fmt: skip


def test_each_m2_step_draws_as_many_labelled_points_as_its_batch_holds_at_most_all(monkeypatch):
    """Six labelled points: a batch of 4 draws 4 of them, a batch of 9 draws 6."""
    import pyro_vae.train.semisupervised as semisupervised

    drawn = []
    m2_loss = semisupervised.m2_loss

    def recording(model, objective, x, x_l, y_l, *args):
        drawn.append((x.shape[0], x_l.shape[0], y_l.shape[0]))
        return m2_loss(model, objective, x, x_l, y_l, *args)

    monkeypatch.setattr(semisupervised, "m2_loss", recording)
    task = m2_task()
    g = torch.Generator().manual_seed(2)
    task.batch_loss(torch.bernoulli(torch.full((4, 6), 0.5), generator=g), 0.0)
    task.batch_loss(torch.bernoulli(torch.full((9, 6), 0.5), generator=g), 0.0)
    assert drawn == [(4, 4, 4), (9, 6, 6)]


def test_an_m2_task_whose_objective_gained_a_warm_up_refuses_the_step_whole():
    """The KL weight is checked at the step's progress: half way through a 2-epoch linear
    warm-up it is 0.25, refused."""
    task = m2_task()
    task.objective = make_objective("elbo", warmup="linear", warmup_epochs=2.0)
    with pytest.raises(
        ConfigError,
        match=whole("M2's enumerated ELBO is trained with KL weight 1; drop --beta and --warmup"),
    ):
        task.batch_loss(torch.rand(4, 6), 0.5)


def test_an_elbo_task_validates_with_10_importance_samples_by_default():
    """The IWAE row of an ELBO task's validation is named for its 10 samples unless another
    count is given."""
    from pyro_vae.train.tasks import ELBOTask

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    valid = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    task = ELBOTask(vae, make_objective("elbo"))
    assert task.valid_num_samples == 10
    assert sorted(task.validate(valid)) == ["valid_elbo", "valid_elbo_stderr", "valid_iwae10"]
    three = ELBOTask(vae, make_objective("elbo"), valid_num_samples=3)
    assert sorted(three.validate(valid)) == ["valid_elbo", "valid_elbo_stderr", "valid_iwae3"]


def test_fit_refuses_a_split_replaced_by_points_of_another_shape_whole():
    """``DataSplits`` checks its splits when it is made; a split replaced afterwards is
    checked again by ``fit`` against the model's event shape, before any training."""
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    data = six_feature_data()
    data.valid = torch.rand(5, 5)
    with pytest.raises(
        DataError,
        match=whole(
            "the valid split points have shape (5,) but the model expects (6,); reshape the "
            "data to (N, 6) or build the model with the data's event_shape"
        ),
    ):
        fit(vae, data, TrainConfig(epochs=1, batch_size=10), progress=False)


def test_fit_hashes_the_data_once_and_records_each_epoch_s_elapsed_seconds(tmp_path, monkeypatch):
    """With a run directory, the data's fingerprint is computed once (a streamed split would
    otherwise be read twice) and recorded; each epoch's ``seconds`` is the time since the fit
    began, within the fit's own elapsed time."""
    import time

    import pyro_vae.train.loop as loop

    calls = []
    fingerprint = loop.data_fingerprint

    def counted(*args, **kwargs):
        calls.append(1)
        return fingerprint(*args, **kwargs)

    monkeypatch.setattr(loop, "data_fingerprint", counted)
    config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))
    torch.manual_seed(0)
    run = RunDir(tmp_path / "run")
    began = time.perf_counter()
    result = fit(build_vae(config), six_feature_data(), TrainConfig(epochs=2, batch_size=10),
                 run, config, progress=False)  # fmt: skip
    elapsed = time.perf_counter() - began
    assert len(calls) == 1
    assert run.read_json(RunDir.CONFIG)["data_fingerprint"] == fingerprint(six_feature_data())
    seconds = [epoch["seconds"] for epoch in result.history]
    assert 0 < seconds[0] <= seconds[1] <= elapsed
