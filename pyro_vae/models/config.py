"""Model configuration: the small, JSON-serializable record that names a VAE's parts."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.models.vae import VAE
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyro_vae.parts.posteriors import IAF, POSTERIORS, LowRankNormal
from pyro_vae.parts.priors import PRIORS, FlowPrior, GaussianMixture, VampPrior


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
    # Options of the parts; each is used only by the part named in its comment.
    n_components: int = 10  # prior "mixture"
    num_pseudo_inputs: int = 50  # prior "vamp"
    flow_layers: int = 2  # prior "flow"
    rank: int = 2  # posterior "low_rank"
    iaf_steps: int = 2  # posterior "iaf"
    iaf_context: int = 16  # posterior "iaf": encoder context features
    iaf_hidden: tuple[int, ...] = (64,)  # posterior "iaf": hidden sizes of each step's MADE
    channels: tuple[int, ...] = (32, 64)  # arch "conv": encoder channels (decoder mirrors)

    def __post_init__(self) -> None:
        self.event_shape = tuple(int(s) for s in self.event_shape)
        self.hidden = tuple(int(h) for h in self.hidden)
        self.channels = tuple(int(c) for c in self.channels)
        self.iaf_hidden = tuple(int(h) for h in self.iaf_hidden)
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
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}; choose one of {list(ARCHS)}")
        if not self.event_shape or math.prod(self.event_shape) < 1:
            raise ConfigError(f"event_shape must be non-empty, got {self.event_shape}")
        self._validate_parts()

    def _validate_parts(self) -> None:
        for key in ("n_components", "num_pseudo_inputs", "flow_layers", "rank", "iaf_steps"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.iaf_context < 0:
            raise ConfigError(f"iaf_context must be non-negative, got {self.iaf_context}")
        if not self.iaf_hidden or any(h < 1 for h in self.iaf_hidden):
            raise ConfigError(f"iaf_hidden must be positive integers, got {list(self.iaf_hidden)}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(f"channels must be positive integers, got {list(self.channels)}")
        if self.arch == "conv" and len(self.event_shape) not in (2, 3):
            raise ConfigError(
                f"arch 'conv' needs images shaped (C, H, W) or (H, W), but data points have "
                f"shape {self.event_shape}; use --arch mlp"
            )
        if self.posterior == "iaf" and self.latent_dim < 2:
            raise ConfigError("posterior 'iaf' needs latent_dim >= 2; use --posterior diagonal")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["event_shape"] = list(self.event_shape)
        d["hidden"] = list(self.hidden)
        d["channels"] = list(self.channels)
        d["iaf_hidden"] = list(self.iaf_hidden)
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


ARCHS = ("mlp", "conv")


def build_likelihood(config: ModelConfig):
    cls = LIKELIHOODS[config.likelihood]
    if config.likelihood in ("normal", "normal_learned"):
        return cls(scale=config.likelihood_scale)
    return cls()


def build_prior(config: ModelConfig):
    """The prior named by ``config.prior`` with its options."""
    d = config.latent_dim
    if config.prior == "mixture":
        return GaussianMixture(d, n_components=config.n_components)
    if config.prior == "vamp":
        return VampPrior(d, config.event_shape, num_pseudo_inputs=config.num_pseudo_inputs)
    if config.prior == "flow":
        return FlowPrior(d, flow_layers=config.flow_layers)
    return PRIORS[config.prior](d)


def build_posterior(config: ModelConfig):
    """The posterior family named by ``config.posterior`` with its options."""
    d = config.latent_dim
    if config.posterior == "low_rank":
        return LowRankNormal(d, rank=config.rank)
    if config.posterior == "iaf":
        return IAF(
            d, steps=config.iaf_steps, context_dim=config.iaf_context, hidden=config.iaf_hidden
        )
    return POSTERIORS[config.posterior](d)


def build_vae(config: ModelConfig) -> VAE:
    """Build a :class:`VAE` from a :class:`ModelConfig`; heads are sized from the parts."""
    prior = build_prior(config)
    posterior = build_posterior(config)
    likelihood = build_likelihood(config)
    n_out = likelihood.num_params * math.prod(config.event_shape)
    if config.arch == "conv":
        encoder = ConvEncoder(
            config.event_shape, posterior.num_params, config.channels, config.hidden[0]
        )
        decoder = ConvDecoder(
            config.latent_dim,
            config.event_shape,
            likelihood.num_params,
            tuple(reversed(config.channels)),
            config.hidden[0],
        )
    else:
        encoder = MLPEncoder(config.event_shape, posterior.num_params, config.hidden)
        decoder = MLPDecoder(config.latent_dim, n_out, tuple(reversed(config.hidden)))
    return VAE(encoder, decoder, prior, likelihood, posterior, config.event_shape)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON config file into a flat dict of option names.

    TOML needs Python >= 3.11 (``tomllib``); on 3.10 use JSON.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}; check the path"
        ) from exc
    try:
        if path.suffix.lower() == ".toml":
            if sys.version_info < (3, 11):
                raise ConfigError(
                    f"TOML config {path} needs Python >= 3.11; write it as JSON instead"
                )
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}; fix its syntax") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of options, got {type(values)}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}
