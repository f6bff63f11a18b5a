"""Sweeps: grid expansion and fingerprints, bad specs, the local and submitit backends, the report."""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import data, experiments, sweep
from basisprune.repro.cli import main as cli_main
from basisprune.repro.sweep import local as sweep_local
from basisprune.repro.sweep import slurm as sweep_slurm
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


def _dir(folder, cell):
    return sweep.cell_dir(folder, cell)


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
@given(exps=st.lists(st.sampled_from(sorted(set(experiments.EXPERIMENTS) - set(experiments.PAI_EXPERIMENTS))),
                    min_size=1, max_size=2, unique=True),  # the PaI experiments take other parameters
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
    assert sum(c.name in " ".join(lines) for c in out.cells) == 4
    assert not (tmp_path / "sw").exists()


def test_folders_named_by_bare_fingerprint_are_adopted(tmp_path):
    """A sweep folder from before readable names (cells/<fingerprint>/) keeps its finished cells:
    they are renamed, and nothing runs again."""
    spec = _spec(tmp_path / "sw")
    for c in sweep.expand(sweep.load(spec)):
        write_json(tmp_path / "sw" / "cells" / c.fingerprint / "results.json", {"seed": c.seed})
    again = sweep.run(spec, log=lambda line: None)
    assert again.ran == [] and set(again.status.values()) == {"done"}
    assert sorted(p.name for p in (tmp_path / "sw" / "cells").iterdir()) == sorted(c.name for c in again.cells)


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
    ({"slurm": {"timeout_min": "2h"}}, r"slurm\.timeout_min: timeout_min must be an integer >= 1, got '2h'"),
    ({"local": {"workers": 0}}, r"local\.workers: workers must be an integer >= 1, got 0"),
    ({"slurm": {"partition": ""}}, r"slurm\.partition: partition must be a non-empty string, got ''"),
    ({"slurm": {"mem_gb": 0}}, r"slurm\.mem_gb: mem_gb must be a finite number > 0, got 0"),
    ({"slurm": {"setup": "module load cuda"}}, r"slurm\.setup: setup must be a list of strings, got 'module load cuda'"),
    ({"slurm": {"setup": ["ok", 3]}}, r"slurm\.setup\[1\]: setup\[1\] must be a string, got 3"),
    ({"slurm": {"additional_parameters": {"nodes": [1]}}},
     r"slurm\.additional_parameters\.nodes: nodes must be a string, got \[1\]"),
    ({"param": {"lr": [0.1]}}, r"param: unknown key"),
    ({"params": []}, r"params: empty list of grids; give a mapping"),
    ({"params": None}, r"params: no value; give a mapping"),
    ({"params": {"subset_train": 50000}},
     r"cell basis_pruning .*subset_train=50000 is larger than the digits train split, which has \d+ images"),
    ({"params": {"subset_test": 400}}, r"subset_test=400 is larger than the digits test split, which has 359 images"),
])
def test_bad_spec_is_one_line_before_any_job(tmp_path, monkeypatch, changes, match):
    """A bad spec raises one line naming what is wrong; no backend starts, no folder is made."""

    def no_job(*args, **kwargs):
        raise AssertionError("a job started before the spec was validated")

    monkeypatch.setattr(sweep, "run_local", no_job)
    monkeypatch.setattr(sweep, "run_submitit", no_job)
    with pytest.raises(ValueError, match=match) as err:
        sweep.run(_spec(tmp_path / "sw", **changes))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sw").exists()


def _fake_slurm(tmp_path, monkeypatch, sinfo_out):
    """A PATH with stand-in Slurm commands: sinfo prints ``sinfo_out``; sbatch must not be called."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sinfo").write_text(f"#!/bin/sh\nprintf '{sinfo_out}'\n")
    (bin_ / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path / 'sbatch-called'}\nexit 1\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("slurm, match", [
    ({"partition": "gpu"}, r"slurm\.partition: unknown partition 'gpu'; this cluster has: cpu, big"),
    ({"partition": "cpu", "gpus_per_node": 1},
     r"slurm\.gpus_per_node: 1 asked, but the nodes of partition 'cpu' have no GPU\(s\) \(sinfo GRES: \(null\)\)"),
    ({"gpus_per_node": 1}, r"partition 'cpu' have no GPU"),  # the default partition (cpu*)
    ({"partition": "big", "gpus_per_node": 8}, r"8 asked, but the nodes of partition 'big' have 4 GPU"),
])
def test_cluster_refusals_come_before_anything_is_written(tmp_path, monkeypatch, slurm, match):
    """What sinfo says the cluster lacks (a partition, GPUs on a partition) is one line, and no
    cell.json, pickle or submission script is written, no sbatch called."""
    _fake_slurm(tmp_path, monkeypatch, "cpu*|(null)\\nbig|gpu:a100:4(S:0-1)\\nbig|gpu:a100:2\\n")
    with pytest.raises(ValueError, match=match) as err:
        sweep.run(_spec(tmp_path / "sw", slurm=slurm), backend="slurm")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sw").exists() and not (tmp_path / "sbatch-called").exists()


def test_unwritable_folder_names_the_spec_and_its_folder_key(tmp_path):
    """A sweep folder that cannot be created is one line naming the spec file and its folder: key."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "bad.yaml"
    path.write_text(f"experiment: basis_pruning\nprofile: smoke\nfolder: {blocker / 'sw'}\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: folder: cannot write the sweep folder .*"
                                         r"set the spec's folder: key") as err:
        sweep.run(path)
    assert "\n" not in str(err.value)


def test_duplicate_yaml_key_is_refused(tmp_path):
    """A key given twice in a spec file is an error naming both lines, not a silent last-wins."""
    path = tmp_path / "dup.yaml"
    path.write_text("experiment: basis_pruning\nprofile: smoke\nparams:\n  basis_fraction: [0.2]\n"
                    "  basis_fraction: [0.4]\n")
    with pytest.raises(ValueError, match=r"not valid YAML: .*key 'basis_fraction' is given twice \(lines 4 and 5\)"):
        sweep.load(path)


def test_missing_pyyaml_is_one_line(tmp_path):
    """Without PyYAML, ``basisprune sweep`` exits 2 with one line saying what to install."""
    code = ("import sys; sys.modules['yaml'] = None\n"
            "from basisprune.repro.cli import main\n"
            f"raise SystemExit(main(['sweep', {str(tmp_path / 'x.yaml')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "pip install 'basisprune[sweep]'" in proc.stderr, proc.stderr


def test_split_sizes_match_the_loaded_splits():
    """data.split_sizes, which validation uses, agrees with the splits data.load builds."""
    for name in ("digits", "mnist5k"):
        for vf in (0.0, 0.1):
            sizes = data.split_sizes(name, vf)
            assert sizes == {s: len(data.load(name, s, 8, None, val_fraction=vf)) for s in ("train", "test")}


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
        assert _dir(folder, c).name == f"basis_pruning-digits-seed{c.seed}-{c.fingerprint[:8]}"
        rec = read_results(_dir(folder, c) / "results.json")
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
    victim = done.cells[2]
    before = _mtimes(folder)
    (_dir(folder, victim) / "results.json").unlink()
    again = sweep.run(_spec(folder), backend="local", workers=2)
    assert again.ran == [victim.fingerprint]
    victim = victim.name
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
        accs = [read_results(_dir(folder, c) / "results.json")["final"]["accuracy_test"]
                for c in done.cells if dict(c.overrides)["basis_fraction"] == frac]
        row = table[table["basis_fraction"] == frac].iloc[0]
        assert row["final.accuracy_test mean"] == pytest.approx(sum(accs) / 2)
        assert row["final.accuracy_test std"] == pytest.approx(pd.Series(accs).std())
    missing = [c.name for c in sweep.expand(sweep.load(spec)) if c.seed == 2]
    md = paths["report.md"].read_text()
    assert all(name in md.split("## Failed and missing cells")[1] for name in missing)
    cells = pd.read_csv(paths["cells.csv"])
    assert sorted(cells.loc[cells["status"] == "missing", "cell"]) == sorted(missing)


def test_cli_report_subcommand_and_summary_table(local_sweep, tmp_path, capsys):
    """``sweep report SPEC`` (and its old spelling ``sweep-report``) prints the table; a sweep run
    from the command line ends with the same table."""
    _, folder = local_sweep
    spec = tmp_path / "smoke.yaml"
    spec.write_text(json.dumps(_spec(folder)))  # JSON is YAML
    for argv in (["sweep", "report", str(spec)], ["sweep-report", str(spec)], ["sweep", str(spec)]):
        assert cli_main(argv) == 0
        out = capsys.readouterr().out
        assert "| experiment " in out and "final.accuracy_test" in out and "0.2 " in out and "0.4 " in out, out


def test_clean_drops_checkpoints_of_finished_cells_only(local_sweep, tmp_path, capsys):
    """``sweep clean`` removes the runs/ folders of done cells and keeps their results; a cell not
    done keeps its checkpoints (a rerun resumes from them)."""
    done, folder = local_sweep
    unfinished = _dir(folder, done.cells[0])
    (unfinished / "results.json").rename(unfinished / "results.json.bak")
    try:
        assert all((_dir(folder, c) / "runs").is_dir() for c in done.cells)
        spec = tmp_path / "smoke.yaml"
        spec.write_text(json.dumps(_spec(folder)))
        assert cli_main(["sweep", "clean", str(spec)]) == 0
        assert re.match(r"dropped the checkpoints of 3 finished cell\(s\): \d+\.\d MB", capsys.readouterr().out)
        assert (unfinished / "runs").is_dir()
        assert not any((_dir(folder, c) / "runs").exists() for c in done.cells[1:])
        assert all((_dir(folder, c) / "results.json").exists() for c in done.cells[1:])
    finally:
        (unfinished / "results.json.bak").rename(unfinished / "results.json")


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
    cell_dir = _dir(spec["folder"], bad)
    err = read_results(cell_dir / "error.json")["error"]
    assert "\n" not in err and re.match(r"\w+Error: .*imagefolder", err), err
    assert "Traceback (most recent call last)" in (cell_dir / "traceback.txt").read_text()


def test_report_lists_failed_cells_with_their_error(failing_sweep):
    """The report's page lists the failed cell with its error line."""
    done, spec = failing_sweep
    bad = next(c for c in done.cells if done.status[c.fingerprint] == "failed")
    md = sweep.report(spec)["report.md"].read_text().split("## Failed and missing cells")[1]
    err = read_results(_dir(spec["folder"], bad) / "error.json")["error"]
    assert bad.name in md and err.split(": ", 1)[1][:60] in md


def _die_on_seed_1(cell, folder):
    """A stand-in cell task whose worker process dies on seed 1 (as if OOM-killed); seed 0 is slow,
    so it is usually still running, an innocent bystander, when the pool breaks."""
    if cell.seed == 1:
        os._exit(9)
    if cell.seed == 0:
        time.sleep(2)
    write_json(sweep.cell_dir(folder, cell) / "results.json", {"seed": cell.seed})
    return {"fingerprint": cell.fingerprint, "status": "done", "error": None}


def test_dead_worker_fails_only_its_own_cell(tmp_path):
    """A worker process that dies takes down the pool, but only its cell is recorded failed."""
    spec = {"experiment": "basis_pruning", "profile": "smoke", "seeds": [0, 1, 2, 3], "folder": str(tmp_path / "sw")}
    done = sweep.run(spec, backend="local", workers=2, task=_die_on_seed_1)
    by_seed = {c.seed: done.status[c.fingerprint] for c in done.cells}
    assert by_seed == {0: "done", 1: "failed", 2: "done", 3: "done"}
    dead = next(c for c in done.cells if c.seed == 1)
    assert "worker process died" in read_results(_dir(tmp_path / "sw", dead) / "error.json")["error"]


# ------------------------------------------------------------------------ submitit backends
def test_cell_task_is_checkpointable_and_requeues_the_same_cell():
    """CellTask is what submitit requeues at a time limit (a Checkpointable, with ``checkpoint``),
    and its checkpoint resubmits the same task for the same cell (which then resumes)."""
    import submitit

    task = sweep.CellTask(threads=1)
    assert isinstance(task, submitit.helpers.Checkpointable)
    cell = sweep.expand(sweep.load(SMOKE))[0]
    again = task.checkpoint(cell, "folder")
    assert again.function is task and again.args == (cell, "folder")


def test_submission_env_keeps_the_cluster_configuration(monkeypatch):
    """Around sbatch, a job's SLURM_* variables are hidden but SLURM_CONF stays (sbatch needs it to
    find the cluster); afterwards everything is as before."""
    monkeypatch.setenv("SLURM_CONF", "/tmp/some/slurm.conf")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    with sweep_slurm.submission_env():
        assert os.environ.get("SLURM_CONF") == "/tmp/some/slurm.conf" and "SLURM_JOB_ID" not in os.environ
    assert os.environ["SLURM_CONF"] == "/tmp/some/slurm.conf" and os.environ["SLURM_JOB_ID"] == "123"


def test_submitit_local_executor_runs_the_smoke_sweep(tmp_path):
    """submitit's local executor, through the same code as Slurm: the jobs unpickle the task, write
    results and logs in their job folders, and their return values come back."""
    folder = tmp_path / "sw"
    done = sweep.run(_spec(folder, slurm={"timeout_min": 10}), backend="submitit-local", workers=2)
    assert sorted(done.ran) == sorted(c.fingerprint for c in done.cells)
    assert set(done.status.values()) == {"done"}
    for c in done.cells:
        job = read_results(_dir(folder, c) / "job.json")
        assert Path(job["stdout"]).parent.parent == folder.resolve() / "submitit"
        assert Path(job["stderr"]).exists()
        assert (Path(job["stdout"]).parent / f"{job['job_id']}_0_result.pkl").exists()


# ----------------------------------------------------------------------- kills and Ctrl-C
_TESTS = Path(__file__).parent
_SLEEPY = {"name": "sleepy", "experiment": "basis_pruning", "profile": "smoke", "seeds": [0, 1, 2, 3]}


def _alive(pid):
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def _start(tmp_path, argv_code):
    # A terminal's foreground process takes Ctrl-C; a job started in the background by a
    # non-interactive shell (how CI may run us) inherits SIGINT ignored, so restore Python's handler.
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"import sys; sys.path.insert(0, {str(_TESTS)!r})\n"
            "import sweep_tasks\nfrom basisprune.repro import sweep, cli\n"
            "sweep.CellTask = sweep_tasks.Sleeper\n" + argv_code)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, TQDM_DISABLE="1"))


def test_pool_workers_draw_no_progress_bars(tmp_path, monkeypatch):
    """Workers run with TQDM_DISABLE=1 (their bars would interleave on the terminal); the sweep's
    own process keeps its environment."""
    monkeypatch.syspath_prepend(str(_TESTS))
    import sweep_tasks

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    done = sweep.run(dict(_SLEEPY, seeds=[0], folder=str(tmp_path / "sw")), workers=1, task=sweep_tasks.env_probe,
                     log=lambda line: None)
    assert read_results(_dir(tmp_path / "sw", done.cells[0]) / "results.json") == {"TQDM_DISABLE": "1"}
    assert "TQDM_DISABLE" not in os.environ


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see which processes live")
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_killed_local_sweep_leaves_no_worker_behind(tmp_path, sig):
    """SIGKILL or SIGTERM to a local sweep's main process: its pool workers exit too (before, they
    finished the queue and then idled forever)."""
    folder = tmp_path / "sw"
    proc = _start(tmp_path, f"sweep.run({dict(_SLEEPY, folder=str(folder))!r}, workers=2)\n")
    pids = folder / "pids"
    _wait_for(lambda: pids.is_dir() and len(list(pids.iterdir())) >= 3)  # seed 0 done, two sleeping
    workers = {int(p.read_text()) for p in pids.iterdir()}
    assert len(workers) == 2 and all(_alive(w) for w in workers)
    os.kill(proc.pid, sig)
    proc.wait(30)
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=15)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see which processes live")
def test_ctrl_c_is_one_line_cancels_the_queue_and_a_rerun_resumes(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) on ``basisprune sweep``: exit status 130,
    one line on stderr, the workers gone, the queued cell never started; the rerun runs exactly
    the cells that had not finished."""
    spec = tmp_path / "sleepy.yaml"
    spec.write_text(f"name: sleepy\nexperiment: basis_pruning\nprofile: smoke\nseeds: [0, 1, 2, 3]\n"
                    f"folder: {tmp_path / 'sw'}\nlocal: {{workers: 2}}\n")
    proc = _start(tmp_path, f"raise SystemExit(cli.main(['sweep', {str(spec)!r}]))\n")
    pids = tmp_path / "sw" / "pids"
    _wait_for(lambda: pids.is_dir() and {p.name for p in pids.iterdir()} >= {"0", "1", "2"})
    workers = {int(p.read_text()) for p in pids.iterdir()}
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.count("\n") == 1 and err.startswith("basisprune: interrupted: 1 of 4 cell(s) finished"), err
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=15)
    assert not (pids / "3").exists()  # queued, cancelled
    (tmp_path / "sw" / "fast").write_text("")
    again = _start(tmp_path, f"r = sweep.run({str(spec)!r}, log=lambda s: None)\n"
                             "print(sorted(c.seed for c in r.cells if c.fingerprint in r.ran))\n")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out.strip() == "[1, 2, 3]"
