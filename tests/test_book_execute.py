"""Executing the notebooks side by side (book builder) and the stage lock that keeps shared work single."""

import fcntl
import json
import os

import pytest

from basisprune.errors import ParameterError
from basisprune.repro.experiments import stage_lock
from basisprune_book.execute import execute


def _notebook(path, code: str) -> None:
    cell = lambda i, src, tags=(): {"id": f"c{i}", "cell_type": "code", "execution_count": None,
                                    "metadata": {"tags": list(tags)}, "outputs": [], "source": src}
    nb = {"cells": [cell(0, 'profile = "smoke"', ["parameters"]), cell(1, code)],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def test_two_jobs_run_two_notebooks_at_the_same_time(tmp_path):
    """With jobs=2 a notebook that waits for a file another notebook writes finishes: both ran at
    once (one at a time, the first would wait in vain and fail)."""
    (tmp_path / "notebooks").mkdir()
    flag = tmp_path / "flag"
    _notebook(tmp_path / "notebooks" / "01_wait.ipynb",
              f"import time, pathlib\nt = time.time()\nwhile not pathlib.Path({str(flag)!r}).exists():\n"
              "    assert time.time() - t < 60, 'the other notebook never ran'\n    time.sleep(0.2)")
    _notebook(tmp_path / "notebooks" / "02_write.ipynb", f"import pathlib\npathlib.Path({str(flag)!r}).write_text('x')")
    rec = execute("smoke", tmp_path / "out", root=tmp_path, jobs=2, shared_runs=False)
    assert {k: v["status"] for k, v in rec["notebooks"].items()} == {"01_wait": "ok", "02_write": "ok"}
    assert rec["jobs"] == 2 and rec["wall_seconds"] > 0


def test_kernels_get_the_book_environment_and_the_caller_gets_its_own_back(tmp_path, monkeypatch):
    """The kernels see the inline plot backend, the results and runs folders and ``threads``;
    TQDM_DISABLE only where the caller has none (a caller's value is kept); afterwards the caller's
    environment is as before, variables it lacked absent again."""
    (tmp_path / "notebooks").mkdir()
    seen = tmp_path / "seen.json"
    names = ["MPLBACKEND", "TQDM_DISABLE", "BASISPRUNE_RESULTS", "BASISPRUNE_RUNS", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS"]
    _notebook(tmp_path / "notebooks" / "01_env.ipynb",
              f"import json, os, pathlib\npathlib.Path({str(seen)!r}).write_text(json.dumps("
              f"{{k: os.environ.get(k) for k in {names!r}}}))")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in names[2:]:
        monkeypatch.delenv(name, raising=False)
    for tqdm in (None, "0"):
        if tqdm is None:
            monkeypatch.delenv("TQDM_DISABLE", raising=False)
        else:
            monkeypatch.setenv("TQDM_DISABLE", tqdm)
        before = dict(os.environ)
        execute("smoke", tmp_path / "out", root=tmp_path, threads=1, shared_runs=False)
        assert dict(os.environ) == before
        env = json.loads(seen.read_text())
        assert env == {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TQDM_DISABLE": tqdm or "1",
                       "BASISPRUNE_RESULTS": str(tmp_path / "out" / "results"),
                       "BASISPRUNE_RUNS": str(tmp_path / "out" / "runs"), "OMP_NUM_THREADS": "1",
                       "MKL_NUM_THREADS": "1"}


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_integer(tmp_path, jobs):
    """jobs < 1, a float or a bool is refused in one line before anything runs."""
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "01_x.ipynb", "1")
    with pytest.raises(ParameterError, match="jobs must be an integer >= 1"):
        execute("smoke", tmp_path / "out", root=tmp_path, jobs=jobs)
    assert not (tmp_path / "out").exists()


def test_a_stage_lock_keeps_a_second_process_out(tmp_path):
    """While a stage runs, its lock is held (a second open of the lock file cannot take it); after,
    it is free again. Without a checkpoint there is nothing to lock."""
    ckpt = tmp_path / "wd" / "channel.pt"
    with stage_lock(ckpt):
        with open(ckpt.with_suffix(".lock")) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(ckpt.with_suffix(".lock")) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with stage_lock(None):
        pass


def test_parallel_order_starts_with_the_chapters_with_work_of_their_own_then_the_longest():
    """PARALLEL_FIRST first (in its order), then the rest longest first; nothing lost or repeated."""
    from pathlib import Path

    from basisprune_book.execute import _parallel_order

    nbs = [Path(f"{n}.ipynb") for n in ("01_a", "02_b", "03_c", "04_d", "05_e", "06_f", "07_g")]
    order = [p.stem for p in _parallel_order(nbs, {"03_c": 10.0, "04_d": 30.0, "05_e": 20.0})]
    assert order[:2] == ["06_f", "07_g"]
    assert order[2:5] == ["04_d", "05_e", "03_c"]
    assert sorted(order) == sorted(p.stem for p in nbs)


def test_the_shared_runs_are_the_runs_the_chapters_loop_over():
    """book_runs holds every (experiment, data set, seed) that chapters 2-5 loop over, chapter 6's
    pruning-at-initialization runs (per part, its seeds; the cost part seed 0) and their transfer
    targets, each once; double pruning follows the channel run whose stage it reuses."""
    from basisprune.repro import profiles
    from basisprune.repro.plan import book_runs, selection, table_seeds

    for profile in ("smoke", "default"):
        runs = [r for chain in book_runs(profile) for r in chain]
        assert len(runs) == len(set(runs))
        datasets, seeds = selection(profile)
        want = {(profile, "transfer", d, s) for d in datasets for s in seeds}
        want |= {(profile, e, d, s) for d, ss in table_seeds(profile).items() for s in ss
                 for e in ("channel_pruning", "basis_pruning", "double_pruning")}
        t = profiles.section(profile, "pai")["transfer"]
        want |= {(t["experiments_profile"], e, datasets[0], s) for e in t["targets"] for s in t["seeds"]}
        pai = profiles.section(profile, "pai")
        want |= {(profile, f"pai_{part}", pai[part].get("dataset"), s) for part in ("scratch", "transfer", "cost")
                 if pai[part].get("run", True) for s in pai[part].get("seeds", [0])}
        assert set(runs) == want
        for chain in book_runs(profile):
            if chain[-1][1] == "double_pruning":
                assert chain[0][1:] == ("channel_pruning", *chain[-1][2:])


def test_shared_chains_run_longest_first_and_unknown_ones_before(tmp_path, monkeypatch):
    """The builder orders the chains by the committed results' compute + reference seconds (a
    chain's last run includes the stages before it); a chain with no results goes first."""
    import json

    from basisprune_book import execute as ex

    chains = [(("p", "transfer", "a", 0),), (("p", "channel_pruning", "a", 0), ("p", "double_pruning", "a", 0)),
              (("p", "basis_pruning", "a", 0),), (("p", "basis_pruning", "a", 1),)]
    monkeypatch.setattr("basisprune.repro.plan.book_runs", lambda profile: list(chains))
    folder = tmp_path / "data" / "results" / "p"
    folder.mkdir(parents=True)
    for name, c, r in (("transfer-a-seed0", 50, 0), ("double_pruning-a-seed0", 100, 60),
                       ("channel_pruning-a-seed0", 500, 500), ("basis_pruning-a-seed0", 120, 30)):
        (folder / f"{name}.json").write_text(json.dumps({"timings": {"compute_seconds": c, "reference_seconds": r}}))
    order = [ex._chain_label(c) for c in ex._prefetch_chains("p", tmp_path)]
    assert order == ["basis-a-seed1", "channel+double-a-seed0", "basis-a-seed0", "transfer-a-seed0"]


def test_a_chain_runs_in_order_and_reports_its_failure(monkeypatch):
    """A chain computes its runs in order with each run's own profile, data set and seed; a run that
    raises ends the chain as failed, naming the error (the notebook reading it fails the same way)."""
    from basisprune.repro import experiments
    from basisprune_book.execute import _run_chain

    calls = []

    def fake_run(experiment, *, profile, dataset, seed):
        calls.append((profile, experiment, dataset, seed))
        if experiment == "double_pruning":
            raise RuntimeError("diverged")

    monkeypatch.setattr(experiments, "run", fake_run)
    chain = (("p", "channel_pruning", "a", 1), ("q", "basis_pruning", "b", 2))
    assert _run_chain(chain)[:2] == ("ok", None)
    assert calls == list(chain)
    status, error, _ = _run_chain((("p", "double_pruning", "a", 0), ("p", "basis_pruning", "a", 0)))
    assert (status, error) == ("failed", "RuntimeError: diverged")
    assert calls[-1] == ("p", "double_pruning", "a", 0)


def test_the_book_builder_does_not_import_the_notebook_helpers():
    """Importing the book builder (its command line and the modules it uses) loads neither
    basisprune.repro.report nor the plotting and table modules, nor matplotlib or pandas: it needs
    the repository root (basisprune.repro.paths) and the run plan only."""
    import subprocess
    import sys

    code = ("import sys, basisprune_book.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'seaborn', 'pandas')"
            " or m in ('basisprune.repro.report', 'basisprune.repro.plots', 'basisprune.repro.tables')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
