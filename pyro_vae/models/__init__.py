"""Generative models built from parts: the VAE, the autoencoder baseline, configs and builders.
"""

from pyro_vae.models.autoencoder import (
    Autoencoder,
    build_autoencoder,
    mean_reconstruction_nll,
)
from pyro_vae.models.config import (
    ARCHS,
    LEGACY_OPTIONS,
    PART_KINDS,
    ModelConfig,
    build_likelihood,
    build_nets,
    build_posterior,
    build_prior,
    build_vae,
    load_config_file,
    normalize_part_keys,
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
    "PART_KINDS",
    "LEGACY_OPTIONS",
    "build_nets",
    "normalize_part_keys",
    "build_likelihood",
    "build_prior",
    "build_posterior",
    "build_vae",
    "load_config_file",
]
