"""Training lowers the negative ELBO; run directories round-trip; the CLI trains and evaluates."""

import json

import pytest
import torch
from refusals import whole

from pyro_vae import ModelConfig, build_vae
from pyro_vae.cli import main
from pyro_vae.data import DataSplits, eval_data, load_digits
from pyro_vae.errors import ConfigError
from pyro_vae.infer import log_likelihood
from pyro_vae.runs import load_run, train_run
from pyro_vae.train import TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_training_lowers_validation_negative_elbo(digits):
    vae = build_vae(ModelConfig(event_shape=digits.event_shape, latent_dim=4, hidden=(64, 32)))
    valid = eval_data(vae, digits.valid)
    before = log_likelihood(vae.model, vae.guide, valid, num_samples=10)
    result = fit(vae, digits, TrainConfig(epochs=5, batch_size=64, lr=3e-3, seed=0), progress=False)
    after = log_likelihood(vae.model, vae.guide, valid, num_samples=10)
    gain = after.elbo - before.elbo
    assert len(result.history) == 5
    # An untrained decoder sits near -44 nats; five epochs gain well over ten.
    assert gain > 10.0
    assert gain > 10 * (before.elbo_stderr**2 + after.elbo_stderr**2) ** 0.5
    assert result.history[-1]["valid_elbo"] > result.history[0]["valid_elbo"]


def test_run_directory_round_trip(digits, tmp_path):
    config = ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(16,))
    results = train_run(
        "digits",
        config,
        TrainConfig(epochs=2),
        tmp_path / "run",
        num_samples=20,
        progress=False,
        data=digits,
    )
    run = tmp_path / "run"
    for name in (
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "results.json",
        "elbo.png",
        "samples.png",
        "reconstructions.png",
    ):
        assert (run / name).stat().st_size > 0, name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "results.json").read_text()) == results

    vae, saved = load_run(run)
    vae2, _ = load_run(run)
    assert saved["model"] == config.to_dict()
    x = eval_data(vae, digits.test[:8])
    z = torch.randn(5, 2)
    assert torch.equal(vae.encode(x).mean, vae2.encode(x).mean)
    assert torch.equal(vae.decode(z).mean, vae2.decode(z).mean)
    # The trained weights, not a fresh initialization, were loaded.
    fresh = build_vae(config)
    assert not torch.equal(fresh.decode(z).mean, vae.decode(z).mean)


def test_cli_train_then_evaluate(tmp_path, capsys):
    args = [
        "train",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--num-samples",
        "10",
        "--no-progress",
        "--output-dir",
        str(tmp_path),
        "--name",
        "tiny",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test log-likelihood" in out and "+-" in out
    assert main(["evaluate", str(tmp_path / "tiny"), "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "test ELBO" in out and "K=10" in out
    # Refuses to overwrite without --overwrite.
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"not a numpy file", "cannot read"),
        ("nan", "NaN"),
        ("range", "Bernoulli likelihood needs values in [0, 1]; data range"),
    ],
)
def test_cli_bad_data_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "data.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "nan":
        x = torch.rand(30, 4).numpy()
        x[3, 1] = float("nan")
        import numpy as np

        np.save(path, x)
    elif content == "range":
        import numpy as np

        np.save(path, 5 * torch.rand(30, 4).numpy())
    code = main(
        [
            "train",
            "--dataset",
            str(path),
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
            "--batch-size",
            "8",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- numerics of the loop itself, on known answers -------------------------------------------


class _ConstantTask:
    """loss_sum = w * sum(x): with x all ones and SGD(lr=1) each step lowers w by the loss
    divisor's ratio (1 when divided by the batch's actual size)."""

    loss_name = "train_loss"
    headline = ("train_loss", "train_loss")

    def __init__(self):
        from types import SimpleNamespace

        self.model = torch.nn.Module()
        self.model.w = torch.nn.Parameter(torch.zeros(()))
        self.model.likelihood = SimpleNamespace(binarize=False)

    def batch_loss(self, x, progress):
        from pyro_vae.train import BatchLoss

        return BatchLoss(self.model.w * x.sum(), {"points": float(x.shape[0])})


def test_each_step_divides_by_the_actual_batch_size():
    from pyro_vae.train import train_epoch

    task = _ConstantTask()
    optimizer = torch.optim.SGD(task.model.parameters(), lr=1.0)
    ones = torch.ones(23, 2)  # batches of 10, 10 and a short last one of 3
    config = TrainConfig(epochs=1, batch_size=10)
    metrics = train_epoch(task, optimizer, ones, config, epoch=1)
    # d(loss)/dw = sum(x) / batch size = 2 per step, whatever the batch's size: 3 steps.
    assert task.model.w.item() == pytest.approx(-6.0, abs=1e-6)
    # train_loss is the mean over the 23 points of w * 2 at each point's step: 0, -4, -8.
    assert metrics["train_loss"] == pytest.approx((10 * 0 + 10 * -4 + 3 * -8) / 23, abs=1e-6)
    assert metrics["points"] == pytest.approx(1.0)  # sums are divided by the points seen


def test_linear_warmup_records_the_known_kl_weight_sequence():
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 6, generator=g)
    from pyro_vae.data import DataSplits

    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    config = TrainConfig(epochs=5, batch_size=10, warmup="linear", warmup_epochs=4.0)
    history = fit(vae, data, config, progress=False).history
    # two steps per epoch; the last step of epoch e is at progress e - 1 + 1/2
    assert [r["kl_weight"] for r in history] == pytest.approx([0.125, 0.375, 0.625, 0.875, 1.0])


def test_train_loss_is_minus_train_elbo_when_beta_is_one(digits):
    vae = build_vae(ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(16,)))
    config = TrainConfig(epochs=2, batch_size=100, valid_num_samples=2)
    for record in fit(vae, digits, config, progress=False).history:
        assert record["train_loss"] == pytest.approx(-record["train_elbo"], rel=1e-5)
        assert record["kl_weight"] == 1.0


def test_fit_from_python_writes_a_run_that_load_run_and_evaluate_use(digits, tmp_path, capsys):
    from pyro_vae.runs import RunDir

    config = ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(16,))
    vae = build_vae(config)
    run = RunDir(tmp_path / "py")
    fit(vae, digits, TrainConfig(epochs=1, batch_size=256), run_dir=run, model_config=config)
    recorded = run.read_json(RunDir.CONFIG)
    assert recorded["kind"] == "vae" and recorded["dataset"] == digits.name
    model, _ = load_run(run.path)
    torch.testing.assert_close(model.state_dict(), vae.state_dict())
    assert main(["evaluate", str(run.path), "--num-samples", "5"]) == 0
    assert "test log-likelihood" in capsys.readouterr().out


# --- the loop's batched finiteness checks -------------------------------------------------


class _PoisonedTask(_ConstantTask):
    """As _ConstantTask, but the loss (or only the gradient) of call ``bad`` is NaN; the
    metric sum is a 0-dim tensor, as the fused VAE task reports it."""

    def __init__(self, bad: int, where: str = "loss"):
        super().__init__()
        self.bad, self.where, self.calls = bad, where, 0

    def batch_loss(self, x, progress):
        from pyro_vae.train import BatchLoss

        w = self.model.w * 1.0
        if self.calls == self.bad:
            if self.where == "loss":
                w = w * float("nan")
            else:  # a finite loss with a NaN gradient
                w.register_hook(lambda g: g * float("nan"))
        self.calls += 1
        loss = w * x.sum()
        return BatchLoss(loss, {"points": torch.tensor(float(x.shape[0]))})


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("bad", [0, 5, 15, 16, 21, 39])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_batched_checks_name_the_exact_step_of_a_fault(bad, where):
    from pyro_vae.errors import TrainingError
    from pyro_vae.train import train_epoch
    from pyro_vae.train.loop import CHECK_EVERY

    assert CHECK_EVERY < 40  # the epoch spans more than one check window
    task = _PoisonedTask(bad, where)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=1e-3)
    config = TrainConfig(epochs=1, batch_size=2)
    with pytest.raises(TrainingError) as info:
        train_epoch(task, optimizer, torch.ones(80, 2), config, epoch=3)
    what = "training loss" if where == "loss" else "gradient norm"
    assert str(info.value) == (
        f"{what} is nan at epoch 3, step {bad}; lower --lr, pass --clip-grad (e.g. 10), or "
        "check the data scale"
    )


def test_batched_checks_sum_the_metrics_as_per_step_values_would():
    from pyro_vae.train import train_epoch

    task = _PoisonedTask(bad=-1)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 2 * 37).reshape(37, 2)
    metrics = train_epoch(task, optimizer, x, TrainConfig(epochs=1, batch_size=2), epoch=1)
    assert metrics["points"] == 1.0
    # replay: the same order (same generator state) and SGD steps, one value per step
    task2 = _ConstantTask()
    opt2 = torch.optim.SGD(task2.model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    order, total = torch.randperm(37), 0.0
    for i in range(0, 37, 2):
        b = x[order[i : i + 2]]
        loss = task2.model.w * b.sum() / b.shape[0]
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        total += loss.item() * b.shape[0]
    assert task.model.w.item() == task2.model.w.item()
    assert metrics["train_loss"] == total / 37  # bit for bit


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_fault_inside_a_check_window_writes_no_checkpoint(tmp_path):
    from pyro_vae.data import DataSplits
    from pyro_vae.errors import TrainingError
    from pyro_vae.runs import RunDir
    from pyro_vae.train import load_checkpoint
    from pyro_vae.train.loop import CHECK_EVERY

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = torch.rand(130, 6, generator=torch.Generator().manual_seed(0))
    data = DataSplits("tiny", x[:100], x[100:115], x[115:])
    steps = 50  # batch 2: more than one check window per epoch
    assert steps > CHECK_EVERY
    bad = steps + 7  # epoch 2, step 7: inside the first window, not at its end
    calls = [0]

    def poison(module, inputs, out):
        if module.training:
            calls[0] += 1
            if calls[0] > bad:
                return out * float("nan")
        return out

    vae.decoder.register_forward_hook(poison)
    config = TrainConfig(epochs=3, batch_size=2, valid_num_samples=2)
    with pytest.raises(TrainingError, match="at epoch 2, step 7;"):
        fit(vae, data, config, run_dir=RunDir(tmp_path), progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


# --- where the steps run, and what the progress bar shows ---------------------------------


def test_the_progress_bar_shows_the_epoch_s_train_and_valid_elbo(capsys):
    from pyro_vae.data import DataSplits

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    history = fit(vae, data, TrainConfig(epochs=2, batch_size=10), progress=True).history
    err = capsys.readouterr().err
    for record in history:
        shown = f"train={record['train_elbo']:.2f}, valid={record['valid_elbo']:.2f}]"
        assert shown in err, err


def test_fit_draws_a_progress_bar_by_default_counting_epochs_from_0_to_the_last(capsys):
    """fit draws its progress bar by default: for a fresh run of 3 epochs at 0/3 before the
    first epoch, ending at 3/3 (the counts between are drawn as often as tqdm's refresh
    interval allows)."""
    import re

    from pyro_vae.data import DataSplits

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    fit(vae, data, TrainConfig(epochs=3, batch_size=10))
    counts = [int(n) for n in re.findall(r"\| *(-?\d+)/3 \[", capsys.readouterr().err)]
    assert counts[0] == 0 and counts[-1] == 3, counts


class _DeviceTask(_ConstantTask):
    """A model with no parameters and one buffer on ``device``; its loss reads only the batch's
    size and records the device each batch arrives on."""

    def __init__(self, device: str):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.register_buffer("where", torch.zeros((), device=device))
        self.model.likelihood = _ConstantTask().model.likelihood
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.devices: list[str] = []

    def batch_loss(self, x, progress):
        from pyro_vae.train import BatchLoss

        self.devices.append(x.device.type)
        return BatchLoss(self.w * x.shape[0], {"points": float(x.shape[0])})


def test_an_epoch_without_an_engine_moves_each_batch_to_the_model_s_device():
    """The default engine runs the steps where the model is: a model on the meta device (a
    stand-in for an accelerator) receives meta batches of the CPU data."""
    from pyro_vae.train import train_epoch

    task = _DeviceTask("meta")
    optimizer = torch.optim.SGD([task.w], lr=1.0)
    metrics = train_epoch(task, optimizer, torch.ones(23, 2), TrainConfig(batch_size=10), epoch=1)
    assert task.devices == ["meta"] * 3
    # d(loss / b)/dw = 1 at each of the 3 steps; the loss is w * b at w = 0, -1, -2
    assert task.w.item() == -3.0
    assert metrics["train_loss"] == pytest.approx((10 * 0 + 10 * -1 + 3 * -2) / 23)


def test_several_processes_replicate_the_loss_module_on_its_device(monkeypatch):
    """DDP gets the replica's CUDA device as its one device id, and none for a CPU replica (a
    stand-in DDP records the call, in this process); one process keeps the module itself."""
    import pyro_vae.train.parallel as parallel
    from pyro_vae.runtime import ProcessGroup

    calls = []

    def recording_ddp(module, device_ids):
        calls.append(device_ids)
        return module

    monkeypatch.setattr(parallel, "DistributedDataParallel", recording_ddp)
    module = parallel.LossModule(torch.nn.Linear(1, 1), lambda x: x)
    assert parallel.replicate(module, ProcessGroup(), torch.device("cuda", 1)) is module
    assert calls == []
    for device in (torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cpu")):
        assert parallel.replicate(module, ProcessGroup(0, 2), device) is module
    assert calls == [[1], [0], None]


def test_ddp_receives_a_loss_module_holding_the_model_s_parameters(monkeypatch):
    """The module that DDP wraps (a stand-in records it, in this process) holds the model's
    parameters, the ones DDP synchronizes, under the model's names; its forward is the loss."""
    import pyro_vae.train.parallel as parallel
    from pyro_vae.runtime import ProcessGroup

    wrapped = []
    monkeypatch.setattr(
        parallel, "DistributedDataParallel", lambda module, device_ids: wrapped.append(module)
    )
    model = torch.nn.Linear(3, 2)
    module = parallel.LossModule(model, lambda x, scale: (x * scale).sum())
    parallel.replicate(module, ProcessGroup(0, 2), torch.device("cpu"))
    (got,) = wrapped
    assert [id(p) for p in got.parameters()] == [id(model.weight), id(model.bias)]
    assert list(got.state_dict()) == ["model.weight", "model.bias"]
    assert got(torch.tensor([1.0, 2.0]), 3.0).item() == 9.0


def test_check_finite_step_refuses_a_non_finite_loss_or_gradient_norm_whole():
    """The per-step check on tensors: a NaN loss, then (loss finite) an infinite gradient norm,
    are refused naming the epoch and step; finite values, or no norm, pass."""
    from pyro_vae.errors import TrainingError
    from pyro_vae.train import check_finite_step

    fixes = "lower --lr, pass --clip-grad (e.g. 10), or check the data scale"
    with pytest.raises(TrainingError) as info:
        check_finite_step(torch.tensor(float("nan")), torch.tensor(1.0), 3, 7, None)
    assert str(info.value) == f"training loss is nan at epoch 3, step 7; {fixes}"
    with pytest.raises(TrainingError) as info:
        check_finite_step(torch.tensor(2.5), torch.tensor(float("inf")), 4, 0, None)
    assert str(info.value) == f"gradient norm is inf at epoch 4, step 0; {fixes}"
    assert check_finite_step(torch.tensor(2.5), torch.tensor(1.0), 1, 1, None) is None
    assert check_finite_step(torch.tensor(-1e30), None, 1, 1, None) is None


def test_the_fit_optimizer_is_adam_fused_where_torch_lists_the_device_else_multi_tensor(
    monkeypatch,
):
    """CPU parameters: the fused Adam, since torch lists the CPU among its fused kernels'
    devices; a torch without that list gives the multi-tensor Adam. Either way one step from
    a fresh state moves each weight by lr g / (|g| + eps) (float64: m / sqrt(v) = g / |g|)."""
    import torch.utils._foreach_utils as foreach_utils

    from pyro_vae.train.loop import make_optimizer

    def one_step(optimizer, w, lr=0.1, eps=1e-6):  # the lr and eps make_optimizer was given
        w.grad = torch.tensor([0.5, -2.0, 1e-3], dtype=torch.float64)
        before = w.detach().clone()
        optimizer.step()
        want = before - lr * w.grad / (w.grad.abs() + eps)
        assert torch.allclose(w.detach(), want, rtol=0, atol=1e-12)

    assert "cpu" in foreach_utils._get_fused_kernels_supported_devices()
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    fused = make_optimizer(model, lr=0.1, eps=1e-6)
    assert fused.defaults["fused"] is True and not fused.defaults["foreach"]
    one_step(fused, model.w)
    monkeypatch.delattr(foreach_utils, "_get_fused_kernels_supported_devices")
    multi = make_optimizer(model, lr=0.1, eps=1e-6)
    assert multi.defaults["foreach"] is True and not multi.defaults["fused"]
    one_step(multi, model.w)


def test_fit_in_bf16_runs_the_training_steps_in_bfloat16_and_validation_in_float32():
    """precision bf16 reaches every training step (the forward pass under autocast: each
    linear layer outputs bfloat16), while validation runs in float32, as the engine says."""
    from pyro_vae.data import DataSplits

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(0))
    data = DataSplits("tiny", x[:30], x[30:35], x[35:])
    seen = []
    for m in vae.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, i, out: seen.append((mod.training, out.dtype)))
    fit(vae, data, TrainConfig(epochs=2, batch_size=10, precision="bf16"), progress=False)
    assert set(seen) == {(True, torch.bfloat16), (False, torch.float32)}


def test_bf16_autocasts_to_bfloat16_whatever_the_process_default_autocast_dtype():
    """The engine names its autocast dtype: with the process's default CPU autocast dtype set
    to float16, a bf16 engine's forward pass still computes a linear layer in bfloat16 (and a
    plain ``torch.autocast("cpu")`` in float16, the default it overrides)."""
    from pyro_vae.train.parallel import Engine

    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    before = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    try:
        with torch.autocast("cpu"):
            assert layer(x).dtype == torch.float16
        with Engine(layer, precision="bf16").autocast():
            assert layer(x).dtype == torch.bfloat16
    finally:
        torch.set_autocast_dtype("cpu", before)


def test_metric_sums_are_reduced_over_processes_in_float64(monkeypatch):
    """With several processes the epoch's sums are added up in float64: a stand-in collective
    adds a second rank's sums (in the packed tensor's dtype), and 1e8 + 1 and 0.1 + 0.2 come
    back as float64 gives them (float32 would return 1e8 and 0.30000001192...); one process
    returns its own values unchanged."""
    import pyro_vae.train.parallel as parallel
    from pyro_vae.runtime import ProcessGroup

    other = {"_points": 1.0, "elbo": 0.2, "loss": 1.0}

    def add_second_rank(packed):
        packed += torch.tensor([other[k] for k in sorted(other)], dtype=packed.dtype)
        return packed

    monkeypatch.setattr(parallel, "all_reduce_sum", add_second_rank)
    module = parallel.LossModule(torch.nn.Linear(1, 1), lambda x: x)
    mine = {"loss": 1e8, "elbo": 0.1, "_points": 3.0}
    alone = parallel.Engine(module)
    assert alone.reduce_sums(dict(mine)) == mine
    engine = parallel.Engine(module, group=ProcessGroup(0, 2))
    assert engine.reduce_sums(dict(mine)) == {"_points": 4.0, "elbo": 0.1 + 0.2, "loss": 1e8 + 1}


class _RecordingTask(_ConstantTask):
    """As _ConstantTask, recording the points (one number each) every batch holds."""

    def __init__(self):
        super().__init__()
        self.seen: list[list[int]] = []

    def batch_loss(self, x, progress):
        self.seen.append(x[:, 0].long().tolist())
        return super().batch_loss(x, progress)


@pytest.mark.parametrize("epoch", [1, 4])
def test_each_process_trains_on_the_distributed_sampler_s_shard_of_the_epoch(epoch):
    """With several processes (the group given to the engine, in this process) rank r of 2
    takes the points torch's DistributedSampler gives it for seed + epoch: the permutation
    padded by wrapping and strided by rank, in that order; the two ranks cover every point."""
    from torch.utils.data import DistributedSampler

    from pyro_vae.runtime import ProcessGroup
    from pyro_vae.train import train_epoch
    from pyro_vae.train.parallel import Engine, LossModule

    x = torch.arange(7.0).unsqueeze(1)
    config = TrainConfig(epochs=4, batch_size=2, seed=11)
    covered = set()
    for rank in (0, 1):
        task = _RecordingTask()
        engine = Engine(LossModule(task.model, task.batch_loss), group=ProcessGroup(rank, 2))
        optimizer = torch.optim.SGD(task.model.parameters(), lr=1.0)
        train_epoch(task, optimizer, x, config, epoch, engine=engine)
        sampler = DistributedSampler(range(7), num_replicas=2, rank=rank, shuffle=True, seed=11)
        sampler.set_epoch(epoch)
        want = list(sampler)
        assert len(want) == 4
        assert task.seen == [want[:2], want[2:]]
        covered |= set(want)
    assert covered == set(range(7))


TRAIN_CONFIG_REFUSALS = [
    ({"precision": "fp8"}, "unknown precision 'fp8'; choose one of ['32', 'bf16', 'fp16']"),
    (
        {"mlflow_uri": "  "},
        "mlflow_uri must be a tracking URI such as sqlite:///runs/mlflow.db, got '  '",
    ),
    (
        {"mlflow_uri": 3},
        "mlflow_uri must be a tracking URI such as sqlite:///runs/mlflow.db, got 3",
    ),
    ({"track_samples_every": -1}, "track_samples_every must be an integer >= 0, got -1"),
    ({"track_samples_every": True}, "track_samples_every must be an integer >= 0, got True"),
    ({"lr": 0}, "learning rate must be a positive number, got 0"),
    ({"lr": "fast"}, "learning rate must be a positive number, got 'fast'"),
]


@pytest.mark.parametrize("options, message", TRAIN_CONFIG_REFUSALS)
def test_train_config_refusals_are_checked_whole(options, message):
    with pytest.raises(ConfigError, match=whole(message)):
        TrainConfig(**options)


def test_resume_without_a_run_directory_is_refused_whole():
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = torch.rand(30, 6)
    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    with pytest.raises(
        ConfigError,
        match=whole("resume needs the run directory to continue from; pass run_dir"),
    ):
        fit(vae, data, TrainConfig(epochs=1, batch_size=5), progress=False, resume=True)


def _fit_autoencoder_on_a_vae():
    from pyro_vae.train import fit_autoencoder

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    return fit_autoencoder(vae, None, TrainConfig())


def _register_constant_again():
    from pyro_vae.train.schedules import register_lr_schedule

    return register_lr_schedule("constant")(lambda epoch: 1.0)


def _unknown_schedule_rate():
    from pyro_vae.train.schedules import learning_rate

    return learning_rate(0.1, "cosine", 1)


def _unknown_precision():
    from pyro_vae.train.parallel import check_precision

    return check_precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            _fit_autoencoder_on_a_vae,
            "fit_autoencoder trains a pyro_vae Autoencoder, got VAE; build one with "
            "build_autoencoder (fit trains a VAE)",
        ),
        (
            _register_constant_again,
            "a learning-rate schedule named 'constant' is already registered",
        ),
        (
            _unknown_schedule_rate,
            "unknown learning-rate schedule 'cosine'; choose one of ['constant', 'iwae']",
        ),
        (_unknown_precision, "unknown precision 'fp8'; choose one of ['32', 'bf16', 'fp16']"),
    ],
    ids=["autoencoder-fit-on-a-vae", "schedule-taken", "schedule-unknown", "precision-unknown"],
)
def test_training_helper_refusals_are_checked_whole(call, message):
    with pytest.raises(ConfigError, match=whole(message)):
        call()


def test_a_kind_whose_task_is_not_registered_is_refused_whole(monkeypatch):
    from pyro_vae.infer import make_objective
    from pyro_vae.models import MODELS
    from pyro_vae.train.tasks import TASKS, make_task

    monkeypatch.setattr(MODELS["vae"], "task", "gibbs")
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    message = (
        "model kind 'vae' trains with task 'gibbs', which is not registered; known tasks: "
        f"{sorted(TASKS)}"  # the registry's names, whichever modules registered theirs
    )
    with pytest.raises(ConfigError, match=whole(message)):
        make_task(vae, make_objective("elbo"))


def test_make_task_takes_the_fused_elbo_by_default_for_the_library_s_vae():
    """The task make_task builds for the library's VAE with the elbo objective computes the
    loss without tracing (a FusedELBO of the VAE) unless fused=False asks for Pyro's path."""
    from pyro_vae.infer import make_objective
    from pyro_vae.models.fused import FusedELBO
    from pyro_vae.train.tasks import ELBOTask, make_task

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    task = make_task(vae, make_objective("elbo"))
    assert isinstance(task, ELBOTask) and isinstance(task.fused, FusedELBO)
    assert make_task(vae, make_objective("elbo"), fused=False).fused is None


def test_the_epoch_hook_receives_the_history_after_each_epoch():
    """``epoch_hook(model, history)`` sees the model and the metrics of every epoch so far,
    the very list fit returns."""
    from tiny_runs import tiny

    data, config = tiny()
    vae = build_vae(config)
    calls = []

    def hook(model, history):
        calls.append((model, history, [r["epoch"] for r in history]))

    result = fit(vae, data, TrainConfig(epochs=2, batch_size=10, valid_num_samples=2),
                 progress=False, epoch_hook=hook)  # fmt: skip
    assert [epochs for _, _, epochs in calls] == [[1], [1, 2]]
    assert all(model is vae and history is result.history for model, history, _ in calls)


def test_step_checks_add_up_steps_of_mixed_dtypes_in_float64():
    """A float32 loss beside a float64 metric sum: both come back at their own values
    (0.1 in float64 stays 0.1, not float32's 0.10000000149...), the loss weighted by its
    batch size."""
    from pyro_vae.train.loop import StepChecks

    checks = StepChecks(epoch=1, run=None, loss_name="train_loss")
    loss = torch.tensor(0.1, dtype=torch.float32)
    checks.add(0, loss, None, {"elbo": torch.tensor(0.1, dtype=torch.float64)}, 4)
    checks.add(1, loss, torch.tensor(2.0), {"elbo": torch.tensor(0.2, dtype=torch.float64)}, 3)
    sums = checks.flush()
    assert sums == {"elbo": 0.1 + 0.2, "train_loss": float(loss) * 4 + float(loss) * 3}
    assert float(loss) != 0.1 and checks.seen == 7


def test_a_batch_as_large_as_the_training_split_is_accepted():
    """A batch size equal to the number of training points (20) trains: one step, one
    epoch recorded."""
    from pyro_vae.data import DataSplits

    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    config = TrainConfig(epochs=1, batch_size=20, valid_num_samples=2)
    history = fit(vae, data, config, progress=False).history
    assert [r["epoch"] for r in history] == [1]


def test_sample_counts_at_their_most_are_accepted_and_one_more_is_refused_whole():
    """10,000 particles per step and 1,000,000 validation samples per point are the most
    allowed: both are kept as given; one more of either is refused."""
    config = TrainConfig(num_particles=10_000, valid_num_samples=1_000_000)
    assert (config.num_particles, config.valid_num_samples) == (10_000, 1_000_000)
    with pytest.raises(ConfigError, match=whole(
        "num_particles (--num-particles) must be from 1 to 10000, got 10001; each step holds "
        "that many samples per point"
    )):  # fmt: skip
        TrainConfig(num_particles=10_001)
    with pytest.raises(ConfigError, match=whole(
        "valid_num_samples (--valid-num-samples) must be from 1 to 1000000, got 1000001; each "
        "step holds that many samples per point"
    )):  # fmt: skip
        TrainConfig(valid_num_samples=1_000_001)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not")
def test_an_fp16_engine_holds_a_cuda_gradient_scaler_and_other_precisions_none():
    """fp16 steps go through a CUDA ``GradScaler`` (enabled where CUDA is; torch disables it
    on a machine without one); float32 and bf16 steps have no scaler."""
    from pyro_vae.train.parallel import Engine, LossModule

    module = LossModule(torch.nn.Linear(1, 1), lambda x: x)
    engine = Engine(module, device=torch.device("cuda"), precision="fp16")
    assert isinstance(engine.scaler, torch.amp.GradScaler)
    assert engine.scaler.is_enabled() == torch.cuda.is_available()
    assert Engine(module, precision="32").scaler is None
    assert Engine(module, precision="bf16").scaler is None


def test_clip_gradients_returns_the_total_norm_and_scales_dense_and_sparse_gradients():
    """Gradients (3, 4) and 12 (total 2-norm 13): without ``max_norm`` the norm is returned
    and the gradients kept bit for bit; with ``max_norm=6.5`` they are halved. A sparse
    gradient with a repeated index (values 1 and 2 at row 0: 3 once summed, and 4 at row 2)
    has the norm of its summed values, 5."""
    import warnings

    from pyro_vae.train import clip_gradients

    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    assert clip_gradients([a, b], None).item() == 13.0
    assert a.grad.tolist() == [3.0, 4.0] and b.grad.tolist() == [12.0]
    assert clip_gradients([a, b], 6.5).item() == pytest.approx(13.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.5, 2.0]))
    torch.testing.assert_close(b.grad, torch.tensor([6.0]))

    embedding = torch.nn.Embedding(4, 1, sparse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on unchecked sparse invariants
        embedding.weight.grad = torch.sparse_coo_tensor([[0, 0, 2]], [[1.0], [2.0], [4.0]], (4, 1))
        assert embedding.weight.grad.is_sparse
        assert clip_gradients(embedding, None).item() == pytest.approx(5.0)
        assert clip_gradients(embedding, 2.5).item() == pytest.approx(5.0)
        torch.testing.assert_close(
            embedding.weight.grad.to_dense(), torch.tensor([[1.5], [0.0], [2.0], [0.0]])
        )


def test_clip_gradients_reports_torch_s_total_norm_bit_for_bit_for_gradients_of_mixed_dtypes():
    """Gradients of float32 and float64 parameters: the norm returned without ``max_norm`` is,
    bit for bit, the one torch's clip_grad_norm_ returns (the norm a clipped run reports),
    float64, with the gradients untouched. Torch sums the squares dtype by dtype (the float64
    gradient last); in the parameters' order the last bit rounds differently for these values."""
    from pyro_vae.train import clip_gradients

    def parameters() -> list[torch.nn.Parameter]:
        a = torch.nn.Parameter(torch.zeros(1))
        b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        c = torch.nn.Parameter(torch.zeros(1))
        a.grad = torch.tensor([0.5])
        b.grad = torch.tensor([0.2], dtype=torch.float64)
        c.grad = torch.tensor([0.1])
        return [a, b, c]

    params = parameters()
    got = clip_gradients(params, None)
    expected = torch.nn.utils.clip_grad_norm_(parameters(), float("inf"))
    assert got.dtype == torch.float64 and expected.dtype == torch.float64
    assert got.item() == expected.item()
    assert [p.grad.item() for p in params] == [0.5, 0.2, torch.tensor(0.1).item()]


def test_an_elbo_task_with_free_bits_minimizes_the_free_bits_loss_not_the_fused_elbo():
    """Free bits use their own loss, so the task takes Pyro's path even though the fused ELBO
    is asked for: its loss equals the objective's free-bits loss on the same draws, and with
    the floor above every dimension's KL, raising it by one nat adds one nat per point and
    latent dimension (5 x 2 here), while the train ELBO (the true one) stays put."""
    from pyro_vae.infer import make_objective
    from pyro_vae.train.tasks import ELBOTask

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = (torch.rand(5, 6) > 0.5).float()

    def loss(free_bits: float) -> tuple[float, float]:
        task = ELBOTask(vae, make_objective("elbo", free_bits=free_bits))
        torch.manual_seed(1)
        got = task.batch_loss(x, 1.0)
        return got.loss_sum.item(), float(got.sums["train_elbo"])

    low_loss, low_elbo = loss(50.0)
    high_loss, high_elbo = loss(51.0)
    assert high_loss - low_loss == pytest.approx(5 * 2 * 1.0, rel=1e-5)
    assert high_elbo == low_elbo
    torch.manual_seed(1)
    direct = make_objective("elbo", free_bits=50.0).loss(vae.model, vae.guide, x)
    assert low_loss == pytest.approx(direct.loss.item(), rel=1e-6)
    assert ELBOTask(vae, make_objective("elbo", free_bits=50.0)).fused is None


def test_the_meanfield_task_s_fused_loss_is_pyro_s_meanfield_loss_with_the_same_noise():
    """With the meanfield objective the fused task computes the KL in closed form, as Pyro's
    TraceMeanField_ELBO does: loss and train ELBO equal Pyro's path (fused=False) on the
    same draws, and differ from the elbo objective's single-draw KL on those draws."""
    from pyro_vae.infer import make_objective
    from pyro_vae.train.tasks import ELBOTask

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,)))
    x = (torch.rand(5, 6) > 0.5).float()

    def loss(name: str, fused: bool) -> tuple[float, float]:
        task = ELBOTask(vae, make_objective(name), fused=fused)
        torch.manual_seed(1)
        got = task.batch_loss(x, 1.0)
        return got.loss_sum.item(), float(got.sums["train_elbo"])

    assert ELBOTask(vae, make_objective("meanfield")).fused is not None
    fused_loss, fused_elbo = loss("meanfield", True)
    pyro_loss, pyro_elbo = loss("meanfield", False)
    assert fused_loss == pytest.approx(pyro_loss, rel=1e-5)
    assert fused_elbo == pytest.approx(pyro_elbo, rel=1e-5)
    sampled_kl_loss, _ = loss("elbo", True)
    assert abs(sampled_kl_loss - fused_loss) > 1e-3


def test_engine_build_replicates_the_loss_module_on_the_engine_s_device(monkeypatch):
    """In a group of several processes (stand-ins for the group and DDP, in this process),
    Engine.build wraps the model's loss module with the engine's CUDA device as DDP's device
    id; the engine keeps that device and group."""
    import pyro_vae.train.parallel as parallel
    from pyro_vae.runtime import ProcessGroup

    calls = []

    def recording_ddp(module, device_ids):
        calls.append((module, device_ids))
        return module

    group = ProcessGroup(1, 2, 1)
    monkeypatch.setattr(parallel, "DistributedDataParallel", recording_ddp)
    monkeypatch.setattr(parallel, "current_group", lambda: group)
    model = torch.nn.Linear(2, 1)
    device = torch.device("cuda", 1)
    engine = parallel.Engine.build(model, lambda x: x, device)
    ((module, device_ids),) = calls
    assert device_ids == [1]
    assert module is engine.module and module.model is model
    assert engine.device == device and engine.group is group


def test_an_fp16_engine_unscales_the_gradients_with_the_optimizer_before_returning():
    """``Engine.backward`` under a gradient scaler (a CPU ``GradScaler`` standing in for fp16's
    CUDA one) leaves the true gradients, ready to clip: loss 3w at w = 1 gives the gradient 3
    whatever the loss was scaled by (here 1024), unscaled through the optimizer, so the step
    that follows uses them as they are (w = 1 - 0.1 * 3)."""
    from pyro_vae.train.parallel import Engine, LossModule

    w = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([w], lr=0.1)
    engine = Engine(LossModule(torch.nn.Linear(1, 1), lambda x: x), precision="32")
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    engine.backward((3 * w).sum(), optimizer)
    assert w.grad.tolist() == [3.0]
    engine.step(optimizer)
    assert w.tolist() == pytest.approx([0.7])
