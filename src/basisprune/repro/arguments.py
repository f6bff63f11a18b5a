"""The argument parser of every command line of the project (``basisprune``, the benchmarks, the tier
runners, ``python -m basisprune_book``): usage errors in one line, like every other error
(:mod:`basisprune.errors`), and no abbreviated options."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from ..errors import EXIT_ERROR, PREFIX

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of the CLI, and
    that takes no abbreviated options (``--epochs`` must not silently mean ``--epochs-per-round``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{PREFIX}{message} (see {self.prog} --help)\n")
