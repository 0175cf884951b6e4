"""The ``pyro-vae`` program: one parser from the command modules, and ``main``.

Each module of ``COMMANDS`` adds its own parser (``add_parser(sub, track)``) and runs it
(``run(args) -> status``); this module knows only their names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyro_vae.cli import evaluate, parts, plot, sample, train
from pyro_vae.cli.arguments import add_common_arguments, import_plugins_first
from pyro_vae.cli.exits import OneLineParser, exit_status
from pyro_vae.cli.processes import leave_processes

#: The commands, in the order ``pyro-vae --help`` lists them; each a module with
#: ``add_parser`` and ``run``.
COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "parts": parts,
    "sample": sample,
    "plot": plot,
}


def build_parser(track: bool = False) -> argparse.ArgumentParser:
    """The ``pyro-vae`` parser; choices and defaults come from the library.

    With ``track``, ``train``'s flags get no defaults: parsing then yields only the flags
    written on the command line (how config files and --resume know what was given).
    """
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
    for command in COMMANDS.values():
        add_common_arguments(command.add_parser(sub, track), track)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vae`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad input is one line on stderr and status 2 (``--debug`` adds the traceback).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return exit_status(lambda: _parse_and_run(argv), debug="--debug" in argv)
    finally:
        leave_processes(wait=False)  # a failed command leaves without waiting for the rest


def _parse_and_run(argv: list[str]) -> int:
    import_plugins_first(argv)
    args = build_parser().parse_args(argv)
    args.given = set(vars(build_parser(track=True).parse_args(argv))) - {"command"}
    from pyro_vae.runtime.threads import share_cores

    with share_cores(args.threads):  # fit and the estimators adapt the count inside
        status = COMMANDS[args.command].run(args)
    leave_processes(wait=True)
    return status
