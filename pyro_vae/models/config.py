"""Model configuration: the small, JSON-serializable record that names a VAE's parts.

Each part (prior, likelihood, posterior, arch) is named by its registry name with a table of
its options ([`pyro_vae.parts.registry`][]); the builders pass the shared sizes
(``latent_dim``, ``event_shape``, ``hidden``) themselves. Every value is type-checked when the
config is made, so a wrong value is refused before anything is built or written.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.kinds import MODELS, build_kind
from pyro_vae.models.vae import VAE
from pyro_vae.parts.options import PositiveInt, Sizes, coerce
from pyro_vae.parts.registry import ARCHS, LIKELIHOODS, POSTERIORS, PRIORS, REGISTRIES

#: The kinds of part a model config names, each with an ``<kind>_options`` table.
PART_KINDS = tuple(REGISTRIES)

#: Flat keys of configs written before parts had option tables:
#: key -> (kind, the part names it applied to, the option's name now).
LEGACY_OPTIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "n_components": ("prior", ("mixture",), "n_components"),
    "num_pseudo_inputs": ("prior", ("vamp",), "num_pseudo_inputs"),
    "flow_layers": ("prior", ("flow",), "flow_layers"),
    "rank": ("posterior", ("low_rank",), "rank"),
    "iaf_steps": ("posterior", ("iaf",), "steps"),
    "iaf_context": ("posterior", ("iaf",), "context_dim"),
    "iaf_hidden": ("posterior", ("iaf",), "hidden"),
    "channels": ("arch", ("conv",), "channels"),
    "likelihood_scale": ("likelihood", ("normal", "learned_normal"), "scale"),
}


@dataclass
class ModelConfig:
    """What to build: the model kind, the data shape, the latent size, the networks' widths
    and four parts.

    ``kind`` names a model kind (``MODELS``: ``vae``, ``ae``,
    ``cvae``, ``hvae``, ``m2`` or a plugin's) and ``kind_options`` its own options.
    ``event_shape`` is the shape of one data point; ``hidden`` the encoder's hidden widths
    (the decoder mirrors them). ``prior``, ``likelihood``, ``posterior`` and ``arch`` are
    registry names; ``<kind>_options`` their constructor options (defaults filled in).
    """

    event_shape: tuple[int, ...]
    latent_dim: int = 2
    hidden: tuple[int, ...] = (256, 128)
    prior: str = "normal"
    likelihood: str = "bernoulli"
    posterior: str = "diagonal"
    arch: str = "mlp"
    prior_options: dict[str, Any] = field(default_factory=dict)
    likelihood_options: dict[str, Any] = field(default_factory=dict)
    posterior_options: dict[str, Any] = field(default_factory=dict)
    arch_options: dict[str, Any] = field(default_factory=dict)
    kind: str = "vae"
    kind_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Type-check and normalize every value; raise
        [`ConfigError`][pyro_vae.errors.ConfigError] naming the key."""
        self.event_shape = coerce(self.event_shape, Sizes, "event_shape")
        self.latent_dim = coerce(self.latent_dim, PositiveInt, "latent_dim")
        self.hidden = coerce(self.hidden, Sizes, "hidden")
        shared = self.shared_sizes()
        for kind, registry in REGISTRIES.items():
            name = registry.canonical(getattr(self, kind))
            setattr(self, kind, name)
            options = registry.check_options(name, getattr(self, f"{kind}_options"), **shared)
            setattr(self, f"{kind}_options", options)
        self.kind = MODELS.canonical(self.kind)
        self.kind_options = MODELS.check_options(self.kind, self.kind_options)

    def shared_sizes(self) -> dict[str, Any]:
        """The sizes builders pass to every part (each takes those it names)."""
        return {
            "latent_dim": self.latent_dim,
            "event_shape": self.event_shape,
            "hidden": self.hidden,
        }

    def plugins(self) -> dict[str, str]:
        """kind -> module, for the parts registered outside pyro_vae."""
        out = {}
        for kind, registry in REGISTRIES.items():
            entry = registry.entry(getattr(self, kind))
            if entry.is_plugin:
                out[kind] = entry.module
        if MODELS.entry(self.kind).is_plugin:
            out["kind"] = MODELS.entry(self.kind).module
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; parts registered outside pyro_vae are listed under ``plugins``."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        plugins = self.plugins()
        if plugins:
            d["plugins"] = plugins
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], default_kind: str = "vae") -> ModelConfig:
        """The config a [`to_dict`][pyro_vae.models.config.ModelConfig.to_dict] (or an older flat
        ``config.json``) describes.

        A table written before model kinds had a key of their own takes ``default_kind``
        (such runs recorded it beside the table: ``"kind": "ae"``).

        Imports nothing: a part named there must already be registered; if not, the error
        names the module recorded for it (import it only if you trust it). Flat option keys
        of older configs (``n_components``, ``iaf_steps``, ``likelihood_scale``, ...) move to
        their part's options; ``extra`` (never read) is dropped.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"a model config must be a table of keys, got {type(d).__name__}")
        d = dict(d)
        d.setdefault("kind", default_kind)
        d.pop("extra", None)
        plugins = d.pop("plugins", None) or {}
        if not isinstance(plugins, Mapping):
            raise ConfigError(f"model config 'plugins' must be a table, got {plugins!r}")
        d = normalize_part_keys(d, strict=False)
        for kind, registry in {**REGISTRIES, "kind": MODELS}.items():
            if kind in d:
                d[kind] = registry.canonical(d[kind], plugin=plugins.get(kind))
                module = registry.entry(d[kind]).module
                if kind in plugins and plugins[kind] != module:
                    # Same name, other code: the weights would load into a different model.
                    raise ConfigError(
                        f"{kind} {d[kind]!r} was saved from module {plugins[kind]!r} but is "
                        f"registered here by {module!r}; import {plugins[kind]} instead "
                        f"(--plugin {plugins[kind]})"
                    )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key {unknown[0]!r}; known keys are {sorted(known)}"
            )
        if "event_shape" not in d:
            raise ConfigError("model config lacks 'event_shape'; restore the run's config.json")
        return cls(**d)


def normalize_part_keys(values: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """Part tables and legacy flat keys -> ``<kind>`` names and ``<kind>_options`` tables.

    ``{"prior": {"name": "vamp", "num_pseudo_inputs": 500}}`` (a TOML ``[prior]`` table)
    becomes ``{"prior": "vamp", "prior_options": {"num_pseudo_inputs": 500}}``. A legacy key
    (``LEGACY_OPTIONS``) moves into its part's options; if the part it applied to is not
    the one named, it is refused when ``strict`` (a user's file) and dropped otherwise (old
    run configs recorded every such key).
    """
    out = dict(values)
    for kind in PART_KINDS:
        table = out.get(kind)
        if isinstance(table, Mapping):
            table = dict(table)
            if "name" not in table:
                raise ConfigError(
                    f"the [{kind}] table needs a name, e.g. name = {next(iter(REGISTRIES[kind]))!r}"
                )
            out[kind] = table.pop("name")
            options = out.get(f"{kind}_options") or {}
            if not isinstance(options, Mapping):
                raise ConfigError(f"{kind}_options must be a table, got {options!r}")
            out[f"{kind}_options"] = {**options, **table}
    for key, (kind, applies_to, option) in LEGACY_OPTIONS.items():
        if key not in out:
            continue
        value = out.pop(key)
        name = out.get(kind, _default(kind))
        name = REGISTRIES[kind].canonical(name) if name in REGISTRIES[kind] else name
        if name in applies_to:
            options = dict(out.get(f"{kind}_options") or {})
            options.setdefault(option, value)
            out[f"{kind}_options"] = options
        elif strict:
            raise ConfigError(
                f"{key} is an option of {kind} {' or '.join(map(repr, applies_to))}, not "
                f"{name!r}; remove it or set {kind} = {applies_to[0]!r}"
            )
    return out


def _default(kind: str) -> str:
    return {f.name: f.default for f in dataclasses.fields(ModelConfig)}[kind]


def build_prior(config: ModelConfig):
    """The prior named by ``config.prior`` with its options."""
    return PRIORS.build(config.prior, config.prior_options, **config.shared_sizes())


def build_posterior(config: ModelConfig):
    """The posterior family named by ``config.posterior`` with its options."""
    return POSTERIORS.build(config.posterior, config.posterior_options, **config.shared_sizes())


def build_likelihood(config: ModelConfig):
    """The likelihood named by ``config.likelihood`` with its options."""
    return LIKELIHOODS.build(config.likelihood, config.likelihood_options, **config.shared_sizes())


def build_nets(config: ModelConfig):
    """The [`Nets`][pyro_vae.parts.nets.Nets] (encoder/decoder maker) named by ``config.arch``."""
    return ARCHS.build(config.arch, config.arch_options, **config.shared_sizes())


def check_model_config(config: Any) -> ModelConfig:
    """Refuse anything but a [`ModelConfig`][pyro_vae.models.config.ModelConfig] (a dict of
    options, say) with one line."""
    if not isinstance(config, ModelConfig):
        raise ConfigError(
            f"a model is built from a pyro_vae.ModelConfig, got {type(config).__name__}; pass "
            "ModelConfig(event_shape=..., **options) (ModelConfig.from_dict reads a dict)"
        )
    return config


def build_model(config: ModelConfig) -> nn.Module:
    """The module of ``config.kind`` ([`pyro_vae.models.kinds`][]) built from ``config``.

    The module carries its kind's name and options (``kind``, ``kind_options``), so the fit
    loop, the estimators' callers and the figures find its kind without a config.
    """
    check_model_config(config)
    kind = build_kind(config.kind, config.kind_options)
    model = kind.build(config)
    model.kind = config.kind
    model.kind_options = dict(config.kind_options)
    return model


def build_vae(config: ModelConfig) -> VAE:
    """Build a [`VAE`][pyro_vae.models.vae.VAE] from a
    [`ModelConfig`][pyro_vae.models.config.ModelConfig]; heads are sized from the parts.

    The encoder outputs the posterior family's ``num_params``; the decoder outputs the
    likelihood's ``num_params`` per data element.
    """
    check_model_config(config)
    prior = build_prior(config)
    posterior = build_posterior(config)
    likelihood = build_likelihood(config)
    nets = build_nets(config)
    encoder = nets.encoder(posterior.num_params)
    decoder = nets.decoder(likelihood.num_params)
    return VAE(encoder, decoder, prior, likelihood, posterior, config.event_shape)


#: Deepest nesting of tables and lists a config file may have (a part's table of options
#: holding a list is three).
MAX_CONFIG_DEPTH = 8


def nesting_depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON config file into a dict of option names.

    Dashes in keys become underscores; part tables (``[prior] name = "vamp" ...``) are kept as
    nested dicts (see [`normalize_part_keys`][pyro_vae.models.config.normalize_part_keys]). TOML
    needs Python >= 3.11 (``tomllib``); on 3.10 use JSON.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot read config file {path}: {reason}; check the path") from exc
    if path.suffix.lower() == ".toml" and sys.version_info < (3, 11):
        # raised outside the parse below, which reports a ValueError (ConfigError is one) as
        # invalid syntax
        raise ConfigError(f"TOML config {path} needs Python >= 3.11; write it as JSON instead")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except (ValueError, TypeError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"config file {path} is not valid: {first}; fix its syntax") from exc
    except RecursionError:
        values = None  # nested deeper than the parser goes: refused below
    depth = nesting_depth(values) if values is not None else MAX_CONFIG_DEPTH + 1
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(
            f"config file {str(path)!r} nests tables or lists more than {MAX_CONFIG_DEPTH} deep; "
            "options are at most a table of tables of lists: flatten it"
        )
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a table of options, got {type(values).__name__}"
        )
    return {str(k).replace("-", "_"): _dashes(v) for k, v in values.items()}


def _dashes(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    return value


__all__ = [
    "ARCHS",
    "LEGACY_OPTIONS",
    "PART_KINDS",
    "ModelConfig",
    "build_likelihood",
    "build_model",
    "build_nets",
    "build_posterior",
    "build_prior",
    "build_vae",
    "load_config_file",
    "normalize_part_keys",
]
