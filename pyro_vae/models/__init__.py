"""Generative models built from parts: the VAE, the autoencoder baseline, configs and builders.
"""

from pyro_vae.models.autoencoder import (
    Autoencoder,
    build_autoencoder,
    mean_reconstruction_nll,
)
from pyro_vae.models.config import (
    ARCHS,
    ModelConfig,
    build_likelihood,
    build_posterior,
    build_prior,
    build_vae,
    load_config_file,
)
from pyro_vae.models.vae import (
    VAE,
)

__all__ = [
    "VAE",
    "Autoencoder",
    "build_autoencoder",
    "mean_reconstruction_nll",
    "ModelConfig",
    "ARCHS",
    "build_likelihood",
    "build_prior",
    "build_posterior",
    "build_vae",
    "load_config_file",
]
