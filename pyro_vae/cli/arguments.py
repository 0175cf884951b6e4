"""Argument types and the options every command shares (``--debug``, ``--plugin``,
``--threads``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

#: Seeds the estimators and figures accept (NumPy's generator takes 32 bits).
MAX_SEED = 2**32 - 1

DEVICE_HELP = "auto (a GPU if there is one), cpu, cuda, cuda:N or mps"


def hidden_sizes(text: str) -> tuple[int, ...]:
    """A ``--hidden`` value: positive integers separated by commas (``256,128``)."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"hidden sizes must be integers like 256,128, got {text!r}"
        ) from exc
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes


def seed(text: str) -> int:
    """A ``--seed`` value: an integer from 0 to ``MAX_SEED``."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"--seed must be an integer from 0 to {MAX_SEED}, got {text!r}"
        )
    return value


def threads(text: str) -> int | str:
    """A ``--threads`` value: ``auto`` or a thread count (``pyro_vae.runtime.threads``)."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.runtime.threads import check_threads

    try:
        return check_threads(text, "--threads")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class Extend(argparse.Action):
    """Collect the values of a repeatable flag into one tuple (the field's type)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest, None) or ()), *values))


def add_common_arguments(command: argparse.ArgumentParser, track: bool) -> None:
    """``--debug``, ``--plugin`` and ``--threads`` on a command's parser.

    With ``track``, ``--plugin`` and ``--threads`` have no default (the namespace holds only the
    flags given).
    """
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
    command.add_argument(
        "--threads",
        type=threads,
        metavar="N",
        default=argparse.SUPPRESS if track else "auto",
        help="torch's intra-op threads: auto (default: the cores other processes leave free, "
        "adapted while running) or a fixed count; see docs/scaling.md",
    )


def import_plugins_first(argv: Sequence[str]) -> None:
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
