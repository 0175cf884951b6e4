"""Training objectives: Pyro ELBO estimators, usable with any model/guide pair."""

from __future__ import annotations

import pyro.infer

from .errors import ConfigError

OBJECTIVES = {
    "elbo": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
}


def make_objective(name: str = "elbo", num_particles: int = 1) -> pyro.infer.ELBO:
    """A Pyro ELBO by name: ``elbo`` (Trace_ELBO) or ``meanfield`` (TraceMeanField_ELBO,
    analytic KL where it exists). Particles are vectorized left of the data plate.

    ELBO(x) = E_q[log p(x, z) - log q(z | x)] <= log p(x); Pyro's loss is its negative.
    """
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    if num_particles < 1:
        raise ConfigError(f"num_particles must be at least 1, got {num_particles}")
    return OBJECTIVES[name](
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
    )
