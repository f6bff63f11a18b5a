"""Progress of a sweep: a tqdm bar over cells with an ETA, and one log line per finished cell."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from .spec import Cell

__all__ = ["Log", "Progress", "SweepInterrupted"]

Log = Callable[[str], None]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in the CLI) stopped the sweep; the message says what finished and how to resume."""


class Progress:
    """Counts finished cells; ``log`` gets one line each (with an ETA), through the bar when it shows."""

    def __init__(self, cells: Sequence[Cell], log: Log, enabled: bool | None = None):
        self.n, self.i, self.failed = len(cells), 0, 0
        self.tic = time.perf_counter()
        # disable=None: a bar only on a terminal; TQDM_DISABLE=1 turns it off everywhere.
        self.bar = tqdm(total=self.n, unit="cell", desc="sweep", dynamic_ncols=True, smoothing=0.0,
                        disable=None if enabled is None else not enabled)
        self._log = log

    def log(self, line: str) -> None:
        if self._log is print and not self.bar.disable:
            self.bar.write(line)
        else:
            self._log(line)

    def eta(self) -> str:
        if not self.i or self.i >= self.n:
            return ""
        left = (time.perf_counter() - self.tic) / self.i * (self.n - self.i)
        return f", eta {int(left // 60)}:{int(left % 60):02d}"

    def finished(self, cell: Cell, outcome: dict[str, Any]) -> None:
        self.i += 1
        self.failed += outcome["status"] != "done"
        extra = f"  {outcome['error']}" if outcome.get("error") else ""
        secs = f" ({outcome['seconds']:.1f} s{self.eta()})" if "seconds" in outcome else ""
        self.log(f"[{self.i}/{self.n}] {outcome['status']:6s} {cell.name} {cell.describe()}{secs}{extra}")
        self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
