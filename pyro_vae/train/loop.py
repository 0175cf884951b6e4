"""The fit loop: minibatch SVI on the negative ELBO per data point, validation, run files."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.data.binarize import dynamic_binarize, eval_data
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import CheckpointError, ConfigError, DataError, TrainingError
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.infer.objectives import Objective, make_objective
from pyro_vae.models.config import ModelConfig
from pyro_vae.models.vae import VAE
from pyro_vae.train.checkpoint import load_checkpoint, restore_model, save_checkpoint
from pyro_vae.train.rng import get_rng_state, set_rng_state
from pyro_vae.validation import check_finite_config, check_positive_int, check_tensor

#: File names inside a run directory.
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
#: What a resumable checkpoint holds besides the format version.
CHECKPOINT_KEYS = (
    "train_config",
    "model_state",
    "optimizer_state",
    "epoch",
    "history",
    "rng_state",
)
#: Training settings a resumed run may change: only how long it runs.
RESUMABLE_CHANGES = ("epochs",)


@dataclass
class TrainConfig:
    """How to train."""

    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
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

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        for name in ("num_particles", "valid_num_samples"):
            check_positive_int(getattr(self, name), name)
        if self.clip_grad is not None:
            check_finite_config(self.clip_grad, "clip_grad (--clip-grad)")
        self.make_objective()  # refuse bad objective options before any file is written

    def make_objective(self):
        """The training objective these options describe (:mod:`pyro_vae.objectives`)."""
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
    """What :func:`fit` returns: per-epoch metrics (dicts) and the final epoch."""

    history: list[dict[str, Any]]
    epochs: int
    seconds: float


def check_fit(vae: VAE, data: DataSplits, batch_size: int) -> None:
    """Refuse data the model cannot use, before any training.

    ``vae`` is anything with ``event_shape`` and ``likelihood`` (a VAE, or the autoencoder
    baseline).
    """
    if not (hasattr(vae, "event_shape") and hasattr(vae, "likelihood")):
        raise ConfigError(
            f"fit trains a pyro_vae.VAE, got {type(vae).__name__}; build one with build_vae"
        )
    if not isinstance(data, DataSplits):
        raise DataError(
            f"fit needs a pyro_vae.data.DataSplits, got {type(data).__name__}; wrap tensors "
            "with DataSplits(name, train, valid, test) or use load_dataset"
        )
    if data.event_shape != vae.event_shape:
        raise DataError(
            f"data points have shape {data.event_shape} but the model expects {vae.event_shape}; "
            "build the model with the data's event_shape"
        )
    if batch_size > data.train.shape[0]:
        raise ConfigError(
            f"batch size {batch_size} exceeds the {data.train.shape[0]} training points; "
            "lower --batch-size"
        )
    for split in ("train", "valid", "test"):
        check_tensor(getattr(data, split), f"the {split} split", vae.event_shape)
        vae.likelihood.check_data(getattr(data, split))


def fit(
    vae: VAE,
    data: DataSplits,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    model_config: ModelConfig | None = None,
    progress: bool = True,
    resume: bool = False,
) -> FitResult:
    """Train ``vae`` on ``data.train`` by stochastic variational inference.

    Each step minimizes the objective's loss / batch_size (``config.objective``: ELBO,
    IWAE-K, DReG, with KL weight and free bits, see :mod:`pyro_vae.objectives`) with Adam
    over the VAE's parameters, so every reported figure is per data point, in nats.
    ``train_elbo`` is always the true (beta = 1) ELBO of the training batches, ``train_loss``
    what was minimized. After each epoch the validation ELBO is estimated with
    ``config.valid_num_samples`` particles per point. With ``run_dir``, writes
    ``config.json``, ``checkpoint.pt`` (each epoch, atomically) and ``metrics.jsonl``.

    With ``resume``, continues from ``run_dir/checkpoint.pt``: model, optimizer and every
    random-number generator are restored, so the run ends exactly as an uninterrupted one
    would (CPU). A non-finite loss, gradient or parameter raises :class:`TrainingError` naming
    the epoch and step; the checkpoint of the last good epoch is never overwritten.
    """
    if not isinstance(vae, VAE):
        raise ConfigError(
            f"fit trains a pyro_vae.VAE, got {type(vae).__name__}; build one with build_vae "
            "(fit_autoencoder trains the autoencoder baseline)"
        )
    check_fit(vae, data, config.batch_size)
    if resume and run_dir is None:
        raise ConfigError("resume needs the run directory to continue from; pass run_dir")
    pyro.set_rng_seed(config.seed)
    objective = config.make_objective()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    valid = eval_data(vae, data.valid)
    run = Path(run_dir) if run_dir is not None else None
    history: list[dict[str, Any]] = []
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        if resume:
            history = resume_state(run, vae, optimizer, config, model_config)
            if len(history) > config.epochs:
                raise ConfigError(
                    f"{str(run)!r} has already trained {len(history)} epochs, more than the "
                    f"{config.epochs} asked for; pass --epochs {len(history)} or more"
                )
        write_metrics(run, history)
    first = len(history) + 1
    start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    bar = tqdm(
        range(first, config.epochs + 1),
        initial=first - 1,
        total=config.epochs,
        desc="train",
        unit="epoch",
        disable=not progress,
    )
    for epoch in bar:
        vae.train()
        train_metrics = train_epoch(vae, objective, optimizer, data.train, config, epoch, run)
        vae.eval()
        val = log_likelihood(vae.model, vae.guide, valid, num_samples=config.valid_num_samples)
        record = {
            "epoch": epoch,
            **train_metrics,
            "valid_elbo": val.elbo,
            "valid_elbo_stderr": val.elbo_stderr,
            f"valid_iwae{config.valid_num_samples}": val.mean,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        bar.set_postfix(train=f"{record['train_elbo']:.2f}", valid=f"{val.elbo:.2f}")
        end_epoch(vae, optimizer, config, model_config, history, run)
    return FitResult(history, config.epochs, time.perf_counter() - start)


def train_epoch(
    vae: VAE,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    train: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    run: Path | None = None,
) -> dict[str, float]:
    """One pass over ``train`` in a fresh random order; returns the epoch's training metrics:
    ``train_elbo`` (true, beta = 1, ELBO per data point), ``train_loss`` (what was minimized,
    per data point) and ``kl_weight`` (at the last step).

    train: (N, *event_shape). Each step's loss and gradient are checked before the update.
    """
    n = train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    perm = torch.randperm(n)
    total, total_elbo, seen = 0.0, 0.0, 0
    kl_weight = 1.0
    for step, i in enumerate(range(0, n, config.batch_size)):
        x = train[perm[i : i + config.batch_size]]
        if vae.likelihood.binarize:
            x = dynamic_binarize(x)
        kl_weight = objective.kl_weight(epoch - 1 + step / steps_per_epoch)
        value = objective.loss(vae.model, vae.guide, x, kl_weight)
        loss = value.loss / x.shape[0]
        check_finite_step(loss, None, epoch, step, run)
        optimizer.zero_grad()
        loss.backward()
        norm = clip_gradients(vae, config.clip_grad)
        check_finite_step(loss, norm, epoch, step, run)
        optimizer.step()
        total += loss.item() * x.shape[0]
        total_elbo += value.elbo
        seen += x.shape[0]
    return {"train_elbo": total_elbo / seen, "train_loss": total / seen, "kl_weight": kl_weight}


def clip_gradients(vae: VAE, max_norm: float | None) -> torch.Tensor:
    """Rescale the gradients to total 2-norm at most ``max_norm`` (no change when ``None``).

    Returns the total gradient norm before clipping. With ``max_norm=None`` the scale factor
    is exactly 1, so results match an unclipped run bit for bit.
    """
    limit = math.inf if max_norm is None else max_norm
    return torch.nn.utils.clip_grad_norm_(vae.parameters(), limit)


def _fault(problem: str, epoch: int, step: int | None, run: Path | None) -> TrainingError:
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    kept = (
        f"; the last good checkpoint is kept in {str(run)!r}"
        if run is not None and (run / CHECKPOINT).is_file()
        else ""
    )
    return TrainingError(
        f"{problem} at {where}{kept}; lower --lr, pass --clip-grad (e.g. 10), or check the "
        "data scale"
    )


def check_finite_step(
    loss: torch.Tensor, grad_norm: torch.Tensor | None, epoch: int, step: int, run: Path | None
) -> None:
    """Stop on a non-finite loss or gradient norm, naming where it happened and the fixes."""
    if not bool(torch.isfinite(loss)):
        raise _fault(f"training loss is {loss.item()}", epoch, step, run)
    if grad_norm is not None and not bool(torch.isfinite(grad_norm)):
        raise _fault(f"gradient norm is {float(grad_norm)}", epoch, step, run)


def end_epoch(
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    model_config: ModelConfig | None,
    history: list[dict[str, Any]],
    run: Path | None,
) -> None:
    """Refuse non-finite parameters, then append the metrics line and checkpoint the epoch.

    The metrics line is written before the checkpoint; on resume, lines past the
    checkpointed epoch are dropped, so a crash between the two loses nothing and
    duplicates nothing.
    """
    epoch = history[-1]["epoch"]
    for name, p in vae.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise _fault(f"parameter {name!r} became non-finite", epoch, None, run)
    if run is None:
        return
    append_metrics(run, history[-1])
    save_checkpoint(
        run / CHECKPOINT,
        {
            "model_config": model_config.to_dict() if model_config else None,
            "train_config": asdict(config),
            "model_state": vae.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "epoch": epoch,
            "history": history,
            "rng_state": get_rng_state(),
        },
    )


def resume_state(
    run: Path,
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    model_config: ModelConfig | None = None,
) -> list[dict[str, Any]]:
    """Restore model, optimizer and random-number state from ``run``'s checkpoint.

    Returns the metrics history up to the checkpointed epoch.
    """
    # A kill during a checkpoint write leaves its temporary file; the checkpoint is intact.
    for stale in run.glob(f".{CHECKPOINT}.*.tmp"):
        stale.unlink(missing_ok=True)
    state = load_checkpoint(run / CHECKPOINT)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} lacks {missing}; it was not written by this version "
            "of fit, so it cannot be resumed: start again with --overwrite"
        )
    saved = {k: v for k, v in state["train_config"].items() if k not in RESUMABLE_CHANGES}
    now = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(
            f"cannot resume {str(run)!r} with different training settings {diff}; resume with "
            "the run's own configuration or start a new run"
        )
    saved_model = state.get("model_config")
    if (
        model_config is not None
        and saved_model is not None
        and saved_model != model_config.to_dict()
    ):
        raise ConfigError(
            f"cannot resume {str(run)!r} with a different model than its checkpoint's; resume "
            "with the run's own config.json or start a new run"
        )
    restore_model(vae, state["model_state"], str(run))
    try:
        optimizer.load_state_dict(state["optimizer_state"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"the optimizer state in {str(run)!r} does not match the model ({exc}); "
            "start again with --overwrite"
        ) from exc
    set_rng_state(state["rng_state"])
    history = list(state["history"])
    if len(history) != state["epoch"]:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} is inconsistent (epoch {state['epoch']}, "
            f"{len(history)} metric records); start again with --overwrite"
        )
    return history


def write_metrics(run: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` atomically with exactly ``history``'s records."""
    text = "".join(json.dumps(r) + "\n" for r in history)
    tmp = run / f".{METRICS}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run / METRICS)


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``metrics.jsonl`` and make it durable."""
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
