"""Run directories: train a configured model end to end, write its files, load it back.

A run directory holds ``config.json`` (data set, model and training configuration),
``checkpoint.pt``, ``metrics.jsonl``, ``results.json`` and the figures ``elbo.png``,
``samples.png`` and ``reconstructions.png``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro
import torch

from . import plots
from .checkpoint import load_checkpoint
from .config import ModelConfig, build_vae
from .data import DataSplits, load_dataset
from .errors import CheckpointError, ConfigError
from .evaluation import LogLikelihood, log_likelihood
from .train import CHECKPOINT, FitResult, TrainConfig, check_fit, eval_data, fit
from .vae import VAE


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create an empty run directory; refuse to reuse a non-empty one unless ``overwrite``."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run directory {str(path)!r} already exists; pass --overwrite to replace it, "
                "--resume to continue it, or choose another --name"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_figures(vae: VAE, data: DataSplits, history, run_dir: Path, seed: int = 0) -> list[Path]:
    """ELBO curve, 64 samples from the model and 32 test reconstructions."""
    torch.manual_seed(seed)
    written = [plots.plot_elbo(history, run_dir / "elbo.png", title=f"ELBO on {data.name}")]
    vae.eval()
    samples = vae.sample(64)
    x = data.test[:32]
    for path in (
        plots.plot_image_grid(samples, run_dir / "samples.png", "samples from the model, E[x | z]"),
        plots.plot_reconstructions(
            x, vae.reconstruct(eval_data(vae, x)), run_dir / "reconstructions.png"
        ),
    ):
        if path is not None:
            written.append(path)
    return written


def score(
    vae: VAE, data: DataSplits, num_samples: int = 1000, batch_size: int | None = None
) -> LogLikelihood:
    """Test-split importance-sampled log-likelihood (and ELBO) of a trained model."""
    vae.eval()
    return log_likelihood(
        vae.model,
        vae.guide,
        eval_data(vae, data.test),
        num_samples=num_samples,
        batch_size=batch_size,
    )


def summary(result: LogLikelihood) -> dict[str, float]:
    return {
        "test_log_likelihood": result.mean,
        "test_log_likelihood_stderr": result.stderr,
        "test_elbo": result.elbo,
        "test_elbo_stderr": result.elbo_stderr,
        "num_samples": result.num_samples,
        "num_test_points": int(result.per_example.numel()),
        "mean_ess": float(result.ess.mean()),
    }


def finish_run(
    vae: VAE, data: DataSplits, result: FitResult, run: Path, seed: int, num_samples: int
) -> dict[str, Any]:
    """Figures, test score and ``results.json`` of a trained run; returns the results."""
    write_figures(vae, data, result.history, run, seed=seed)
    test = score(vae, data, num_samples)
    results = {
        "epochs": result.epochs,
        "train_seconds": result.seconds,
        "final_valid_elbo": result.history[-1]["valid_elbo"],
        **summary(test),
    }
    (run / "results.json").write_text(json.dumps(results, indent=2))
    return results


def resume_run(
    run_dir: str | Path,
    epochs: int | None = None,
    progress: bool = True,
    data: DataSplits | None = None,
) -> dict[str, Any]:
    """Continue a run directory from its last completed epoch, then score it like train_run.

    Everything comes from ``config.json`` and ``checkpoint.pt``: model, optimizer and
    random-number state are restored, so a run killed at any moment and resumed ends with
    the same metrics as an uninterrupted run (CPU). ``epochs`` may extend the run; it is
    recorded in ``config.json``. A run killed before its first checkpoint starts over.
    """
    run = Path(run_dir)
    config, model_config = read_run_config(run)
    try:
        train_config = TrainConfig(**config["train"])
    except TypeError as exc:
        raise CheckpointError(
            f"{str(run / 'config.json')!r} has unknown training settings ({exc}); restore the "
            "run's original config.json"
        ) from exc
    resume = (run / CHECKPOINT).exists()
    if resume and epochs is not None:
        done = load_checkpoint(run / CHECKPOINT).get("epoch", 0)
        if epochs < done:
            raise ConfigError(
                f"{str(run)!r} has already trained {done} epochs, more than the {epochs} asked "
                f"for; pass --epochs {done} or more"
            )
    if epochs is not None and epochs != train_config.epochs:
        train_config = TrainConfig(**{**asdict(train_config), "epochs": epochs})
        config["train"] = asdict(train_config)
        (run / "config.json").write_text(json.dumps(config, indent=2))
    data = data if data is not None else load_dataset(config["dataset"])
    pyro.set_rng_seed(train_config.seed)
    vae = build_vae(model_config)
    result = fit(
        vae, data, train_config, run, model_config=model_config, progress=progress, resume=resume
    )
    num_samples = int(config.get("num_samples", 1000))
    return finish_run(vae, data, result, run, train_config.seed, num_samples)


def read_run_config(run: Path) -> tuple[dict[str, Any], ModelConfig]:
    """``config.json`` of a run directory and the model configuration it names."""
    if not run.is_dir():
        raise CheckpointError(f"run directory {str(run)!r} does not exist; check the path")
    config_path = run / "config.json"
    try:
        config = json.loads(config_path.read_text())
        model_config = ModelConfig.from_dict(config["model"])
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{str(config_path)!r} is missing; is {str(run)!r} a run directory?"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{str(config_path)!r} is not a valid run configuration ({exc})"
        ) from exc
    return config, model_config


def train_run(
    dataset: str,
    model_config: ModelConfig | None,
    train_config: TrainConfig,
    run_dir: str | Path,
    num_samples: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    data: DataSplits | None = None,
    **model_options: Any,
) -> dict[str, Any]:
    """Load ``dataset``, build, train, score on the test split (IS, ``num_samples``), and write
    every file of a run directory. Returns the results written to ``results.json``."""
    data = data if data is not None else load_dataset(dataset)
    if model_config is None:
        model_config = ModelConfig(event_shape=data.event_shape, **model_options)
    # Seed before building: the initial weights are part of what the seed fixes.
    pyro.set_rng_seed(train_config.seed)
    vae = build_vae(model_config)
    check_fit(vae, data, train_config.batch_size)  # before any file is written
    run = prepare_run_dir(run_dir, overwrite)
    (run / "config.json").write_text(
        json.dumps(
            {
                "dataset": dataset,
                "model": model_config.to_dict(),
                "train": asdict(train_config),
                "num_samples": num_samples,
            },
            indent=2,
        )
    )
    result = fit(vae, data, train_config, run, model_config=model_config, progress=progress)
    return finish_run(vae, data, result, run, train_config.seed, num_samples)


def load_run(run_dir: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the model of a run directory from its configuration and checkpoint."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run directory {str(run)!r} does not exist; check the path")
    config_path = run / "config.json"
    try:
        config = json.loads(config_path.read_text())
        model_config = ModelConfig.from_dict(config["model"])
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{str(config_path)!r} is missing; is {str(run)!r} a run directory?"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{str(config_path)!r} is not a valid run configuration ({exc})"
        ) from exc
    state = load_checkpoint(run / "checkpoint.pt")
    vae = build_vae(model_config)
    try:
        vae.load_state_dict(state["model_state"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} does not match its config.json model (different "
            "architecture); retrain or restore the matching config"
        ) from exc
    vae.eval()
    return vae, config
