"""Training: one fit loop, checkpoints and random-number state.
"""

from pyro_vae.train.autoencoder import (
    fit_autoencoder,
)
from pyro_vae.train.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    restore_model,
    save_checkpoint,
)
from pyro_vae.train.loop import (
    CHECKPOINT,
    CHECKPOINT_KEYS,
    METRICS,
    RESUMABLE_CHANGES,
    FitResult,
    TrainConfig,
    append_metrics,
    check_finite_step,
    check_fit,
    clip_gradients,
    end_epoch,
    fit,
    resume_state,
    train_epoch,
    write_metrics,
)
from pyro_vae.train.rng import (
    get_rng_state,
    set_rng_state,
)

__all__ = [
    "CHECKPOINT",
    "METRICS",
    "CHECKPOINT_KEYS",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "FitResult",
    "check_fit",
    "fit",
    "train_epoch",
    "clip_gradients",
    "check_finite_step",
    "end_epoch",
    "resume_state",
    "write_metrics",
    "append_metrics",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "restore_model",
    "get_rng_state",
    "set_rng_state",
    "fit_autoencoder",
]
