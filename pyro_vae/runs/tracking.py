"""Experiment tracking: a run logged to TensorBoard or MLflow as it trains.

A tracker is an entry of ``TRACKERS``
([`register_tracker`][pyro_vae.runs.tracking.register_tracker]): its name (what ``--track`` and
``TrainConfig.track`` take), the extra that installs its library, the modules that must import, and
``open(context) -> Tracker``. [`Tracking`][pyro_vae.runs.tracking.Tracking] drives the trackers a
run names, the same way for every one of them:

- when a tracker first sees the run: the run's ``config.json`` as hyperparameters;
- after each epoch's checkpoint: every number of that epoch's ``metrics.jsonl`` record under
  the same name, at step ``epoch`` (``epoch`` itself is the step); every
  ``TrainConfig.track_samples_every`` epochs a grid of prior samples to the trackers that take
  images (``Tracker.takes_samples``);
- at the end: every number of ``results.json`` (the test ELBO and log-likelihood with their
  standard errors among them) at the last epoch's step, the run's figures, the checkpoint.

``tracking.json`` in the run directory records, per tracker, what it needs to continue (the
MLflow run id) and the last epoch it logged: a resumed run continues the same TensorBoard and
MLflow run, and an epoch checkpointed but not yet logged when a run stopped is logged on
resume. Only rank 0 of a ``torchrun`` job opens trackers. Drawing the samples grid saves and
restores every random-number generator, so a tracked run trains exactly as an untracked one.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.analysis.latent_space import sample_images
from pyro_vae.analysis.plots import as_images, tile
from pyro_vae.errors import ConfigError, MissingExtraError, PyroVAEError
from pyro_vae.runs.rundir import RunDir, printable
from pyro_vae.train.loop import TrainConfig
from pyro_vae.train.rng import get_rng_state, set_rng_state

#: Samples in the grid logged every ``track_samples_every`` epochs (8 x 8).
SAMPLES_IN_GRID = 64
#: MLflow experiment of the runs.
MLFLOW_EXPERIMENT = "pyro-vae"


@dataclass
class TrackerContext:
    """What a tracker's ``open`` gets: the run, its training settings, and the tracker's own
    record in ``tracking.json`` (empty for a run it has not seen)."""

    run: RunDir
    train: TrainConfig
    state: dict[str, Any] = field(default_factory=dict)


class Tracker:
    """One backend's logger. Every method but
    [`log_metrics`][pyro_vae.runs.tracking.Tracker.log_metrics] may be left as it is."""

    #: Whether [`log_samples`][pyro_vae.runs.tracking.Tracker.log_samples] shows the grid (drawn
    #: only if some tracker takes it).
    takes_samples = False

    def log_config(self, config: dict[str, Any]) -> None:
        """The run's config.json, once, when the tracker first sees the run."""

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """Numbers at a step (an epoch)."""
        raise NotImplementedError

    def log_samples(self, grid: np.ndarray, step: int) -> None:
        """A grid of samples, (H, W, C) in [0, 1]."""

    def log_final(self, config: dict[str, Any], results: dict[str, float], step: int) -> None:
        """The test scores of the trained run (numbers of results.json)."""
        self.log_metrics(results, step)

    def log_files(self, figures: Sequence[Path], checkpoint: Path | None, step: int) -> None:
        """The run's figures and its checkpoint."""

    def state(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps so that a resume continues the same tracked run."""
        return {}

    def flush(self) -> None:
        """Make what was logged durable."""

    def close(self, status: str) -> None:
        """End the session: ``FINISHED`` or ``FAILED``."""


@dataclass(frozen=True)
class TrackerEntry:
    """A tracking backend: its extra, the modules it needs, and how to open it."""

    name: str
    extra: str
    modules: tuple[str, ...]
    open: Callable[[TrackerContext], Tracker]


#: Tracker name -> [`TrackerEntry`][pyro_vae.runs.tracking.TrackerEntry].
TRACKERS: dict[str, TrackerEntry] = {}


def register_tracker(
    name: str, open: Callable[[TrackerContext], Tracker], extra: str, modules: Sequence[str]
) -> TrackerEntry:
    """Register a tracking backend under ``name`` (``--track NAME``)."""
    TRACKERS[name] = TrackerEntry(name, extra, tuple(modules), open)
    return TRACKERS[name]


def check_trackers(names: Sequence[str]) -> None:
    """Refuse an unknown tracker, or one whose extra is not installed, before any file is
    written ([`MissingExtraError`][pyro_vae.errors.MissingExtraError] names the extra)."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(
                f"unknown tracker {name!r}; choose from {sorted(TRACKERS)} (--track NAME)"
            )
        entry = TRACKERS[name]
        for module in entry.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                raise MissingExtraError(
                    f"--track {name} needs the {entry.extra!r} extra (module {module!r} is "
                    f"missing); install it with pip install 'pyro-vae[{entry.extra}]'"
                ) from None


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The entries of a record that are numbers (not flags, tables or text)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys (``train.lr``); lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class Tracking:
    """The trackers of one run (none: every method does nothing), used as a context manager:
    leaving it closes them, ``FAILED`` on an exception."""

    def __init__(
        self,
        trackers: dict[str, Tracker] | None = None,
        run: RunDir | None = None,
        train: TrainConfig | None = None,
        state: dict[str, Any] | None = None,
    ):
        self.trackers = trackers or {}
        self.run, self.train = run, train
        self.state = state or {}

    @classmethod
    def open(cls, run: RunDir, train: TrainConfig, config: dict[str, Any]) -> Tracking:
        """Open the trackers ``train.track`` names for ``run`` (whose ``config.json`` is
        ``config``), continuing those ``tracking.json`` records."""
        if not train.track:
            return cls()
        check_trackers(train.track)
        run = RunDir(run)
        saved = run.read_json(RunDir.TRACKING) if run.file(RunDir.TRACKING).is_file() else {}
        if not isinstance(saved, dict):
            raise ConfigError(f"{run.quoted(RunDir.TRACKING)} is not a table; delete it")
        tracking = cls({}, run, train, {})
        try:
            for name in train.track:
                mine = saved.get(name) if isinstance(saved.get(name), dict) else {}
                tracker = TRACKERS[name].open(TrackerContext(run, train, dict(mine)))
                tracking.trackers[name] = tracker
                if not mine:
                    tracker.log_config(config)
                tracking.state[name] = {**mine, **tracker.state()}
            tracking.save()
        except BaseException:
            tracking.close("FAILED")
            raise
        return tracking

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")

    def save(self) -> None:
        if self.run is not None and self.trackers:
            self.run.write_json(RunDir.TRACKING, self.state)

    def epoch_end(self, model: torch.nn.Module, history: list[dict[str, Any]]) -> None:
        """Log the records of ``history`` each tracker has not logged yet, and the samples grid
        of every ``track_samples_every``-th epoch."""
        if not self.trackers or not history:
            return
        self._catch_up(history)
        epoch = history[-1]["epoch"]
        every = self.train.track_samples_every
        takers = [t for t in self.trackers.values() if t.takes_samples]
        if takers and every and epoch % every == 0:
            grid = samples_grid(model, self.train.seed)
            if grid is not None:
                for tracker in takers:
                    tracker.log_samples(grid, epoch)
        for tracker in self.trackers.values():
            tracker.flush()

    def _catch_up(self, history: list[dict[str, Any]]) -> None:
        for name, tracker in self.trackers.items():
            last = self.state[name].get("epoch", 0)
            for record in history:
                if record["epoch"] > last:
                    values = numbers({k: v for k, v in record.items() if k != "epoch"})
                    tracker.log_metrics(values, record["epoch"])
            self.state[name]["epoch"] = max(last, history[-1]["epoch"])
        self.save()

    def finish(
        self, results: dict[str, Any], history: list[dict[str, Any]], figures: Sequence[Path]
    ) -> None:
        """The test scores, figures and checkpoint of the trained run."""
        if not self.trackers:
            return
        self._catch_up(history)
        config = self.run.read_json(RunDir.CONFIG)
        step = int(results.get("epochs", history[-1]["epoch"] if history else 0))
        checkpoint = self.run.file(RunDir.CHECKPOINT)
        for tracker in self.trackers.values():
            tracker.log_final(config, numbers(results), step)
            tracker.log_files(figures, checkpoint if checkpoint.is_file() else None, step)
            tracker.flush()

    def close(self, status: str = "FINISHED") -> None:
        trackers, self.trackers = self.trackers, {}
        for tracker in trackers.values():
            tracker.close(status)


@torch.no_grad()
def samples_grid(model: torch.nn.Module, seed: int) -> np.ndarray | None:
    """An 8 x 8 grid of E[x | z], z from the prior, drawn from ``seed`` (the same z each time,
    so the grids show the decoder learning): (H, W, C) in [0, 1]; ``None`` for a model
    without a prior or data that are not images. The model's mode and every random-number
    generator are restored."""
    if not callable(getattr(model, "sample", None)):
        return None
    rng, training = get_rng_state(), model.training
    try:
        model.eval()
        images = as_images(sample_images(model, SAMPLES_IN_GRID, "prior", seed=seed))
    except PyroVAEError:
        return None
    finally:
        model.train(training)
        set_rng_state(rng)
    if images is None:
        return None
    return np.clip(tile(images, 8), 0.0, 1.0)


# --- TensorBoard -----------------------------------------------------------------------------


class TensorBoardTracker(Tracker):
    """Event files in the run's ``tensorboard/`` folder (``tensorboard --logdir RUN_DIR``).

    Scalars are written as float64 tensors, so they read back equal to metrics.jsonl. A resume
    opens the folder again with ``purge_step`` just past the last logged epoch, so TensorBoard
    drops the images a stopped run wrote beyond it (its reader keeps such a tensor scalar: a
    point logged again on resume appears twice, with the same value).
    """

    takes_samples = True

    def __init__(self, context: TrackerContext):
        from torch.utils.tensorboard import SummaryWriter

        last = context.state.get("epoch")
        self.writer = SummaryWriter(
            log_dir=str(context.run.file(RunDir.TENSORBOARD)),
            purge_step=last + 1 if last is not None else None,
        )

    def log_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step, new_style=True, double_precision=True)

    def log_samples(self, grid: np.ndarray, step: int) -> None:
        self.writer.add_image("samples", grid, step, dataformats="HWC")

    def log_final(self, config: dict[str, Any], results: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.log_metrics(results, step)
        # the hyperparameters dashboard: config as hyperparameters, the test scores as metrics
        for summary in hparams(flat_config(config), results):
            self.writer.file_writer.add_summary(summary, step)

    def log_files(self, figures: Sequence[Path], checkpoint: Path | None, step: int) -> None:
        from matplotlib.image import imread

        for path in figures:
            if Path(path).suffix == ".png":
                image = imread(path)[..., :3]
                self.writer.add_image(f"figures/{Path(path).stem}", image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


register_tracker("tensorboard", TensorBoardTracker, extra="tensorboard", modules=["tensorboard"])


# --- MLflow ----------------------------------------------------------------------------------


def default_mlflow_uri(run: RunDir) -> str:
    """The SQLite store ``mlruns/mlflow.db`` beside the run directory."""
    return "sqlite:///" + str((run.path.parent / "mlruns" / "mlflow.db").resolve())


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its files: beside a SQLite store's database (``artifacts/``
    in its folder); a tracking server's own default otherwise."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "artifacts")
    return None


class MLflowTracker(Tracker):
    """One MLflow run per run directory, in experiment ``pyro-vae`` of the store
    ``TrainConfig.mlflow_uri`` names (default
    [`default_mlflow_uri`][pyro_vae.runs.tracking.default_mlflow_uri]); the run id is kept in
    ``tracking.json``, and a resume logs to the same run."""

    def __init__(self, context: TrackerContext):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = context.train.mlflow_uri or default_mlflow_uri(context.run)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            run_id = context.state.get("run_id")
            if run_id is not None:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
            else:
                experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
                experiment_id = (
                    experiment.experiment_id
                    if experiment is not None
                    else self.client.create_experiment(
                        MLFLOW_EXPERIMENT, artifact_location=artifact_root(uri)
                    )
                )
                run_id = self.client.create_run(
                    experiment_id,
                    run_name=printable(context.run.path.name),
                    tags={"pyro_vae.run_dir": str(context.run.path.resolve())},
                ).info.run_id
        except MlflowException as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"MLflow tracking store {printable(uri)!r} refused the run ({first[:200]}); "
                "check --mlflow-uri"
            ) from exc
        self.uri, self.run_id = uri, run_id

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "uri": self.uri}

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, config, RunDir.CONFIG)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_files(self, figures: Sequence[Path], checkpoint: Path | None, step: int) -> None:
        for path in figures:
            self.client.log_artifact(self.run_id, os.fspath(path), "figures")
        if checkpoint is not None:
            self.client.log_artifact(self.run_id, os.fspath(checkpoint))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


register_tracker("mlflow", MLflowTracker, extra="mlflow", modules=["mlflow"])


__all__ = [
    "TRACKERS",
    "Tracker",
    "TrackerContext",
    "TrackerEntry",
    "Tracking",
    "check_trackers",
    "default_mlflow_uri",
    "flat_config",
    "register_tracker",
    "samples_grid",
]
