"""pyro_vae: variational autoencoders as two Pyro programs.

``VAE.model(x)`` defines p(z) p(x | z), ``VAE.guide(x)`` defines q(z | x); SVI optimizes the
ELBO and :func:`pyro_vae.infer.log_likelihood` scores any model/guide pair.
"""

import pyro

# Parameters live in the modules, not Pyro's global param store: plain torch optimizers,
# state_dict checkpoints and several models side by side all just work.
pyro.settings.set(module_local_params=True)

from pyro_vae import moved  # noqa: E402
from pyro_vae.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    TrainingError,
)
from pyro_vae.infer.importance import LogLikelihood, log_likelihood  # noqa: E402
from pyro_vae.models.config import ModelConfig, build_vae  # noqa: E402
from pyro_vae.models.vae import VAE  # noqa: E402

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
__version__ = "0.1.0"

moved.install()
