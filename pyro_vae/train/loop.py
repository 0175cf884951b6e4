"""The fit loop: one minibatch training loop for every model kind, with fault checks,
gradient clipping, durable per-epoch checkpoints and exact resume.

Each model kind supplies a [`TrainTask`][pyro_vae.train.tasks.TrainTask]: the loss of one batch
(summed over its points) and the validation metrics (``TASKS``, named by the model's kind):
[`ELBOTask`][pyro_vae.train.tasks.ELBOTask] minimizes the objective's negative ELBO,
[`AutoencoderTask`][pyro_vae.train.tasks.AutoencoderTask] the reconstruction NLL. A kind whose
programs take labels gets them batch by batch beside x. The run's files go through a
[`RunStore`][pyro_vae.train.loop.RunStore] ([`pyro_vae.runs.RunDir`][pyro_vae.runs.rundir.RunDir]),
which owns their names.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pyro
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from pyro_vae.data.batches import epoch_batches, epoch_order, num_points
from pyro_vae.data.binarize import dynamic_binarize, eval_data
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import CheckpointError, ConfigError, DataError, TrainingError
from pyro_vae.infer.objectives import Objective, make_objective
from pyro_vae.models.config import ModelConfig
from pyro_vae.models.kinds import kind_of
from pyro_vae.runtime.devices import model_device, resolve_device, to_device
from pyro_vae.runtime.distributed import current_group
from pyro_vae.runtime.threads import check_threads, share_cores
from pyro_vae.runtime.threads import poll as poll_threads
from pyro_vae.train.checkpoint import restore_model
from pyro_vae.train.fingerprint import check_same_data_on_every_rank, data_fingerprint
from pyro_vae.train.parallel import (
    PRECISIONS,
    Engine,
    LossModule,
    ReadOnlyRun,
    gather_rng_states,
    rank_seed,
)
from pyro_vae.train.rng import get_rng_state, set_rng_state
from pyro_vae.train.schedules import LR_SCHEDULES, learning_rate
from pyro_vae.train.tasks import TrainTask, make_task
from pyro_vae.validation import check_finite_config, check_positive_int, check_tensor

#: What a resumable checkpoint holds besides the format version (every model kind).
CHECKPOINT_KEYS = (
    "kind",
    "model_config",
    "train_config",
    "model_state",
    "optimizer_state",
    "epoch",
    "history",
    "rng_state",
)
#: Training settings a resumed run may change: how long it runs, and where it is logged
#: (tracking never changes what is trained; runs from before tracking have no such keys).
RESUMABLE_CHANGES = ("epochs", "track", "track_samples_every", "mlflow_uri")
#: Most samples per data point a training step or a validation pass may draw (refused before
#: allocating them).
MOST_SAMPLES = {"num_particles": 10_000, "valid_num_samples": 1_000_000}
#: Seeds accepted: NumPy's global generator (seeded by pyro.set_rng_seed) takes 32 bits.
MAX_SEED = 2**32 - 1


def check_track_names(track: Any) -> tuple[str, ...]:
    """``track`` as a tuple of distinct tracker names (which names exist is the tracking
    registry's to say, [`pyro_vae.runs.tracking.check_trackers`][])."""
    if isinstance(track, str):
        track = (track,)
    if not isinstance(track, list | tuple) or not all(isinstance(t, str) for t in track):
        raise ConfigError(
            f"track must be a list of tracker names such as ['tensorboard'], got {track!r}"
        )
    return tuple(dict.fromkeys(track))


@dataclass
class TrainConfig:
    """How to train."""

    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    #: Learning-rate schedule by epoch (``pyro_vae.train.schedules.LR_SCHEDULES``).
    lr_schedule: str = "constant"
    #: Adam's epsilon (the denominator's floor): 1e-8 as in torch; Burda et al. use 1e-4.
    adam_eps: float = 1e-8
    seed: int = 0
    objective: str = "elbo"
    num_particles: int = 1
    valid_num_samples: int = 10
    #: Largest total gradient 2-norm per step; ``None`` leaves gradients unchanged.
    clip_grad: float | None = None
    beta: float = 1.0
    warmup: str = "none"
    warmup_epochs: float = 0.0
    free_bits: float = 0.0
    #: Compute the ELBO straight from the library's own parts where that is proven equal to
    #: Pyro's ([`pyro_vae.models.fused`][]); ``False`` keeps Pyro's Trace_ELBO path.
    fused: bool = True
    #: ``32``, or ``bf16``/``fp16`` autocast for the training steps (scores stay float32).
    precision: str = "32"
    #: Experiment trackers the run logs to (``tensorboard``, ``mlflow``: the entries of
    #: ``pyro_vae.runs.tracking.TRACKERS``); ``train_run`` and ``resume_run`` log, rank 0 alone.
    #: Tracking never changes what is trained.
    track: tuple[str, ...] = ()
    #: Epochs between two grids of prior samples logged to TensorBoard (0: none).
    track_samples_every: int = 10
    #: MLflow tracking URI (``sqlite:///path/mlflow.db``, ``http://host:5000``); ``None``:
    #: the SQLite store ``mlruns/mlflow.db`` beside the run directory.
    mlflow_uri: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value!r}")
        for name, most in MOST_SAMPLES.items():
            check_positive_int(getattr(self, name), name)
            if getattr(self, name) > most:
                raise ConfigError(
                    f"{name} (--{name.replace('_', '-')}) must be from 1 to {most}, got "
                    f"{getattr(self, name)}; each step holds that many samples per point"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"seed must be in [0, {MAX_SEED}], got {self.seed}; pick a smaller one"
            )
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown learning-rate schedule {self.lr_schedule!r}; choose one of "
                f"{sorted(LR_SCHEDULES)}"
            )
        eps = self.adam_eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < math.inf:
            raise ConfigError(f"adam_eps must be a positive number, got {eps!r}")
        if self.clip_grad is not None:
            check_finite_config(self.clip_grad, "clip_grad (--clip-grad)")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {list(PRECISIONS)}"
            )
        self.track = check_track_names(self.track)
        value = self.track_samples_every
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"track_samples_every must be an integer >= 0, got {value!r}")
        if self.mlflow_uri is not None and (
            not isinstance(self.mlflow_uri, str) or not self.mlflow_uri.strip()
        ):
            raise ConfigError(
                f"mlflow_uri must be a tracking URI such as sqlite:///runs/mlflow.db, got "
                f"{self.mlflow_uri!r}"
            )
        self.make_objective()  # refuse bad objective options before any file is written

    def make_objective(self) -> Objective:
        """The training objective these options describe ([`pyro_vae.infer.objectives`][])."""
        return make_objective(
            self.objective,
            self.num_particles,
            beta=self.beta,
            warmup=self.warmup,
            warmup_epochs=self.warmup_epochs,
            free_bits=self.free_bits,
        )


@dataclass
class FitResult:
    """What [`fit`][pyro_vae.train.loop.fit] returns: per-epoch metrics (dicts) and the final
    epoch."""

    history: list[dict[str, Any]]
    epochs: int
    seconds: float


#: Called after each epoch with the model and the metrics history (rank 0 only).
EpochHook = Callable[[torch.nn.Module, list[dict[str, Any]]], None]


class RunStore(Protocol):
    """The files of a run as [`fit`][pyro_vae.train.loop.fit] uses them
    ([`pyro_vae.runs.RunDir`][pyro_vae.runs.rundir.RunDir])."""

    def has_checkpoint(self) -> bool: ...
    def save_checkpoint(self, state: dict[str, Any]) -> None: ...
    def load_checkpoint(self) -> dict[str, Any]: ...
    def write_metrics(self, history: list[dict[str, Any]]) -> None: ...
    def append_metrics(self, record: dict[str, Any]) -> None: ...
    def record_config(self, updates: dict[str, Any], defaults: dict[str, Any]) -> None: ...


def check_fit(model: torch.nn.Module, data: DataSplits, batch_size: int) -> None:
    """Refuse data the model cannot use, before any training or file write.

    ``model`` is a module of a registered model kind (a [`VAE`][pyro_vae.models.vae.VAE], an
    [`Autoencoder`][pyro_vae.models.autoencoder.Autoencoder], ...); the kind checks the labels it
    needs.
    """
    kind = kind_of(model)
    if not isinstance(data, DataSplits):
        raise DataError(
            f"fit needs a pyro_vae.data.DataSplits, got {type(data).__name__}; wrap tensors "
            "with DataSplits(name, train, valid, test) or use load_dataset"
        )
    kind.for_data(data)
    if kind.uses_labels and not isinstance(data.train, torch.Tensor):
        raise DataError(
            f"model {kind.name!r} takes labels beside each point, which a streamed training "
            "split does not carry; load the data into memory (drop --stream)"
        )
    if data.event_shape != model.event_shape:
        raise DataError(
            f"data points have shape {data.event_shape} but the model expects "
            f"{model.event_shape}; build the model with the data's event_shape"
        )
    n_train = num_points(data.train)
    if batch_size > n_train:
        raise ConfigError(
            f"batch size {batch_size} exceeds the {n_train} training points; lower --batch-size"
        )
    # a streamed training split is checked batch by batch as it is read (train_epoch)
    splits = (
        ("train", "valid", "test") if isinstance(data.train, torch.Tensor) else ("valid", "test")
    )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    for split in splits:
        x = check_tensor(getattr(data, split), f"the {split} split", model.event_shape)
        if dtype is not None and x.dtype != dtype:
            raise DataError(
                f"the {split} split has dtype {x.dtype} but the model's parameters {dtype}; "
                "convert the data (x.float() for float32) or the model"
            )
        if x.shape[0] < 1:
            raise DataError(f"the {split} split is empty; provide more data points")
        model.likelihood.check_data(x)


def fit(
    model: torch.nn.Module,
    data: DataSplits,
    config: TrainConfig,
    run_dir: RunStore | None = None,
    model_config: ModelConfig | None = None,
    progress: bool = True,
    resume: bool = False,
    *,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    epoch_hook: EpochHook | None = None,
    threads: int | str = "auto",
) -> FitResult:
    """Train a VAE (or the autoencoder baseline) on ``data.train`` with Adam.

    Each step minimizes the batch's loss divided by the batch's actual size (the model kind's
    [`TrainTask`][pyro_vae.train.tasks.TrainTask]: the objective's negative ELBO for a VAE, see
    [`pyro_vae.infer.objectives`][]; the reconstruction NLL for an autoencoder), so every figure is
    per data point, in nats. After each epoch the validation metrics are recorded. With ``run_dir``
    (a [`pyro_vae.runs.RunDir`][pyro_vae.runs.rundir.RunDir]) writes ``config.json`` (when
    ``model_config`` is given and the run has none), a checkpoint each epoch (atomically) and the
    metrics.

    With ``resume``, continues from the run's checkpoint: model, optimizer and every random-number
    generator are restored, so the run ends exactly as an uninterrupted one would. A non-finite
    loss, gradient or parameter raises [`TrainingError`][pyro_vae.errors.TrainingError] naming the
    epoch and step; the checkpoint of the last good epoch is never overwritten.

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; default: where the model's
    parameters are) receives the model and each batch. ``data.train`` may be a
    ``torch.utils.data.Dataset`` ([`StreamingSplits`][pyro_vae.data.streaming.StreamingSplits]),
    read with ``num_workers`` loader processes. Under ``torchrun`` (an initialized
    ``torch.distributed`` group) every process trains a DDP replica on its shard of each epoch, with
    its own latent noise; rank 0 alone writes the run's files ([`pyro_vae.train.parallel`][]).

    ``threads`` (``"auto"`` or a count) is torch's intra-op thread count while training:
    ``auto`` fits it to the cores other processes leave free and adapts it between steps,
    unless the user fixed it ([`pyro_vae.runtime.threads`][]).

    ``epoch_hook(model, history)`` is called on rank 0 after each epoch's checkpoint (the
    run's experiment trackers, [`pyro_vae.runs.tracking`][]); it must leave the model, its
    mode and every random-number generator as it found them.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(
            f"fit's config must be a pyro_vae.train.TrainConfig, got {type(config).__name__}; "
            "pass TrainConfig(**options)"
        )
    check_fit(model, data, config.batch_size)
    check_num_workers(num_workers)
    threads = check_threads(threads)
    fingerprint = None
    if current_group().distributed or (run_dir is not None and model_config is not None):
        fingerprint = data_fingerprint(data, streamed_check(model, data.train))
        check_same_data_on_every_rank(fingerprint)
    if run_dir is not None and not callable(getattr(run_dir, "save_checkpoint", None)):
        raise ConfigError(
            f"fit's run_dir must be a pyro_vae.runs.RunDir, got {type(run_dir).__name__}; "
            "pass run_dir=RunDir(path)"
        )
    if resume and run_dir is None:
        raise ConfigError("resume needs the run directory to continue from; pass run_dir")
    device = model_device(model) if device is None else resolve_device(device)
    model.to(device)
    task = make_task(
        model, config.make_objective(), config.valid_num_samples, config.fused, data=data,
        seed=config.seed,
    )  # fmt: skip
    engine = Engine.build(model, task.batch_loss, device, config.precision, num_workers)
    # rank 0 draws the stream a one-process run draws; the other ranks their own
    pyro.set_rng_seed(rank_seed(config.seed, engine.group.rank))
    optimizer = make_optimizer(model, config.lr, config.adam_eps)
    if run_dir is not None and not engine.group.is_main:
        run_dir = ReadOnlyRun(run_dir)
    history: list[dict[str, Any]] = []
    if run_dir is not None:
        if resume:
            history = resume_state(run_dir, model, optimizer, config, model_config, engine)
        record_run_config(
            run_dir, model, data, config, model_config, getattr(task, "run_record", None),
            fingerprint,
        )  # fmt: skip
        run_dir.write_metrics(history)
    with share_cores(threads):
        return run_epochs(
            task, optimizer, data, config, history, run_dir, model_config, progress, engine,
            epoch_hook=epoch_hook,
        )  # fmt: skip


def record_run_config(
    run: RunStore,
    model: torch.nn.Module,
    data: DataSplits,
    config: TrainConfig,
    model_config: ModelConfig | None,
    task_record: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Record kind, model, training settings and data fingerprint in the run's config.json
    (written once; rewritten only when a resume extends the run, after its checks), and what the
    training task chose (``task_record``, e.g. the labelled points). ``fingerprint``: the data's
    [`data_fingerprint`][pyro_vae.train.fingerprint.data_fingerprint] when already computed."""
    if model_config is None:
        return
    updates = {
        **(task_record or {}),
        "kind": kind_of(model).name,
        "model": model_config.to_dict(),
        "train": asdict(config),
        "data_fingerprint": fingerprint or data_fingerprint(data),
    }
    run.record_config(updates, defaults={"dataset": data.name})


def run_epochs(
    task: TrainTask,
    optimizer: torch.optim.Optimizer,
    data: DataSplits,
    config: TrainConfig,
    history: list[dict[str, Any]],
    run: RunStore | None,
    model_config: ModelConfig | None,
    progress: bool,
    engine: Engine,
    epoch_hook: EpochHook | None = None,
) -> FitResult:
    """Train from ``len(history) + 1`` to ``config.epochs``, validating and checkpointing;
    then ``epoch_hook(model, history)`` on rank 0."""
    model = task.model
    kind = kind_of(model)
    valid = eval_data(model, data.valid).to(engine.device)
    valid_args = tuple(a.to(engine.device) for a in kind.split_args(data, "valid"))
    train_args = kind.split_args(data, "train")
    first = len(history) + 1
    start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    bar = tqdm(
        range(first, config.epochs + 1),
        initial=first - 1,
        total=config.epochs,
        desc=f"train {kind.label}",
        unit="epoch",
        disable=not (progress and engine.group.is_main),
    )
    for epoch in bar:
        rate = learning_rate(config.lr, config.lr_schedule, epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate
        model.train()
        train_metrics = train_epoch(
            task, optimizer, data.train, config, epoch, run, engine, args=train_args
        )
        model.eval()
        valid_metrics = task.validate(valid, *valid_args)
        record = {
            "epoch": epoch,
            **train_metrics,
            **valid_metrics,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        shown_train, shown_valid = task.headline
        bar.set_postfix(train=f"{record[shown_train]:.2f}", valid=f"{record[shown_valid]:.2f}")
        end_epoch(model, optimizer, config, model_config, history, run, engine)
        if epoch_hook is not None and engine.group.is_main:
            epoch_hook(model, history)
    return FitResult(history, config.epochs, time.perf_counter() - start)


def train_epoch(
    task: TrainTask,
    optimizer: torch.optim.Optimizer,
    train: torch.Tensor | Dataset,
    config: TrainConfig,
    epoch: int,
    run: RunStore | None = None,
    engine: Engine | None = None,
    *,
    args: tuple[torch.Tensor, ...] = (),
) -> dict[str, float]:
    """One pass over ``train`` in a fresh random order; returns the epoch's training metrics
    per data point: the task's metric sums / points seen, the minimized loss under
    ``task.loss_name``, and the task's last-step values (e.g. ``kl_weight``).

    train: (N, *event_shape), or a Dataset of such points. Each step minimizes loss_sum /
    (the batch's actual size), so a short last batch weighs its points as much as a full one.
    The loss and gradient norm of every step are checked, in batches of
    ``CHECK_EVERY`` steps (one wait for the device each) and at the epoch's end, so a
    non-finite value stops training, named by its epoch and step, before the epoch's
    metrics, validation or checkpoint. ``args`` (each (N, ...)) are the programs' further
    arguments, taken in the same order as the points. ``engine`` (default: this process,
    the model's device, float32) says where the steps run; with several processes the
    metrics are summed over all of them before dividing.
    """
    model = task.model
    if engine is None:
        engine = Engine(LossModule(model, task.batch_loss), model_device(model))
    order = epoch_order(num_points(train), epoch, config.seed, engine.group)
    steps_per_epoch = math.ceil(order.numel() / config.batch_size)
    streamed = not isinstance(train, torch.Tensor)
    batches = epoch_batches(
        train, config.batch_size, order, engine.device, num_workers=engine.num_workers
    )
    # hoisted out of the steps: the parameter list, the flags, the bound methods
    params = [p for p in model.parameters()]
    binarize = model.likelihood.binarize
    check_norm = engine.scaler is None  # float16 overflows are the scaler's to skip
    module, autocast = engine.module, engine.autocast
    checks = StepChecks(epoch, run, task.loss_name)
    last: dict[str, float] = {}
    for step, x in named_batches(batches, epoch):
        rows = order[step * config.batch_size : (step + 1) * config.batch_size]
        extra = tuple(to_device(a[rows], engine.device) for a in args)
        if streamed:
            first = step * config.batch_size
            check_points(
                model, x, f"in training batch {step} of epoch {epoch}",
                lambda j, first=first: source_index(train, int(order[first + j])),
            )  # fmt: skip
        if binarize:
            x = dynamic_binarize(x)
        with autocast():
            value = module(x, epoch - 1 + step / steps_per_epoch, *extra)
        size = x.shape[0]
        loss = value.loss_sum.float() / size
        optimizer.zero_grad()
        engine.backward(loss, optimizer)
        norm = clip_gradients(params, config.clip_grad)
        checks.add(step, loss, norm if check_norm else None, value.sums, size)
        engine.step(optimizer)
        last = value.last
        poll_threads()
    # before the epoch's metrics, validation or checkpoint
    sums = engine.reduce_sums({**checks.flush(), "_points": float(checks.seen)})
    seen = sums.pop("_points")
    return {**{k: v / seen for k, v in sums.items()}, **last}


def check_num_workers(num_workers: Any) -> None:
    """Refuse a reader-process count that is not an integer from 0 to 256."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int):
        raise ConfigError(f"num_workers must be an integer from 0 to 256, got {num_workers!r}")
    if not 0 <= num_workers <= 256:
        raise ConfigError(
            f"num_workers (--num-workers) must be from 0 to 256, got {num_workers}; use 0 to "
            "read in the training process"
        )


def check_points(
    model: torch.nn.Module, x: torch.Tensor, where: str, index_of: Callable[[int], str]
) -> None:
    """Refuse streamed training points ``x`` (n, *event_shape) that the model cannot use:
    a non-finite value names the point (``index_of(row)``, its index in the training split)."""
    if x.dim() >= 2 and x.is_floating_point():
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise DataError(
                f"training point {index_of(row)} of the streamed split has NaN or infinite "
                f"values ({where}); clean the file or drop that point"
            )
    check_tensor(x, f"the streamed training points {where}", model.event_shape)
    model.likelihood.check_data(x)


def source_index(split: Dataset, i: int) -> str:
    """Point ``i`` of a streamed split, named by its row in the source as well when the split
    is a subset of it (``"17 (row 170 of the file)"``)."""
    row = i
    while isinstance(split, Subset):
        row, split = int(split.indices[row]), split.dataset
    return str(i) if row == i else f"{i} (row {row} of its source)"


def streamed_check(model: torch.nn.Module, split: Dataset) -> Callable[[torch.Tensor, int], None]:
    """The check [`data_fingerprint`][pyro_vae.train.fingerprint.data_fingerprint] runs on each
    block of a streamed training split as it hashes it, so bad points are refused before the
    first step (and before a run directory is made)."""

    def check(block: torch.Tensor, first: int) -> None:
        where = f"points {first} to {first + block.shape[0] - 1}, read before training"
        check_points(model, block, where, lambda j: source_index(split, first + j))

    return check


def named_batches(batches: Iterable[torch.Tensor], epoch: int) -> Iterator[tuple[int, Any]]:
    """``(step, batch)`` pairs; a batch that cannot be read (a streamed file truncated or changed
    while training, in this process or a loader worker) is one
    [`DataError`][pyro_vae.errors.DataError] naming the step."""
    iterator = iter(batches)
    step = 0
    while True:
        try:
            x = next(iterator)
        except StopIteration:
            return
        except (DataError, OSError, ValueError) as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            # a loader worker's error arrives as its traceback; the last line is the message
            last = lines[-1] if lines else type(exc).__name__
            reason = re.sub(r"^[\w.]*(Error|Exception): ", "", last)
            raise DataError(
                f"cannot read training batch {step} of epoch {epoch}: {reason}"
            ) from exc
        yield step, x
        step += 1


def make_optimizer(model: torch.nn.Module, lr: float, eps: float = 1e-8) -> torch.optim.Optimizer:
    """The fit loop's Adam, in one fused kernel per step where torch has one for the
    parameters' device (CPU and CUDA among them), else multi-tensor (``foreach``).

    Both compute Adam's update (Kingma & Ba 2015); the fused kernel may round the last bit
    of an element differently from the per-parameter loop (``foreach`` does not). The
    optimizer's state (and this choice) is checkpointed, so a resumed run continues with the
    implementation it started with.
    """
    params = list(model.parameters())
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the list: the multi-tensor Adam everywhere
        supported = []
    fused = bool(params) and all(
        p.device.type in supported and p.is_floating_point() for p in params
    )
    if fused:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


#: Steps between two finiteness checks of the training loop (each check waits for the
#: device once; a fault is still reported at its exact step, and always before a checkpoint).
CHECK_EVERY = 16


class StepChecks:
    """Per-step losses, gradient norms and metric sums of one epoch, checked in batches.

    Each step's values stay on the device until [`flush`][pyro_vae.train.loop.StepChecks.flush]
    (every ``CHECK_EVERY`` steps and at the epoch's end) copies them to the host in one transfer,
    stops on the first step whose loss or gradient norm is not finite (naming its epoch and step, as
    [`check_finite_values`][pyro_vae.train.loop.check_finite_values]), and adds them up in step
    order, in float64, as a per-step ``.item()`` would.
    """

    def __init__(self, epoch: int, run: RunStore | None, loss_name: str, every: int = CHECK_EVERY):
        self.epoch, self.run, self.loss_name, self.every = epoch, run, loss_name, every
        self.sums: dict[str, float] = {}
        self.total = 0.0
        self.seen = 0
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor | None, dict, int]] = []

    def add(
        self,
        step: int,
        loss: torch.Tensor,
        grad_norm: torch.Tensor | None,
        sums: dict[str, Any],
        size: int,
    ) -> None:
        """Record step ``step``: its mean loss (0-dim), gradient norm (or ``None``: not
        checked), metric sums (floats or 0-dim tensors) and batch size."""
        self._pending.append((step, loss.detach(), grad_norm, sums, size))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> dict[str, float]:
        """Check and add up the pending steps; returns the epoch's sums so far (the metric
        sums, then the loss's under ``loss_name``)."""
        pending, self._pending = self._pending, []
        if pending:
            self._add_up(pending)
        return {**self.sums, self.loss_name: self.total}

    def _add_up(self, pending: list) -> None:
        tensors = []
        for _, loss, norm, sums, _ in pending:
            tensors.append(loss)
            if norm is not None:
                tensors.append(norm)
            tensors.extend(v for v in sums.values() if isinstance(v, torch.Tensor))
        if len({t.dtype for t in tensors}) > 1:  # float32 and bfloat16 go exactly to float64
            tensors = [t.to(torch.float64) for t in tensors]
        values = iter(torch.stack(tensors).tolist())
        for step, _, norm, sums, size in pending:
            loss = next(values)
            grad_norm = None if norm is None else next(values)
            check_finite_values(loss, grad_norm, self.epoch, step, self.run)
            self.total += loss * size
            for key, v in sums.items():
                v = next(values) if isinstance(v, torch.Tensor) else v
                self.sums[key] = self.sums.get(key, 0.0) + v
            self.seen += size


def clip_gradients(
    parameters: torch.nn.Module | list[torch.Tensor], max_norm: float | None
) -> torch.Tensor:
    """Rescale the gradients to total 2-norm at most ``max_norm`` (no change when ``None``).

    ``parameters``: a module or a list of its parameters (a list made once saves walking the
    module every step). Returns the total gradient norm before clipping. With
    ``max_norm=None`` the norm is computed and the gradients are left untouched (the scale
    factor would be exactly 1), so results match an unclipped run bit for bit.
    """
    if isinstance(parameters, torch.nn.Module):
        parameters = list(parameters.parameters())
    if max_norm is None:
        grads = [p.grad for p in parameters if p.grad is not None]
        if (
            grads
            and len({(g.device, g.dtype) for g in grads}) == 1
            and not any(g.is_sparse for g in grads)
        ):
            # the 2-norm of the per-tensor norms, as get_total_norm, without its grouping by
            # device and dtype (the value only feeds the finiteness check)
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        return torch.nn.utils.get_total_norm(grads)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def training_fault(
    problem: str, epoch: int, step: int | None, run: RunStore | None
) -> TrainingError:
    """The error for a non-finite value during training: where, and the fixes."""
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    kept = (
        f"; the last good checkpoint is kept in {str(run)!r}"
        if run is not None and run.has_checkpoint()
        else ""
    )
    return TrainingError(
        f"{problem} at {where}{kept}; lower --lr, pass --clip-grad (e.g. 10), or check the "
        "data scale"
    )


def check_finite_step(
    loss: torch.Tensor,
    grad_norm: torch.Tensor | None,
    epoch: int,
    step: int,
    run: RunStore | None,
) -> None:
    """Stop on a non-finite loss or gradient norm, naming where it happened and the fixes."""
    norm = None if grad_norm is None else float(grad_norm)
    check_finite_values(loss.item(), norm, epoch, step, run)


def check_finite_values(
    loss: float, grad_norm: float | None, epoch: int, step: int, run: RunStore | None
) -> None:
    """[`check_finite_step`][pyro_vae.train.loop.check_finite_step] on values already on the host
    (``grad_norm=None``: not checked): the loss first, then the gradient norm."""
    if not math.isfinite(loss):
        raise training_fault(f"training loss is {loss}", epoch, step, run)
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise training_fault(f"gradient norm is {grad_norm}", epoch, step, run)


def end_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    model_config: ModelConfig | None,
    history: list[dict[str, Any]],
    run: RunStore | None,
    engine: Engine | None = None,
) -> None:
    """Refuse non-finite parameters, then append the metrics line and checkpoint the epoch.

    The metrics line is written before the checkpoint; on resume, lines past the
    checkpointed epoch are dropped, so a crash between the two loses nothing and
    duplicates nothing.
    """
    epoch = history[-1]["epoch"]
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise training_fault(f"parameter {name!r} became non-finite", epoch, None, run)
    distributed = engine is not None and engine.group.distributed
    # every rank's generator, so that each rank of a resumed run continues its own stream
    rank_states = gather_rng_states(engine.group) if distributed else None
    if run is None:
        return
    run.append_metrics(history[-1])
    state = {
        "kind": kind_of(model).name,
        "model_config": model_config.to_dict() if model_config else None,
        "train_config": asdict(config),
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
        "rng_state": get_rng_state(),
    }
    if rank_states is not None:
        state["rank_rng_states"] = rank_states
    run.save_checkpoint(state)


def check_resumable(
    state: dict[str, Any],
    run: RunStore,
    kind: str,
    config: TrainConfig,
    model_config: ModelConfig | None,
) -> None:
    """Refuse to resume a checkpoint of another format, kind, model or training settings."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state and k != "kind"]
    if missing:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} lacks {missing}; it was not written by this version "
            "of fit, so it cannot be resumed: start again with --overwrite"
        )
    saved_kind = state.get("kind", "vae")  # checkpoints before model kinds were VAEs
    if saved_kind != kind:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} is of a {saved_kind!r} model, not {kind!r}; "
            "resume with the run's own config.json"
        )
    saved = {k: v for k, v in state["train_config"].items() if k not in RESUMABLE_CHANGES}
    now = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(
            f"cannot resume {str(run)!r} with different training settings {diff}; resume with the "
            "run's own configuration or start a new run"
        )
    if len(state["history"]) > config.epochs:
        raise ConfigError(
            f"{str(run)!r} has already trained {len(state['history'])} epochs, more than the "
            f"{config.epochs} asked for; pass --epochs {len(state['history'])} or more"
        )
    saved_model = state["model_config"]
    if model_config is not None and saved_model is not None:
        # an older run's flat keys are migrated, so compare the configurations, not the dicts
        saved_dict = ModelConfig.from_dict(
            saved_model, default_kind=state.get("kind", "vae")
        ).to_dict()
        differing = config_differences(saved_dict, model_config.to_dict())
        if differing:
            raise ConfigError(
                f"cannot resume {str(run)!r} with a model differing from its checkpoint's in "
                f"{differing}; resume with the run's own config.json or start a new run"
            )


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two model-config dicts (sorted)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def resume_state(
    run: RunStore,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    model_config: ModelConfig | None = None,
    engine: Engine | None = None,
) -> list[dict[str, Any]]:
    """Restore model, optimizer and random-number state from ``run``'s checkpoint.

    Returns the metrics history up to the checkpointed epoch.
    """
    state = run.load_checkpoint()
    check_resumable(state, run, kind_of(model).name, config, model_config)
    restore_model(model, state["model_state"], str(run))
    try:
        optimizer.load_state_dict(state["optimizer_state"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"the optimizer state in {str(run)!r} does not match the model ({exc}); start again "
            "with --overwrite"
        ) from exc
    set_rng_state(state["rng_state"])
    restore_rank_stream(state, run, engine)
    history = list(state["history"])
    if len(history) != state["epoch"]:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} is inconsistent (epoch {state['epoch']}, {len(history)} "
            "metric records); start again with --overwrite"
        )
    return history


def restore_rank_stream(state: dict[str, Any], run: RunStore, engine: Engine | None) -> None:
    """On each rank of a distributed run, its own torch generator state from the checkpoint.

    A checkpoint of a run with W processes resumes only with W processes (or it would not
    continue identically); a one-process checkpoint resumes only in one process.
    """
    saved = state.get("rank_rng_states")
    world = engine.group.world_size if engine is not None else 1
    if saved is None and world == 1:
        return
    if saved is None or len(saved) != world:
        trained = 1 if saved is None else len(saved)
        how = f"with torchrun --nproc_per_node={trained}" if trained > 1 else "without torchrun"
        raise CheckpointError(
            f"{run} was trained by {trained} process(es) and this resume runs {world}, so it "
            f"cannot continue identically; resume it {how}"
        )
    torch.set_rng_state(saved[engine.group.rank])
