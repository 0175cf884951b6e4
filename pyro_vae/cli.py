"""The ``pyro-vae`` command: parses, calls the library, prints. No numerics here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import time
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pyro_vae.data.files import printable
from pyro_vae.errors import PyroVAEError


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"hidden sizes must be integers like 256,128, got {text!r}"
        ) from exc
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes


#: Seeds the estimators and figures accept (NumPy's generator takes 32 bits).
MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    """A ``--seed`` value: an integer from 0 to :data:`MAX_SEED`."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"--seed must be an integer from 0 to {MAX_SEED}, got {text!r}"
        )
    return value


class _Extend(argparse.Action):
    """Collect the values of a repeatable flag into one tuple (the field's type)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest, None) or ()), *values))


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        first = (message.strip().splitlines() or [""])[0]
        self.exit(2, f"pyro-vae: error: {first} (see {self.prog} --help)\n")


#: Where ``train`` reads data and writes runs when not told; the rest of the defaults come
#: from TrainConfig, ModelConfig, the part registries and ``train_run``'s signature.
DEFAULT_DATASET = "digits"
DEFAULT_OUTPUT_DIR = Path("runs")

#: Keys a config file may not carry: they delete or reuse a run directory, or name the file.
NOT_IN_CONFIG_FILES = ("overwrite", "resume", "config", "plugin", "debug")

_HELP = {
    "epochs": "passes over the training split",
    "batch_size": "data points per SVI step",
    "lr": "Adam learning rate",
    "lr_schedule": "learning-rate schedule by epoch (iwae: Burda et al.'s 3^i-epoch stages)",
    "adam_eps": "Adam's epsilon",
    "seed": "random seed (same seed, same run)",
    "objective": "training objective",
    "num_particles": "ELBO particles per step",
    "valid_num_samples": "importance samples K of the validation log-likelihood per epoch",
    "clip_grad": "clip the total gradient 2-norm of each step to this value",
    "beta": "KL weight (beta-VAE)",
    "warmup": "KL warm-up",
    "warmup_epochs": "warm-up length (cycle length if cyclical)",
    "free_bits": "KL floor per latent dimension, nats",
    "latent_dim": "dimension of z",
    "hidden": "encoder hidden sizes, e.g. 256,128 (decoder mirrors)",
    "prior": "p(z)",
    "likelihood": "p(x | z)",
    "posterior": "q(z | x)",
    "arch": "encoder/decoder nets",
    "fused": "compute the ELBO straight from the library's own parts (proven equal to "
    "Pyro's); --no-fused keeps Pyro's Trace_ELBO path",
    "precision": "32, or autocast the training steps to bf16/fp16 (scores stay float32)",
    "track": "log the run to these experiment trackers (several allowed; each needs its extra: "
    "pip install 'pyro-vae[tensorboard]')",
    "track_samples_every": "epochs between two grids of prior samples in TensorBoard (0: none)",
    "mlflow_uri": "MLflow tracking URI, e.g. sqlite:///runs/mlflow.db or http://host:5000 "
    "(default: mlruns/mlflow.db beside the run directory)",
}

DEVICE_HELP = "auto (a GPU if there is one), cpu, cuda, cuda:N or mps"


def _choices(hint_name: str) -> Sequence[str] | None:
    from pyro_vae.data.binarize import BINARIZE_MODES
    from pyro_vae.infer.objectives import OBJECTIVES, WARMUPS
    from pyro_vae.parts.registry import REGISTRIES
    from pyro_vae.runs.tracking import TRACKERS
    from pyro_vae.train.parallel import PRECISIONS
    from pyro_vae.train.schedules import LR_SCHEDULES

    if hint_name in REGISTRIES:
        return REGISTRIES[hint_name].names()
    return {
        "objective": sorted(OBJECTIVES),
        "warmup": list(WARMUPS),
        "binarize": list(BINARIZE_MODES),
        "precision": list(PRECISIONS),
        "lr_schedule": sorted(LR_SCHEDULES),
        "track": sorted(TRACKERS),
    }.get(hint_name)


def _plain_type(hint: Any) -> Callable[[str], Any]:
    """The argparse ``type`` for a field annotation: int, float or str (``X | None`` -> X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    while typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    return base if base in (int, float, str) else str


def _run_options() -> dict[str, tuple[Any, Any]]:
    """Options of ``train`` beyond the model and training configs: dest -> (hint, default).

    Defaults come from :func:`~pyro_vae.runs.pipeline.train_run`'s signature where it has one.
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


def _train_config_fields() -> dict[str, tuple[Any, Any]]:
    """TrainConfig's fields: dest -> (annotation, default)."""
    from pyro_vae.train.loop import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: (hints[f.name], _field_default(f)) for f in dataclasses.fields(TrainConfig)}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _model_config_fields() -> dict[str, tuple[Any, Any]]:
    """ModelConfig's top-level fields a user sets (not event_shape, not the option tables)."""
    from pyro_vae.models.config import PART_KINDS, ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    skip = {"event_shape", "kind", "kind_options", *(f"{kind}_options" for kind in PART_KINDS)}
    return {
        f.name: (hints[f.name], _field_default(f))
        for f in dataclasses.fields(ModelConfig)
        if f.name not in skip
    }


def _kind_option_flags() -> dict[str, list[str]]:
    """Each model kind's own options as flags (``--condition-on``): dest -> the kinds that
    have it. An option whose name another flag already has is set with --model-opt only."""
    from pyro_vae.models.config import LEGACY_OPTIONS
    from pyro_vae.models.kinds import MODELS

    taken = {
        *_train_config_fields(), *_model_config_fields(), *_run_options(), *LEGACY_OPTIONS,
        "model_opt", "overwrite", "resume", "config", "plugin", "debug",
    }  # fmt: skip
    flags: dict[str, list[str]] = {}
    for name in MODELS:
        for option in MODELS.entry(name).options:
            if option not in taken:
                flags.setdefault(option, []).append(name)
    return flags


def build_parser(track: bool = False) -> argparse.ArgumentParser:
    """The ``pyro-vae`` parser; choices and defaults come from the library.

    With ``track``, ``train``'s flags get no defaults: parsing then yields only the flags
    written on the command line (how config files and --resume know what was given).
    """
    from pyro_vae.infer.report import METHODS
    from pyro_vae.runs.metrics import score

    parser = OneLineParser(
        prog="pyro-vae",
        description="Variational autoencoders as two Pyro programs: train, evaluate, plot.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if track else False,
        help="show full tracebacks on errors",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE by SVI and write runs/<name>/ with checkpoint, metrics, "
        "figures and the test log-likelihood (importance sampling).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS if track else None,
    )
    _add_train_arguments(train, track)

    ev = sub.add_parser(
        "evaluate",
        help="score a trained run on its test split",
        description="Load RUN_DIR's checkpoint and print the test ELBO and the importance-"
        "sampled log-likelihood, each with its standard error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    scoring = inspect.signature(score).parameters
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument(
        "--num-samples",
        type=int,
        default=scoring["num_samples"].default,
        help="importance samples K",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=scoring["batch_size"].default,
        help="data points per pass",
    )
    ev.add_argument("--seed", type=_seed, default=0, help="random seed of the estimator")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.add_argument(
        "--method",
        choices=list(METHODS),
        default=None,
        help="print a table: ELBO, IWAE-k, IS with PSIS k-hat; 'ais' adds AIS, 'gaps' the "
        "approximation and amortization gaps (on the first --num-points test points)",
    )
    ev.add_argument("--num-points", type=int, default=100, help="test points for AIS and gaps")
    ev.add_argument("--ais-steps", type=int, default=500, help="AIS annealing steps")
    ev.add_argument("--gap-steps", type=int, default=500, help="local optimization steps")
    parts = sub.add_parser(
        "parts",
        help="list the registered parts and their options",
        description="Every prior, likelihood, posterior and arch by name, with its options "
        "(set them with --KIND-opt KEY=VALUE or a [KIND] table in a config file).",
    )
    subcommands = [train, ev, parts, *_add_application_parsers(sub)]
    for command in subcommands:
        # SUPPRESS keeps a top-level --debug from being reset by the subcommand's default.
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        command.add_argument(
            "--plugin",
            action="append",
            metavar="MODULE",
            default=argparse.SUPPRESS if track else [],
            help="import MODULE first (its parts register themselves); only for code you trust",
        )
    return parser


def _figure_kinds() -> list[str]:
    """``plot --kind`` choices: every registered figure, then attribute and compare."""
    from pyro_vae.analysis.run_figures import FIGURES

    return [*FIGURES, "attribute", "compare"]


def _add_application_parsers(sub) -> list[argparse.ArgumentParser]:
    from pyro_vae.runs.pipeline import FIGURE_FORMATS

    sample = sub.add_parser(
        "sample",
        help="draw a grid of samples from a trained run",
        description="Decode z drawn from the prior, or from a Gaussian mixture fitted to the "
        "training data's codes (the aggregate posterior), into a grid of images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sample.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    sample.add_argument("--source", choices=["prior", "aggregate"], default="prior")
    sample.add_argument("--output", type=Path, default=None, help="default RUN_DIR/samples-SOURCE")
    sample.add_argument("--format", choices=FIGURE_FORMATS, default=FIGURE_FORMATS[0])
    sample.add_argument("--seed", type=_seed, default=0)
    sample.add_argument("--device", default="auto", help=DEVICE_HELP)

    plot = sub.add_parser(
        "plot",
        help="draw one figure of a trained run",
        description="elbo: training curves; samples; reconstructions; latent: test codes by "
        "label (PCA beyond 2-D); manifold: decoded prior-quantile grid (2-D latents); "
        "interpolation: linear and spherical; attribute: mean code of --positive minus "
        "--negative added to inputs; compare: this run beside --against RUN (e.g. an AE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    plot.add_argument("--kind", choices=_figure_kinds(), required=True)
    plot.add_argument("--output", type=Path, default=None, help="default RUN_DIR/KIND.FORMAT")
    plot.add_argument("--format", choices=FIGURE_FORMATS, default=FIGURE_FORMATS[0])
    plot.add_argument("--seed", type=_seed, default=0)
    plot.add_argument("--device", default="auto", help=DEVICE_HELP)
    plot.add_argument("--source", choices=["prior", "aggregate"], default="prior")
    plot.add_argument("--steps", type=int, default=10, help="interpolation steps")
    plot.add_argument(
        "--pair", type=int, nargs=2, default=None, metavar=("I", "J"), help="test indices"
    )
    plot.add_argument("--positive", type=int, default=None, help="attribute: label to add")
    plot.add_argument("--negative", type=int, default=None, help="attribute: label to remove")
    plot.add_argument(
        "--strengths",
        type=lambda t: [float(v) for v in t.split(",")],
        default=[-2.0, -1.0, 0.0, 1.0, 2.0],
        help="attribute strengths, comma-separated",
    )
    plot.add_argument("--against", type=Path, default=None, help="compare: the other run dir")
    return [sample, plot]


def _add_train_arguments(train: argparse.ArgumentParser, track: bool) -> None:
    """Every ``train`` flag, generated from the library's configs and registries.

    With ``track``, no defaults are set, so the parsed namespace holds only the flags given.
    """
    from pyro_vae.models.config import LEGACY_OPTIONS, PART_KINDS
    from pyro_vae.models.kinds import MODELS
    from pyro_vae.parts.registry import REGISTRIES
    from pyro_vae.runs.pipeline import FIGURE_FORMATS

    defaults: dict[str, Any] = {}
    run = _run_options()
    data = train.add_argument_group("data")
    data.add_argument(
        "--dataset",
        help="digits, mnist, fashion-mnist, kmnist, cifar10, a .npy/.npz path or an image folder",
    )
    _add_data_arguments(data)
    training = train.add_argument_group("training (TrainConfig)")
    for dest, (hint, default) in _train_config_fields().items():
        flag, helptext = "--" + dest.replace("_", "-"), _HELP.get(dest, dest.replace("_", " "))
        if hint is bool:
            training.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext)
        elif typing.get_origin(hint) is tuple:  # several values: --track a b, --track a --track b
            training.add_argument(
                flag, nargs="+", action=_Extend, choices=_choices(dest), help=helptext
            )
        else:
            training.add_argument(
                flag, type=_plain_type(hint), choices=_choices(dest), help=helptext
            )
        defaults[dest] = default
    model = train.add_argument_group("model (ModelConfig)")
    for dest, (hint, default) in _model_config_fields().items():
        choices = _choices(dest)
        model.add_argument(
            "--" + dest.replace("_", "-"),
            type=_hidden if dest == "hidden" else _plain_type(hint),
            choices=choices,
            metavar="NAME" if choices else None,
            help=f"{_HELP.get(dest)}: {', '.join(sorted(REGISTRIES[dest]))}"
            if choices
            else _HELP.get(dest),
        )
        defaults[dest] = default
    for kind in PART_KINDS:
        model.add_argument(
            f"--{kind}-opt",
            action="append",
            metavar="KEY=VALUE",
            help=f"an option of the {kind} (repeat for more); `pyro-vae parts` lists them",
        )
    for key, (kind, applies_to, option) in LEGACY_OPTIONS.items():
        model.add_argument(
            "--" + key.replace("_", "-"),
            metavar="VALUE",
            help=f"same as --{kind}-opt {option}=VALUE (for {kind} {'/'.join(applies_to)})",
        )
    model.add_argument(
        "--model",
        choices=MODELS.names(),
        metavar="NAME",
        help=f"model kind: {', '.join(sorted(MODELS))} (`pyro-vae parts` lists their options)",
    )
    model.add_argument(
        "--model-opt",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the model kind (repeat for more); `pyro-vae parts` lists them",
    )
    for dest, owners in _kind_option_flags().items():
        model.add_argument(
            "--" + dest.replace("_", "-"),
            metavar="VALUE",
            help=f"same as --model-opt {dest}=VALUE (model {'/'.join(owners)})",
        )
    hardware = train.add_argument_group("devices and data loading")
    hardware.add_argument("--device", help=DEVICE_HELP)
    hardware.add_argument(
        "--num-workers", type=int, help="reader processes for a streamed training split"
    )
    hardware.add_argument(
        "--stream",
        action="store_true",
        help="read the training split from disk batch by batch (a .npy file, a folder of .npy "
        "shards or of images) instead of loading it whole",
    )
    out = train.add_argument_group("run directory")
    out.add_argument("--num-samples", type=int, help="importance samples K of the test score")
    out.add_argument("--output-dir", type=Path, help="parent of the run directory")
    out.add_argument("--name", help="run name (one path component); <dataset>-<time> if omitted")
    out.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    out.add_argument("--format", choices=list(FIGURE_FORMATS), help="figure format")
    out.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last completed epoch with its own config.json "
        "(--epochs may extend it)",
    )
    out.add_argument(
        "--config",
        type=Path,
        help="TOML or JSON file of these options (keys like latent_dim, epochs, a [prior] "
        "table with name and options, plugins = [modules]); flags given here win",
    )
    defaults.update({dest: default for dest, (_, default) in run.items()})
    defaults.update({"overwrite": False, "resume": None, "config": None})
    if not track:
        train.set_defaults(**defaults)


def _add_data_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where image data sets are looked for and downloaded "
        "(default $PYRO_VAE_DATA_DIR or ~/.cache/pyro-vae/data; /usr/share/datasets is also "
        "searched)",
    )
    parser.add_argument(
        "--binarize",
        choices=_choices("binarize"),
        help="dynamic: fresh draw each batch; static: one seeded draw; none: gray values "
        "(default: what the likelihood needs)",
    )


def _file_settings(path: Path) -> dict[str, Any]:
    """A config file's values, each type-checked against the option it sets.

    Model keys are checked by :class:`ModelConfig`; training keys by TrainConfig's field
    types; the rest by :func:`_run_options`. Keys that delete or reuse runs are refused.
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
    kind_keys = set(_kind_option_flags())
    flat = {k: values.pop(k) for k in list(values) if k in kind_keys}
    if flat:
        values["model_options"] = {**(values.get("model_options") or {}), **flat}
    if not isinstance(values.get("model_options", {}), dict):
        raise ConfigError(f"model_options in {path} must be a table of the kind's options")
    typed = {**_train_config_fields(), **_run_options()}
    model_keys = {
        *_model_config_fields(), *LEGACY_OPTIONS, *(f"{k}_options" for k in PART_KINDS),
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


def _part_options(kind: str, name: str, words: Sequence[str]) -> dict[str, Any]:
    """``--KIND-opt KEY=VALUE`` words parsed by the option types of part ``name``."""
    from pyro_vae.parts.registry import REGISTRIES

    return _option_words(f"--{kind}-opt", f"{kind} {name!r}", REGISTRIES[kind].entry(name), words)


def _option_words(flag: str, owner: str, entry, words: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words of ``flag`` parsed by the option types of a registry ``entry``
    (a part or a model kind, named ``owner`` in messages)."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.parts.options import parse_text

    options: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {word!r}")
        if key not in entry.options:
            known = ", ".join(o.describe() for o in entry.options.values()) or "none"
            raise ConfigError(f"{owner} has no option {key!r}; its options are: {known}")
        options[key] = parse_text(text, entry.options[key].hint)
    return options


def _train_settings(args: argparse.Namespace, given: set[str]) -> dict[str, Any]:
    """Defaults < config file < flags given: every train setting, model parts resolved."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.models.config import LEGACY_OPTIONS, PART_KINDS
    from pyro_vae.parts.registry import REGISTRIES

    settings = vars(args).copy()
    file = _file_settings(args.config) if args.config is not None else {}
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
        options.update(_part_options(kind, name, words))
        settings[kind], settings[f"{kind}_options"] = name, options
    settings["model"], settings["model_options"] = _kind_settings(args, given, settings, file)
    return settings


def _kind_settings(
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
    for option, owners in _kind_option_flags().items():
        if option in given:
            if option not in entry.options:
                raise ConfigError(
                    f"--{option.replace('_', '-')} is an option of model "
                    f"{' or '.join(map(repr, owners))}, not {name!r}; add --model {owners[0]} "
                    "or drop it"
                )
            options[option] = parse_text(getattr(args, option), entry.options[option].hint)
    words = getattr(args, "model_opt", None) or []
    options.update(_option_words("--model-opt", f"model {name!r}", entry, words))
    return name, options


def _cmd_train(args: argparse.Namespace) -> int:
    from pyro_vae.models.config import PART_KINDS, ModelConfig
    from pyro_vae.runs import RunDir, load_run_data, train_run
    from pyro_vae.train.loop import TrainConfig

    if args.resume is not None:
        return _cmd_resume(args)
    s = _train_settings(args, args.given)
    data_dir = Path(s["data_dir"]) if s["data_dir"] is not None else None
    group = join_processes(s["device"])
    data = load_run_data(
        {
            "dataset": s["dataset"],
            "data_dir": data_dir,
            "binarize": s["binarize"],
            "stream": s["stream"],
        }
    )
    model_keys = [*_model_config_fields(), *(f"{kind}_options" for kind in PART_KINDS)]
    model_config = ModelConfig(
        event_shape=data.event_shape,
        kind=s["model"],
        kind_options=s["model_options"],
        **{key: s[key] for key in model_keys},
    )
    train_config = TrainConfig(**{key: s[key] for key in _train_config_fields()})
    if s["num_samples"] < 1:
        raise _usage(f"--num-samples must be at least 1, got {s['num_samples']}")
    # every process of a torchrun job writes to (rank 0 to) the run rank 0 named
    name = group.broadcast_text(s["name"] or f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = RunDir.named(s["output_dir"], name)
    results = train_run(
        s["dataset"],
        model_config,
        train_config,
        run_dir,
        num_samples=s["num_samples"],
        overwrite=args.overwrite,
        progress=not s["no_progress"],
        data=data,
        data_dir=data_dir,
        binarize=s["binarize"],
        fmt=s["format"],
        device=s["device"],
        num_workers=s["num_workers"],
        stream=s["stream"],
    )
    if not group.is_main:
        return 0
    print(f"run directory: {run_dir}")
    _print_run_results(results)
    return 0


def _print_run_results(results: dict) -> None:
    from pyro_vae.models.kinds import build_kind
    from pyro_vae.runs.metrics import metric_lines

    print(f"trained {results['epochs']} epochs in {results['train_seconds']:.1f} s")
    _print_metric_lines(metric_lines(build_kind(results.get("kind", "vae")), results))


def _print_metric_lines(lines: Sequence[str]) -> None:
    """A kind's metric lines on stdout, its warnings on stderr."""
    for line in lines:
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)


#: Options ``train --resume`` accepts; every other setting comes from the run's config.json.
RESUME_OPTIONS = {"resume", "epochs", "no_progress", "debug", "plugin", "device", "num_workers"}


def _cmd_resume(args: argparse.Namespace) -> int:
    from pyro_vae.runs.pipeline import resume_run

    conflicting = sorted(set(args.given) - RESUME_OPTIONS)
    if conflicting:
        flags = ", ".join("--" + name.replace("_", "-") for name in conflicting)
        raise _usage(
            f"{flags} cannot be combined with --resume: the run's config.json fixes every "
            "setting (only --epochs, --no-progress, --plugin, --device and --num-workers are "
            "allowed); drop them"
        )
    epochs = args.epochs if "epochs" in args.given else None
    device = args.device if "device" in args.given else "auto"
    group = join_processes(device)
    results = resume_run(
        args.resume,
        epochs=epochs,
        progress=not args.no_progress,
        device=device,
        num_workers=args.num_workers if "num_workers" in args.given else 0,
    )
    if not group.is_main:
        return 0
    print(f"run directory: {args.resume} (resumed)")
    _print_run_results(results)
    return 0


def _cmd_parts(args: argparse.Namespace) -> int:
    from pyro_vae.models.kinds import MODELS
    from pyro_vae.parts.registry import REGISTRIES

    print("models (--model NAME --model-opt KEY=VALUE):")
    for name in MODELS:
        entry = MODELS.entry(name)
        options = ", ".join(o.describe() for o in entry.options.values()) or "no options"
        origin = f"  [{entry.module}]" if entry.is_plugin else ""
        print(f"  {name:24s} {options}{origin}")
    for kind, registry in REGISTRIES.items():
        print(f"{kind}s (--{kind} NAME --{kind}-opt KEY=VALUE):")
        for name in registry:
            entry = registry.entry(name)
            options = ", ".join(o.describe() for o in entry.options.values()) or "no options"
            origin = f"  [{entry.module}]" if entry.is_plugin else ""
            print(f"  {name:24s} {options}{origin}")
    return 0


def _plugins_before_parsing(argv: Sequence[str] | None) -> None:
    """Import the modules named by --plugin and by a --config file's ``plugins`` list.

    Done before the full parser is built, so that their parts are among its choices. A run
    directory's files never name modules to import: only the user's own words do.
    """
    from pyro_vae.models.config import load_config_file
    from pyro_vae.parts.registry import import_plugins

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    import_plugins(known.plugin, "--plugin")
    if known.config is not None:
        plugins = load_config_file(known.config).get("plugins", [])
        import_plugins(plugins, f"plugins in config file {known.config}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pyro

    from pyro_vae.models.kinds import kind_of
    from pyro_vae.runs import check_size, load_run, load_run_data
    from pyro_vae.runs.metrics import ScoreOptions, metric_lines, test_metrics

    check_size(args.num_samples, "--num-samples (importance samples per point)")
    if args.batch_size is not None and args.batch_size < 1:
        raise _usage(f"--batch-size must be at least 1, got {args.batch_size}")
    group = join_processes(args.device)
    model, config = load_run(args.run_dir, device=args.device)
    kind = kind_of(model)
    data = load_run_data(config)
    pyro.set_rng_seed(args.seed)
    if args.method is not None:
        if not kind.scores_likelihood:
            raise _usage(
                f"{str(args.run_dir)!r} is a {kind.label} run: it has no likelihood p(x) for "
                f"--method {args.method}; drop --method for its test metrics"
            )
        return _print_inference_report(args, model, data)
    options = ScoreOptions(args.num_samples, args.batch_size, args.seed)
    results = test_metrics(model, data, options)
    if not group.is_main:
        return 0
    print(f"run directory: {args.run_dir}")
    _print_metric_lines(metric_lines(kind, results))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pyro_vae.analysis import figures
    from pyro_vae.analysis.plots import check_figure_path
    from pyro_vae.runs import check_size, load_run, load_run_data

    check_size(args.num, "-n (samples drawn)")
    out = check_figure_path(args.output or args.run_dir / f"samples-{args.source}.{args.format}")
    model, config = load_run(args.run_dir, device=args.device)
    data = load_run_data(config)
    path = figures.figure_samples(model, data, out, source=args.source, n=args.num, seed=args.seed)
    print(f"wrote {path}" if path else "data are not images; nothing drawn")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import torch

    from pyro_vae.analysis import figures
    from pyro_vae.analysis.plots import check_figure_path
    from pyro_vae.analysis.run_figures import draw
    from pyro_vae.models.kinds import kind_of
    from pyro_vae.runs import RunDir, check_size, load_run, load_run_data

    if args.kind == "interpolation":
        check_size(args.steps, "--steps (interpolation steps)")
    out = check_figure_path(args.output or args.run_dir / f"{args.kind}.{args.format}")
    model, config = load_run(args.run_dir, device=args.device)
    kind = kind_of(model)
    torch.manual_seed(args.seed)
    figure = args.kind
    if figure in ("elbo", "loss"):  # the training curve the run's kind draws
        figure = next((f for f in kind.figures if f in ("elbo", "loss")), figure)
        history = RunDir(args.run_dir).read_metrics()
        named = types.SimpleNamespace(name=config["dataset"])
        path = draw(figure, model, named, out, history=history, seed=args.seed)
        print(f"wrote {path}")
        return 0
    data = load_run_data(config)
    if args.kind == "samples":
        path = figures.figure_samples(model, data, out, source=args.source, seed=args.seed)
    elif args.kind == "interpolation":
        if args.steps < 2:
            raise _usage(f"--steps must be at least 2, got {args.steps}")
        pair = tuple(args.pair) if args.pair else None
        path = figures.figure_interpolation(model, data, out, steps=args.steps, pair=pair)
    elif args.kind == "attribute":
        if args.positive is None or args.negative is None:
            raise _usage("--kind attribute needs --positive LABEL and --negative LABEL")
        path = figures.figure_attribute(
            model, data, out, args.positive, args.negative, strengths=args.strengths
        )
    elif args.kind != "compare":
        if args.kind not in kind.figures:
            raise _usage(
                f"figure {args.kind!r} does not fit a {kind.label} run; its figures are "
                f"{', '.join(kind.figures)} (and attribute, compare)"
            )
        path = draw(args.kind, model, data, out, seed=args.seed)
    else:
        if args.against is None:
            raise _usage("--kind compare needs --against OTHER_RUN_DIR (e.g. an --model ae run)")
        other, other_config = load_run(args.against)
        if other_config["dataset"] != config["dataset"]:
            raise _usage(
                f"runs were trained on different data ({config['dataset']!r} and "
                f"{other_config['dataset']!r}); compare runs on the same data set"
            )
        name, other_name = kind.label, kind_of(other).label
        if name == other_name:
            name, other_name = (
                f"{name} ({args.run_dir.name})",
                f"{other_name} ({args.against.name})",
            )
        models = (
            {other_name: other, name: model}
            if other_name.startswith("auto")
            else {
                name: model,
                other_name: other,
            }
        )
        path = figures.figure_comparison(models, data, out)
    print(f"wrote {path}" if path else "data are not images; nothing drawn")
    return 0


def _print_inference_report(args: argparse.Namespace, vae, data) -> int:
    from pyro_vae.data.binarize import eval_data
    from pyro_vae.infer.report import inference_report
    from pyro_vae.models.kinds import kind_of
    from pyro_vae.runs.metrics import test_args

    if args.num_points < 1:
        raise _usage(f"--num-points must be at least 1, got {args.num_points}")
    kind = kind_of(vae)
    parts = kind.gap_parts(vae)
    if args.method == "gaps" and parts is None:
        raise _usage(
            f"the inference gaps need one posterior family per site fed by one encoder, which "
            f"a {kind.label} does not have; use --method ais"
        )
    family, encoder = parts or (None, None)
    report = inference_report(
        vae.model,
        vae.guide,
        eval_data(vae, data.test),
        args.method,
        num_samples=args.num_samples,
        num_points=args.num_points,
        ais_steps=args.ais_steps,
        gap_steps=args.gap_steps,
        family=family,
        init_params=encoder,
        batch_size=args.batch_size,
        args=test_args(vae, data),
    )
    print(f"run directory: {args.run_dir}")
    print(report.table())
    if report.unreliable:
        print(
            "warning: PSIS k-hat > 0.7 for some points: their importance-sampled estimate is "
            "unreliable; compare with --method ais",
            file=sys.stderr,
        )
    return 0


def _usage(message: str) -> PyroVAEError:
    from pyro_vae.errors import ConfigError

    return ConfigError(message)


def join_processes(device: str):
    """This process's group: under ``torchrun`` (``WORLD_SIZE`` > 1) join it on ``device``'s
    backend (NCCL for CUDA, gloo otherwise); a group of one otherwise."""
    from pyro_vae.runtime import init_from_environment, resolve_device

    return init_from_environment(resolve_device(device))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vae`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad input is one line on stderr and status 2 (``--debug`` adds the traceback).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        _plugins_before_parsing(argv)
        args = build_parser().parse_args(argv)
        args.given = set(vars(build_parser(track=True).parse_args(argv))) - {"command"}
        commands = {
            "train": _cmd_train,
            "evaluate": _cmd_evaluate,
            "sample": _cmd_sample,
            "plot": _cmd_plot,
            "parts": _cmd_parts,
        }
        status = commands[args.command](args)
        _leave_processes(wait=True)
        return status
    except PyroVAEError as exc:
        if debug:
            traceback.print_exc()
        # whole: a file name with a newline in it is shown escaped, not cut at the newline
        print(f"pyro-vae: error: {printable(str(exc).strip())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, ValueError) as exc:
        # Not raised on purpose (full disk, a torch failure): still one line, exit 1.
        if debug:
            raise
        print(
            f"pyro-vae: error: {type(exc).__name__}: {_one_line(exc)[:200]} (rerun with "
            "--debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        _leave_processes(wait=False)  # a failed command leaves without waiting for the rest


def _leave_processes(wait: bool) -> None:
    """Leave a torchrun process group this command joined (the ranks meet first)."""
    from pyro_vae.runtime.distributed import leave_group

    leave_group(wait=wait)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
