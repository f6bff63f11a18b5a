"""A real Slurm: a single-node cluster started by the test (tests/slurm_cluster.py) runs a 2-cell
smoke sweep whose submitter is killed, one of whose jobs hits a time limit, and whose rerun
reattaches to the live jobs. Skipped, with the reason, where root or the packages are missing."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import slurm_cluster
from basisprune.repro import sweep
from basisprune.repro.results import read_results

pytestmark = pytest.mark.slurm

# Two cells: a short one, and a long one (12 epochs a round) still running when its time limit is cut.
SPEC = {
    "name": "slurm-smoke", "experiment": "basis_pruning", "profile": "smoke",
    "params": {"epochs_per_round": [1, 12], "basis_rounds": 3, "subset_train": 256, "subset_test": 64},
    "seeds": [0],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node Slurm whose configuration is found only through SLURM_CONF; stopped by PID."""
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield c
    c.stop()


def _squeue(cluster, job_id):
    return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T").strip()


def _round(path):
    import torch

    return torch.load(path, weights_only=False)["round"]


def _force_time_limit(cluster, job_id, cell_folder, seen, stop):
    """Once the long cell has a round checkpoint, cut its job's time limit to 1 minute (Slurm then
    sends submitit's USR2, as at a real time limit); once the job is requeued, give it its time back
    and let it start now (Slurm holds a requeued job back two minutes); then note the round of the
    first checkpoint the second attempt writes."""
    while not stop.is_set() and not list(cell_folder.glob("runs/*/basis.pt")):
        time.sleep(0.2)
    if stop.is_set():
        return
    ck = next(cell_folder.glob("runs/*/basis.pt"))
    cluster.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=1")
    seen["limit_set"] = time.monotonic()
    while not stop.is_set() and _squeue(cluster, job_id) not in ("PENDING", "REQUEUED"):
        time.sleep(0.2)
    seen["requeued"] = time.monotonic()
    before = ck.stat().st_mtime_ns
    seen["round_at_requeue"] = _round(ck)
    cluster.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=10", "StartTime=now")
    while not stop.is_set() and _squeue(cluster, job_id) != "RUNNING":
        time.sleep(0.2)
    seen["restarted"] = time.monotonic()
    while not stop.is_set() and ck.stat().st_mtime_ns == before:
        time.sleep(0.2)
    if not stop.is_set():
        seen["first_round_after"] = _round(ck)


def test_slurm_sweep_survives_a_killed_submitter_and_a_time_limit(cluster, tmp_path, monkeypatch):
    """Through a cluster found only via SLURM_CONF: the submitter is SIGKILLed once the array is
    queued; the rerun reattaches to the two live jobs (no second submission); the long cell's job
    is signalled at its time limit, requeued by submitit and resumed from its round checkpoint;
    both cells finish with their results."""
    tic = time.monotonic()
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    no_conf = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    assert subprocess.run(["sinfo"], env=no_conf, capture_output=True).returncode != 0  # only via SLURM_CONF
    folder = tmp_path / "sw"
    spec = dict(SPEC, folder=str(folder), slurm={"partition": cluster.partition, "cpus_per_task": 1,
                                                 "timeout_min": 10, "mem_gb": 1})
    cells = sweep.expand(sweep.load(spec, backend="slurm"))
    short, long_ = sorted(cells, key=lambda c: dict(c.overrides)["epochs_per_round"])

    # 1. The submitter, killed once both jobs are recorded.
    code = f"from basisprune.repro import sweep\nsweep.run({spec!r}, backend='slurm')\n"
    submitter = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, TQDM_DISABLE="1"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = [sweep.cell_dir(folder, c) / "job.json" for c in cells]
    while not all(j.exists() for j in jobs):
        assert submitter.poll() is None, submitter.stdout.read()
        assert time.monotonic() - tic < 120, "no job.json after 2 minutes"
        time.sleep(0.2)
    submitter.send_signal(signal.SIGKILL)
    submitter.wait()
    killed = time.monotonic()
    ids = {c.fingerprint: read_results(sweep.cell_dir(folder, c) / "job.json")["job_id"] for c in cells}

    # 2. The time limit, forced on the long cell's job while the rerun waits.
    seen, stop = {}, threading.Event()
    forcer = threading.Thread(target=_force_time_limit,
                              args=(cluster, ids[long_.fingerprint], sweep.cell_dir(folder, long_), seen, stop))
    forcer.start()
    lines = []
    try:
        done = sweep.run(spec, backend="slurm", log=lines.append)
    finally:
        stop.set()
        forcer.join()
    for line in lines:
        print(line)
    print(f"submitted and killed {killed - tic:.0f} s, limit cut {seen.get('limit_set', tic) - tic:.0f} s, requeued "
          f"{seen.get('requeued', tic) - tic:.0f} s (checkpoint of round {seen.get('round_at_requeue')}), restarted "
          f"{seen.get('restarted', tic) - tic:.0f} s (its first checkpoint: round {seen.get('first_round_after')}), "
          f"done {time.monotonic() - tic:.0f} s")
    assert any("reattached to 2 live job(s)" in line for line in lines)
    assert not any(line.startswith("submitted") for line in lines)
    assert {fp: read_results(sweep.cell_dir(folder, c) / "job.json")["job_id"] for fp, c in
            ((c.fingerprint, c) for c in cells)} == ids
    # One array, submitted once: every job folder belongs to it.
    assert {p.name.split("_")[0] for p in (folder / "submitit").iterdir() if p.is_dir()} == \
        {i.split("_")[0] for i in ids.values()}
    assert set(done.status.values()) == {"done"}

    job = read_results(sweep.cell_dir(folder, long_) / "job.json")
    log = Path(job["stdout"]).read_text() + Path(job["stderr"]).read_text()
    assert "this job is timed-out" in log and "Requeued job" in log, log[-2000:]
    # Resumed, not restarted: the second attempt's first checkpoint is the round after the last one
    # the first attempt saved (from scratch it would be round 0 again).
    assert 0 <= seen["round_at_requeue"] < SPEC["params"]["basis_rounds"]
    assert seen["first_round_after"] == seen["round_at_requeue"] + 1
    rec = read_results(sweep.cell_dir(folder, long_) / "results.json")
    assert len(rec["history"]) == SPEC["params"]["basis_rounds"] + 1  # rounds 0..n
