"""Execute the notebooks and build the book, offline.

Two commands (the Makefile's ``notebooks``, ``test-notebooks`` and ``book`` targets call them)::

    python -m basisprune_book execute --profile smoke --out notebooks/_executed/smoke [--only 01]
    python -m basisprune_book build --profile smoke

``execute`` runs every ``notebooks/NN_*.ipynb`` (sorted) with papermill, injecting only
``profile=<profile>`` (plus any ``-p KEY VALUE`` given), on the ``python3`` kernel of the Python
that runs this command, with ``notebooks/`` as the working directory. Executed copies go to
``--out``; per-notebook wall times are printed and written to ``<out>/timings.json``. A failing
notebook makes the command exit with status 1 and name the notebook (the others still run unless
``--fail-fast``).

``build`` copies ``_config.yml``, ``_toc.yml`` (without the entries whose notebook was not executed),
``book/``, ``_static/`` and the executed notebooks of the profile, with their ``results/`` (results
files and the tables' CSV downloads), into ``_build/src-<profile>/``, writes the API reference
(``book/api/``, :mod:`basisprune_book.pages`) and the citation page there, and runs
``jupyter-book build _build/src-<profile> -W -n --keep-going`` there (notebooks are not executed
again: ``execute_notebooks: "off"``). The HTML is in ``_build/src-<profile>/_build/html``
(:func:`html_dir`). Math is rendered by a local MathJax copy (sphinx-mathjax-offline); the build
fails if any page loads a script or style sheet from an http(s) URL.

The measured wall times (execution and book build) are written to ``timings.json`` and rendered
into ``book/_timings.md`` of the build tree, which the "Reproduce" chapter includes. Because the
build time is only known once the build is over, the book is built twice: the first, full build is
the one timed; the second only re-renders the pages that include the timings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from basisprune import errors
from basisprune.errors import BasisPruneError, ParameterError
from basisprune.bench import hardware
from basisprune.repro import profiles
from basisprune.repro.report import RESULTS_ENV, executed_dir, repo_root
from basisprune.repro.results import write_json, write_text

from . import pages

__all__ = [
    "PROFILES",
    "NOTEBOOK_PATTERN",
    "notebooks",
    "build_dir",
    "html_dir",
    "execute",
    "check_notebook_parameters",
    "build",
    "main",
]

PROFILES = tuple(profiles.PROFILES)
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[A-Za-z0-9_\-]+\.ipynb$")
KERNEL_NAME = "python3"
RUNS_ENV = "BASISPRUNE_RUNS"  # experiments.default_workdir puts checkpoints there
TIMINGS_FILE = "timings.json"
TIMINGS_PAGE = "_timings.md"
PROFILES_PAGE = "_profiles.md"
CITATION_PAGE = "_citation.md"
_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class BookError(BasisPruneError, RuntimeError):
    """Execution or build failed; the message says which notebook or step."""


# ------------------------------------------------------------------------------------ paths
def notebooks(root: str | os.PathLike | None = None, only: Sequence[str] | None = None) -> list[Path]:
    """The book's notebooks ``notebooks/NN_*.ipynb``, sorted; ``only`` keeps those whose stem
    equals, or starts with, one of the given names (``"04"``, ``"04_basis_pruning"``)."""
    nb_dir = Path(root or repo_root()) / "notebooks"
    found = sorted(p for p in nb_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if only:
        keys = [o.removesuffix(".ipynb") for o in only]
        picked = [p for p in found if any(p.stem == k or p.stem.startswith(k) for k in keys)]
        missing = [k for k in keys if not any(p.stem == k or p.stem.startswith(k) for p in found)]
        if missing:
            raise ParameterError(
                "only", f"only: no notebook matches {missing}; notebooks: {', '.join(p.stem for p in found)}", missing
            )
        return picked
    return found


def build_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """The build tree ``_build/src-<profile>`` (sources copied there, then built)."""
    return Path(root or repo_root()) / "_build" / f"src-{profiles.check_profile(profile)}"


def html_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """The built HTML of a profile: ``_build/src-<profile>/_build/html``."""
    return build_dir(profile, root) / "_build" / "html"


# ------------------------------------------------------------------------------------ timings
def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# ------------------------------------------------------------------------------------ execute
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


# Parameters of the notebooks that are not experiment parameters (those are checked with
# basisprune.repro.profiles.SPECS): one spec per value, or per item of a list.
def _notebook_specs() -> tuple[dict[str, Any], dict[str, Any]]:
    from basisprune.repro.profiles import SPECS, Spec

    scalars = {
        "n_images": Spec("int", low=1, optional=True), "threads": Spec("int", low=1, optional=True),
        "peer_epochs": Spec("int", low=0, optional=True), "onnx": Spec("bool", optional=True),
        "results_dir": Spec("path", optional=True),
        "calibration_dir": Spec("path", optional=True),
    }
    lists = {
        "datasets": SPECS["dataset"], "seeds": SPECS["seed"], "batch_sizes": Spec("int", low=1),
        "sparsities": Spec("float", low=0.0, high=1.0, low_open=True, high_open=True), "methods": Spec("str"),
    }
    return scalars, lists


_MAPPINGS = ("overrides", "transfer_overrides", "cost_overrides")


def _check_notebook_value(name: str, value: Any) -> None:
    from basisprune.repro.profiles import SPECS

    scalars, lists = _notebook_specs()
    if value is None:  # None: the profile's value, for every notebook parameter
        return
    if name in SPECS:
        SPECS[name].check(name, value)
    elif name in scalars:
        scalars[name].check(name, value)
    elif name in lists:
        if not isinstance(value, (list, tuple)) or not value:
            raise ParameterError(name, f"{name} must be a non-empty list (e.g. -p {name} '[...]'), each item "
                                 f"{lists[name].describe()}, got {value!r}", value)
        for item in value:
            try:
                lists[name].check(name, item)
            except ParameterError:
                raise ParameterError(name, f"{name} must be a list, each item {lists[name].describe()}, "
                                     f"got {value!r}", value) from None
    elif name in _MAPPINGS and not isinstance(value, dict):
        raise ParameterError(name, f"{name} must be a mapping (e.g. -p {name} '{{key: value}}'), got {value!r}", value)


def check_notebook_parameters(selected: Sequence[Path], parameters: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """The parameters to inject into each notebook, after checking them; nothing runs here.

    A parameter no selected notebook declares (in its cell tagged ``parameters``, as papermill
    reads it) is refused, naming the parameters those notebooks take; so is a value of the wrong
    kind (``-p seed abc``). Each notebook receives only the parameters it declares (``profile``
    always). Raises :class:`~basisprune.errors.ParameterError`.
    """
    import papermill as pm

    declared = {nb: set(pm.inspect_notebook(str(nb))) for nb in selected}
    known = set().union(*declared.values()) | {"profile"}
    for name, value in parameters.items():
        if name not in known:
            where = selected[0].stem if len(selected) == 1 else f"any of the {len(selected)} selected notebooks"
            raise ParameterError(name, f"parameter {name!r} is not declared by {where}; allowed: "
                                 f"{', '.join(sorted(known - {'profile'}))}", value)
        _check_notebook_value(name, value)
    return {nb: {k: v for k, v in parameters.items() if k in declared[nb] or k == "profile"} for nb in selected}


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
    (:func:`basisprune.repro.report.book_runs`) are computed first, side by side in the same pool,
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
    keys = ("MPLBACKEND", "TQDM_DISABLE", RESULTS_ENV, RUNS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env_backup = {k: os.environ.get(k) for k in keys}
    os.environ["MPLBACKEND"] = _INLINE_BACKEND
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ[RESULTS_ENV] = str(out / "results")
    os.environ[RUNS_ENV] = str(runs)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(int(threads))

    if not only:  # executed copies of notebooks that no longer exist must not reach the book
        wanted = {nb.name for nb in selected}
        for stale in out.iterdir():
            if NOTEBOOK_PATTERN.match(stale.name) and stale.name not in wanted:
                stale.unlink()
    timings_path = out / TIMINGS_FILE
    record = _read_json(timings_path) if only else {}
    if record.get("profile") not in (None, profile):
        record = {}
    record.setdefault("notebooks", {})
    if not only:
        record["notebooks"] = {}
    failures: list[str] = []
    kernel_threads = os.environ.get("OMP_NUM_THREADS")
    t_all = time.perf_counter()
    try:
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
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
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
        executed_utc=_now(),
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
        record[part][name] = {"seconds": round(seconds, 2), "status": status, "executed_utc": _now()}
        print(f"[{profile}] {name}: {status} in {seconds:.1f} s", flush=True)
        if error:
            print(f"[{profile}] {name}: {error}", file=sys.stderr, flush=True)
            failures.append(name)


def _run_chain(chain: Sequence[tuple[str, str, str, int]]) -> tuple[str, str | None, float]:
    """Compute one chain of experiment runs (in a worker process) into ``$BASISPRUNE_RUNS``; the
    notebooks that read them load their checkpoints. Returns (status, error, seconds)."""
    from basisprune.repro import experiments

    t0 = time.perf_counter()
    try:
        for prof, experiment, dataset, seed in chain:
            experiments.run(experiment, profile=prof, dataset=dataset, seed=seed)
    except Exception as e:  # noqa: BLE001 - the notebook reading this run fails with the same error
        return "failed", f"{type(e).__name__}: {_short(str(e))}", time.perf_counter() - t0
    return "ok", None, time.perf_counter() - t0


def _chain_label(chain: Sequence[tuple[str, str, str, int]]) -> str:
    prof, _, dataset, seed = chain[-1]
    return f"{'+'.join(r[1].removesuffix('_pruning') for r in chain)}-{dataset}-seed{seed}"


def _prefetch_chains(profile: str, root: Path) -> list[tuple[tuple[str, str, str, int], ...]]:
    """The chains of :func:`basisprune.repro.report.book_runs`, longest first by the compute and
    reference seconds of the profile's committed results (a chain's last run includes the stages
    before it); a chain without committed results goes first."""
    from basisprune.repro.report import book_runs

    def seconds(chain) -> float:
        prof, experiment, dataset, seed = chain[-1]
        t = _read_json(root / "data" / "results" / prof / f"{experiment}-{dataset}-seed{seed}.json").get("timings")
        if not isinstance(t, dict) or "compute_seconds" not in t:
            return float("inf")
        return float(t["compute_seconds"]) + float(t.get("reference_seconds") or 0.0)

    return sorted(book_runs(profile), key=lambda c: -seconds(c))


def _spawn():
    import multiprocessing

    # A fresh interpreter per worker: no state (threads, open files) inherited from this process.
    return multiprocessing.get_context("spawn")


#: With several jobs, the experiment runs the chapters share are computed first, side by side
#: (:func:`_prefetch_chains`); then these notebooks, which also compute work of their own (chapter
#: 6's pruning at initialization, chapter 7's peer and timings), then the rest, longest first.
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
        return {k: float(v.get("seconds") or 0.0) for k, v in _read_json(path).get("notebooks", {}).items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _short(text: str, limit: int = 2000) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return text if len(text) <= limit else text[:limit] + " ..."


# ------------------------------------------------------------------------------------ build
def _toc_without_missing(toc_text: str, present: set[str]) -> tuple[str, list[str]]:
    """Drop ``- file: notebooks/NN_x`` lines whose notebook is not in ``present`` (stems)."""
    kept, dropped = [], []
    for line in toc_text.splitlines(keepends=True):
        m = re.match(r"^\s*-\s*file:\s*notebooks/([^\s#]+?)(?:\.ipynb)?\s*(#.*)?$", line)
        if m and m.group(1) not in present:
            dropped.append(m.group(1))
            continue
        kept.append(line)
    return "".join(kept), dropped


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 90:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min ({s:.0f} s)"


def timings_markdown(record: dict[str, Any]) -> str:
    """The measured timings as a MyST table (included by book/reproduce.md)."""
    hw = record.get("hardware", {})
    lines = [
        f"Measured for the **{record.get('profile', '?')}** profile of this build "
        f"(executed {record.get('executed_utc', '?')}, built {record.get('built_utc', 'n/a')}) on "
        f"{hw.get('cpu_model') or 'an unknown CPU'}, {hw.get('usable_cores') or hw.get('cpu_count', '?')} cores"
        f"{', GPU ' + hw['cuda_device'] if hw.get('cuda_device') else ', no GPU'}; Python {hw.get('python', '?')}. "
        f"Kernel threads: {record.get('threads') or 'default (OMP_NUM_THREADS unset)'}"
        f"{'; resumed from earlier checkpoints, so the times are not those of a full run' if record.get('resumed') else ''}. "
        "Generated from `timings.json` by `python -m basisprune_book build`.",
        "",
        "| step | status | wall time |",
        "|:--|:--|--:|",
    ]
    for name, v in record.get("runs", {}).items():
        lines.append(f"| compute the shared runs `{name}` | {v.get('status', '?')} | {_fmt_seconds(v.get('seconds'))} |")
    for name, v in record.get("notebooks", {}).items():
        lines.append(f"| execute `{name}.ipynb` | {v.get('status', '?')} | {_fmt_seconds(v.get('seconds'))} |")
    lines.append(f"| **execute, all notebooks and runs (summed)** | | **{_fmt_seconds(record.get('execute_seconds'))}** |")
    if record.get("wall_seconds") is not None:
        lines.append(f"| **execute, wall time ({record.get('jobs', 1)} side by side)** | | "
                     f"**{_fmt_seconds(record.get('wall_seconds'))}** |")
    lines.append(f"| **build the book (jupyter-book)** | | **{_fmt_seconds(record.get('build_seconds'))}** |")
    lines.append(f"| **execute + build** | | **{_fmt_seconds(record.get('total_seconds'))}** |")
    return "\n".join(lines) + "\n"


def profiles_markdown() -> str:
    """Every setting of every profile (:data:`basisprune.repro.profiles.PROFILES`, the experiment
    parameters and the ``pai`` and ``timing`` sections) as a MyST table (included by
    book/reproduce.md)."""
    names = list(profiles.PROFILES)
    values = {n: profiles.get(n) for n in names}
    keys = ["datasets", "seeds", "table_seeds", "per_dataset", *profiles.PARAMETERS]
    for n in names:  # per-dataset overrides are not merged by get() without a dataset
        values[n]["per_dataset"] = profiles.PROFILES[n].get("per_dataset", {})
    section_help = {}
    for n in names:  # the sections, one row per setting: pai.scratch.epochs, timing.rounds, ...
        for part, settings in profiles.section(n, "pai").items():
            for k, v in settings.items():
                values[n][f"pai.{part}.{k}"] = v
                section_help[f"pai.{part}.{k}"] = f"chapter 6, {part} (`pai_{part}`)"
        for k, v in profiles.section(n, "timing").items():
            values[n][f"timing.{k}"] = v
            section_help[f"timing.{k}"] = "chapter 7, latency timing (`efficiency`)"
    keys += list(section_help)

    def cell(v: Any) -> str:
        if isinstance(v, dict):
            def inner(x: Any) -> str:
                if isinstance(x, dict):
                    return ", ".join(f"{k2}={x2!r}" for k2, x2 in x.items())
                return ", ".join(map(str, x)) if isinstance(x, (list, tuple)) else repr(x)

            text = "; ".join(f"{k}: {inner(x)}" for k, x in v.items()) if v else "–"
        elif isinstance(v, (list, tuple)):
            text = ", ".join(map(str, v))
        else:
            text = repr(v)
        return text.replace("|", "\\|")

    help_ = {"datasets": "data sets the notebooks loop over", "seeds": "seeds the notebooks loop over",
             "table_seeds": "seeds of the main table (chapter 5), per data set (else `seeds`)",
             "per_dataset": "parameters that differ for one data set"}
    lines = ["| parameter | " + " | ".join(f"`{n}`" for n in names) + " | meaning |",
             "|:--|" + "--:|" * len(names) + ":--|"]
    for k in keys:
        row = [cell(values[n].get(k)) for n in names]
        default = values["default"].get(k) if "default" in values else None
        marks = [f"**{c}**" if n != "default" and values[n].get(k) != default else c for n, c in zip(names, row)]
        meaning = help_.get(k) or section_help.get(k) or profiles.PARAMETERS[k][1]
        lines.append(f"| `{k}` | " + " | ".join(marks) + f" | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n\nBold: differs from the `default` profile.\n"


def _jupyter_book_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


_REMOTE_ASSET = re.compile(
    r"""<script[^>]*\bsrc=["'](?:https?:)?//[^"']+["']|<link[^>]*\bhref=["'](?:https?:)?//[^"']+\.css[^"']*["']""",
    re.IGNORECASE,
)


def remote_assets(html: str | os.PathLike) -> dict[str, list[str]]:
    """Scripts / style sheets loaded from http(s) URLs, by page (empty dict: fully offline)."""
    found: dict[str, list[str]] = {}
    for page in sorted(Path(html).rglob("*.html")):
        hits = _REMOTE_ASSET.findall(page.read_text(encoding="utf-8", errors="replace"))
        if hits:
            found[str(page.relative_to(html))] = hits
    return found


def _run_jupyter_book(src: Path, extra: Sequence[str] = ()) -> tuple[int, str]:
    cmd = [*_jupyter_book_cmd(), "build", str(src), "-W", "-n", "--keep-going", *extra]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def _error_outputs(executed: Path) -> list[str]:
    """``notebook: cell n (ename)`` for every error output not in a cell tagged ``raises-exception``."""
    import nbformat

    found = []
    for path in sorted(executed.iterdir()):
        if not NOTEBOOK_PATTERN.match(path.name):
            continue
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or "raises-exception" in cell.get("metadata", {}).get("tags", []):
                continue
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    found.append(f"{path.stem}: cell {i} ({out.get('ename')})")
    return found


def _markdown_table_csv(markdown: str) -> str:
    """The first Markdown table of ``markdown`` as CSV text (emphasis and code marks dropped)."""
    import csv
    import io

    rows = []
    for line in markdown.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        rows.append([re.sub(r"\*\*|`", "", c).replace("\\|", "|") for c in cells])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _write_page_and_csv(page: Path, markdown: str, name: str, source: str) -> None:
    """Write a generated page that the "Reproduce" chapter includes, with its table as a CSV
    download beside it (like the chapters' tables, :func:`basisprune.repro.report.show_table`)."""
    write_text(page.with_name(f"{name}.csv"), _markdown_table_csv(markdown))
    source = f"{{download}}`{source} <{source}>`" if source.endswith(".json") else source
    write_text(page, f"{markdown}\nDownload this table: {{download}}`{name}.csv <{name}.csv>`; computed from {source}.\n")


def _copy_for_readers(executed: Path, dest: Path) -> None:
    """Copy an executed notebook into the build tree without the cell papermill injected (the
    profile it names is printed by the chapter's setup cell and on the "Reproduce" page)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, dest)


def _set_aside(html: Path) -> None:
    """Move the HTML of a failed build to ``html.failed`` so that it is not taken for a good book."""
    failed = html.with_name("html.failed")
    if failed.exists():
        shutil.rmtree(failed)
    if html.exists():
        html.rename(failed)


def _warnings(log: str) -> str:
    """The warning and error lines of a jupyter-book log (else its tail), without colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in log.splitlines()]
    hits = [ln for ln in lines if "WARNING" in ln or "ERROR" in ln or "Error" in ln]
    return "\n".join(hits[:40] if hits else lines[-40:])


def build(
    profile: str,
    executed: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
) -> Path:
    """Build the HTML book of ``profile`` from its executed notebooks; returns the HTML directory."""
    profiles.check_profile(profile)
    root = Path(root or repo_root())
    executed = Path(executed) if executed is not None else executed_dir(profile, root)
    if not executed.is_dir() or not any(NOTEBOOK_PATTERN.match(p.name) for p in executed.iterdir()):
        raise BookError(
            f"no executed notebooks in {executed}; run "
            f"`python -m basisprune_book execute --profile {profile} --out {executed}` first"
        )
    timings_path = executed / TIMINGS_FILE
    record = _read_json(timings_path)
    failed = [k for k, v in record.get("notebooks", {}).items() if v.get("status") != "ok"]
    if failed:
        raise BookError(f"notebook(s) failed when executed, not building: {', '.join(failed)}")

    errors = _error_outputs(executed)
    if errors:
        raise BookError(f"executed notebooks contain error outputs, not building: {'; '.join(errors)}")

    src = build_dir(profile, root)
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(root / "_config.yml", src / "_config.yml")
    shutil.copytree(root / "book", src / "book", ignore=shutil.ignore_patterns("_build", ".*"))
    (src / "notebooks").mkdir()
    present = set()
    for nb in sorted(executed.iterdir()):
        if NOTEBOOK_PATTERN.match(nb.name):
            _copy_for_readers(nb, src / "notebooks" / nb.name)
            present.add(nb.stem)
    toc, dropped = _toc_without_missing((root / "_toc.yml").read_text(encoding="utf-8"), present)
    write_text(src / "_toc.yml", toc)
    if dropped:
        print(f"[{profile}] not in this build (no executed notebook): {', '.join(dropped)}")
    # The results files and the tables' CSV files the notebooks wrote (report.show_table links them
    # as {download} from notebooks/results/...), the style sheet, the API reference and the citation.
    if (executed / "results").is_dir():
        shutil.copytree(executed / "results", src / "notebooks" / "results", ignore=shutil.ignore_patterns(".*"))
    if (root / "_static").is_dir():
        shutil.copytree(root / "_static", src / "_static")
    for name, text in pages.api_pages().items():
        write_text(src / pages.API_DIR / name, text)
    write_text(src / "book" / CITATION_PAGE, pages.citation_markdown(root / "CITATION.cff"))
    page = src / "book" / TIMINGS_PAGE
    _write_page_and_csv(page, timings_markdown(record), "timings", "timings.json")
    write_json(src / "book" / TIMINGS_FILE, record)
    _write_page_and_csv(src / "book" / PROFILES_PAGE, profiles_markdown(), "profiles",
                        "`src/basisprune/repro/profiles.py` in the repository")

    print(f"[{profile}] jupyter-book build {src} -W -n --keep-going ...", flush=True)
    t0 = time.perf_counter()
    rc, log = _run_jupyter_book(src)
    build_seconds = time.perf_counter() - t0
    write_text(src / "build.log", log)
    if rc != 0:
        _set_aside(html_dir(profile, root))
        raise BookError(f"jupyter-book build failed (exit {rc}); full log in {src / 'build.log'}\n{_warnings(log)}")
    print(f"[{profile}] book built in {build_seconds:.1f} s", flush=True)

    record.update(
        build_seconds=round(build_seconds, 2),
        # Side by side, the execution took its wall time, not the sum of the notebooks' times.
        total_seconds=round((record.get("wall_seconds") or record.get("execute_seconds", 0.0)) + build_seconds, 2),
        built_utc=_now(),
    )
    write_json(timings_path, record)
    # Second pass: put the measured build time into the timings page (only it is re-rendered).
    _write_page_and_csv(page, timings_markdown(record), "timings", "timings.json")
    write_json(src / "book" / TIMINGS_FILE, record)
    t1 = time.perf_counter()
    rc, log2 = _run_jupyter_book(src)
    write_text(src / "build.log", log + "\n--- timings pass ---\n" + log2)
    if rc != 0:
        _set_aside(html_dir(profile, root))
        raise BookError(f"jupyter-book build (timings pass) failed (exit {rc}); log in {src / 'build.log'}\n{_warnings(log2)}")
    print(f"[{profile}] timings page re-rendered in {time.perf_counter() - t1:.1f} s", flush=True)
    shutil.copy2(timings_path, src / TIMINGS_FILE)

    html = html_dir(profile, root)
    remote = remote_assets(html)
    if remote:
        listing = "; ".join(f"{p}: {h[:2]}" for p, h in list(remote.items())[:5])
        raise BookError(f"pages load scripts/styles from the internet (the book must work offline): {listing}")
    if not (html / "_static" / "mathjax" / "tex-chtml.js").is_file():
        raise BookError(f"the local MathJax copy is missing from {html / '_static' / 'mathjax'}")
    print(f"[{profile}] HTML: {html}/index.html  (offline: no http(s) scripts or style sheets)")
    return html



# ------------------------------------------------------------------------------------ CLI
def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = errors.ArgumentParser(prog="python -m basisprune_book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute the notebooks with papermill")
    ex.add_argument("--profile", default="default", choices=PROFILES)
    ex.add_argument("--out", help="folder for the executed copies (default notebooks/_executed/PROFILE)")
    ex.add_argument("--only", action="append", metavar="NAME", help="only this notebook (stem or prefix, e.g. 04); repeatable")
    ex.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
        help="another parameter to inject (VALUE parsed as YAML), e.g. -p dataset fashion_mnist",
    )
    ex.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    ex.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ex.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernels")
    ex.add_argument("--jobs", type=int, default=1, help="notebooks executed side by side (default 1)")
    ex.add_argument("--resume", action="store_true", help="reuse the checkpoints of an earlier (interrupted) run in OUT/runs")
    bd = sub.add_parser("build", help="build the HTML book from the executed notebooks")
    bd.add_argument("--profile", default="default", choices=PROFILES)
    bd.add_argument("--executed", help="folder of executed notebooks (default notebooks/_executed/PROFILE)")
    wh = sub.add_parser("html", help="print the HTML folder of a profile")
    wh.add_argument("--profile", default="default", choices=PROFILES)
    for p in (ex, bd, wh):  # --debug after the subcommand too (SUPPRESS: no override of the first)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, status 2) and --help (status 0)
        return exc.code if isinstance(exc.code, int) else errors.EXIT_ERROR
    try:
        if args.command == "execute":
            params = {k: _parse_value(v) for k, v in args.parameter}
            if "profile" in params:
                raise ParameterError("profile", "give the profile with --profile, not -p profile")
            execute(
                args.profile, args.out, only=args.only, parameters=params,
                fail_fast=args.fail_fast, timeout=args.timeout, threads=args.threads, resume=args.resume,
                jobs=args.jobs,
            )
        elif args.command == "build":
            build(args.profile, args.executed)
        else:
            print(html_dir(args.profile))
    except errors.REPORTED as e:
        return errors.report(e, debug=args.debug)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
