"""Run directories: their files ([`RunDir`][pyro_vae.runs.rundir.RunDir]), and training, resuming
and loading a configured model with all its files.
"""

from pyro_vae.runs.metrics import METRICS, ScoreOptions, register_metric, score, summary
from pyro_vae.runs.pipeline import (
    FIGURE_FORMATS,
    MIN_SPLIT_SIZES,
    SIZE_LIMITS,
    check_binarize,
    check_run_data,
    check_size,
    configured_for_data,
    finish_run,
    load_run,
    load_run_data,
    read_run_config,
    resume_run,
    test_scores,
    train_run,
    write_figures,
)
from pyro_vae.runs.rundir import RunDir, check_run_name, printable

__all__ = [
    "RunDir",
    "check_run_name",
    "printable",
    "write_figures",
    "FIGURE_FORMATS",
    "SIZE_LIMITS",
    "check_size",
    "MIN_SPLIT_SIZES",
    "check_run_data",
    "score",
    "METRICS",
    "ScoreOptions",
    "register_metric",
    "configured_for_data",
    "summary",
    "test_scores",
    "finish_run",
    "resume_run",
    "read_run_config",
    "train_run",
    "load_run",
    "check_binarize",
    "load_run_data",
]
