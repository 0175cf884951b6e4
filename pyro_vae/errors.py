"""Exceptions raised by pyro_vae: one base class users can catch.

Every message is one line that names the problem and the fix.
"""

from __future__ import annotations


class PyroVAEError(Exception):
    """Base class of every error pyro_vae raises on purpose."""


class DataError(PyroVAEError, ValueError):
    """The data cannot be used: missing, unreadable, wrong shape, NaN, or outside a support."""


class ConfigError(PyroVAEError, ValueError):
    """A configuration value or combination of parts is invalid."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run directory is missing, corrupted, or does not match the model."""


class TrainingError(PyroVAEError, RuntimeError):
    """Training cannot continue (for example a non-finite loss)."""


class MissingExtraError(ConfigError):
    """An optional feature was asked for whose extra is not installed (``pip install
    'pyro-vae[EXTRA]'``)."""
