"""Executing the notebooks side by side (book builder) and the stage lock that keeps shared work single."""

import fcntl
import json

import pytest

from basisprune.errors import ParameterError
from basisprune.repro.experiments import stage_lock
from basisprune_book.build import execute


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
    rec = execute("smoke", tmp_path / "out", root=tmp_path, jobs=2)
    assert {k: v["status"] for k, v in rec["notebooks"].items()} == {"01_wait": "ok", "02_write": "ok"}
    assert rec["jobs"] == 2 and rec["wall_seconds"] > 0


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


def test_parallel_order_starts_with_the_main_table_then_the_longest():
    """PARALLEL_FIRST first (in its order), then the rest longest first; nothing lost or repeated."""
    from pathlib import Path

    from basisprune_book.build import _parallel_order

    nbs = [Path(f"{n}.ipynb") for n in ("01_a", "02_b", "03_c", "04_d", "05_e", "06_f", "07_g")]
    order = [p.stem for p in _parallel_order(nbs, {"03_c": 10.0, "04_d": 30.0, "07_g": 20.0})]
    assert order[:3] == ["05_e", "02_b", "06_f"]
    assert order[3:6] == ["04_d", "07_g", "03_c"]
    assert sorted(order) == sorted(p.stem for p in nbs)
