"""The options of ``train``: which there are and what each is set to.

Which: TrainConfig's and ModelConfig's fields, each part kind's and model kind's options (from
their registries) and ``train_run``'s keywords. What: defaults < a config file < the flags
given on the command line, with every part and model kind resolved to its name and options.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_vae.cli.options import config_fields, option_words

#: Where ``train`` reads data and writes runs when not told; the rest of the defaults come
#: from TrainConfig, ModelConfig, the part registries and ``train_run``'s signature.
DEFAULT_DATASET = "digits"
DEFAULT_OUTPUT_DIR = Path("runs")

#: Keys a config file may not carry: they delete or reuse a run directory, or name the file.
NOT_IN_CONFIG_FILES = ("overwrite", "resume", "config", "plugin", "debug")


def run_options() -> dict[str, tuple[Any, Any]]:
    """Options of ``train`` beyond the model and training configs: dest -> (hint, default).

    Defaults come from [`train_run`][pyro_vae.runs.pipeline.train_run]'s signature where it
    has one.
    """
    from pyro_vae.runs.pipeline import train_run

    params = inspect.signature(train_run).parameters
    return {
        "dataset": (str, DEFAULT_DATASET),
        "data_dir": (str | None, params["data_dir"].default),
        "binarize": (str | None, params["binarize"].default),
        "num_samples": (int, params["num_samples"].default),
        "output_dir": (str, DEFAULT_OUTPUT_DIR),
        "name": (str | None, None),
        "no_progress": (bool, not params["progress"].default),
        "model": (str, "vae"),
        "format": (str, params["fmt"].default),
        "device": (str, params["device"].default),
        "num_workers": (int, params["num_workers"].default),
        "stream": (bool, params["stream"].default),
    }


def train_config_fields() -> dict[str, tuple[Any, Any]]:
    """TrainConfig's fields: dest -> (annotation, default)."""
    from pyro_vae.train.loop import TrainConfig

    return config_fields(TrainConfig)


def model_config_fields() -> dict[str, tuple[Any, Any]]:
    """ModelConfig's top-level fields a user sets (not event_shape, not the option tables)."""
    from pyro_vae.models.config import PART_KINDS, ModelConfig

    skip = {"event_shape", "kind", "kind_options", *(f"{kind}_options" for kind in PART_KINDS)}
    return config_fields(ModelConfig, skip)


def kind_option_flags() -> dict[str, list[str]]:
    """Each model kind's own options as flags (``--condition-on``): dest -> the kinds that
    have it. An option whose name another flag already has is set with --model-opt only."""
    from pyro_vae.models.config import LEGACY_OPTIONS
    from pyro_vae.models.kinds import MODELS

    taken = {
        *train_config_fields(), *model_config_fields(), *run_options(), *LEGACY_OPTIONS,
        "model_opt", "overwrite", "resume", "config", "plugin", "debug",
    }  # fmt: skip
    flags: dict[str, list[str]] = {}
    for name in MODELS:
        for option in MODELS.entry(name).options:
            if option not in taken:
                flags.setdefault(option, []).append(name)
    return flags


def file_settings(path: Path) -> dict[str, Any]:
    """A config file's values, each type-checked against the option it sets.

    Model keys are checked by [`ModelConfig`][pyro_vae.models.config.ModelConfig]; training
    keys by TrainConfig's field types; the rest by
    [`run_options`][pyro_vae.cli.train_options.run_options]. Keys that delete or reuse runs
    are refused.
    """
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.config import (
        LEGACY_OPTIONS,
        PART_KINDS,
        load_config_file,
        normalize_part_keys,
    )
    from pyro_vae.parts.options import coerce

    values = load_config_file(path)
    for key in NOT_IN_CONFIG_FILES:
        if key in values:
            raise ConfigError(
                f"config file {path} may not set {key!r}; give --{key} on the command line "
                "(plugins go in a 'plugins' list)"
                if key != "overwrite"
                else f"config file {path} may not set 'overwrite'; pass --overwrite on the "
                "command line if you mean to replace the run directory"
            )
    values.pop("plugins", None)  # imported before parsing (see main)
    table = values.get("model")
    if isinstance(table, dict):  # a [model] table: its name and the kind's options
        table = dict(table)
        if "name" not in table:
            raise ConfigError(f"the [model] table in {path} needs a name, e.g. name = 'cvae'")
        values["model"] = table.pop("name")
        values["model_options"] = {**(values.get("model_options") or {}), **table}
    kind_keys = set(kind_option_flags())
    flat = {k: values.pop(k) for k in list(values) if k in kind_keys}
    if flat:
        values["model_options"] = {**(values.get("model_options") or {}), **flat}
    if not isinstance(values.get("model_options", {}), dict):
        raise ConfigError(f"model_options in {path} must be a table of the kind's options")
    typed = {**train_config_fields(), **run_options()}
    model_keys = {
        *model_config_fields(), *LEGACY_OPTIONS, *(f"{k}_options" for k in PART_KINDS),
        "model_options",
    }  # fmt: skip
    for key, value in values.items():
        if key in typed:
            values[key] = coerce(value, typed[key][0], f"{key} in config file {path}")
        elif key not in model_keys:
            raise ConfigError(
                f"unknown key {key!r} in config file {path}; use option names such as "
                "latent_dim, prior, posterior, likelihood, epochs (see pyro-vae train --help)"
            )
    return normalize_part_keys(values, strict=True)


def part_options(kind: str, name: str, words: Sequence[str]) -> dict[str, Any]:
    """``--KIND-opt KEY=VALUE`` words parsed by the option types of part ``name``."""
    from pyro_vae.parts.registry import REGISTRIES

    return option_words(f"--{kind}-opt", f"{kind} {name!r}", REGISTRIES[kind].entry(name), words)


def train_settings(args: argparse.Namespace, given: set[str]) -> dict[str, Any]:
    """Defaults < config file < flags given: every train setting, model parts resolved."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.config import LEGACY_OPTIONS, PART_KINDS
    from pyro_vae.parts.registry import REGISTRIES

    settings = vars(args).copy()
    file = file_settings(args.config) if args.config is not None else {}
    for key, value in file.items():
        if key not in given:
            settings[key] = value
    for kind in PART_KINDS:
        registry = REGISTRIES[kind]
        name = registry.canonical(settings[kind])
        # A file's options belong to the part the file names.
        from_file = kind not in given or registry.canonical(file.get(kind, name)) == name
        options = dict(file.get(f"{kind}_options") or {}) if from_file else {}
        words = list(getattr(args, f"{kind}_opt", None) or [])
        for key, (legacy_kind, applies_to, option) in LEGACY_OPTIONS.items():
            if legacy_kind == kind and key in given:
                if name not in applies_to:
                    raise ConfigError(
                        f"--{key.replace('_', '-')} is an option of {kind} "
                        f"{' or '.join(map(repr, applies_to))}, not {name!r}; drop it"
                    )
                words.append(f"{option}={getattr(args, key)}")
        options.update(part_options(kind, name, words))
        settings[kind], settings[f"{kind}_options"] = name, options
    settings["model"], settings["model_options"] = kind_settings(args, given, settings, file)
    return settings


def kind_settings(
    args: argparse.Namespace, given: set[str], settings: dict[str, Any], file: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The model kind and its options: a config file's, then --model-opt and the kinds'
    own flags (an option of another kind is refused, naming the kinds that have it)."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.kinds import MODELS
    from pyro_vae.parts.options import parse_text

    name = MODELS.canonical(settings["model"])
    from_file = "model" not in given or MODELS.canonical(file.get("model", name)) == name
    options = dict(file.get("model_options") or {}) if from_file else {}
    entry = MODELS.entry(name)
    for option, owners in kind_option_flags().items():
        if option in given:
            if option not in entry.options:
                raise ConfigError(
                    f"--{option.replace('_', '-')} is an option of model "
                    f"{' or '.join(map(repr, owners))}, not {name!r}; add --model {owners[0]} "
                    "or drop it"
                )
            options[option] = parse_text(getattr(args, option), entry.options[option].hint)
    words = getattr(args, "model_opt", None) or []
    options.update(option_words("--model-opt", f"model {name!r}", entry, words))
    return name, options
