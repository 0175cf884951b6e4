"""Training the autoencoder baseline: the one fit loop with the reconstruction-NLL task."""

from __future__ import annotations

from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import ConfigError
from pyro_vae.models.autoencoder import Autoencoder
from pyro_vae.models.config import ModelConfig
from pyro_vae.train.loop import FitResult, RunStore, TrainConfig, fit


def fit_autoencoder(
    ae: Autoencoder,
    data: DataSplits,
    config: TrainConfig,
    run_dir: RunStore | None = None,
    model_config: ModelConfig | None = None,
    progress: bool = True,
    resume: bool = False,
) -> FitResult:
    """Minimize the mean reconstruction NLL with Adam: [`fit`][pyro_vae.train.loop.fit] on an
    [`Autoencoder`][pyro_vae.models.autoencoder.Autoencoder] (same batches, binarization, fault
    checks, clipping, checkpoints and resume). Each history record has ``train_nll``, ``valid_nll``
    and ``valid_nll_stderr`` in nats per data point.
    """
    if not isinstance(ae, Autoencoder):
        raise ConfigError(
            f"fit_autoencoder trains a pyro_vae Autoencoder, got {type(ae).__name__}; build one "
            "with build_autoencoder (fit trains a VAE)"
        )
    return fit(ae, data, config, run_dir, model_config, progress=progress, resume=resume)
