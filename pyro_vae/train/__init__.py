"""Training: one fit loop for every model kind, its tasks, KL schedules, checkpoints and
random-number state.
"""

from pyro_vae.train.autoencoder import fit_autoencoder
from pyro_vae.train.checkpoint import (
    FORMAT_VERSION,
    MAX_INFLATED_BYTES,
    load_checkpoint,
    restore_model,
    save_checkpoint,
)
from pyro_vae.train.fingerprint import check_fingerprint, data_fingerprint
from pyro_vae.train.loop import (
    CHECKPOINT_KEYS,
    MAX_SEED,
    RESUMABLE_CHANGES,
    FitResult,
    RunStore,
    TrainConfig,
    check_finite_step,
    check_fit,
    check_resumable,
    clip_gradients,
    config_differences,
    end_epoch,
    fit,
    resume_state,
    train_epoch,
)
from pyro_vae.train.rng import get_rng_state, set_rng_state
from pyro_vae.train.schedules import KLSchedule
from pyro_vae.train.semisupervised import SemiSupervisedTask, choose_labelled
from pyro_vae.train.tasks import (
    TASKS,
    AutoencoderTask,
    BatchLoss,
    ELBOTask,
    TrainTask,
    make_task,
    register_task,
)

__all__ = [
    "CHECKPOINT_KEYS",
    "MAX_SEED",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "FitResult",
    "RunStore",
    "TrainTask",
    "BatchLoss",
    "ELBOTask",
    "SemiSupervisedTask",
    "choose_labelled",
    "TASKS",
    "register_task",
    "AutoencoderTask",
    "make_task",
    "KLSchedule",
    "check_fit",
    "fit",
    "train_epoch",
    "clip_gradients",
    "check_finite_step",
    "check_resumable",
    "config_differences",
    "end_epoch",
    "resume_state",
    "FORMAT_VERSION",
    "MAX_INFLATED_BYTES",
    "save_checkpoint",
    "load_checkpoint",
    "restore_model",
    "data_fingerprint",
    "check_fingerprint",
    "get_rng_state",
    "set_rng_state",
    "fit_autoencoder",
]
