"""The fit loop: minibatch SVI on the negative ELBO per data point, validation, run files."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .config import ModelConfig
from .data import DataSplits, dynamic_binarize, static_binarize
from .errors import ConfigError, DataError, TrainingError
from .evaluation import log_likelihood
from .objectives import make_objective
from .vae import VAE


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


def eval_data(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """The tensor a model is scored on: one fixed binarization for Bernoulli-type likelihoods."""
    return static_binarize(x) if vae.likelihood.binarize else x


def check_fit(vae: VAE, data: DataSplits, batch_size: int) -> None:
    """Refuse data the model cannot use, before any training."""
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
        vae.likelihood.check_data(getattr(data, split))


def fit(
    vae: VAE,
    data: DataSplits,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    model_config: ModelConfig | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``vae`` on ``data.train`` by stochastic variational inference.

    Each step minimizes the objective's loss / batch_size (``config.objective``: ELBO,
    IWAE-K, DReG, with KL weight and free bits, see :mod:`pyro_vae.objectives`) with Adam
    over the VAE's parameters, so every reported figure is per data point, in nats.
    ``train_elbo`` is always the true (beta = 1) ELBO of the training batches, ``train_loss``
    what was minimized. After each epoch the validation ELBO is estimated with
    ``config.valid_num_samples`` particles per point. With ``run_dir``, writes
    ``config.json``, ``checkpoint.pt`` (each epoch, atomically) and ``metrics.jsonl``.
    """
    check_fit(vae, data, config.batch_size)
    pyro.set_rng_seed(config.seed)
    objective = config.make_objective()
    steps_per_epoch = math.ceil(data.train.shape[0] / config.batch_size)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    valid = eval_data(vae, data.valid)
    run = Path(run_dir) if run_dir is not None else None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text("")
    history: list[dict[str, Any]] = []
    n = data.train.shape[0]
    start = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        vae.train()
        perm = torch.randperm(n)
        total, total_elbo, seen = 0.0, 0.0, 0
        for step, i in enumerate(range(0, n, config.batch_size)):
            x = data.train[perm[i : i + config.batch_size]]
            if vae.likelihood.binarize:
                x = dynamic_binarize(x)
            kl_weight = objective.kl_weight(epoch - 1 + step / steps_per_epoch)
            value = objective.loss(vae.model, vae.guide, x, kl_weight)
            loss = value.loss / x.shape[0]
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss is {float(loss)} at epoch {epoch}, step {step}; lower the learning "
                    "rate or check the data scale"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * x.shape[0]
            total_elbo += value.elbo
            seen += x.shape[0]
        vae.eval()
        val = log_likelihood(vae.model, vae.guide, valid, num_samples=config.valid_num_samples)
        record = {
            "epoch": epoch,
            "train_elbo": total_elbo / seen,
            "train_loss": total / seen,
            "kl_weight": kl_weight,
            "valid_elbo": val.elbo,
            "valid_elbo_stderr": val.elbo_stderr,
            f"valid_iwae{config.valid_num_samples}": val.mean,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        bar.set_postfix(train=f"{record['train_elbo']:.2f}", valid=f"{val.elbo:.2f}")
        if run is not None:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(
                run / "checkpoint.pt",
                {
                    "model_config": model_config.to_dict() if model_config else None,
                    "train_config": asdict(config),
                    "model_state": vae.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "epoch": epoch,
                    "torch_rng_state": torch.get_rng_state(),
                },
            )
    return FitResult(history, config.epochs, time.perf_counter() - start)
