"""Experiment grids: a YAML spec expands to cells, each one :func:`basisprune.repro.experiments.run`.

A spec names an experiment (or several), a profile, lists of parameter values and seeds::

    name: smoke
    experiment: basis_pruning          # or a list: [channel_pruning, basis_pruning]
    profile: smoke
    params:                            # the cross product of these lists (a scalar is one value);
      basis_fraction: [0.2, 0.3]       # a list of such mappings is the union of their grids;
                                       # a grid's own ``seeds`` list replaces the top-level one;
                                       # pai_* experiments take their pai settings (width: [8, 16];
                                       # a list setting: methods: [snip, [prospr, random]], 2 cells)
    seeds: [0, 1]                      # default: the profile's seeds
    backend: local                     # local | slurm | submitit-local
    local: {workers: 2}
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 120, mem_gb: 32}

Every cell is keyed by a fingerprint of what it asks for (experiment, profile, the overrides, seed)
and lives in ``<folder>/cells/<experiment>-<dataset>-seed<k>-<8 hex digits of the fingerprint>/``:
``results.json`` (written by ``experiments.run``), ``cell.json`` (what the cell is), ``job.json``
(its cluster job), ``error.json`` + ``traceback.txt`` when it failed, and its checkpoints under
``runs/`` (``keep_checkpoints=False`` or :func:`clean` drops them once the cell is done). A cell
whose results file exists is done and never runs again, so a sweep started again after a failure
or a kill runs only what is missing, and on Slurm waits for the jobs still queued or running
instead of submitting them twice. The whole spec is validated (:mod:`.spec`; on Slurm also the
partition and GPUs, through ``sinfo``) and the folder checked writable before anything is written.

Backends: ``local`` is a process pool on this machine (one torch thread per worker, as many workers
as cores by default; workers die with the sweep); ``slurm`` submits a job array through submitit (a
job at its time limit or preempted requeues and resumes); ``submitit-local`` is the same submitit
code path with submitit's local executor (each cell a subprocess), for trying a spec before a
cluster sees it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..results import write_json
from .local import run_local
from .progress import Log, Progress, SweepInterrupted
from .report import collect, report, summarize, table
from .slurm import SubmissionError, check_cluster, run_submitit
from .spec import _OPTIONS, BACKENDS, Cell, SweepSpec, cell_dir, cell_status, expand, fingerprint, load
from .task import CellTask, drop_checkpoints

__all__ = ["BACKENDS", "Cell", "CellTask", "SubmissionError", "SweepInterrupted", "SweepRun", "SweepSpec",
           "cell_dir", "cell_status", "clean", "collect", "expand", "fingerprint", "load", "report", "run",
           "summarize", "table"]


@dataclasses.dataclass
class SweepRun:
    """What one :func:`run` call found and did."""

    spec: SweepSpec
    cells: list[Cell]
    status: dict[str, str]  # fingerprint -> done / failed / missing, after the call
    ran: list[str]  # fingerprints of the cells this call ran
    wall_seconds: float

    @property
    def failed(self) -> list[str]:
        return [fp for fp in self.ran if self.status[fp] != "done"]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_writable(spec: SweepSpec, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"{spec.source}: folder: cannot write the sweep folder {out}: {exc.strerror or exc}; "
                         "set the spec's folder: key (or --folder) to a writable path") from None


def _adopt_old_folders(out: Path, cells: list[Cell]) -> None:
    """Folders named by the bare fingerprint (before cells had readable names) are renamed."""
    for c in cells:
        old, new = out / "cells" / c.fingerprint, cell_dir(out, c)
        if old.is_dir() and not new.exists():
            old.rename(new)


def run(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec, *, backend: str | None = None,
        workers: int | None = None, folder: str | os.PathLike | None = None, dry_run: bool = False,
        log: Log = print, task: Callable[[Cell, str], dict] | None = None, keep_checkpoints: bool = True,
        progress: bool | None = None) -> SweepRun:
    """Run every cell of ``spec`` that has no results file yet; returns what was found and run.

    Args:
        spec: a YAML file, a mapping, or a :class:`SweepSpec`.
        backend, workers, folder: override the spec's ``backend``, ``local.workers`` and ``folder``.
        dry_run: list the cells and their status; run nothing.
        log: receives one line per event (a finished cell with the ETA, a submission).
        task: the callable run per cell (default :class:`CellTask`); must be picklable.
        keep_checkpoints: False drops a cell's checkpoints once it is done.
        progress: a tqdm bar over the cells (None: only on a terminal).

    Raises:
        ValueError: a bad spec or an unwritable folder, before anything is written.
        SweepInterrupted: Ctrl-C; the message says how to resume.
    """
    if not isinstance(spec, SweepSpec):
        spec = load(spec, backend=backend, folder=folder)
    elif backend or folder:
        raise ValueError("give backend and folder in the spec when passing a SweepSpec")
    if workers is not None:
        _OPTIONS["local"]["workers"].check("workers", workers)  # ParameterError (a ValueError): one line
        local = {**spec.options["local"], "workers": workers}
        spec = dataclasses.replace(spec, options={**spec.options, "local": local})
    cells = expand(spec)
    out = spec.folder.resolve()
    if dry_run:
        status = {c.fingerprint: cell_status(out, c) for c in cells}
        for c in cells:
            log(f"{status[c.fingerprint]:8s} {c.name} {c.describe()}")
        todo = sum(s != "done" for s in status.values())
        log(f"{len(cells)} cells, {todo} to run ({spec.backend}); folder {out}")
        return SweepRun(spec, cells, status, [], 0.0)
    if spec.backend == "slurm":
        check_cluster(spec)
    elif spec.backend == "submitit-local":
        from .slurm import _need_submitit

        _need_submitit(spec)
    _check_writable(spec, out)
    _adopt_old_folders(out, cells)
    status = {c.fingerprint: cell_status(out, c) for c in cells}
    todo = [c for c in cells if status[c.fingerprint] != "done"]
    tic = time.perf_counter()
    for c in todo:
        write_json(cell_dir(out, c) / "cell.json", c.as_dict())
    if todo:
        log(f"{len(cells)} cells, {len(cells) - len(todo)} done, running {len(todo)} on {spec.backend}")
    outcomes: dict[str, dict[str, Any]] = {}
    bar = Progress(todo, log, progress if todo else False)
    try:
        if not todo:
            pass
        elif spec.backend == "slurm":
            threads = spec.options["slurm"].get("cpus_per_task")
            outcomes = run_submitit(spec, todo, out, "slurm", None,
                                    task or CellTask(threads=threads, keep_checkpoints=keep_checkpoints), bar)
        else:  # this machine: one torch thread per process, as many processes as workers
            n = spec.options["local"].get("workers") or _cores()
            one = task or CellTask(threads=1, keep_checkpoints=keep_checkpoints)
            if spec.backend == "local":
                outcomes = run_local(todo, out, n, one, bar)
            else:
                outcomes = run_submitit(spec, todo, out, "local", n, one, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - tic
    status = {c.fingerprint: cell_status(out, c) for c in cells}
    ran = [c.fingerprint for c in todo if c.fingerprint in outcomes]
    if todo:
        write_json(out / "sweep.json", {"spec": dataclasses.asdict(spec), "cells": [c.as_dict() for c in cells],
                                        "last_run": {"backend": spec.backend, "ran": ran, "wall_seconds": wall,
                                                     "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat()}})
    counts = {s: list(status.values()).count(s) for s in ("done", "failed", "missing")}
    log(f"ran {len(ran)} cell(s) in {wall:.1f} s; " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return SweepRun(spec, cells, status, ran, wall)


def clean(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec,
          folder: str | os.PathLike | None = None) -> tuple[int, int]:
    """Drop the checkpoints (``runs/``) of the spec's finished cells; returns (cells, bytes freed).

    Results, logs and the checkpoints of unfinished cells (which a rerun resumes from) stay.
    """
    if not isinstance(spec, SweepSpec):
        spec = load(spec, folder=folder)
    out = spec.folder.resolve()
    freed = [drop_checkpoints(cell_dir(out, c)) for c in expand(spec) if cell_status(out, c) == "done"]
    return sum(f > 0 for f in freed), sum(freed)
