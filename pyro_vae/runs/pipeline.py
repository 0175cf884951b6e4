"""Run directories end to end: train a configured model, write its files, resume it, load it.

The files of a run and their names are [`RunDir`][pyro_vae.runs.rundir.RunDir]'s. The figures
are those the model's kind lists (``ModelKind.figures``, drawn by
``FIGURES``; ``.png``, or ``.pdf`` on request), and the test
metrics those it lists (``ModelKind.metrics``, ``METRICS``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.analysis.plots import FIGURE_SUFFIXES
from pyro_vae.analysis.run_figures import draw
from pyro_vae.data.batches import num_points
from pyro_vae.data.binarize import BINARIZE_MODES, binarize_splits
from pyro_vae.data.catalog import load_dataset
from pyro_vae.data.splits import DataSplits
from pyro_vae.data.streaming import load_streaming
from pyro_vae.errors import CheckpointError, ConfigError, DataError, PyroVAEError
from pyro_vae.models.config import ModelConfig, build_likelihood, build_model
from pyro_vae.models.kinds import MODELS, build_kind, kind_of
from pyro_vae.runs.metrics import ScoreOptions, test_metrics
from pyro_vae.runs.rundir import RunDir, printable
from pyro_vae.runs.tracking import Tracking, check_trackers
from pyro_vae.runtime.devices import resolve_device
from pyro_vae.runtime.distributed import current_group
from pyro_vae.train.checkpoint import restore_model
from pyro_vae.train.fingerprint import (
    check_fingerprint,
    check_same_data_on_every_rank,
    data_fingerprint,
)
from pyro_vae.train.loop import (
    FitResult,
    TrainConfig,
    check_fit,
    check_num_workers,
    config_differences,
    fit,
    streamed_check,
)
from pyro_vae.train.parallel import check_precision

FIGURE_FORMATS = tuple(suffix[1:] for suffix in FIGURE_SUFFIXES)
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


def check_api_types(model_config: Any, train_config: Any) -> None:
    """Refuse a configuration of the wrong type (a dict where a config belongs) with one line."""
    if model_config is not None and not isinstance(model_config, ModelConfig):
        raise ConfigError(
            f"model_config must be a pyro_vae.ModelConfig or None, got "
            f"{type(model_config).__name__}; pass ModelConfig(event_shape=..., **options)"
        )
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(
            f"train_config must be a pyro_vae.train.TrainConfig, got "
            f"{type(train_config).__name__}; pass TrainConfig(**options)"
        )


def check_size(value: int, name: str) -> int:
    """Refuse a count below 1 or above its ``SIZE_LIMITS`` entry, before any allocation."""
    limit = SIZE_LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ConfigError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
    return value


def write_figures(
    model: torch.nn.Module,
    data: DataSplits,
    history: list[dict[str, Any]],
    run: RunDir,
    seed: int = 0,
    fmt: str = "png",
) -> list[Path]:
    """The figures ``model``'s kind lists (``ModelKind.figures``); returns the paths written."""
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; choose one of {list(FIGURE_FORMATS)}")
    run = RunDir(run)
    name = printable(data.name)
    if name != data.name:  # figure titles show the name; matplotlib cannot draw surrogates
        data = copy.copy(data)
        data.name = name
    model.eval()
    written = []
    for figure in kind_of(model).figures:
        try:
            path = draw(figure, model, data, run.figure(figure, fmt), history=history, seed=seed)
        except PyroVAEError as exc:  # an estimator refused the model: say so, keep the run
            reason = (str(exc).strip().splitlines() or [""])[0]
            print(f"warning: figure {figure} not drawn: {reason}", file=sys.stderr)
            continue
        if path is not None:
            written.append(path)
    return written


def test_scores(
    model: torch.nn.Module, data: DataSplits, num_samples: int, seed: int = 0
) -> dict[str, Any]:
    """The test metrics of ``model``'s kind (``ModelKind.metrics``), with ``num_samples``
    importance samples per point where a metric samples, drawn from ``seed`` (so the scores do
    not depend on what was drawn before them)."""
    pyro.set_rng_seed(seed)
    return test_metrics(model, data, ScoreOptions(num_samples=num_samples, seed=seed))


def finish_run(
    model: torch.nn.Module,
    data: DataSplits,
    result: FitResult,
    run: RunDir,
    seed: int,
    num_samples: int,
    fmt: str = "png",
    tracking: Tracking | None = None,
) -> dict[str, Any]:
    """Figures, test score and ``results.json`` of a trained run; returns the results.

    Every process scores its share of the test split; rank 0 alone draws and writes, and
    logs the scores, figures and checkpoint to the run's ``tracking``.
    """
    run = RunDir(run)
    main = current_group().is_main
    figures = []
    if main:
        figures = write_figures(model, data, result.history, run, seed=seed, fmt=fmt)
    kind = kind_of(model)
    final = kind.final_metric
    results = {
        "kind": kind.name,
        "epochs": result.epochs,
        "train_seconds": result.seconds,
        f"final_{final}": result.history[-1][final],
        **test_scores(model, data, num_samples, seed=seed),
    }
    if main:
        run.write_json(RunDir.RESULTS, results)
        if tracking is not None:
            tracking.finish(results, result.history, figures)
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
    kind: str | None = None,
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

    ``kind`` (default: ``model_config.kind``, else ``"vae"``; given, it replaces the config's)
    names the model kind
    ([`pyro_vae.models.kinds`][]): ``"ae"`` trains the deterministic autoencoder baseline,
    ``"cvae"``, ``"hvae"``, ``"m2"`` the conditional, hierarchical and semi-supervised VAEs;
    the kind's metrics are scored on the test split (``num_samples`` importance samples per
    point) and its options derived from the data (the number of classes) are filled in.
    ``binarize`` (``dynamic``/``static``/``none``; default: the likelihood's own choice) and
    ``data_dir`` are recorded so that later commands load the same data. Every check runs
    before a file is written; the run directory is locked while it trains.

    ``device`` trains and scores there; ``stream`` reads the training split from disk as it
    goes ([`pyro_vae.data.streaming`][], ``num_workers`` reader processes). Under
    ``torchrun`` every process trains (DDP) and scores its share; rank 0 alone writes.
    ``train_config.track`` names the experiment trackers the run is logged to
    ([`pyro_vae.runs.tracking`][]); a tracker whose extra is missing is refused first.
    """
    check_api_types(model_config, train_config)
    check_num_workers(num_workers)
    check_precision(train_config.precision, resolve_device(device))
    if kind is not None and model_config is not None:
        kind = MODELS.canonical(kind)
        if model_config.kind != kind:  # the kind given wins; the options were the other's
            model_config = dataclasses.replace(model_config, kind=kind, kind_options={})
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; choose one of {list(FIGURE_FORMATS)}")
    check_size(num_samples, "--num-samples (importance samples per point)")
    check_trackers(train_config.track)
    data_options = {"data_dir": str(data_dir) if data_dir is not None else None}
    data_options["binarize"] = binarize
    data_options["stream"] = stream or None
    data = data if data is not None else load_run_data({"dataset": dataset, **data_options})
    if model_config is None:
        model_config = ModelConfig(
            event_shape=data.event_shape, kind=kind or "vae", **model_options
        )
    model_config = configured_for_data(model_config, data)
    check_binarize(model_config, binarize)
    check_run_data(data)
    # Seed before building: the initial weights are part of what the seed fixes.
    pyro.set_rng_seed(train_config.seed)
    model = build_model(model_config)
    check_fit(model, data, train_config.batch_size)
    run = RunDir(run_dir)
    group = current_group()
    # read once: a streamed split is checked point by point as it is hashed
    fingerprint = data_fingerprint(data, streamed_check(model, data.train))
    check_same_data_on_every_rank(fingerprint, group)
    run.check_creatable(overwrite)  # on every rank, so all refuse together,
    group.barrier()  # and all of them before rank 0 creates it
    config = {
        "dataset": dataset,
        "kind": model_config.kind,
        "model": model_config.to_dict(),
        "train": asdict(train_config),
        "num_samples": num_samples,
        "figure_format": fmt,
        **{k: v for k, v in data_options.items() if v is not None},
        "data_fingerprint": fingerprint,
    }
    with run.lock() if group.is_main else contextlib.nullcontext():
        if group.is_main:
            run.create(overwrite)
            run.write_json(RunDir.CONFIG, config)
        group.barrier()  # the other ranks start once the directory exists
        with open_tracking(run, train_config, config) as tracking:
            result = fit(
                model, data, train_config, run, model_config, progress=progress,
                device=device, num_workers=num_workers, epoch_hook=tracking.epoch_end,
            )  # fmt: skip
            return finish_run(
                model, data, result, run, train_config.seed, num_samples, fmt, tracking
            )


def open_tracking(run: RunDir, train_config: TrainConfig, config: dict[str, Any]) -> Tracking:
    """The run's experiment trackers (``train_config.track``) on rank 0; none elsewhere."""
    if not current_group().is_main:
        return Tracking()
    return Tracking.open(run, train_config, config)


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
    the same metrics as an uninterrupted run (CPU), logged to the same tracked runs
    ([`pyro_vae.runs.tracking`][]). ``epochs`` may extend the run; it is
    recorded in ``config.json`` only after the resume's checks pass. A run killed before its
    first checkpoint starts over. Works for every model kind.
    """
    check_num_workers(num_workers)
    resolve_device(device)
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
        check_trackers(train_config.track)
        data = data if data is not None else load_run_data(config)
        check_fingerprint(data, config.get("data_fingerprint"), str(run))
        check_run_data(data)
        pyro.set_rng_seed(train_config.seed)
        model = build_model(model_config)
        num_samples = int(config.get("num_samples", 1000))
        fmt = config.get("figure_format", "png")
        with open_tracking(run, train_config, config) as tracking:
            result = fit(
                model, data, train_config, run, model_config, progress,
                resume=run.has_checkpoint(), device=device, num_workers=num_workers,
                epoch_hook=tracking.epoch_end,
            )  # fmt: skip
            return finish_run(
                model, data, result, run, train_config.seed, num_samples, fmt, tracking
            )


def read_run_config(run: str | Path | RunDir) -> tuple[dict[str, Any], ModelConfig]:
    """``config.json`` of a run directory and the model configuration it names."""
    run = RunDir(run)
    if not run.path.is_dir():
        raise CheckpointError(f"run directory {run.quoted()} does not exist; check the path")
    run.check_entries()
    config = run.read_json(RunDir.CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{run.quoted(RunDir.CONFIG)} has no model table; restore it")
    kind = config.get("kind", "vae")
    if not isinstance(kind, str) or kind not in MODELS:
        plugin = (config["model"].get("plugins") or {}).get("kind")
        raise CheckpointError(
            f"{run.quoted(RunDir.CONFIG)} names model kind {kind!r}, not one of "
            f"{sorted(MODELS)}"
            + (f"; it comes from module {plugin!r}: pass --plugin {plugin} if you trust it"
               if isinstance(plugin, str) else "; restore it")
        )
    try:
        model_config = ModelConfig.from_dict(config["model"], default_kind=kind)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{run.quoted(RunDir.CONFIG)} is not a valid run configuration ({exc}); restore it"
        ) from exc
    if model_config.kind != MODELS.canonical(kind):
        raise CheckpointError(
            f"{run.quoted(RunDir.CONFIG)} names kind {kind!r} but its model table "
            f"{model_config.kind!r}; restore the run's original config.json"
        )
    return config, model_config


def configured_for_data(model_config: ModelConfig, data: DataSplits) -> ModelConfig:
    """``model_config`` with the kind's options that follow from the data filled in (the
    number of classes of a labelled model), after the kind checks the data it needs."""
    kind = build_kind(model_config.kind, model_config.kind_options)
    derived = kind.for_data(data)
    missing = {k: v for k, v in derived.items() if model_config.kind_options.get(k) is None}
    if not missing:
        return model_config
    return dataclasses.replace(
        model_config, kind_options={**model_config.kind_options, **missing}
    )


def load_run(
    run_dir: str | Path | RunDir, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a run directory from its configuration and checkpoint.

    ``config.json``'s kind and model configuration must equal those the checkpoint recorded
    (an edited config.json would otherwise score a different model with these weights);
    weights must have the model's dtypes and be finite. Returns the model (of the run's kind:
    a [`VAE`][pyro_vae.models.vae.VAE] for ``"kind": "vae"``) in eval mode and the run's config.
    """
    run = RunDir(run_dir)
    config, model_config = read_run_config(run)
    kind = model_config.kind
    state = run.load_checkpoint()
    saved = state.get("model_config")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"the checkpoint in {run.quoted()} records no model configuration, so config.json "
            "cannot be checked against it; retrain the run"
        )
    try:
        saved = ModelConfig.from_dict(saved, default_kind=state.get("kind", "vae")).to_dict()
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
    model = build_model(model_config)
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
    same shape, a changed split) are refused with [`DataError`][pyro_vae.errors.DataError].
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
