"""One error policy for the library, the CLI and the notebook runner.

Errors the library raises on purpose derive from :class:`BasisPruneError` (bad parameters are also
:class:`ValueError`, missing data and weights also :class:`FileNotFoundError`, corrupt checkpoints
also :class:`RuntimeError`). The command lines (``basisprune``, ``python -m basisprune_book``) turn
them, and every :class:`ValueError` and :class:`OSError`, into one line on stderr,
``basisprune: error: <message>``, and exit status 2; ``--debug`` shows the traceback instead
(their argument parser, with usage errors in the same form, is the harness's
``basisprune.repro.arguments.ArgumentParser``).
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

__all__ = [
    "EXIT_ERROR", "PREFIX", "REPORTED", "BasisPruneError", "ParameterError",
    "WorkdirMismatchError", "one_line", "report",
]

#: Exit status of a command line that stops on an error it reports in one line.
EXIT_ERROR = 2
PREFIX = "basisprune: error: "


class BasisPruneError(Exception):
    """Base of the errors basisprune raises on purpose; the message is meant for the user."""


class ParameterError(BasisPruneError, ValueError):
    """A parameter value that is not allowed; ``param`` names it, ``value`` holds what was given."""

    def __init__(self, param: str, message: str, value: Any = None):
        self.param = param
        self.value = value
        super().__init__(message)


class WorkdirMismatchError(BasisPruneError, ValueError):
    """A checkpoint directory was made by a run with other parameters or other library code."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:  # KeyError's str() is the repr of its key
        text = str(exc.args[0]).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    more = len(lines) - 1
    return lines[0] + (f" ({more} more line(s): rerun with --debug)" if more else "")


#: What the command lines report in one line; anything else is a bug and keeps its traceback.
REPORTED = (BasisPruneError, ValueError, OSError)


def report(exc: BaseException, *, debug: bool = False) -> int:
    """Print ``basisprune: error: <one line>`` (or, with ``debug``, the traceback) and return 2."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    else:
        print(PREFIX + one_line(exc), file=sys.stderr)
    return EXIT_ERROR
