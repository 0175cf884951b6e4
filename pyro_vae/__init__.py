"""pyro_vae: variational autoencoders as two Pyro programs.

``VAE.model(x)`` defines p(z) p(x | z), ``VAE.guide(x)`` defines q(z | x); SVI optimizes the ELBO
and [`pyro_vae.infer.log_likelihood`][pyro_vae.infer.importance.log_likelihood] scores any
model/guide pair.
"""

# Parameters live in the modules, not Pyro's global param store: plain torch optimizers,
# state_dict checkpoints and several models side by side all just work. The setting
# (module_local_params) is scoped to the library's own modules and calls, never set globally:
# importing the package leaves pyro.settings and pyro.get_param_store() unchanged.
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    TrainingError,
)
from pyro_vae.infer.importance import LogLikelihood, log_likelihood, register_route
from pyro_vae.models.config import ModelConfig, build_vae
from pyro_vae.models.fused import fused_route
from pyro_vae.models.vae import VAE

# infer and models never import each other: the front door joins them, so the library's own
# VAE is scored by its fused log weights wherever pyro_vae is imported
register_route("fused", fused_route)

__all__ = [
    "VAE",
    "ModelConfig",
    "build_vae",
    "log_likelihood",
    "LogLikelihood",
    "PyroVAEError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "TrainingError",
]
#: The package's version: the one source (pyproject.toml reads it; so does the docs site).
__version__ = "0.2.0.dev0"
