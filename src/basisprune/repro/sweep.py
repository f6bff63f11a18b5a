"""Experiment grids: a YAML spec expands to cells, each one :func:`basisprune.repro.experiments.run`.

A spec names an experiment (or several), a profile, lists of parameter values and seeds::

    name: smoke
    experiment: basis_pruning          # or a list: [channel_pruning, basis_pruning]
    profile: smoke
    params:                            # the cross product of these lists (a scalar is one value);
      basis_fraction: [0.2, 0.3]       # a list of such mappings is the union of their grids;
                                       # a grid's own ``seeds`` list replaces the top-level one
    seeds: [0, 1]                      # default: the profile's seeds
    backend: local                     # local | slurm | submitit-local
    local: {workers: 2}
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 120, mem_gb: 32}

Every cell is keyed by a fingerprint of what it asks for (experiment, profile, the overrides, seed)
and lives in ``<folder>/cells/<fingerprint>/``: ``results.json`` (written by ``experiments.run``),
``cell.json`` (what the cell is), ``error.json`` + ``traceback.txt`` when it failed, and its
checkpoints under ``runs/``. A cell whose results file exists is done and never runs again, so a
sweep started again after a failure or a kill runs only what is missing. The whole spec is
validated (names against :data:`basisprune.repro.profiles.PARAMETERS`, values with
:func:`basisprune.repro.experiments.resolve_params`, backend options) before any job starts.

Backends: ``local`` is a process pool on this machine (one torch thread per worker, as many workers
as cores by default); ``slurm`` submits a job array through submitit; ``submitit-local`` is the same
submitit code path with submitit's local executor (each cell a subprocess), for trying a spec before
a cluster sees it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import html
import io
import itertools
import json
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import experiments, profiles
from .results import atomic_write, read_results, write_json

__all__ = [
    "BACKENDS",
    "Cell",
    "CellTask",
    "SweepRun",
    "SubmissionError",
    "SweepSpec",
    "cell_status",
    "collect",
    "expand",
    "fingerprint",
    "load",
    "report",
    "run",
    "summarize",
]

BACKENDS = ("local", "slurm", "submitit-local")

_SPEC_KEYS = ("name", "experiment", "profile", "params", "seeds", "folder", "backend", "local", "slurm")

# Backend option -> (check, what it must be). submitit-local reads the slurm section too and uses
# what its executor has (timeout_min, gpus_per_node, setup).
_POS_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer")
_NONNEG_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer")
_POS_NUM = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number")
_STR = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_STR_LIST = (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings")
_STR_MAP = (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (str, int, float))
                                                   for k, x in v.items()), "a mapping of sbatch option to value")
_OPTIONS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "local": {"workers": _POS_INT},
    "slurm": {
        "partition": _STR, "gpus_per_node": _NONNEG_INT, "cpus_per_task": _POS_INT, "timeout_min": _POS_INT,
        "mem_gb": _POS_NUM, "array_parallelism": _POS_INT, "max_num_timeout": _NONNEG_INT, "account": _STR,
        "qos": _STR, "constraint": _STR, "setup": _STR_LIST, "additional_parameters": _STR_MAP,
    },
}
# Slurm's own default job time (submitit: 5 minutes) is too short for any real cell.
_DEFAULT_TIMEOUT_MIN = 60

_DEVICE = re.compile(r"^(auto|cpu|mps(:0)?|cuda(:\d+)?)$", re.IGNORECASE)


# -------------------------------------------------------------------------------------- spec
@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec (see the module docstring for the YAML form)."""

    name: str
    experiments: tuple[str, ...]
    profile: str
    grids: tuple[dict[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...]
    folder: Path
    backend: str
    options: dict[str, dict[str, Any]]
    source: str = "<spec>"
    #: Per grid, its own seeds (None: :attr:`seeds`); empty: every grid takes :attr:`seeds`.
    grid_seeds: tuple[tuple[int, ...] | None, ...] = ()

    def seeds_of(self, i: int) -> tuple[int, ...]:
        """The seeds of grid ``i``."""
        own = self.grid_seeds[i] if i < len(self.grid_seeds) else None
        return self.seeds if own is None else own


def _fail(source: str, where: str, what: str) -> ValueError:
    return ValueError(f"{source}: {where}: {what}")


def _coerce(source: str, where: str, name: str, value: Any) -> Any:
    """``value`` checked by parameter ``name``'s spec (:data:`basisprune.repro.profiles.SPECS`); YAML 1.1
    reads ``1e-3`` as a string, so a string is parsed where a number is expected."""
    if isinstance(value, (list, dict)):
        raise _fail(source, where, f"expected a single value inside the list, got {value!r}")
    spec = profiles.SPECS[name]
    if spec.kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    try:
        return spec.check(name, value)
    except ValueError as e:
        raise _fail(source, where, str(e)) from None


def _values(source: str, where: str, raw: Any, coerce: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A list of distinct values (a scalar is a list of one)."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _fail(source, where, "empty list; give at least one value")
    out: list[Any] = []
    for v in items:
        v = coerce(v)
        if v in out:
            raise _fail(source, where, f"value {v!r} is listed twice")
        out.append(v)
    return tuple(out)


def _grid(source: str, where: str, raw: Any, seed: Callable[[Any], int]) -> tuple[dict[str, tuple[Any, ...]],
                                                                                 tuple[int, ...] | None]:
    """A grid's parameter value lists, and its own seeds (None when it has no ``seeds`` key)."""
    if not isinstance(raw, dict):
        raise _fail(source, where, f"expected a mapping of parameter name to a list of values, got {raw!r}")
    grid = {}
    raw = dict(raw)
    seeds = _values(source, f"{where}.seeds", raw.pop("seeds"), seed) if "seeds" in raw else None
    for name, vals in raw.items():
        if name == "seed":
            raise _fail(source, f"{where}.seed", "give seeds as the top-level 'seeds' list (or a grid's 'seeds')")
        if name not in profiles.PARAMETERS:
            raise _fail(source, f"{where}.{name}",
                        f"unknown parameter {name!r}; allowed: {', '.join(sorted(profiles.PARAMETERS))}")
        grid[name] = _values(source, f"{where}.{name}", vals,
                             lambda v, n=name: _coerce(source, f"{where}.{n}", n, v))
    return grid, seeds


def _options(source: str, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, allowed in _OPTIONS.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise _fail(source, section, f"expected a mapping of options, got {given!r}")
        for key, value in given.items():
            if key not in allowed:
                raise _fail(source, f"{section}.{key}",
                            f"unknown {section} option {key!r}; allowed: {', '.join(sorted(allowed))}")
            check, what = allowed[key]
            if not check(value):
                raise _fail(source, f"{section}.{key}", f"must be {what}, got {value!r}")
        out[section] = dict(given)
    return out


def load(spec: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> SweepSpec:
    """Parse and check a spec (a YAML file or a mapping); ``overrides`` replace top-level keys.

    Raises ValueError with one line naming the spec, the key and what is allowed. Parameter values
    are checked per cell by :func:`expand`.
    """
    if isinstance(spec, Mapping):
        raw, source, stem = dict(spec), "<spec>", "sweep"
    else:
        path = Path(spec)
        source, stem = str(path), path.stem
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{source}: cannot read the spec: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping with keys {', '.join(_SPEC_KEYS)}, got {raw!r}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(raw) - set(_SPEC_KEYS))
    if unknown:
        raise _fail(source, ", ".join(map(str, unknown)), f"unknown key; allowed: {', '.join(_SPEC_KEYS)}")

    exps = raw.get("experiment")
    exps = exps if isinstance(exps, list) else [exps] if exps is not None else None
    if not exps:
        raise _fail(source, "experiment", f"give one or a list of: {', '.join(sorted(experiments.EXPERIMENTS))}")
    for e in exps:
        if e not in experiments.EXPERIMENTS:
            raise _fail(source, "experiment",
                        f"unknown experiment {e!r}; allowed: {', '.join(sorted(experiments.EXPERIMENTS))}")
    if len(set(exps)) != len(exps):
        raise _fail(source, "experiment", "an experiment is listed twice")

    profile = raw.get("profile", "default")
    if profile not in profiles.PROFILES:
        raise _fail(source, "profile", f"unknown profile {profile!r}; allowed: {', '.join(sorted(profiles.PROFILES))}")

    def seed(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _fail(source, "seeds", f"expected non-negative integers, got {v!r}")
        return v

    params = raw.get("params") or {}
    parsed = tuple(_grid(source, f"params[{i}]", g, seed) for i, g in enumerate(params)) if isinstance(params, list) \
        else (_grid(source, "params", params, seed),)
    if not parsed:
        raise _fail(source, "params", "empty list of grids; give a mapping or leave it out")
    grids, grid_seeds = tuple(g for g, _ in parsed), tuple(s for _, s in parsed)

    seeds = _values(source, "seeds", raw["seeds"], seed) if "seeds" in raw \
        else tuple(profiles.get(profile)["seeds"])

    name = raw.get("name", stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _fail(source, "name", f"expected letters, digits, '_', '.' or '-', got {name!r}")
    folder = raw.get("folder") or Path("runs") / "sweeps" / name
    if not isinstance(folder, (str, os.PathLike)):
        raise _fail(source, "folder", f"expected a path, got {folder!r}")
    backend = raw.get("backend", "local")
    if backend not in BACKENDS:
        raise _fail(source, "backend", f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    return SweepSpec(name=name, experiments=tuple(exps), profile=profile, grids=grids, seeds=seeds,
                     folder=Path(folder), backend=backend, options=_options(source, raw), source=source,
                     grid_seeds=grid_seeds)


# ------------------------------------------------------------------------------------- cells
def fingerprint(experiment: str, profile: str, overrides: Mapping[str, Any], seed: int) -> str:
    """16 hex digits of the sha256 of the cell's canonical JSON (sorted keys, no whitespace).

    It identifies what the cell asks for, not the profile's current values or the code: editing a
    profile keeps existing results (their files record the parameters they ran with).
    """
    text = json.dumps({"experiment": experiment, "profile": profile, "params": dict(overrides), "seed": seed},
                      sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep: an experiment with the spec's overrides and a seed."""

    experiment: str
    profile: str
    overrides: tuple[tuple[str, Any], ...]  # sorted by name
    seed: int
    fingerprint: str
    params: dict[str, Any] = dataclasses.field(compare=False, hash=False, repr=False)  # resolved

    def describe(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.experiment} {kv + ' ' if kv else ''}seed={self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "experiment": self.experiment, "profile": self.profile,
                "params": dict(self.overrides), "seed": self.seed}


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the spec, each validated with :func:`experiments.resolve_params`.

    Order: grids, experiments, the cross product of the parameter lists (in the spec's order), seeds.
    A cell that two grids both produce appears once. For the slurm backend the device is not
    checked against this machine (the login node may have no GPU), only its spelling.
    """
    cells: dict[str, Cell] = {}
    remote = spec.backend == "slurm"
    for i, grid in enumerate(spec.grids):
        names = list(grid)
        for experiment, values, seed in itertools.product(spec.experiments, itertools.product(*grid.values()),
                                                          spec.seeds_of(i)):
            overrides = tuple(sorted(zip(names, values)))
            fp = fingerprint(experiment, spec.profile, dict(overrides), seed)
            if fp in cells:
                continue
            check = dict(overrides, seed=seed)
            if remote:
                device = check.get("device", profiles.get(spec.profile)["device"])
                if not (isinstance(device, str) and _DEVICE.match(device)):
                    raise ValueError(f"{spec.source}: params.device: unknown device {device!r}; allowed: auto, cpu, "
                                     "cuda, cuda:N, mps")
                check["device"] = "cpu"
            try:
                resolved = experiments.resolve_params(experiment, spec.profile, **check)
            except (ValueError, TypeError) as exc:
                where = " ".join(f"{k}={v!r}" for k, v in overrides) or "(no overrides)"
                raise ValueError(f"{spec.source}: cell {experiment} {where}: {exc}") from None
            if remote:
                resolved["device"] = device
            cells[fp] = Cell(experiment, spec.profile, overrides, seed, fp, resolved)
    return list(cells.values())


def _cell_dir(folder: Path, cell: Cell | str) -> Path:
    return folder / "cells" / (cell if isinstance(cell, str) else cell.fingerprint)


def cell_status(folder: str | os.PathLike, cell: Cell) -> str:
    """``done`` (its results file exists), ``failed`` (an error is recorded) or ``missing``."""
    d = _cell_dir(Path(folder), cell)
    if (d / "results.json").exists():
        return "done"
    return "failed" if (d / "error.json").exists() else "missing"


def _record_failure(cell_dir: Path, line: str, details: str) -> dict[str, Any]:
    write_json(cell_dir / "error.json", {"error": line, "traceback_file": "traceback.txt",
                                         "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    data = details.encode("utf-8")
    atomic_write(cell_dir / "traceback.txt", lambda f: f.write(data))
    return {"status": "failed", "error": line}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CellTask:
    """Runs one cell in a worker or a job: writes its results, or records its error and returns.

    It never raises for a failing experiment, so one bad cell cannot stop the others. Under
    submitit, ``__submitit_checkpoint__`` makes a timed-out or preempted Slurm job requeue itself;
    the experiment then resumes from its last round checkpoint.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, cell: Cell, folder: str) -> dict[str, Any]:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        d = _cell_dir(Path(folder), cell)
        tic = time.perf_counter()
        try:
            workdir = d / "runs" / experiments.default_workdir(cell.params).name
            experiments.run(cell.experiment, profile=cell.profile, out=d / "results.json", workdir=workdir,
                            seed=cell.seed, **dict(cell.overrides))
        except Exception as exc:  # noqa: BLE001 - any failure belongs to this cell only
            out = _record_failure(d, _one_line(exc), traceback.format_exc())
        else:
            for name in ("error.json", "traceback.txt"):
                (d / name).unlink(missing_ok=True)
            out = {"status": "done", "error": None}
        return {"fingerprint": cell.fingerprint, "seconds": time.perf_counter() - tic, **out}

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ---------------------------------------------------------------------------------- backends
Log = Callable[[str], None]


def _run_local(cells: Sequence[Cell], folder: Path, workers: int, task: Callable[[Cell, str], dict],
               log: Log) -> dict[str, dict[str, Any]]:
    """A spawn process pool; a worker that dies (OOM kill, crash) fails its own cell only.

    A dead worker breaks the whole pool, so the cells it took down run again: first in a
    one-worker pool, where the cell running when the pool breaks is the culprit and is recorded
    failed; the others then go on.
    """
    outcomes: dict[str, dict[str, Any]] = {}
    pending, solo = list(cells), False
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    while pending:
        broken: list[Cell] = []
        with cf.ProcessPoolExecutor(1 if solo else min(workers, len(pending)), mp_context=ctx) as pool:
            futures = {pool.submit(task, c, str(folder)): c for c in pending}
            for fut in cf.as_completed(futures):
                c = futures[fut]
                try:
                    outcomes[c.fingerprint] = fut.result()
                except BrokenProcessPool:
                    broken.append(c)
                    continue
                _log_outcome(log, len(outcomes), len(cells), c, outcomes[c.fingerprint])
        broken.sort(key=pending.index)
        if broken and solo:
            dead = broken.pop(0)
            outcomes[dead.fingerprint] = {"fingerprint": dead.fingerprint, **_record_failure(
                _cell_dir(folder, dead), "the worker process died while running this cell (killed or crashed)",
                "The process pool broke while this cell was running: the worker was killed (out of memory?)"
                " or crashed; there is no Python traceback.\n")}
            _log_outcome(log, len(outcomes), len(cells), dead, outcomes[dead.fingerprint])
        solo = bool(broken) and not solo
        pending = broken
    return outcomes


def _log_outcome(log: Log, i: int, n: int, cell: Cell, outcome: dict[str, Any]) -> None:
    extra = f"  {outcome['error']}" if outcome.get("error") else ""
    secs = f" ({outcome['seconds']:.1f} s)" if "seconds" in outcome else ""
    log(f"[{i}/{n}] {outcome['status']:6s} {cell.fingerprint} {cell.describe()}{secs}{extra}")


class SubmissionError(ValueError):
    """The cluster refused a submission (unknown partition, GPUs it does not have, ...)."""


def _executor_parameters(spec: SweepSpec, cluster: str) -> dict[str, Any]:
    o = spec.options["slurm"]
    params: dict[str, Any] = {"name": f"basisprune-{spec.name}",
                              "timeout_min": o.get("timeout_min", _DEFAULT_TIMEOUT_MIN)}
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if key in o:
            params[key] = o[key]
    for key in ("partition", "array_parallelism", "account", "qos", "constraint", "additional_parameters"):
        if key in o:
            params[f"slurm_{key}"] = o[key]
    if "setup" in o:
        params[f"{cluster}_setup"] = o["setup"]
    return params


def _run_submitit(spec: SweepSpec, cells: Sequence[Cell], folder: Path, cluster: str, window: int | None,
                  task: Callable[[Cell, str], dict], log: Log) -> dict[str, dict[str, Any]]:
    """Job arrays through submitit (``cluster`` slurm or local); job folders and logs in ``folder/submitit``.

    ``window`` cells go in one array at a time (None: all in one): submitit's local executor starts
    every job of an array at once, so on one machine the arrays are cut to its cores.
    """
    import submitit

    o = spec.options["slurm"]
    executor = submitit.AutoExecutor(folder=folder / "submitit" / "%j", cluster=cluster,
                                     slurm_max_num_timeout=o.get("max_num_timeout", 3))
    executor.update_parameters(**_executor_parameters(spec, cluster))
    outcomes: dict[str, dict[str, Any]] = {}
    step = window or len(cells)
    for start in range(0, len(cells), step):
        chunk = list(cells[start:start + step])
        try:
            # clean_env: submitting from inside a Slurm job must not inherit its SLURM_* variables;
            # submitit prints sbatch's complaint to stderr itself; it goes into our one-line error instead.
            with submitit.helpers.clean_env(), contextlib.redirect_stderr(io.StringIO()):
                jobs = executor.map_array(task, chunk, [str(folder)] * len(chunk))
        except submitit.core.utils.FailedJobError as exc:  # sbatch refused the options: nothing was queued
            raise SubmissionError(f"{cluster} refused the job array: {' '.join(str(exc).split())}") from None
        by_job = {}
        for cell, job in zip(chunk, jobs):
            write_json(_cell_dir(folder, cell) / "job.json", {"backend": spec.backend, "job_id": job.job_id,
                                                             "stdout": str(job.paths.stdout),
                                                             "stderr": str(job.paths.stderr)})
            by_job[job.job_id] = cell
        log(f"submitted {len(jobs)} job(s) to {cluster}: {', '.join(j.job_id for j in jobs)}")
        for job in submitit.helpers.as_completed(jobs, poll_frequency=2):
            cell = by_job[job.job_id]
            try:
                outcomes[cell.fingerprint] = job.result()
            except Exception as exc:  # noqa: BLE001 - the job died (timeout, OOM, node lost): this cell only
                outcomes[cell.fingerprint] = {"fingerprint": cell.fingerprint, **_record_failure(
                    _cell_dir(folder, cell), f"job {job.job_id} failed: {_one_line(exc)}"[:500],
                    f"{exc}\n\njob log: {job.paths.stderr}\n")}
            _log_outcome(log, len(outcomes), len(cells), cell, outcomes[cell.fingerprint])
    return outcomes


# --------------------------------------------------------------------------------------- run
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


def run(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec, *, backend: str | None = None,
        workers: int | None = None, folder: str | os.PathLike | None = None, dry_run: bool = False,
        log: Log = print, task: Callable[[Cell, str], dict] | None = None) -> SweepRun:
    """Run every cell of ``spec`` that has no results file yet; returns what was found and run.

    Args:
        spec: a YAML file, a mapping, or a :class:`SweepSpec`.
        backend, workers, folder: override the spec's ``backend``, ``local.workers`` and ``folder``.
        dry_run: list the cells and their status; run nothing.
        log: receives one line per event (progress, submission).
        task: the callable run per cell (default :class:`CellTask`); must be picklable.
    """
    if not isinstance(spec, SweepSpec):
        spec = load(spec, backend=backend, folder=folder)
    elif backend or folder:
        raise ValueError("give backend and folder in the spec when passing a SweepSpec")
    if workers is not None:
        check, what = _OPTIONS["local"]["workers"]
        if not check(workers):
            raise ValueError(f"workers must be {what}, got {workers!r}")
        local = {**spec.options["local"], "workers": workers}
        spec = dataclasses.replace(spec, options={**spec.options, "local": local})
    cells = expand(spec)
    out = spec.folder.resolve()
    status = {c.fingerprint: cell_status(out, c) for c in cells}
    todo = [c for c in cells if status[c.fingerprint] != "done"]
    tic = time.perf_counter()
    if dry_run:
        for c in cells:
            log(f"{status[c.fingerprint]:8s} {c.fingerprint} {c.describe()}")
        log(f"{len(cells)} cells, {len(todo)} to run ({spec.backend}); folder {out}")
        return SweepRun(spec, cells, status, [], 0.0)
    for c in todo:
        write_json(_cell_dir(out, c) / "cell.json", c.as_dict())
    if todo:
        log(f"{len(cells)} cells, {len(cells) - len(todo)} done, running {len(todo)} on {spec.backend}")
    if not todo:
        outcomes: dict[str, dict[str, Any]] = {}
    elif spec.backend == "slurm":
        threads = spec.options["slurm"].get("cpus_per_task")
        outcomes = _run_submitit(spec, todo, out, "slurm", None, task or CellTask(threads=threads), log)
    else:  # this machine: one torch thread per process, as many processes as workers
        n = spec.options["local"].get("workers") or _cores()
        if spec.backend == "local":
            outcomes = _run_local(todo, out, n, task or CellTask(threads=1), log)
        else:
            outcomes = _run_submitit(spec, todo, out, "local", n, task or CellTask(threads=1), log)
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


# ------------------------------------------------------------------------------------ report
_METRICS = ("final.accuracy_test", "final.accuracy_drop", "final.param_pruning_ratio", "final.flop_pruning_ratio",
            "reference.accuracy_test", "baselines.*.accuracy_test", "timings.compute_seconds")


def _flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def _metrics(record: dict[str, Any]) -> dict[str, float]:
    flat = _flatten({k: record.get(k) for k in ("final", "reference", "baselines", "timings")})
    return {k: v for pattern in _METRICS for k, v in flat.items() if fnmatch.fnmatchcase(k, pattern)}


def _grid_names(spec: SweepSpec) -> list[str]:
    return list(dict.fromkeys(n for g in spec.grids for n in g))


def collect(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec) -> pd.DataFrame:
    """One row per cell: fingerprint, experiment, grid parameters, seed, status, error, metrics."""
    spec = spec if isinstance(spec, SweepSpec) else load(spec)
    folder = spec.folder.resolve()
    rows = []
    for c in expand(spec):
        d = _cell_dir(folder, c)
        row: dict[str, Any] = {"fingerprint": c.fingerprint, "experiment": c.experiment,
                               **{n: c.params[n] for n in _grid_names(spec)}, "seed": c.seed,
                               "status": cell_status(folder, c), "error": None}
        if row["status"] == "done":
            row.update(_metrics(read_results(d / "results.json")))
        elif row["status"] == "failed":
            row["error"] = read_results(d / "error.json").get("error")
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(cells: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1) over seeds of each metric, per parameter combination.

    ``seeds_done`` / ``seeds`` count done and expected cells; a combination with no done cell keeps
    its row with empty metrics.
    """
    keys = ["experiment", *_grid_names(spec)]
    metrics = [c for c in cells.columns if c not in {*keys, "fingerprint", "seed", "status", "error"}]
    by = cells.groupby(keys, dropna=False, sort=False)
    table = by.size().rename("seeds").to_frame()
    table["seeds_done"] = by["status"].agg(lambda s: int((s == "done").sum()))
    done = cells[cells["status"] == "done"]
    if metrics and not done.empty:
        stats = done.groupby(keys, dropna=False, sort=False)[metrics].agg(["mean", "std"])
        stats.columns = [f"{m} {s}" for m, s in stats.columns]
        table = table.join(stats)
    return table.reset_index()


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def report(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec,
           folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``report.csv`` (means and spreads), ``report.md``, ``report.html`` and ``cells.csv``.

    Returns their paths. The markdown page holds the table (mean ± standard deviation over seeds)
    and lists the failed cells with their error and the missing ones.
    """
    if not isinstance(spec, SweepSpec):
        spec = load(spec, folder=folder)
    cells = collect(spec)
    table = summarize(cells, spec)
    out = spec.folder.resolve()
    names = _grid_names(spec)
    varying = [n for n in names if cells[n].astype(str).nunique() > 1]  # the page shows fixed ones once
    fixed = ", ".join(f"{n}={cells[n].iloc[0]}" for n in names if n not in varying)
    metrics = [c[:-5] for c in table.columns if c.endswith(" mean")]
    shown = table[["experiment", *varying, "seeds_done", "seeds"]].copy()
    for m in metrics:
        shown[m] = [_fmt(a, b) for a, b in zip(table[f"{m} mean"], table[f"{m} std"])]
    not_done = cells[cells["status"] != "done"][["status", "fingerprint", "experiment", *varying, "seed", "error"]]
    counts = cells["status"].value_counts()
    summary = (f"{', '.join(spec.experiments)}, profile {spec.profile}{'; ' + fixed if fixed else ''}. "
               f"{len(cells)} cells: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
               f"{counts.get('missing', 0)} missing. Each entry is the mean ± standard deviation (ddof 1) "
               "over the seeds done.")
    md = (f"# Sweep {spec.name}\n\n{summary}\n\n{shown.to_markdown(index=False)}\n\n## Failed and missing cells\n\n"
          f"{not_done.to_markdown(index=False) if len(not_done) else 'None.'}\n")
    page = (f"<!doctype html><meta charset='utf-8'><title>Sweep {spec.name}</title>\n<h1>Sweep {spec.name}</h1>"
            f"<p>{html.escape(summary)}</p>\n{shown.to_html(index=False)}\n<h2>Failed and missing cells</h2>\n"
            f"{not_done.to_html(index=False) if len(not_done) else '<p>None.</p>'}\n")
    paths = {}
    for name, text in (("report.csv", table.to_csv(index=False)), ("cells.csv", cells.to_csv(index=False)),
                       ("report.md", md), ("report.html", page)):
        data = text.encode("utf-8")
        paths[name] = atomic_write(out / name, lambda f, data=data: f.write(data))
    return paths
