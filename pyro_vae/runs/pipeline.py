"""Run directories: train a configured model end to end, write its files, load it back.

A run directory holds ``config.json`` (data set, model and training configuration),
``checkpoint.pt``, ``metrics.jsonl``, ``results.json`` and the figures ``elbo.png``,
``samples.png``, ``reconstructions.png``, ``latent.png``, ``interpolation.png`` and, for a 2-D
latent space, ``manifold.png`` (``.pdf`` on request). An autoencoder baseline run
(``kind: "ae"``) holds ``loss.png`` instead of ``elbo.png`` and its samples come from a mixture
fitted to its training codes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.analysis import plots
from pyro_vae.data.binarize import BINARIZE_MODES, binarize_splits, eval_data
from pyro_vae.data.catalog import load_dataset
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.infer.importance import LogLikelihood, log_likelihood
from pyro_vae.models.autoencoder import build_autoencoder, mean_reconstruction_nll
from pyro_vae.models.config import ModelConfig, build_vae
from pyro_vae.models.vae import VAE
from pyro_vae.train.autoencoder import fit_autoencoder
from pyro_vae.train.checkpoint import load_checkpoint
from pyro_vae.train.loop import CHECKPOINT, FitResult, TrainConfig, check_fit, fit


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


def write_figures(
    vae: VAE, data: DataSplits, history, run_dir: Path, seed: int = 0, fmt: str = "png"
) -> list[Path]:
    """The standard figures of a run (see the module docstring); returns the paths written.

    Works for a VAE and for the autoencoder baseline (``history`` records of either fit loop).
    """
    from pyro_vae.analysis import figures

    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; choose one of {list(FIGURE_FORMATS)}")
    run_dir = Path(run_dir)
    torch.manual_seed(seed)
    is_vae = hasattr(vae, "prior")
    if is_vae:
        written = [plots.plot_elbo(history, run_dir / f"elbo.{fmt}", title=f"ELBO on {data.name}")]
    else:
        written = [
            plots.plot_reconstruction_nll(
                history,
                run_dir / f"loss.{fmt}",
                title=f"autoencoder reconstruction loss on {data.name}",
            )
        ]
    vae.eval()
    jobs = [
        (figures.figure_samples, {"source": "prior" if is_vae else "aggregate", "seed": seed}),
        (figures.figure_reconstructions, {}),
        (figures.figure_latent, {}),
        (figures.figure_interpolation, {}),
    ]
    names = ["samples", "reconstructions", "latent", "interpolation"]
    if is_vae and vae.latent_dim == 2:
        jobs.append((figures.figure_manifold, {}))
        names.append("manifold")
    for name, (make, options) in zip(names, jobs, strict=True):
        path = make(vae, data, run_dir / f"{name}.{fmt}", **options)
        if path is not None:
            written.append(path)
    return written


FIGURE_FORMATS = ("png", "pdf")


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
    vae: VAE,
    data: DataSplits,
    result: FitResult,
    run: Path,
    seed: int,
    num_samples: int,
    fmt: str = "png",
) -> dict[str, Any]:
    """Figures, test score and ``results.json`` of a trained run; returns the results."""
    write_figures(vae, data, result.history, run, seed=seed, fmt=fmt)
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
    if config.get("kind", "vae") != "vae":
        raise ConfigError(
            f"{str(run)!r} is an autoencoder run, which cannot be resumed; retrain it with "
            "--overwrite"
        )
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
    data = data if data is not None else load_run_data(config)
    pyro.set_rng_seed(train_config.seed)
    vae = build_vae(model_config)
    result = fit(
        vae, data, train_config, run, model_config=model_config, progress=progress, resume=resume
    )
    num_samples = int(config.get("num_samples", 1000))
    fmt = config.get("figure_format", "png")
    return finish_run(vae, data, result, run, train_config.seed, num_samples, fmt)


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
    kind: str = "vae",
    data_dir: str | Path | None = None,
    binarize: str | None = None,
    fmt: str = "png",
    **model_options: Any,
) -> dict[str, Any]:
    """Load ``dataset``, build, train, score on the test split (IS, ``num_samples``), and write
    every file of a run directory. Returns the results written to ``results.json``.

    ``kind="ae"`` trains the deterministic autoencoder baseline with the same networks and
    likelihood (:mod:`pyro_vae.autoencoder`) and scores its test reconstruction NLL instead.
    ``binarize`` (``dynamic``/``static``/``none``; default: the likelihood's own choice) and
    ``data_dir`` are recorded so that later commands load the same data.
    """
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {list(MODEL_KINDS)}")
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; choose one of {list(FIGURE_FORMATS)}")
    data_options = {
        "data_dir": str(data_dir) if data_dir is not None else None,
        "binarize": binarize,
    }
    data = data if data is not None else load_run_data({"dataset": dataset, **data_options})
    if model_config is None:
        model_config = ModelConfig(event_shape=data.event_shape, **model_options)
    check_binarize(model_config, binarize)
    if kind == "ae":
        return _train_autoencoder_run(
            dataset,
            model_config,
            train_config,
            run_dir,
            overwrite,
            progress,
            data,
            data_options,
            fmt,
        )
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
                "figure_format": fmt,
                **_data_record(data_options),
            },
            indent=2,
        )
    )
    result = fit(vae, data, train_config, run, model_config=model_config, progress=progress)
    return finish_run(vae, data, result, run, train_config.seed, num_samples, fmt)


def load_run(run_dir: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the model of a run directory from its configuration and checkpoint.

    Returns a :class:`VAE`, or an :class:`~pyro_vae.autoencoder.Autoencoder` for a run with
    ``"kind": "ae"`` in its ``config.json``.
    """
    run = Path(run_dir)
    config, model_config = read_run_config(run)
    state = load_checkpoint(run / "checkpoint.pt")
    vae = build_autoencoder(model_config) if config.get("kind") == "ae" else build_vae(model_config)
    try:
        vae.load_state_dict(state["model_state"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint in {str(run)!r} does not match its config.json model (different "
            "architecture); retrain or restore the matching config"
        ) from exc
    vae.eval()
    return vae, config


# --- data options and the autoencoder baseline run -------------------------------------------

MODEL_KINDS = ("vae", "ae")


def _data_record(data_options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data_options.items() if v is not None}


def check_binarize(model_config: ModelConfig, binarize: str | None) -> None:
    """Refuse a binarization the likelihood cannot honour.

    Bernoulli-type likelihoods binarize [0, 1] data (dynamic by default, or ``static``);
    likelihoods of continuous data take the data as they are (``none``).
    """
    if binarize is None:
        return
    if binarize not in BINARIZE_MODES:
        raise ConfigError(
            f"unknown binarization {binarize!r}; choose one of {list(BINARIZE_MODES)}"
        )
    from pyro_vae.models.config import build_likelihood

    binary = build_likelihood(model_config).binarize
    if binary and binarize == "none":
        raise ConfigError(
            f"the {model_config.likelihood} likelihood needs binary data and binarizes [0, 1] "
            "data itself; use --binarize dynamic or static, or a likelihood for gray values "
            "(e.g. --likelihood normal)"
        )
    if not binary and binarize == "dynamic":
        raise ConfigError(
            f"dynamic binarization is done by Bernoulli-type likelihoods, not "
            f"{model_config.likelihood}; use --binarize static (fixed binary data) or none"
        )


def load_run_data(config: dict[str, Any]) -> DataSplits:
    """The data of a run (``dataset``, ``data_dir``, ``binarize`` from its config.json)."""
    data = load_dataset(config["dataset"], data_dir=config.get("data_dir"))
    binarize = config.get("binarize")
    return binarize_splits(data, binarize) if binarize else data


def _train_autoencoder_run(
    dataset, model_config, train_config, run_dir, overwrite, progress, data, data_options, fmt
) -> dict[str, Any]:
    ae = build_autoencoder(model_config)
    run = prepare_run_dir(run_dir, overwrite)
    (run / "config.json").write_text(
        json.dumps(
            {
                "dataset": dataset,
                "kind": "ae",
                "model": model_config.to_dict(),
                "train": asdict(train_config),
                **_data_record(data_options),
            },
            indent=2,
        )
    )
    result = fit_autoencoder(ae, data, train_config, run, model_config, progress=progress)
    write_figures(ae, data, result.history, run, seed=train_config.seed, fmt=fmt)
    ae.eval()
    nll, nll_se = mean_reconstruction_nll(ae, eval_data(ae, data.test))
    results = {
        "kind": "ae",
        "epochs": result.epochs,
        "train_seconds": result.seconds,
        "final_valid_nll": result.history[-1]["valid_nll"],
        "test_reconstruction_nll": nll,
        "test_reconstruction_nll_stderr": nll_se,
        "num_test_points": int(data.test.shape[0]),
    }
    (run / "results.json").write_text(json.dumps(results, indent=2))
    return results
