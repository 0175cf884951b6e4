"""Run directories end to end: train a configured model, write its files, resume it, load it.

The files of a run and their names are :class:`~pyro_vae.runs.rundir.RunDir`'s. The figures
are ``elbo`` (``loss`` for an autoencoder baseline, ``kind: "ae"``), ``samples``,
``reconstructions``, ``latent``, ``interpolation`` and, for a 2-D latent space, ``manifold``
(``.png``, or ``.pdf`` on request); an autoencoder's samples come from a mixture fitted to its
training codes.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.analysis import plots
from pyro_vae.data.batches import num_points
from pyro_vae.data.binarize import BINARIZE_MODES, binarize_splits, eval_data
from pyro_vae.data.catalog import load_dataset
from pyro_vae.data.splits import DataSplits
from pyro_vae.data.streaming import load_streaming
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.infer.importance import LogLikelihood, log_likelihood
from pyro_vae.infer.sharded import sharded_estimate
from pyro_vae.models.autoencoder import (
    MODEL_KINDS,
    Autoencoder,
    build_model,
    mean_reconstruction_nll,
    model_kind,
)
from pyro_vae.models.config import ModelConfig, build_likelihood
from pyro_vae.models.fused import fused_log_weights
from pyro_vae.models.vae import VAE
from pyro_vae.runs.rundir import RunDir, printable
from pyro_vae.runtime.devices import model_device, resolve_device
from pyro_vae.runtime.distributed import current_group
from pyro_vae.train.checkpoint import restore_model
from pyro_vae.train.fingerprint import check_fingerprint, data_fingerprint
from pyro_vae.train.loop import (
    FitResult,
    TrainConfig,
    check_fit,
    config_differences,
    fit,
)

FIGURE_FORMATS = ("png", "pdf")
#: Largest sizes a user may type for a figure or a score (refused before allocating).
SIZE_LIMITS = {
    "-n (samples drawn)": 10_000,
    "--steps (interpolation steps)": 1_000,
    "--num-samples (importance samples per point)": 10_000_000,
}


#: Fewest points per split a run needs after training (interpolation joins two test points).
MIN_SPLIT_SIZES = {"train": 1, "valid": 1, "test": 2}


def check_run_data(data: DataSplits) -> None:
    """Refuse splits too small for a run's scores and figures, before any training."""
    for split, least in MIN_SPLIT_SIZES.items():
        n = num_points(getattr(data, split))
        if n < least:
            raise DataError(
                f"the {split} split of {printable(data.name)!r} has {n} point(s); a run needs at "
                f"least {least} (the test split feeds the scores and the interpolation figure); "
                "add data points"
            )


def check_size(value: int, name: str) -> int:
    """Refuse a count below 1 or above its :data:`SIZE_LIMITS` entry, before any allocation."""
    limit = SIZE_LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ConfigError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
    return value


def write_figures(
    model: VAE | Autoencoder,
    data: DataSplits,
    history: list[dict[str, Any]],
    run: RunDir,
    seed: int = 0,
    fmt: str = "png",
) -> list[Path]:
    """The standard figures of a run (see the module docstring); returns the paths written."""
    from pyro_vae.analysis import figures

    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; choose one of {list(FIGURE_FORMATS)}")
    run = RunDir(run)
    torch.manual_seed(seed)
    is_vae = model_kind(model) == "vae"
    name = printable(data.name)
    if name != data.name:  # figure titles show the name; matplotlib cannot draw surrogates
        data = copy.copy(data)
        data.name = name
    if is_vae:
        written = [plots.plot_elbo(history, run.figure("elbo", fmt), title=f"ELBO on {name}")]
    else:
        title = f"autoencoder reconstruction loss on {name}"
        written = [plots.plot_reconstruction_nll(history, run.figure("loss", fmt), title=title)]
    model.eval()
    jobs = {
        "samples": (figures.figure_samples, {"source": "prior" if is_vae else "aggregate"}),
        "reconstructions": (figures.figure_reconstructions, {}),
        "latent": (figures.figure_latent, {}),
        "interpolation": (figures.figure_interpolation, {}),
    }
    if is_vae and model.latent_dim == 2:
        jobs["manifold"] = (figures.figure_manifold, {})
    jobs["samples"][1]["seed"] = seed
    for figure, (make, options) in jobs.items():
        path = make(model, data, run.figure(figure, fmt), **options)
        if path is not None:
            written.append(path)
    return written


def score(
    vae: VAE,
    data: DataSplits,
    num_samples: int = 1000,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> LogLikelihood:
    """Test-split importance-sampled log-likelihood (and ELBO) of a trained model.

    On ``device`` (default: where the model is), in float32. Under ``torchrun`` the test
    points are sharded over the processes (:func:`~pyro_vae.infer.sharded.sharded_estimate`,
    blocks of ``batch_size`` drawn with seeds from ``seed``) and gathered in order.
    """
    vae.eval()
    if device is not None:
        vae.to(resolve_device(device))
    x = eval_data(vae, data.test).to(model_device(vae))
    # the library's own VAE: log weights straight from its parts, equal to the traced ones
    fast = fused_log_weights(vae)
    if current_group().distributed:
        return sharded_estimate(
            log_likelihood,
            vae.model,
            vae.guide,
            x,
            block_size=batch_size or 64,
            seed=seed,
            num_samples=num_samples,
            log_weights_fn=fast,
        )
    return log_likelihood(
        vae.model, vae.guide, x, num_samples=num_samples, batch_size=batch_size,
        log_weights_fn=fast,
    )  # fmt: skip


def summary(result: LogLikelihood) -> dict[str, float]:
    """The test scores of :func:`score` as ``results.json`` records them."""
    return {
        "test_log_likelihood": result.mean,
        "test_log_likelihood_stderr": result.stderr,
        "test_elbo": result.elbo,
        "test_elbo_stderr": result.elbo_stderr,
        "num_samples": result.num_samples,
        "num_test_points": int(result.per_example.numel()),
        "mean_ess": float(result.ess.mean()),
    }


def test_scores(model: VAE | Autoencoder, data: DataSplits, num_samples: int) -> dict[str, Any]:
    """A VAE's test log-likelihood and ELBO, or an autoencoder's test reconstruction NLL."""
    if model_kind(model) == "vae":
        return summary(score(model, data, num_samples))
    model.eval()
    x = eval_data(model, data.test).to(model_device(model))
    nll, nll_se = mean_reconstruction_nll(model, x)
    return {
        "kind": "ae",
        "test_reconstruction_nll": nll,
        "test_reconstruction_nll_stderr": nll_se,
        "num_test_points": int(data.test.shape[0]),
    }


def finish_run(
    model: VAE | Autoencoder,
    data: DataSplits,
    result: FitResult,
    run: RunDir,
    seed: int,
    num_samples: int,
    fmt: str = "png",
) -> dict[str, Any]:
    """Figures, test score and ``results.json`` of a trained run; returns the results.

    Every process scores its share of the test split; rank 0 alone draws and writes.
    """
    run = RunDir(run)
    main = current_group().is_main
    if main:
        write_figures(model, data, result.history, run, seed=seed, fmt=fmt)
    final = "valid_elbo" if model_kind(model) == "vae" else "valid_nll"
    results = {
        "epochs": result.epochs,
        "train_seconds": result.seconds,
        f"final_{final}": result.history[-1][final],
        **test_scores(model, data, num_samples),
    }
    if main:
        run.write_json(RunDir.RESULTS, results)
    return results


def train_run(
    dataset: str,
    model_config: ModelConfig | None,
    train_config: TrainConfig,
    run_dir: str | Path | RunDir,
    num_samples: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    data: DataSplits | None = None,
    kind: str = "vae",
    data_dir: str | Path | None = None,
    binarize: str | None = None,
    fmt: str = "png",
    device: str = "auto",
    num_workers: int = 0,
    stream: bool = False,
    **model_options: Any,
) -> dict[str, Any]:
    """Load ``dataset``, build, train, score on the test split, and write every file of a run
    directory. Returns the results written to ``results.json``.

    ``kind="ae"`` trains the deterministic autoencoder baseline with the same networks and
    likelihood (:mod:`pyro_vae.models.autoencoder`) and scores its test reconstruction NLL
    instead of the importance-sampled log-likelihood (``num_samples`` per point).
    ``binarize`` (``dynamic``/``static``/``none``; default: the likelihood's own choice) and
    ``data_dir`` are recorded so that later commands load the same data. Every check runs
    before a file is written; the run directory is locked while it trains.

    ``device`` trains and scores there; ``stream`` reads the training split from disk as it
    goes (:mod:`pyro_vae.data.streaming`, ``num_workers`` reader processes). Under
    ``torchrun`` every process trains (DDP) and scores its share; rank 0 alone writes.
    """
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {list(MODEL_KINDS)}")
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; choose one of {list(FIGURE_FORMATS)}")
    check_size(num_samples, "--num-samples (importance samples per point)")
    data_options = {"data_dir": str(data_dir) if data_dir is not None else None}
    data_options["binarize"] = binarize
    data_options["stream"] = stream or None
    data = data if data is not None else load_run_data({"dataset": dataset, **data_options})
    if model_config is None:
        model_config = ModelConfig(event_shape=data.event_shape, **model_options)
    check_binarize(model_config, binarize)
    check_run_data(data)
    # Seed before building: the initial weights are part of what the seed fixes.
    pyro.set_rng_seed(train_config.seed)
    model = build_model(model_config, kind)
    check_fit(model, data, train_config.batch_size)
    run = RunDir(run_dir)
    group = current_group()
    run.check_creatable(overwrite)  # on every rank, so all refuse together,
    group.barrier()  # and all of them before rank 0 creates it
    config = {
        "dataset": dataset,
        "kind": kind,
        "model": model_config.to_dict(),
        "train": asdict(train_config),
        "num_samples": num_samples,
        "figure_format": fmt,
        **{k: v for k, v in data_options.items() if v is not None},
        "data_fingerprint": data_fingerprint(data),
    }
    with run.lock() if group.is_main else contextlib.nullcontext():
        if group.is_main:
            run.create(overwrite)
            run.write_json(RunDir.CONFIG, config)
        group.barrier()  # the other ranks start once the directory exists
        result = fit(
            model, data, train_config, run, model_config, progress=progress,
            device=device, num_workers=num_workers,
        )  # fmt: skip
        return finish_run(model, data, result, run, train_config.seed, num_samples, fmt)


def resume_run(
    run_dir: str | Path | RunDir,
    epochs: int | None = None,
    progress: bool = True,
    data: DataSplits | None = None,
    device: str = "auto",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Continue a run directory from its last completed epoch, then score it like train_run.

    Everything comes from ``config.json`` and the checkpoint: model, optimizer and
    random-number state are restored, so a run killed at any moment and resumed ends with
    the same metrics as an uninterrupted run (CPU). ``epochs`` may extend the run; it is
    recorded in ``config.json`` only after the resume's checks pass. A run killed before its
    first checkpoint starts over. Works for both model kinds.
    """
    run = RunDir(run_dir)
    config, model_config = read_run_config(run)
    group = current_group()
    with run.lock() if group.is_main else contextlib.nullcontext():
        try:
            train_config = TrainConfig(**config["train"])
            if epochs is not None:
                train_config = TrainConfig(**{**asdict(train_config), "epochs": epochs})
        except (TypeError, KeyError) as exc:
            raise CheckpointError(
                f"{run.quoted(RunDir.CONFIG)} has missing or unknown training settings ({exc}); "
                "restore the run's original config.json"
            ) from exc
        data = data if data is not None else load_run_data(config)
        check_fingerprint(data, config.get("data_fingerprint"), str(run))
        check_run_data(data)
        pyro.set_rng_seed(train_config.seed)
        model = build_model(model_config, config.get("kind", "vae"))
        result = fit(
            model, data, train_config, run, model_config, progress,
            resume=run.has_checkpoint(), device=device, num_workers=num_workers,
        )  # fmt: skip
        num_samples = int(config.get("num_samples", 1000))
        fmt = config.get("figure_format", "png")
        return finish_run(model, data, result, run, train_config.seed, num_samples, fmt)


def read_run_config(run: str | Path | RunDir) -> tuple[dict[str, Any], ModelConfig]:
    """``config.json`` of a run directory and the model configuration it names."""
    run = RunDir(run)
    if not run.path.is_dir():
        raise CheckpointError(f"run directory {run.quoted()} does not exist; check the path")
    config = run.read_json(RunDir.CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{run.quoted(RunDir.CONFIG)} has no model table; restore it")
    if config.get("kind", "vae") not in MODEL_KINDS:
        raise CheckpointError(
            f"{run.quoted(RunDir.CONFIG)} names kind {config.get('kind')!r}, not one of "
            f"{list(MODEL_KINDS)}; restore it"
        )
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{run.quoted(RunDir.CONFIG)} is not a valid run configuration ({exc}); restore it"
        ) from exc
    return config, model_config


def load_run(
    run_dir: str | Path | RunDir, device: str | torch.device = "cpu"
) -> tuple[VAE | Autoencoder, dict[str, Any]]:
    """Rebuild the model of a run directory from its configuration and checkpoint.

    ``config.json``'s kind and model configuration must equal those the checkpoint recorded
    (an edited config.json would otherwise score a different model with these weights);
    weights must have the model's dtypes and be finite. Returns the model (a :class:`VAE`,
    or an :class:`Autoencoder` for ``"kind": "ae"``) in eval mode and the run's config.
    """
    run = RunDir(run_dir)
    config, model_config = read_run_config(run)
    kind = config.get("kind", "vae")
    state = run.load_checkpoint()
    saved = state.get("model_config")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"the checkpoint in {run.quoted()} records no model configuration, so config.json "
            "cannot be checked against it; retrain the run"
        )
    try:
        saved = ModelConfig.from_dict(saved).to_dict()
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"the checkpoint in {run.quoted()} has an invalid model config ({exc})"
        ) from exc
    differing = config_differences(saved, model_config.to_dict())
    if state.get("kind", kind) != kind:
        differing = ["kind", *differing]
    if differing:
        raise CheckpointError(
            f"{run.quoted(RunDir.CONFIG)} differs from the checkpoint's model in {differing}; "
            "restore the run's original config.json"
        )
    model = build_model(model_config, kind)
    restore_model(model, state.get("model_state"), str(run))
    model.to(resolve_device(device)).eval()
    return model, config


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
    """The data of a run (``dataset``, ``data_dir``, ``binarize`` from its config.json).

    When the config records a ``data_fingerprint``, data that differ (another file of the
    same shape, a changed split) are refused with :class:`~pyro_vae.errors.DataError`.
    """
    if config.get("stream"):
        data = load_streaming(config["dataset"])
    else:
        data = load_dataset(config["dataset"], data_dir=config.get("data_dir"))
    binarize = config.get("binarize")
    data = binarize_splits(data, binarize) if binarize else data
    data.name = printable(data.name)  # a file name shown in titles and messages
    check_fingerprint(data, config.get("data_fingerprint"), f"the run of {config['dataset']!r}")
    return data
