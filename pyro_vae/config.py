"""Model configuration: the small, JSON-serializable record that names a VAE's parts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .likelihoods import LIKELIHOODS
from .nets import MLPDecoder, MLPEncoder
from .posteriors import POSTERIORS
from .priors import PRIORS
from .vae import VAE


@dataclass
class ModelConfig:
    """What to build. ``event_shape`` is the shape of one data point."""

    event_shape: tuple[int, ...]
    latent_dim: int = 2
    hidden: tuple[int, ...] = (256, 128)
    prior: str = "normal"
    likelihood: str = "bernoulli"
    likelihood_scale: float = 0.1
    posterior: str = "diagonal"
    arch: str = "mlp"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.event_shape = tuple(int(s) for s in self.event_shape)
        self.hidden = tuple(int(h) for h in self.hidden)
        self.validate()

    def validate(self) -> None:
        if int(self.latent_dim) < 1:
            raise ConfigError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive integers, got {list(self.hidden)}")
        for kind, name, table in (
            ("prior", self.prior, PRIORS),
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("posterior", self.posterior, POSTERIORS),
        ):
            if name not in table:
                raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
        if self.arch != "mlp":
            raise ConfigError(f"unknown arch {self.arch!r}; choose one of ['mlp']")
        if not self.event_shape or math.prod(self.event_shape) < 1:
            raise ConfigError(f"event_shape must be non-empty, got {self.event_shape}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["event_shape"] = list(self.event_shape)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**d)


def build_likelihood(config: ModelConfig):
    cls = LIKELIHOODS[config.likelihood]
    if config.likelihood == "normal":
        return cls(scale=config.likelihood_scale)
    return cls()


def build_vae(config: ModelConfig) -> VAE:
    """Build a :class:`VAE` from a :class:`ModelConfig`; heads are sized from the parts."""
    prior = PRIORS[config.prior](config.latent_dim)
    posterior = POSTERIORS[config.posterior](config.latent_dim)
    likelihood = build_likelihood(config)
    n_out = likelihood.num_params * math.prod(config.event_shape)
    encoder = MLPEncoder(config.event_shape, posterior.num_params, config.hidden)
    decoder = MLPDecoder(config.latent_dim, n_out, tuple(reversed(config.hidden)))
    return VAE(encoder, decoder, prior, likelihood, posterior, config.event_shape)
