"""Sweeps: grid expansion and fingerprints, bad specs, the local and submitit backends, the report."""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import experiments, sweep
from basisprune.repro.cli import main as cli_main
from basisprune.repro.results import read_results, write_json

# Four cells of a few seconds each: 2 pruning fractions x 2 seeds on the smoke profile.
SMOKE = {
    "name": "smoke", "experiment": "basis_pruning", "profile": "smoke",
    "params": {"basis_fraction": [0.2, 0.4], "basis_rounds": 1, "subset_train": 160, "subset_test": 64,
               "batch_size": 32},
    "seeds": [0, 1],
}


def _spec(folder, **changes):
    return {**SMOKE, "folder": str(folder), **changes}


def _mtimes(folder):
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(folder).glob("cells/*/results.json")}


# ------------------------------------------------------------------------------ expansion
_VALUES = {
    "basis_fraction": st.floats(0.01, 0.99),
    "basis_rounds": st.integers(0, 5),
    "batch_size": st.integers(1, 512),
    "bn_mode": st.sampled_from(["eval", "train"]),
    "lr": st.floats(0.0, 1.0),
    "channel_threshold": st.one_of(st.none(), st.floats(0.0, 1.0)),
    "basis_normalize": st.sampled_from(["none", "mean", "max", "l2", "cost", "saved"]),
}


@st.composite
def _grids(draw):
    names = draw(st.lists(st.sampled_from(sorted(_VALUES)), max_size=3, unique=True))
    return {n: draw(st.lists(_VALUES[n], min_size=1, max_size=3, unique=True)) for n in names}


@settings(max_examples=40, deadline=None)
@given(exps=st.lists(st.sampled_from(sorted(experiments.EXPERIMENTS)), min_size=1, max_size=2, unique=True),
       grids=st.lists(_grids(), min_size=1, max_size=2),
       seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=3, unique=True))
def test_grid_expands_to_the_union_of_products(exps, grids, seeds):
    """The cells are exactly the union over grids of experiments x value lists x seeds, each once;
    fingerprints are distinct, and the same whatever the order of the parameters in the spec."""
    cells = sweep.expand(sweep.load({"experiment": exps, "profile": "smoke", "params": grids, "seeds": seeds}))
    expected = set()
    for g in grids:
        for e, values, s in itertools.product(exps, itertools.product(*g.values()), seeds):
            expected.add((e, tuple(sorted(zip(g, values))), s))
    got = [(c.experiment, c.overrides, c.seed) for c in cells]
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    assert len({c.fingerprint for c in cells}) == len(cells)
    reordered = [dict(reversed(list(g.items()))) for g in reversed(grids)]
    again = sweep.expand(sweep.load({"experiment": exps[::-1], "profile": "smoke", "params": reordered,
                                     "seeds": seeds[::-1]}))
    assert {(c.experiment, c.overrides, c.seed): c.fingerprint for c in again} == \
        {(c.experiment, c.overrides, c.seed): c.fingerprint for c in cells}


def test_a_grids_own_seeds_replace_the_top_level_seeds_for_that_grid_only():
    """A grid with a ``seeds`` key expands over those seeds; a grid without one over the spec's."""
    spec = sweep.load({"experiment": "basis_pruning", "profile": "smoke", "seeds": [0, 1],
                       "params": [{"basis_fraction": [0.2], "seeds": [3, 4, 5]}, {"basis_fraction": [0.4]}]})
    seeds = {}
    for c in sweep.expand(spec):
        seeds.setdefault(dict(c.overrides)["basis_fraction"], set()).add(c.seed)
    assert seeds == {0.2: {3, 4, 5}, 0.4: {0, 1}}


def test_fingerprints_are_stable_across_processes():
    """A cell's fingerprint does not depend on the process (hash seed) that computes it."""
    here = [c.fingerprint for c in sweep.expand(sweep.load(SMOKE))]
    code = ("import json, sys; from basisprune.repro import sweep\n"
            f"print(json.dumps([c.fingerprint for c in sweep.expand(sweep.load({SMOKE!r}))]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    there = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    assert here == there


def test_fingerprint_covers_profile_and_canonical_values():
    """The profile is part of a cell's identity; 1, 1.0 and "1.0" for a float parameter are one value."""
    base = sweep.fingerprint("basis_pruning", "smoke", {"lr": 1.0}, 0)
    assert sweep.fingerprint("basis_pruning", "default", {"lr": 1.0}, 0) != base
    for lr in (1, 1.0, "1.0"):
        (cell,) = sweep.expand(sweep.load({"experiment": "basis_pruning", "profile": "smoke",
                                           "params": {"lr": [lr]}, "seeds": [0]}))
        assert cell.fingerprint == base


def test_dry_run_runs_and_writes_nothing(tmp_path):
    """--dry-run lists every cell as missing and creates no folder."""
    lines = []
    out = sweep.run(_spec(tmp_path / "sw"), dry_run=True, log=lines.append)
    assert out.ran == [] and set(out.status.values()) == {"missing"} and len(out.cells) == 4
    assert sum(c.fingerprint in " ".join(lines) for c in out.cells) == 4
    assert not (tmp_path / "sw").exists()


# ------------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize("changes, match", [
    ({"params": {"epochs": [1, 2]}}, r"params\.epochs: unknown parameter 'epochs'; allowed: "),
    ({"params": {"basis_fraction": []}}, r"params\.basis_fraction: empty list"),
    ({"params": {"basis_fraction": [0.3, 1.5]}},
     r"params\.basis_fraction: basis_fraction must be a finite number in \(0, 1\), got 1\.5"),
    ({"params": {"image_size": [32, 8]}}, r"cell basis_pruning image_size=8.*image_size=8 is too small"),
    ({"params": {"basis_rounds": ["three"]}}, r"params\.basis_rounds: basis_rounds must be an integer >= 0, got 'three'"),
    ({"params": {"seed": [0, 1]}}, r"params\.seed: give seeds as the top-level 'seeds' list"),
    ({"seeds": []}, r"seeds: empty list"),
    ({"experiment": "pruning"}, r"unknown experiment 'pruning'"),
    ({"backend": "kubernetes"}, r"backend: unknown backend 'kubernetes'; allowed: local, slurm, submitit-local"),
    ({"slurm": {"partitoin": "gpu"}}, r"slurm\.partitoin: unknown slurm option 'partitoin'; allowed: "),
    ({"slurm": {"timeout_min": "2h"}}, r"slurm\.timeout_min: must be a positive integer, got '2h'"),
    ({"local": {"workers": 0}}, r"local\.workers: must be a positive integer, got 0"),
    ({"param": {"lr": [0.1]}}, r"param: unknown key"),
])
def test_bad_spec_is_one_line_before_any_job(tmp_path, monkeypatch, changes, match):
    """A bad spec raises one line naming what is wrong; no backend starts, no folder is made."""

    def no_job(*args, **kwargs):
        raise AssertionError("a job started before the spec was validated")

    monkeypatch.setattr(sweep, "_run_local", no_job)
    monkeypatch.setattr(sweep, "_run_submitit", no_job)
    with pytest.raises(ValueError, match=match) as err:
        sweep.run(_spec(tmp_path / "sw", **changes))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("text", ["experiment: basis_pruning\nparams: {basis_fraction: []}\n",
                                  "experiment: [basis_pruning\n"])
def test_cli_bad_spec_exits_2_with_one_line(tmp_path, capsys, text):
    """``basisprune sweep BAD.yaml``: exit status 2 and a single ``basisprune: error:`` line."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli_main(["sweep", str(path), "--folder", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("basisprune: error: ") and err.count("\n") == 1
    assert not (tmp_path / "sw").exists()


# ------------------------------------------------------------------------------ local backend
@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The 4-cell smoke sweep run once on the local backend (2 workers)."""
    folder = tmp_path_factory.mktemp("local") / "sw"
    return sweep.run(_spec(folder), backend="local", workers=2), folder


def test_local_sweep_runs_every_cell(local_sweep):
    """Every cell runs once and its results file records the cell's own parameters and seed."""
    done, folder = local_sweep
    assert sorted(done.ran) == sorted(c.fingerprint for c in done.cells) and len(done.cells) == 4
    for c in done.cells:
        rec = read_results(folder / "cells" / c.fingerprint / "results.json")
        assert rec["params"]["seed"] == c.seed
        assert rec["params"]["basis_fraction"] == dict(c.overrides)["basis_fraction"]
        assert rec["experiment"] == c.experiment


def test_second_call_runs_nothing(local_sweep):
    """Started again, a finished sweep runs no cell and rewrites no results file."""
    _, folder = local_sweep
    before = _mtimes(folder)
    again = sweep.run(_spec(folder), backend="local", workers=2)
    assert again.ran == [] and set(again.status.values()) == {"done"}
    assert _mtimes(folder) == before


def test_deleting_a_results_file_reruns_exactly_that_cell(local_sweep):
    """Remove one cell's results: the next call runs that cell only and leaves the others alone."""
    done, folder = local_sweep
    victim = done.cells[2].fingerprint
    before = _mtimes(folder)
    (folder / "cells" / victim / "results.json").unlink()
    again = sweep.run(_spec(folder), backend="local", workers=2)
    assert again.ran == [victim]
    after = _mtimes(folder)
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}


def test_report_means_over_seeds_and_lists_missing_cells(local_sweep):
    """The report's mean and spread per fraction are those of its seeds' results files; cells of a
    seed never run are listed as missing."""
    done, folder = local_sweep
    spec = _spec(folder, seeds=[0, 1, 2])  # seed 2 never ran
    paths = sweep.report(spec)
    table = pd.read_csv(paths["report.csv"])
    assert len(table) == 2 and list(table["seeds_done"]) == [2, 2] and list(table["seeds"]) == [3, 3]
    for frac in (0.2, 0.4):
        accs = [read_results(folder / "cells" / c.fingerprint / "results.json")["final"]["accuracy_test"]
                for c in done.cells if dict(c.overrides)["basis_fraction"] == frac]
        row = table[table["basis_fraction"] == frac].iloc[0]
        assert row["final.accuracy_test mean"] == pytest.approx(sum(accs) / 2)
        assert row["final.accuracy_test std"] == pytest.approx(pd.Series(accs).std())
    missing = [c.fingerprint for c in sweep.expand(sweep.load(spec)) if c.seed == 2]
    md = paths["report.md"].read_text()
    assert all(fp in md.split("## Failed and missing cells")[1] for fp in missing)
    cells = pd.read_csv(paths["cells.csv"])
    assert sorted(cells.loc[cells["status"] == "missing", "fingerprint"]) == sorted(missing)


# --------------------------------------------------------------------------------- failures
@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """One cell that fails at run time (an imagefolder too small for the smoke profile's subsets: its
    layout passes validation, loading it does not) and one that works."""
    folder = tmp_path_factory.mktemp("failing") / "sw"
    root = folder.parent / "broken-images"
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            (root / split / label / "x.png").write_bytes(b"not a png")
    params = [SMOKE["params"] | {"basis_fraction": 0.3}, {"dataset": "imagefolder", "data_root": str(root)}]
    spec = _spec(folder, params=params, seeds=[0])
    return sweep.run(spec, backend="local", workers=2), spec


def test_failed_cell_is_recorded_and_others_finish(failing_sweep):
    """The failing cell gets a one-line error and a traceback file; the other cell still finishes."""
    done, spec = failing_sweep
    bad = next(c for c in done.cells if dict(c.overrides).get("dataset") == "imagefolder")
    good = next(c for c in done.cells if c is not bad)
    assert done.status == {good.fingerprint: "done", bad.fingerprint: "failed"}
    cell_dir = Path(spec["folder"]) / "cells" / bad.fingerprint
    err = read_results(cell_dir / "error.json")["error"]
    assert "\n" not in err and re.match(r"\w+Error: .*imagefolder", err), err
    assert "Traceback (most recent call last)" in (cell_dir / "traceback.txt").read_text()


def test_report_lists_failed_cells_with_their_error(failing_sweep):
    """The report's page lists the failed cell with its error line."""
    done, spec = failing_sweep
    bad = next(fp for fp, s in done.status.items() if s == "failed")
    md = sweep.report(spec)["report.md"].read_text().split("## Failed and missing cells")[1]
    err = read_results(Path(spec["folder"]) / "cells" / bad / "error.json")["error"]
    assert bad in md and err.split(": ", 1)[1][:60] in md


def _die_on_seed_1(cell, folder):
    """A stand-in cell task whose worker process dies on seed 1 (as if OOM-killed); seed 0 is slow,
    so it is usually still running, an innocent bystander, when the pool breaks."""
    if cell.seed == 1:
        os._exit(9)
    if cell.seed == 0:
        time.sleep(2)
    write_json(Path(folder) / "cells" / cell.fingerprint / "results.json", {"seed": cell.seed})
    return {"fingerprint": cell.fingerprint, "status": "done", "error": None}


def test_dead_worker_fails_only_its_own_cell(tmp_path):
    """A worker process that dies takes down the pool, but only its cell is recorded failed."""
    spec = {"experiment": "basis_pruning", "profile": "smoke", "seeds": [0, 1, 2, 3], "folder": str(tmp_path / "sw")}
    done = sweep.run(spec, backend="local", workers=2, task=_die_on_seed_1)
    by_seed = {c.seed: done.status[c.fingerprint] for c in done.cells}
    assert by_seed == {0: "done", 1: "failed", 2: "done", 3: "done"}
    dead = next(c for c in done.cells if c.seed == 1)
    assert "worker process died" in read_results(tmp_path / "sw" / "cells" / dead.fingerprint / "error.json")["error"]


# ------------------------------------------------------------------------ submitit backends
def test_cell_task_requeues_itself_with_the_same_cell():
    """Under submitit a timed-out job resubmits the same task for the same cell (it then resumes)."""
    task = sweep.CellTask(threads=1)
    cell = sweep.expand(sweep.load(SMOKE))[0]
    again = task.__submitit_checkpoint__(cell, "folder")
    assert again.function is task and again.args == (cell, "folder")


def test_submitit_local_executor_runs_the_smoke_sweep(tmp_path):
    """submitit's local executor, through the same code as Slurm: the jobs unpickle the task, write
    results and logs in their job folders, and their return values come back."""
    folder = tmp_path / "sw"
    done = sweep.run(_spec(folder, slurm={"timeout_min": 10}), backend="submitit-local", workers=2)
    assert sorted(done.ran) == sorted(c.fingerprint for c in done.cells)
    assert set(done.status.values()) == {"done"}
    for c in done.cells:
        job = read_results(folder / "cells" / c.fingerprint / "job.json")
        assert Path(job["stdout"]).parent.parent == folder.resolve() / "submitit"
        assert Path(job["stderr"]).exists()
        assert (Path(job["stdout"]).parent / f"{job['job_id']}_0_result.pkl").exists()


def _slurm_partition():
    """An up partition with a node that can run jobs (idle, or busy finishing other jobs), else None."""
    if shutil.which("sinfo") is None:
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%P %a %t"], capture_output=True, text=True)
    rows = [line.split() for line in proc.stdout.splitlines()] if proc.returncode == 0 else []
    ok = ("idle", "mix", "alloc", "comp")
    return next((p.rstrip("*") for p, avail, state in rows if avail == "up" and state in ok), None)


@pytest.mark.slow
@pytest.mark.skipif(_slurm_partition() is None,
                    reason="no Slurm cluster with an idle node (tests/scripts/slurm_localhost.sh start)")
def test_slurm_daemon_runs_the_smoke_sweep(tmp_path):
    """A real Slurm controller and daemon run the smoke sweep as one job array."""
    folder = tmp_path / "sw"
    slurm = {"partition": _slurm_partition(), "cpus_per_task": 1, "timeout_min": 10, "mem_gb": 2}
    done = sweep.run(_spec(folder, slurm=slurm), backend="slurm")
    assert set(done.status.values()) == {"done"} and len(done.ran) == 4
    ids = {read_results(folder / "cells" / c.fingerprint / "job.json")["job_id"] for c in done.cells}
    assert len({i.split("_")[0] for i in ids}) == 1 and len(ids) == 4  # one array, four tasks


@pytest.mark.slow
@pytest.mark.skipif(_slurm_partition() is None,
                    reason="no Slurm cluster with an idle node (tests/scripts/slurm_localhost.sh start)")
def test_slurm_refusal_is_one_line(tmp_path):
    """Options the cluster refuses (GPUs on a node without any) are one error line; no cell runs."""
    folder = tmp_path / "sw"
    slurm = {"partition": _slurm_partition(), "gpus_per_node": 64, "timeout_min": 10}
    with pytest.raises(sweep.SubmissionError, match=r"^slurm refused the job array: .*sbatch: error") as err:
        sweep.run(_spec(folder, slurm=slurm), backend="slurm")
    assert "\n" not in str(err.value)
    assert not list(folder.glob("cells/*/results.json"))
