"""Executing the notebooks with papermill, one at a time or side by side.

``execute`` runs every ``notebooks/NN_*.ipynb`` (sorted) with papermill, injecting only
``profile=<profile>`` (plus any ``-p KEY VALUE`` given, checked by
:mod:`~basisprune_book.parameters`), on the ``python3`` kernel of the Python that runs this command,
with ``notebooks/`` as the working directory. Executed copies go to ``--out``; per-notebook wall
times are printed and written to ``<out>/timings.json``. A failing notebook makes the command exit
with status 1 and name the notebook (the others still run unless ``--fail-fast``).

With several jobs the experiment runs the chapters share (the run plan,
:func:`basisprune.repro.plan.book_runs`) are computed first as chains in the same process pool,
longest first; then :data:`PARALLEL_FIRST`, then the other notebooks, longest first.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

from basisprune.repro.provenance import hardware
from basisprune.errors import ParameterError
from basisprune.repro import profiles
from basisprune.repro.paths import RESULTS_ENV, executed_dir, repo_root
from basisprune.repro.results import write_json

from .layout import NOTEBOOK_PATTERN, TIMINGS_FILE, BookError, notebooks, read_json, utc_now
from .parameters import check_notebook_parameters

__all__ = ["KERNEL_NAME", "PARALLEL_FIRST", "RUNS_ENV", "execute"]


KERNEL_NAME = "python3"
RUNS_ENV = "BASISPRUNE_RUNS"  # experiments.default_workdir puts checkpoints there
_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _kernel_python() -> str | None:
    """The Python the ``python3`` kernel will run (jupyter_client maps ``python`` to sys.executable)."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        argv = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv
    except Exception:  # noqa: BLE001
        return None
    exe = argv[0]
    if exe in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
        return sys.executable
    return exe


def execute(
    profile: str,
    out: str | os.PathLike | None = None,
    *,
    only: Sequence[str] | None = None,
    parameters: dict[str, Any] | None = None,
    fail_fast: bool = False,
    timeout: int | None = None,
    threads: int | None = None,
    resume: bool = False,
    root: str | os.PathLike | None = None,
    jobs: int = 1,
    shared_runs: bool = True,
) -> dict[str, Any]:
    """Execute the notebooks with papermill; returns the timings record (also in ``<out>/timings.json``).

    ``jobs`` notebooks run side by side (each kernel its own process; with ``threads=1`` one core
    each), :data:`PARALLEL_FIRST` first, then the longest; ``wall_seconds`` in the record is the
    elapsed time of them all. With ``shared_runs`` (and several jobs, all notebooks, no
    ``parameters``), the experiment runs the chapters share
    (:func:`basisprune.repro.plan.book_runs`) are computed first, side by side in the same pool,
    longest first; the notebooks then load their checkpoints (``runs`` in the record: their times). ``fail_fast`` stops before the next notebook when they run one at a
    time; side by side, every notebook is already queued.

    Experiment checkpoints go to ``<out>/runs`` (``$BASISPRUNE_RUNS`` for the kernels), emptied
    first unless ``resume`` (then finished rounds are reused and the wall times are not those of a
    full run). ``threads`` sets ``OMP_NUM_THREADS`` for the kernels (on a CPU shared with other
    jobs, one thread per process avoids the large slow-downs of oversubscribed OpenMP threads).

    Raises :class:`BookError` naming the notebooks that failed (their executed copies, with the
    error, are still written to ``out``).
    """
    from basisprune.repro.results import check_writable, clean_stale_temporaries

    profiles.check_profile(profile)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ParameterError("jobs", f"jobs must be an integer >= 1 (notebooks run side by side), got {jobs!r}", jobs)
    root = Path(root or repo_root())
    out = Path(out) if out is not None else executed_dir(profile, root)
    out = out if out.is_absolute() else (Path.cwd() / out)
    selected = notebooks(root, only)
    if not selected:
        raise BookError(f"no notebooks in {root / 'notebooks'}")
    per_notebook = check_notebook_parameters(selected, {"profile": profile, **(parameters or {})})
    check_writable(out, "out", directory=True)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "results"):
        clean_stale_temporaries(folder)
    kernel_py = _kernel_python()
    if kernel_py is not None and Path(kernel_py).resolve() != Path(sys.executable).resolve():
        print(
            f"warning: the {KERNEL_NAME} kernel runs {kernel_py}, not {sys.executable}; "
            "install ipykernel in this environment or remove the other kernelspec",
            file=sys.stderr,
        )
    params = {"profile": profile, **(parameters or {})}
    # The kernels inherit this environment: plots must use the inline backend (the Makefile sets
    # MPLBACKEND=Agg for the unit tests), progress bars stay quiet, results go next to the copies.
    runs = out / "runs"
    if runs.exists() and not resume:
        shutil.rmtree(runs)
    kernel_env = {"MPLBACKEND": _INLINE_BACKEND, "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
                  RESULTS_ENV: str(out / "results"), RUNS_ENV: str(runs)}
    if threads is not None:
        kernel_env["OMP_NUM_THREADS"] = kernel_env["MKL_NUM_THREADS"] = str(int(threads))

    if not only:  # executed copies of notebooks that no longer exist must not reach the book
        wanted = {nb.name for nb in selected}
        for stale in out.iterdir():
            if NOTEBOOK_PATTERN.match(stale.name) and stale.name not in wanted:
                stale.unlink()
    timings_path = out / TIMINGS_FILE
    record = read_json(timings_path) if only else {}
    if record.get("profile") not in (None, profile):
        record = {}
    record.setdefault("notebooks", {})
    if not only:
        record["notebooks"] = {}
    failures: list[str] = []
    with mock.patch.dict(os.environ, kernel_env):  # put back as it was afterwards, absent variables too
        kernel_threads = os.environ.get("OMP_NUM_THREADS")
        t_all = time.perf_counter()
        # Side by side: PARALLEL_FIRST first, then the longest (by the last recorded wall times).
        # Experiments that two notebooks share are computed once: the second waits on the stage's
        # lock, then reads its checkpoint.
        order = _parallel_order(selected, _last_seconds(profile, root)) if jobs > 1 else selected
        tasks = [(str(nb), str(out / nb.name), per_notebook[nb], str(nb.parent), timeout) for nb in order]
        chains = _prefetch_chains(profile, root) if shared_runs and jobs > 1 and not only and not parameters else []
        record["runs"] = {}
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=_spawn()) as pool:
            pending = {}
            if jobs > 1:
                if chains:
                    print(f"[{profile}] first {len(chains)} chain(s) of experiment runs the chapters share, "
                          f"longest first: {', '.join(_chain_label(c) for c in chains)}", flush=True)
                    for chain in chains:
                        pending[pool.submit(_run_chain, chain)] = _chain_label(chain)
                print(f"[{profile}] {len(order)} notebook(s), {jobs} at a time, in this order: "
                      f"{', '.join(nb.stem for nb in order)}", flush=True)
            for nb, task in zip(order, tasks):
                if failures and fail_fast:
                    break
                if jobs <= 1:
                    print(f"[{profile}] {nb.stem} ...", flush=True)
                pending[pool.submit(_execute_one, *task)] = nb
                if jobs <= 1:  # one at a time: in file order, and fail_fast stops before the next
                    _collect(concurrent.futures.wait(pending).done, pending, record, failures, profile)
                    pending = {}
            while pending:
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                _collect(done, pending, record, failures, profile)
                for f in done:
                    pending.pop(f)
    total = time.perf_counter() - t_all
    record.update(
        jobs=jobs,
        wall_seconds=round(total, 2),
        profile=profile,
        parameters=params,
        threads=int(kernel_threads) if kernel_threads and kernel_threads.isdigit() else None,
        resumed=bool(resume),
        execute_seconds=round(sum(v["seconds"] for part in ("notebooks", "runs")
                                  for v in record.get(part, {}).values()), 2),
        executed_utc=utc_now(),
        hardware=hardware(),
    )
    for stale in ("build_seconds", "total_seconds", "built_utc"):
        record.pop(stale, None)
    write_json(timings_path, record)
    print(f"[{profile}] executed {len(selected)} notebook(s) in {total:.1f} s -> {out} ({TIMINGS_FILE})")
    if failures:
        raise BookError(f"failed with profile {profile!r}: {', '.join(failures)} (see {out})")
    return record


def _execute_one(nb: str, dest: str, parameters: dict[str, Any], cwd: str, timeout: int | None) -> tuple[str, str | None, float]:
    """Execute one notebook (in a worker process); returns (status, error, seconds)."""
    import papermill as pm

    t0 = time.perf_counter()
    try:
        pm.execute_notebook(nb, dest, parameters=parameters, kernel_name=KERNEL_NAME, cwd=cwd,
                            progress_bar=False, execution_timeout=timeout)
    except Exception as e:  # noqa: BLE001 - papermill raises several kinds
        return "failed", f"{type(e).__name__}: {_short(str(e))}", time.perf_counter() - t0
    return "ok", None, time.perf_counter() - t0


def _collect(done, pending: dict, record: dict[str, Any], failures: list[str], profile: str) -> None:
    for fut in done:
        task = pending[fut]
        part, name = ("notebooks", task.stem) if isinstance(task, Path) else ("runs", task)
        status, error, seconds = fut.result()
        record[part][name] = {"seconds": round(seconds, 2), "status": status, "executed_utc": utc_now()}
        print(f"[{profile}] {name}: {status} in {seconds:.1f} s", flush=True)
        if error:
            print(f"[{profile}] {name}: {error}", file=sys.stderr, flush=True)
            failures.append(name)


def _run_chain(chain: Sequence[tuple[str, str, str | None, int]]) -> tuple[str, str | None, float]:
    """Compute one chain of experiment runs (in a worker process) into ``$BASISPRUNE_RUNS``; the
    notebooks that read them load their checkpoints. Returns (status, error, seconds)."""
    from basisprune.repro import experiments

    t0 = time.perf_counter()
    try:
        for prof, experiment, dataset, seed in chain:
            # A pruning-at-initialization run whose settings name no data set takes none.
            experiments.run(experiment, profile=prof, seed=seed, **({} if dataset is None else {"dataset": dataset}))
    except Exception as e:  # noqa: BLE001 - the notebook reading this run fails with the same error
        return "failed", f"{type(e).__name__}: {_short(str(e))}", time.perf_counter() - t0
    return "ok", None, time.perf_counter() - t0


def _chain_label(chain: Sequence[tuple[str, str, str | None, int]]) -> str:
    seed = chain[-1][3]
    dataset = next((r[2] for r in reversed(chain) if r[2] is not None), None)  # pai runs may name none
    names = "+".join(r[1].removesuffix("_pruning") for r in chain)
    return f"{names}-{dataset}-seed{seed}" if dataset is not None else f"{names}-seed{seed}"


def _prefetch_chains(profile: str, root: Path) -> list[tuple[tuple[str, str, str, int], ...]]:
    """The chains of :func:`basisprune.repro.plan.book_runs`, longest first by the compute and
    reference seconds of the profile's committed results (a chain's last run includes the stages
    before it); a chain without committed results goes first."""
    from basisprune.repro.plan import book_runs

    def seconds(chain) -> float:
        prof, experiment, dataset, seed = chain[-1]
        t = read_json(root / "data" / "results" / prof / f"{experiment}-{dataset}-seed{seed}.json").get("timings")
        if not isinstance(t, dict) or "compute_seconds" not in t:
            return float("inf")
        return float(t["compute_seconds"]) + float(t.get("reference_seconds") or 0.0)

    return sorted(book_runs(profile), key=lambda c: -seconds(c))


def _spawn():
    import multiprocessing

    # A fresh interpreter per worker: no state (threads, open files) inherited from this process.
    return multiprocessing.get_context("spawn")


#: With several jobs, the experiment runs the chapters share are computed first, side by side
#: (:func:`_prefetch_chains`, chapter 6's pruning-at-initialization runs among them); then these
#: notebooks, which compute work of their own when nothing was prefetched (chapter 6) or always
#: (chapter 7's peer and timings), then the rest, longest first.
PARALLEL_FIRST = ("06", "07")


def _parallel_order(selected: Sequence[Path], seconds: dict[str, float]) -> list[Path]:
    first = [nb for p in PARALLEL_FIRST for nb in selected if nb.stem.startswith(p)]
    rest = sorted((nb for nb in selected if nb not in first), key=lambda nb: -seconds.get(nb.stem, 0.0))
    return first + rest


def _last_seconds(profile: str, root: Path) -> dict[str, float]:
    """Per-notebook wall times of the profile's committed results (empty when there are none)."""
    path = root / "data" / "results" / profile / TIMINGS_FILE
    if not path.exists():
        return {}
    try:
        return {k: float(v.get("seconds") or 0.0) for k, v in read_json(path).get("notebooks", {}).items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _short(text: str, limit: int = 2000) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return text if len(text) <= limit else text[:limit] + " ..."
