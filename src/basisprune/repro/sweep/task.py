"""What runs per cell, in a pool worker or a cluster job: :class:`CellTask`."""

from __future__ import annotations

import datetime as _dt
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from .. import experiments
from ..results import atomic_write, write_json
from .spec import Cell, cell_dir

try:  # submitit requeues a timed-out job only when its task is Checkpointable (has `checkpoint`)
    from submitit.helpers import Checkpointable
except ModuleNotFoundError:  # the local backend needs no submitit
    Checkpointable = object  # type: ignore[misc,assignment]

__all__ = ["CellTask", "drop_checkpoints", "record_failure"]


def record_failure(d: Path, line: str, details: str) -> dict[str, Any]:
    """Write ``error.json`` (the one line) and ``traceback.txt`` into the cell folder ``d``."""
    write_json(d / "error.json", {"error": line, "traceback_file": "traceback.txt",
                                  "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    data = details.encode("utf-8")
    atomic_write(d / "traceback.txt", lambda f: f.write(data))
    return {"status": "failed", "error": line}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def drop_checkpoints(d: Path) -> int:
    """Remove a cell folder's checkpoints (``runs/``); returns the bytes freed."""
    runs = d / "runs"
    if not runs.is_dir():
        return 0
    size = sum(p.stat().st_size for p in runs.rglob("*") if p.is_file())
    shutil.rmtree(runs)
    return size


class CellTask(Checkpointable):
    """Runs one cell: writes its results, or records its error and returns.

    It never raises for a failing experiment, so one bad cell cannot stop the others. Under
    submitit it is a :class:`submitit.helpers.Checkpointable`: a Slurm job signalled at its time
    limit (or preempted) requeues the same task for the same cell, and the experiment resumes from
    the round checkpoints in the cell's ``runs/`` folder. ``keep_checkpoints=False`` removes that
    folder once the cell is done.
    """

    def __init__(self, threads: int | None = None, keep_checkpoints: bool = True):
        self.threads = threads
        self.keep_checkpoints = keep_checkpoints

    def __call__(self, cell: Cell, folder: str) -> dict[str, Any]:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        d = cell_dir(folder, cell)
        tic = time.perf_counter()
        try:
            workdir = d / "runs" / experiments.default_workdir(cell.params).name
            experiments.run(cell.experiment, profile=cell.profile, out=d / "results.json", workdir=workdir,
                            seed=cell.seed, **dict(cell.overrides))
        except Exception as exc:  # noqa: BLE001 - any failure belongs to this cell only
            out = record_failure(d, one_line(exc), traceback.format_exc())
        else:
            for name in ("error.json", "traceback.txt"):
                (d / name).unlink(missing_ok=True)
            if not self.keep_checkpoints:
                drop_checkpoints(d)
            out = {"status": "done", "error": None}
        return {"fingerprint": cell.fingerprint, "seconds": time.perf_counter() - tic, **out}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The same task for the same cell (submitit calls it when the job is signalled)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
