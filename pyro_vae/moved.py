"""Old flat module paths (``pyro_vae.evaluation``, ``pyro_vae.priors``, ...) kept for one release.

Importing an old path returns the module at its new home and warns with a
``DeprecationWarning`` that names the new path. No file stands at an old path: a finder on
``sys.meta_path`` answers only for the names in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: Old module path -> new module path. Removed in the release after 0.2.
MOVED = {
    "pyro_vae.priors": "pyro_vae.parts.priors",
    "pyro_vae.likelihoods": "pyro_vae.parts.likelihoods",
    "pyro_vae.posteriors": "pyro_vae.parts.posteriors",
    "pyro_vae.nets": "pyro_vae.parts.nets",
    "pyro_vae.vae": "pyro_vae.models.vae",
    "pyro_vae.autoencoder": "pyro_vae.models.autoencoder",
    "pyro_vae.config": "pyro_vae.models.config",
    "pyro_vae.evaluation": "pyro_vae.infer.importance",
    "pyro_vae.objectives": "pyro_vae.infer.objectives",
    "pyro_vae.ais": "pyro_vae.infer.ais",
    "pyro_vae.gaps": "pyro_vae.infer.gaps",
    "pyro_vae.diagnostics": "pyro_vae.infer.diagnostics",
    "pyro_vae.inference_report": "pyro_vae.infer.report",
    "pyro_vae.image_data": "pyro_vae.data.images",
    "pyro_vae.checkpoint": "pyro_vae.train.checkpoint",
    "pyro_vae.rng": "pyro_vae.train.rng",
    "pyro_vae.latent_space": "pyro_vae.analysis.latent_space",
    "pyro_vae.figures": "pyro_vae.analysis.figures",
    "pyro_vae.plots": "pyro_vae.analysis.plots",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve an old module path to the module at its new path, with a warning."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old path goes in the next "
            "release)",
            DeprecationWarning,
            stacklevel=3,
        )
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module ran at its new path); give it back its own spec."""
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
