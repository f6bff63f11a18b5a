"""The ``local`` backend: a process pool on this machine whose workers never outlive the sweep."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any
from unittest import mock

from .progress import Progress, SweepInterrupted
from .spec import Cell, cell_dir
from .task import record_failure

__all__ = ["run_local"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker_init(parent: int) -> None:
    """Ctrl-C is the parent's to handle (one line, no traceback per worker); a worker dies with
    its parent (SIGKILL, SIGTERM, crash) instead of finishing the queue and idling forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    # Elsewhere (and as a second line of defence) a thread polls the parent.
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def run_local(cells: Sequence[Cell], folder: Path, workers: int, task: Callable[[Cell, str], dict],
              progress: Progress) -> dict[str, dict[str, Any]]:
    """A spawn process pool; a worker that dies (OOM kill, crash) fails its own cell only.

    A dead worker breaks the whole pool, so the cells it took down run again: first in a
    one-worker pool, where the cell running when the pool breaks is the culprit and is recorded
    failed; the others then go on. Ctrl-C cancels the queued cells, kills the running ones (they
    resume from their checkpoints next time) and raises :class:`SweepInterrupted`.
    """
    outcomes: dict[str, dict[str, Any]] = {}
    pending, solo = list(cells), False
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    before = set(multiprocessing.active_children())
    while pending:
        broken: list[Cell] = []
        pool = cf.ProcessPoolExecutor(1 if solo else min(workers, len(pending)), mp_context=ctx,
                                      initializer=_worker_init, initargs=(os.getpid(),))
        try:
            with mock.patch.dict(os.environ, TQDM_DISABLE="1"):  # the spawned workers' bars stay off the terminal
                futures = {pool.submit(task, c, str(folder)): c for c in pending}
            for fut in cf.as_completed(futures):
                c = futures[fut]
                try:
                    outcomes[c.fingerprint] = fut.result()
                except BrokenProcessPool:
                    broken.append(c)
                    continue
                progress.finished(c, outcomes[c.fingerprint])
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            for p in set(multiprocessing.active_children()) - before:
                p.kill()
            pool.shutdown(wait=True)
            raise SweepInterrupted(f"interrupted: {len(outcomes)} of {len(cells)} cell(s) finished, the others were "
                                   "stopped or never started; run the same command again to resume") from None
        pool.shutdown(wait=True)
        broken.sort(key=pending.index)
        if broken and solo:
            dead = broken.pop(0)
            outcomes[dead.fingerprint] = {"fingerprint": dead.fingerprint, **record_failure(
                cell_dir(folder, dead), "the worker process died while running this cell (killed or crashed)",
                "The process pool broke while this cell was running: the worker was killed (out of memory?)"
                " or crashed; there is no Python traceback.\n")}
            progress.finished(dead, outcomes[dead.fingerprint])
        solo = bool(broken) and not solo
        pending = broken
    return outcomes
