"""The experiment runner: bad input fails fast, runs are deterministic, a killed run resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from basisprune.repro import experiments, stages, workdir
from basisprune.repro.cli import main as cli_main
from basisprune.repro.results import read_results, strip_volatile

TINY = dict(subset_train=160, subset_test=64, batch_size=32, basis_rounds=3, warmup_epochs=1)


@pytest.mark.parametrize(
    "experiment, params, match",
    [("nope", {}, "known experiments"), ("basis_pruning", {"epochs": 3}, "allowed"),
     ("basis_pruning", {"model": "resnet999"}, "known models"),
     ("basis_pruning", {"dataset": "imagenet21k"}, "known datasets"),
     ("basis_pruning", {"basis_fraction": 1.5}, "basis_fraction"),
     ("basis_pruning", {"image_size": 8}, "32"),
     ("channel_pruning", {"channel_rounds": -1}, "channel_rounds")],
)
def test_bad_input_fails_before_work(experiment, params, match, monkeypatch):
    """Unknown names and out-of-range values: a ValueError naming what is allowed, raised before
    any data is loaded or model built."""

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the parameters were validated")

    monkeypatch.setattr(experiments, "Context", no_work)
    with pytest.raises(ValueError, match=match):
        experiments.run(experiment, profile="smoke", workdir=False, **params)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_refused():
    """Asking for CUDA on a machine without one is an error before any data is loaded."""
    with pytest.raises(ValueError, match="CUDA"):
        experiments.run("basis_pruning", profile="smoke", workdir=False, device="cuda")


def test_two_identical_runs_write_identical_results(tmp_path):
    """Same parameters and seed on CPU: the results files agree exactly, timings aside."""
    a = experiments.run("basis_pruning", profile="smoke", out=tmp_path / "a.json", workdir=False, **TINY)
    b = experiments.run("basis_pruning", profile="smoke", out=tmp_path / "b.json", workdir=False, **TINY)
    ra, rb = read_results(tmp_path / "a.json"), read_results(tmp_path / "b.json")
    assert strip_volatile(ra) == strip_volatile(rb)
    assert len(a["history"]) == len(b["history"]) >= 2


def test_pruning_record_is_consistent(tmp_path):
    """Every round prunes at least as much as the one before; the final round is one of them."""
    r = experiments.run("basis_pruning", profile="smoke", workdir=False, max_drop=1.0, **TINY)
    ratios = [h["param_pruning_ratio"] for h in r["history"]]
    assert ratios == sorted(ratios) and ratios[0] == 0.0 and ratios[-1] > 0.1
    assert r["final"]["round"] == len(r["history"]) - 1  # max_drop=1: the most pruned round is kept
    kept = r["history"][-1]["kept"]
    assert all(1 <= kept[n] <= r["history"][-1]["total"][n] for n in kept)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """A double-pruning run SIGKILLed after its first checkpoints ends, when restarted, exactly
    like an uninterrupted run."""
    params = dict(TINY, channel_rounds=2, basis_rounds=2)
    ref = experiments.run("double_pruning", profile="smoke", workdir=tmp_path / "ref", **params)
    wd = tmp_path / "killed"
    code = (
        "from basisprune.repro import experiments\n"
        f"experiments.run('double_pruning', profile='smoke', workdir={str(wd)!r}, **{params!r})\n"
    )
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 300
    first, second = experiments.STAGE_CHECKPOINTS["double_pruning"]  # the names the stages write
    while not (wd / first).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (wd / first).exists() and not (wd / second).exists(), "killed too late to test resume"
    resumed = experiments.run("double_pruning", profile="smoke", workdir=wd, **params)
    strip = lambda r: strip_volatile({k: v for k, v in r.items() if k not in ("timings", "compact_model")})
    assert strip(resumed) == strip(ref)


def test_cli_runs_an_experiment_and_writes_results(tmp_path, capsys):
    """`basisprune run` writes the same kind of results file the notebooks write."""
    out = tmp_path / "r.json"
    args = ["run", "channel_pruning", "--profile", "smoke", "--out", str(out), "--workdir", str(tmp_path / "w"),
            "--subset-train", "128", "--subset-test", "64", "--channel-rounds", "1", "--warmup-epochs", "1"]
    assert cli_main(args) == 0
    rec = read_results(out)
    assert rec["experiment"] == "channel_pruning" and rec["params"]["channel_rounds"] == 1
    assert "provenance" in rec and len(rec["history"]) == 2


def test_cli_bad_parameter_is_one_clear_line(capsys):
    """A bad value gives exit code 2 and a message naming the allowed values."""
    assert cli_main(["run", "basis_pruning", "--profile", "smoke", "--dataset", "nope"]) == 2
    assert "known datasets" in capsys.readouterr().err


def test_cache_key_covers_every_module_of_the_package(tmp_path, monkeypatch):
    """The code hash changes when any module of the package, library or harness, changes, is added
    or is renamed."""
    pkg = tmp_path / "pkg"
    (pkg / "repro").mkdir(parents=True)
    (pkg / "repro" / "workdir.py").write_text("x = 1\n")
    (pkg / "decompose.py").write_text("y = 2\n")
    monkeypatch.setattr(workdir, "__file__", str(pkg / "repro" / "workdir.py"))
    first = workdir._code_hash()
    assert workdir._code_hash() == first
    (pkg / "decompose.py").write_text("y = 3\n")  # the library, outside the harness's folder
    edited = workdir._code_hash()
    (pkg / "repro" / "new.py").write_text("")
    added = workdir._code_hash()
    (pkg / "repro" / "new.py").rename(pkg / "repro" / "renamed.py")
    assert len({first, edited, added, workdir._code_hash()}) == 4


def test_cache_key_reads_every_module_of_the_installed_package(monkeypatch):
    """The code hash reads every Python file of the installed ``basisprune`` package, the modules
    split out of the experiments (stages, reference, workdir) and of data included."""
    import basisprune

    read, read_bytes = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (read.append(self.resolve()), read_bytes(self))[1])
    workdir._code_hash()
    pkg = Path(basisprune.__file__).resolve().parent
    assert set(read) == {f.resolve() for f in pkg.rglob("*.py")}
    assert {pkg / "repro" / f"{m}.py" for m in ("experiments", "stages", "reference", "workdir")} <= set(read)
    assert {pkg / "repro" / "data" / f"{m}.py" for m in ("catalog", "sources", "imagefolder", "loaders", "cli")} <= set(read)


def test_shrinking_bases_between_rounds_keeps_the_masked_runs_history(tmp_path):
    """shrink_bases (pruned bases dropped after each round) prunes the same bases and gives the
    masked run's accuracies and sizes, round for round, to rounding."""
    runs = [experiments.run("basis_pruning", profile="smoke", workdir=False, max_drop=1.0, shrink_bases=s, **TINY)
            for s in (False, True)]
    (masked, shrunk) = [r["history"] for r in runs]
    assert len(masked) == len(shrunk) == TINY["basis_rounds"] + 1
    for a, b in zip(masked, shrunk):
        assert a["kept"] == b["kept"] and a["total"] == b["total"] and a["params"] == b["params"]
        for k in ("accuracy_val", "accuracy_test", "reference_test", "param_pruning_ratio"):
            assert b[k] == pytest.approx(a[k], rel=1e-6), k
    assert runs[0]["final"]["round"] == runs[1]["final"]["round"]


def test_shrunk_run_interrupted_after_a_round_resumes_to_the_same_result(tmp_path, monkeypatch):
    """A shrink_bases run stopped after its round-1 checkpoint ends, when started again, exactly like
    an uninterrupted one (the checkpoint holds the full model's coordinates)."""
    params = dict(TINY, shrink_bases=True, max_drop=1.0)
    ref = experiments.run("basis_pruning", profile="smoke", workdir=tmp_path / "ref", **params)
    finish = stages._Stage.finish

    def stop_after_round_1(self, r, since):
        row = finish(self, r, since)
        if r == 1:
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(stages._Stage, "finish", stop_after_round_1)
    with pytest.raises(KeyboardInterrupt):
        experiments.run("basis_pruning", profile="smoke", workdir=tmp_path / "cut", **params)
    monkeypatch.setattr(stages._Stage, "finish", finish)
    resumed = experiments.run("basis_pruning", profile="smoke", workdir=tmp_path / "cut", **params)
    strip = lambda r: strip_volatile({k: v for k, v in r.items() if k not in ("timings", "compact_model")})
    assert strip(resumed) == strip(ref)
