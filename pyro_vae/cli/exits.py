"""How the command fails: one line on stderr and an exit status, a traceback only with --debug.

Bad input (a usage error of the parser, or a
[`PyroVAEError`][pyro_vae.errors.PyroVAEError] from the library) exits 2; an interruption
130; an error not raised on purpose (a full disk, a torch failure) 1.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from pyro_vae.data.files import printable
from pyro_vae.errors import PyroVAEError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        first = (message.strip().splitlines() or [""])[0]
        self.exit(2, f"pyro-vae: error: {first} (see {self.prog} --help)\n")


def usage(message: str) -> PyroVAEError:
    """The error a command raises for bad input the parser cannot see (exit status 2)."""
    from pyro_vae.errors import ConfigError

    return ConfigError(message)


def exit_status(command: Callable[[], int], debug: bool) -> int:
    """Run ``command``; -> its status, or the status of its failure after one line on stderr.

    With ``debug`` the traceback comes first (a library error) or instead (any other error).
    """
    try:
        return command()
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
            f"pyro-vae: error: {type(exc).__name__}: {one_line(exc)[:200]} (rerun with "
            "--debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(exc).strip().splitlines() or [""])[0]
