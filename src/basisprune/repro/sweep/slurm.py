"""The ``slurm`` and ``submitit-local`` backends: job arrays through submitit.

Before anything is written, :func:`check_cluster` asks ``sinfo`` whether the partition exists and
has the GPUs asked for. Each submitted cell records its job in ``job.json``; a later call finds
the jobs still pending or running (``squeue``) and waits for them instead of submitting again.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..results import read_results, write_json
from .progress import Progress, SweepInterrupted
from .spec import Cell, SweepSpec, cell_dir
from .task import one_line, record_failure

__all__ = ["SubmissionError", "check_cluster", "live_jobs", "run_submitit", "submission_env"]

# Slurm's own default job time (submitit: 5 minutes) is too short for any real cell.
DEFAULT_TIMEOUT_MIN = 60
# What sbatch needs to find the cluster; submitit's clean_env() strips every SLURM_* variable.
KEEP_FOR_SBATCH = ("SLURM_CONF", "SLURM_CLUSTERS")
# squeue states of a job that will still run (or is finishing): a rerun waits for it.
_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESV_DEL_HOLD", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}


class SubmissionError(ValueError):
    """The cluster refused a submission, or could not be asked about earlier jobs."""


def _need_submitit(spec: SweepSpec) -> None:
    try:
        import submitit  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError(f"{spec.source}: backend: {spec.backend} needs submitit: pip install "
                         "'basisprune[sweep]'") from None


def _gpus(gres: str) -> int:
    """GPUs per node in one sinfo GRES field, e.g. ``gpu:a100:4(S:0-1),shard:8`` -> 4."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        fields = item.strip().split(":")
        if fields[0] == "gpu":
            total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total


def check_cluster(spec: SweepSpec) -> None:
    """Refuse, in one line, what this cluster cannot run: an unknown partition, more GPUs per node
    than its nodes have (any on a CPU partition). Asks ``sinfo``; writes nothing."""
    _need_submitit(spec)
    o = spec.options["slurm"]
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        raise ValueError(f"{spec.source}: backend: slurm needs Slurm's commands (sinfo, sbatch) on PATH, and "
                         "none were found here; try backend submitit-local on this machine")
    try:
        proc = subprocess.run([sinfo, "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{spec.source}: backend: sinfo did not answer in 60 s; is the cluster up?") from None
    if proc.returncode != 0:
        raise ValueError(f"{spec.source}: backend: sinfo failed: {' '.join(proc.stderr.split())[:300]}")
    parts: dict[str, list[str]] = {}
    default = None
    for line in proc.stdout.splitlines():
        name, _, gres = line.partition("|")
        if name.endswith("*"):
            name = default = name[:-1]
        parts.setdefault(name, []).append(gres)
    part = o.get("partition", default)
    if part is None:
        raise ValueError(f"{spec.source}: slurm.partition: this cluster has no default partition; give one of: "
                         f"{', '.join(parts) or 'none'}")
    if part not in parts:
        raise ValueError(f"{spec.source}: slurm.partition: unknown partition {part!r}; this cluster has: "
                         f"{', '.join(parts) or 'none'}")
    want = o.get("gpus_per_node", 0)
    most = max(_gpus(g) for g in parts[part])
    if want > most:
        raise ValueError(f"{spec.source}: slurm.gpus_per_node: {want} asked, but the nodes of partition {part!r} "
                         f"have {most or 'no'} GPU(s) (sinfo GRES: {', '.join(sorted(set(parts[part])))})")


@contextlib.contextmanager
def submission_env() -> Iterator[None]:
    """submitit's ``clean_env()`` (a job submitting from inside a job must not pass on its SLURM_*
    variables) that keeps :data:`KEEP_FOR_SBATCH`, without which sbatch may not find the cluster."""
    import submitit

    keep = {k: os.environ[k] for k in KEEP_FOR_SBATCH if k in os.environ}
    with submitit.helpers.clean_env():
        os.environ.update(keep)
        try:
            yield
        finally:
            for k in keep:  # clean_env puts back what it removed
                os.environ.pop(k, None)


def live_jobs(folder: Path, cells: Sequence[Cell]) -> dict[str, str]:
    """Cell fingerprint -> Slurm job id, for the cells whose ``job.json`` names a job that squeue
    still lists as pending, running or requeued."""
    recorded = {}
    for c in cells:
        f = cell_dir(folder, c) / "job.json"
        if f.exists():
            job = read_results(f)
            if job.get("backend") == "slurm":
                recorded[c.fingerprint] = str(job["job_id"])
    if not recorded:
        return {}
    ids = sorted(set(recorded.values()))
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:  # Slurm forgot them all: none alive
        raise SubmissionError(f"cannot ask squeue about the jobs in job.json ({', '.join(ids[:5])}...): "
                              f"{' '.join(proc.stderr.split())[:300]}; no job was submitted")
    states = dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)
    return {fp: jid for fp, jid in recorded.items() if states.get(jid) in _ALIVE}


def _executor_parameters(spec: SweepSpec, cluster: str) -> dict[str, Any]:
    o = spec.options["slurm"]
    params: dict[str, Any] = {"name": f"basisprune-{spec.name}", "timeout_min": o.get("timeout_min", DEFAULT_TIMEOUT_MIN)}
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if key in o:
            params[key] = o[key]
    for key in ("partition", "array_parallelism", "account", "qos", "constraint", "additional_parameters"):
        if key in o:
            params[f"slurm_{key}"] = o[key]
    if "setup" in o:
        params[f"{cluster}_setup"] = o["setup"]
    return params


def run_submitit(spec: SweepSpec, cells: Sequence[Cell], folder: Path, cluster: str, window: int | None,
                 task: Callable[[Cell, str], dict], progress: Progress) -> dict[str, dict[str, Any]]:
    """Job arrays through submitit (``cluster`` slurm or local); job folders and logs in ``folder/submitit``.

    ``window`` cells go in one array at a time (None: all in one): submitit's local executor starts
    every job of an array at once, so on one machine the arrays are cut to its cores. On Slurm,
    cells whose recorded job is still alive are waited for, not submitted again.
    """
    import submitit

    o = spec.options["slurm"]
    pattern = folder / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=pattern, cluster=cluster, slurm_max_num_timeout=o.get("max_num_timeout", 3))
    executor.update_parameters(**_executor_parameters(spec, cluster))
    by_fp = {c.fingerprint: c for c in cells}
    live = live_jobs(folder, cells) if cluster == "slurm" else {}
    reattached = [(by_fp[fp], submitit.SlurmJob(folder=pattern, job_id=jid)) for fp, jid in live.items()]
    if reattached:
        progress.log(f"reattached to {len(reattached)} live job(s) of an earlier submission: "
                     f"{', '.join(j.job_id for _, j in reattached)}")
    fresh = [c for c in cells if c.fingerprint not in live]
    step = window or max(len(fresh), 1)
    chunks = [fresh[i:i + step] for i in range(0, len(fresh), step)] or [[]]
    outcomes: dict[str, dict[str, Any]] = {}
    submitted: list[Any] = []
    try:
        for n, chunk in enumerate(chunks):
            jobs = list(reattached) if n == 0 else []
            if chunk:
                try:  # submitit prints sbatch's complaint to stderr itself; it goes into our one line instead
                    with submission_env(), contextlib.redirect_stderr(io.StringIO()):
                        new = executor.map_array(task, chunk, [str(folder)] * len(chunk))
                except submitit.core.utils.FailedJobError as exc:  # sbatch refused: nothing was queued
                    raise SubmissionError(f"{cluster} refused the job array: {' '.join(str(exc).split())}") from None
                for cell, job in zip(chunk, new):
                    write_json(cell_dir(folder, cell) / "job.json",
                               {"backend": spec.backend, "job_id": job.job_id, "folder": str(pattern),
                                "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
                submitted += new
                jobs += list(zip(chunk, new))
                progress.log(f"submitted {len(new)} job(s) to {cluster}: {', '.join(j.job_id for j in new)}")
            by_job = {job.job_id: cell for cell, job in jobs}
            for job in submitit.helpers.as_completed([j for _, j in jobs], poll_frequency=2):
                cell = by_job[job.job_id]
                try:
                    outcomes[cell.fingerprint] = job.result()
                except Exception as exc:  # noqa: BLE001 - the job died (timeout, OOM, node lost): this cell only
                    outcomes[cell.fingerprint] = {"fingerprint": cell.fingerprint, **record_failure(
                        cell_dir(folder, cell), f"job {job.job_id} failed: {one_line(exc)}"[:500],
                        f"{exc}\n\njob log: {job.paths.stderr}\n")}
                progress.finished(cell, outcomes[cell.fingerprint])
    except KeyboardInterrupt:
        if cluster == "slurm":
            raise SweepInterrupted(f"interrupted: {len(outcomes)} of {len(cells)} cell(s) finished; the jobs submitted "
                                   "keep running on the cluster: run the same command again to wait for them "
                                   "(scancel to stop them)") from None
        for job in submitted:
            job.cancel(check=False)
        raise SweepInterrupted(f"interrupted: {len(outcomes)} of {len(cells)} cell(s) finished, the others were "
                               "cancelled; run the same command again to resume") from None
    return outcomes
