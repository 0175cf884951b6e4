"""Run directories: train, resume and load a configured model with all its files.
"""

from pyro_vae.runs.pipeline import (
    FIGURE_FORMATS,
    MODEL_KINDS,
    check_binarize,
    finish_run,
    load_run,
    load_run_data,
    prepare_run_dir,
    read_run_config,
    resume_run,
    score,
    summary,
    train_run,
    write_figures,
)

__all__ = [
    "prepare_run_dir",
    "write_figures",
    "FIGURE_FORMATS",
    "score",
    "summary",
    "finish_run",
    "resume_run",
    "read_run_config",
    "train_run",
    "load_run",
    "MODEL_KINDS",
    "check_binarize",
    "load_run_data",
]
