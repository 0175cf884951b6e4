"""Generative models built from parts: the model kinds, their configs and builders.
"""

from pyro_vae.models.autoencoder import (
    Autoencoder,
    build_autoencoder,
    mean_reconstruction_nll,
)
from pyro_vae.models.conditional import ConditionalKind, ConditionalVAE, build_conditional
from pyro_vae.models.config import (
    ARCHS,
    LEGACY_OPTIONS,
    PART_KINDS,
    ModelConfig,
    build_likelihood,
    build_model,
    build_nets,
    build_posterior,
    build_prior,
    build_vae,
    load_config_file,
    normalize_part_keys,
)
from pyro_vae.models.entries import AutoencoderKind, VAEKind
from pyro_vae.models.fused import fused_route
from pyro_vae.models.hierarchical import (
    HVAE_PRESETS,
    IWAE_TWO_LAYER,
    HierarchicalKind,
    HierarchicalVAE,
    build_hierarchical,
)
from pyro_vae.models.kinds import (
    MODELS,
    ModelKind,
    build_kind,
    check_labels,
    kind_of,
    register_model,
)
from pyro_vae.models.semisupervised import (
    SemiSupervisedKind,
    SemiSupervisedVAE,
    build_semisupervised,
    m2_loss,
)
from pyro_vae.models.vae import (
    VAE,
)

__all__ = [
    "VAE",
    "fused_route",
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
    "build_model",
    "MODELS",
    "ModelKind",
    "VAEKind",
    "AutoencoderKind",
    "build_kind",
    "check_labels",
    "kind_of",
    "register_model",
    "HierarchicalKind",
    "HierarchicalVAE",
    "build_hierarchical",
    "HVAE_PRESETS",
    "IWAE_TWO_LAYER",
    "ConditionalKind",
    "ConditionalVAE",
    "build_conditional",
    "SemiSupervisedKind",
    "SemiSupervisedVAE",
    "build_semisupervised",
    "m2_loss",
    "load_config_file",
]
