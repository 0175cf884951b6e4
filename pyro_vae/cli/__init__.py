"""The ``pyro-vae`` command: parses, calls the library, prints. No numerics here.

One module per command (``train``, ``resume`` for ``train --resume``, ``evaluate``,
``sample``, ``plot``, ``parts``), each building its flags from the configs and registries it
uses; [`program`][pyro_vae.cli.program] assembles them into one parser and runs ``main``.
What the commands share: [`arguments`][pyro_vae.cli.arguments] (argument types, ``--debug``
and ``--plugin``), [`options`][pyro_vae.cli.options] (options read from configs and
registries), [`exits`][pyro_vae.cli.exits] (every failure one line and a status),
[`processes`][pyro_vae.cli.processes] and [`printing`][pyro_vae.cli.printing].
"""

from pyro_vae.cli.arguments import DEVICE_HELP, MAX_SEED
from pyro_vae.cli.exits import OneLineParser
from pyro_vae.cli.processes import join_processes
from pyro_vae.cli.program import build_parser, main
from pyro_vae.cli.resume import RESUME_OPTIONS
from pyro_vae.cli.train_options import (
    DEFAULT_DATASET,
    DEFAULT_OUTPUT_DIR,
    NOT_IN_CONFIG_FILES,
)

__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_OUTPUT_DIR",
    "DEVICE_HELP",
    "MAX_SEED",
    "NOT_IN_CONFIG_FILES",
    "RESUME_OPTIONS",
    "OneLineParser",
    "build_parser",
    "join_processes",
    "main",
]
