"""Reliability: every bad input is refused in one line before work starts and writes nothing; a run
killed inside any write resumes to the same result and leaves no truncated or temporary file; a
workdir made by another run is refused; two identical runs give equal records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import basisprune as bp
from basisprune import errors, prune
from basisprune.repro import checkpoints, data, experiments, models, profiles, results, train
from basisprune_book import cli, layout, parameters
from basisprune.repro.cli import main as cli_main
from basisprune.repro.results import read_results, strip_volatile

SRC = Path(experiments.__file__).resolve().parents[1]
TINY = dict(subset_train=96, subset_test=32, batch_size=32, basis_rounds=2, warmup_epochs=1)


# ------------------------------------------------------------------------------- fixtures
def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _imagefolder(root: Path, classes: list[str], splits=("train", "test")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _made_with(wd: Path, **params) -> Path:
    """A workdir whose fingerprint says it was made by a smoke basis_pruning run with ``params``."""
    p = experiments.resolve_params("basis_pruning", "smoke", **params)
    wd.mkdir(parents=True)
    results.write_json(wd / experiments.FINGERPRINT_FILE, experiments.fingerprint(p))
    torch.save({"round": 0}, wd / "basis.pt")
    return wd


def _setup(kind: str, tmp: Path) -> str:
    """Create what one bad-input row needs inside ``tmp``; returns the path to use."""
    if kind == "file":
        (tmp / "a_file").write_text("x")
        return str(tmp / "a_file")
    if kind == "one_class":
        return str(_imagefolder(tmp / "one", ["cat"]))
    if kind == "no_splits":
        (tmp / "flat" / "cat").mkdir(parents=True)
        return str(tmp / "flat")
    if kind == "folder":
        (tmp / "a_folder").mkdir()
        return str(tmp / "a_folder")
    if kind == "readonly":
        (tmp / "ro").mkdir()
        (tmp / "ro").chmod(0o555)
        return str(tmp / "ro" / "r.json")
    if kind == "other_params":
        return str(_made_with(tmp / "wd_other", basis_fraction=0.3))
    if kind == "no_fingerprint":
        (tmp / "wd_old").mkdir()
        torch.save({"round": 0}, tmp / "wd_old" / "basis.pt")
        return str(tmp / "wd_old")
    if kind == "bad_fingerprint":
        (tmp / "wd_bad").mkdir()
        (tmp / "wd_bad" / experiments.FINGERPRINT_FILE).write_text("{not json")
        return str(tmp / "wd_bad")
    raise AssertionError(kind)


# ------------------------------------------------------------------------- the bad inputs
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
# (id, experiment, CLI arguments, what the one-line message must name); "{file}" etc. name a
# fixture made by _setup. --out and --workdir default to fresh paths under tmp (checked unwritten).
CLI_CASES = [
    ("seed-text", "basis_pruning", ["--seed", "abc"], "--seed"),
    ("seed-negative", "basis_pruning", ["--seed", "-1"], "seed"),
    ("seed-float", "basis_pruning", ["--seed", "1.5"], "--seed"),
    ("seed-huge", "basis_pruning", ["--seed", str(2**40)], "seed"),
    ("lr-inf", "basis_pruning", ["--lr", "inf"], "lr"),
    ("lr-nan", "basis_pruning", ["--lr", "nan"], "lr"),
    ("lr-negative", "basis_pruning", ["--lr", "-0.1"], "lr"),
    ("lr-text", "basis_pruning", ["--lr", "fast"], "--lr"),
    ("full-lr-negative", "transfer", ["--full-lr", "-1"], "full_lr"),
    ("val-fraction-5", "basis_pruning", ["--val-fraction", "5"], "val_fraction"),
    ("val-fraction-0", "basis_pruning", ["--val-fraction", "0"], "val_fraction"),
    ("subset-train-negative", "basis_pruning", ["--subset-train", "-3"], "subset_train"),
    ("subset-test-zero", "basis_pruning", ["--subset-test", "0"], "subset_test"),
    ("subset-train-too-large", "basis_pruning", ["--subset-train", "100000"], "subset_train"),
    ("batch-size-zero", "basis_pruning", ["--batch-size", "0"], "batch_size"),
    ("image-size-small", "basis_pruning", ["--image-size", "8"], "image_size"),
    ("bn-mode", "basis_pruning", ["--bn-mode", "batch"], "bn_mode"),
    ("precision", "basis_pruning", ["--precision", "fp8"], "precision"),
    ("layer-floor", "basis_pruning", ["--layer-floor", "1"], "layer_floor"),
    ("basis-fraction", "basis_pruning", ["--basis-fraction", "1.5"], "basis_fraction"),
    ("channel-fraction", "channel_pruning", ["--channel-fraction", "0"], "channel_fraction"),
    ("basis-rounds-negative", "basis_pruning", ["--basis-rounds", "-1"], "basis_rounds"),
    ("basis-rounds-float", "basis_pruning", ["--basis-rounds", "2.5"], "--basis-rounds"),
    ("channel-rounds", "channel_pruning", ["--channel-rounds", "-1"], "channel_rounds"),
    ("epochs-per-round", "basis_pruning", ["--epochs-per-round", "0"], "epochs_per_round"),
    ("warmup-epochs", "basis_pruning", ["--warmup-epochs", "-2"], "warmup_epochs"),
    ("max-drop", "basis_pruning", ["--max-drop", "2"], "max_drop"),
    ("stop-drop", "basis_pruning", ["--stop-drop", "-0.1"], "stop_drop"),
    ("basis-scope", "basis_pruning", ["--basis-scope", "everywhere"], "basis_scope"),
    ("basis-normalize", "basis_pruning", ["--basis-normalize", "median"], "basis_normalize"),
    ("channel-importance", "channel_pruning", ["--channel-importance", "random"], "channel_importance"),
    ("channel-threshold", "channel_pruning", ["--channel-threshold", "-1"], "channel_threshold"),
    ("channel-l1", "channel_pruning", ["--channel-l1", "inf"], "channel_l1"),
    ("channel-warmup", "channel_pruning", ["--channel-warmup-epochs", "-1"], "channel_warmup_epochs"),
    ("transfer-epochs", "transfer", ["--transfer-epochs", "-1"], "transfer_epochs"),
    ("pretrained", "basis_pruning", ["--pretrained", "maybe"], "--pretrained"),
    ("device-unknown", "basis_pruning", ["--device", "tpu"], "device"),
    ("model", "basis_pruning", ["--model", "resnet999"], "model"),
    ("weights-unavailable-offline", "basis_pruning", ["--model", "vgg11"], "pretrained"),
    ("dataset", "basis_pruning", ["--dataset", "imagenet21k"], "dataset"),
    ("data-root-missing", "basis_pruning", ["--data-root", "/nonexistent/basisprune"], "data_root"),
    ("data-root-file", "basis_pruning", ["--data-root", "{file}"], "data_root"),
    ("imagefolder-no-root", "basis_pruning", ["--dataset", "imagefolder"], "data_root"),
    ("imagefolder-one-class", "basis_pruning", ["--dataset", "imagefolder", "--data-root", "{one_class}"], "data_root"),
    ("imagefolder-no-splits", "basis_pruning", ["--dataset", "imagefolder", "--data-root", "{no_splits}"], "data_root"),
    ("mnist-root-missing-offline", "basis_pruning", ["--dataset", "mnist", "--data-root", "/nonexistent/mn"], "data_root"),
    ("out-under-file", "basis_pruning", ["--out", "{file}/r.json"], "out"),
    ("out-is-folder", "basis_pruning", ["--out", "{folder}"], "out"),
    ("workdir-is-file", "basis_pruning", ["--workdir", "{file}"], "workdir"),
    ("workdir-under-file", "basis_pruning", ["--workdir", "{file}/wd"], "workdir"),
    ("workdir-other-params", "basis_pruning", ["--workdir", "{other_params}", "--basis-fraction", "0.6"], "basis_fraction=0.3"),
    ("workdir-other-dataset", "basis_pruning", ["--workdir", "{other_params}", "--dataset", "mnist5k"], "dataset='digits'"),
    ("workdir-no-fingerprint", "basis_pruning", ["--workdir", "{no_fingerprint}"], "workdir"),
    ("workdir-bad-fingerprint", "basis_pruning", ["--workdir", "{bad_fingerprint}"], "workdir"),
    ("experiment", "nope", [], "experiment"),
    ("unknown-option", "basis_pruning", ["--epochs", "3"], "--epochs"),
    ("profile", "basis_pruning", ["--profile", "fast"], "--profile"),
    pytest.param("out-read-only", "basis_pruning", ["--out", "{readonly}"], "out",
                 marks=pytest.mark.skipif(ROOT, reason="root writes into read-only folders")),
    pytest.param("device-cuda", "basis_pruning", ["--device", "cuda"], "device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
]

# (id, experiment, keyword arguments of experiments.run, what the message must name)
API_CASES = [
    ("bool-as-int", "basis_pruning", {"basis_rounds": True}, "basis_rounds"),
    ("bool-seed", "basis_pruning", {"seed": True}, "seed"),
    ("int-as-bool", "basis_pruning", {"pretrained": 1}, "pretrained"),
    ("text-lr", "basis_pruning", {"lr": "0.1"}, "lr"),
    ("lr-inf", "basis_pruning", {"lr": float("inf")}, "lr"),
    ("val-fraction-1", "basis_pruning", {"val_fraction": 1.0}, "val_fraction"),
    ("val-fraction-5", "basis_pruning", {"val_fraction": 5}, "val_fraction"),
    ("subset-train-negative", "basis_pruning", {"subset_train": -3}, "subset_train"),
    ("subset-test-float", "basis_pruning", {"subset_test": 2.5}, "subset_test"),
    ("image-size-float", "basis_pruning", {"image_size": 32.0}, "image_size"),
    ("dataset-list", "basis_pruning", {"dataset": ["digits"]}, "dataset"),
    ("data-root-int", "basis_pruning", {"data_root": 123}, "data_root"),
    ("device-int", "basis_pruning", {"device": 0}, "device"),
    ("stop-drop-nan", "basis_pruning", {"stop_drop": float("nan")}, "stop_drop"),
    ("channel-threshold-inf", "channel_pruning", {"channel_threshold": float("inf")}, "channel_threshold"),
    ("bn-mode", "basis_pruning", {"bn_mode": "batch"}, "bn_mode"),
    ("unknown-parameter", "basis_pruning", {"epochs": 3}, "epochs"),
    ("workdir-true", "basis_pruning", {"workdir": True}, "workdir"),
    ("out-int", "basis_pruning", {"out": 5}, "out"),
    ("experiment", "nope", {}, "experiment"),
    ("profile", "basis_pruning", {"profile": "fast"}, "profile"),
    ("workdir-other-params", "basis_pruning", {"workdir": "{other_params}", "basis_fraction": 0.6}, "basis_fraction"),
]


def _fill(value, tmp: Path):
    if isinstance(value, str) and "{" in value:
        kind = value[value.index("{") + 1:value.index("}")]
        return value.replace("{" + kind + "}", _setup(kind, tmp))
    return value


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory where default outputs land, no experiment may start, downloads are off."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASISPRUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BASISPRUNE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights but the offline ones

    def no_work(*args, **kwargs):
        raise AssertionError("the experiment started although an input was bad")

    for name in experiments.EXPERIMENTS:
        monkeypatch.setitem(experiments.EXPERIMENTS, name, no_work)
    return tmp_path


def _names(message: str, what: str) -> bool:
    return what in message or what.lstrip("-").replace("-", "_") in message


@pytest.mark.parametrize("case, experiment, args, names", CLI_CASES)
def test_bad_cli_input_is_one_line_exit_2_and_writes_nothing(case, experiment, args, names, sandbox, capsys):
    """A bad command-line input: exit status 2, one stderr line ``basisprune: error: ...`` naming
    the parameter, no traceback, and no file written or changed (no results, no workdir)."""
    args = [_fill(a, sandbox) for a in args]
    profile = [] if "--profile" in args else ["--profile", "smoke"]
    out = [] if "--out" in args else ["--out", str(sandbox / "r.json")]
    wd = [] if "--workdir" in args else ["--workdir", str(sandbox / "wd")]
    before = _tree(sandbox)
    rc = cli_main(["run", experiment, *profile, *out, *wd, *args])
    err = capsys.readouterr().err
    assert rc == errors.EXIT_ERROR, err
    assert err.startswith(errors.PREFIX) and err.count("\n") == 1, err
    assert _names(err, names), err
    assert _tree(sandbox) == before
    if case == "workdir-other-params":
        assert "this run has basis_fraction=0.6" in err


@pytest.mark.parametrize("case, experiment, kwargs, names", API_CASES)
def test_bad_api_input_raises_before_work_and_writes_nothing(case, experiment, kwargs, names, sandbox, capsys):
    """A bad argument of experiments.run: an error the CLI reports in one line with status 2, whose
    message names the parameter, raised before any work, with nothing written."""
    kwargs = {k: _fill(v, sandbox) for k, v in kwargs.items()}
    kwargs.setdefault("out", sandbox / "r.json")
    kwargs.setdefault("workdir", sandbox / "wd")
    profile = kwargs.pop("profile", "smoke")
    before = _tree(sandbox)
    with pytest.raises(errors.REPORTED) as info:
        experiments.run(experiment, profile=profile, **kwargs)
    assert _names(str(info.value), names), info.value
    assert errors.report(info.value) == errors.EXIT_ERROR
    assert capsys.readouterr().err.count("\n") == 1
    assert _tree(sandbox) == before


# (id, notebook runner arguments, what the message must name)
BOOK_CASES = [
    ("undeclared-parameter", ["-p", "sparsity", "0.5"], "sparsity"),
    ("seed-text", ["-p", "seed", "abc"], "seed"),
    ("seeds-not-a-list", ["-p", "seeds", "3"], "seeds"),
    ("dataset", ["-p", "dataset", "nope"], "dataset"),
    ("overrides-not-a-mapping", ["-p", "overrides", "3"], "overrides"),
    ("profile-as-parameter", ["-p", "profile", "smoke"], "profile"),
    ("only", ["--only", "99"], "only"),
]


@pytest.mark.parametrize("case, args, names", BOOK_CASES)
def test_bad_notebook_runner_input_is_one_line_exit_2(case, args, names, tmp_path, capsys):
    """The notebook runner refuses parameters no selected notebook declares and values of the wrong
    kind before running anything: one line naming the parameter, status 2, no output folder."""
    only = [] if "--only" in args else ["--only", "04"]
    rc = cli.main(["execute", "--profile", "smoke", "--out", str(tmp_path / "nb"), *only, *args])
    err = capsys.readouterr().err
    assert rc == errors.EXIT_ERROR and err.startswith(errors.PREFIX) and err.count("\n") == 1, err
    assert names in err, err
    assert not (tmp_path / "nb").exists()


def test_bad_input_table_is_large_enough():
    """The issue asks for at least 40 bad inputs, through the CLI and the API."""
    assert len(CLI_CASES) + len(API_CASES) + len(BOOK_CASES) >= 40 and len(API_CASES) >= 10


# ------------------------------------------------------------------------- library-level
def test_notebooks_receive_only_the_parameters_they_declare():
    """With several notebooks, a parameter one of them declares is accepted and injected only
    into the notebooks that declare it (``profile`` into all)."""
    nbs = layout.notebooks(only=["01", "06"])
    per = parameters.check_notebook_parameters(nbs, {"profile": "smoke", "n_images": 4, "sparsities": [0.5]})
    assert per[nbs[0]] == {"profile": "smoke", "n_images": 4}
    assert per[nbs[1]] == {"profile": "smoke", "sparsities": [0.5]}


def test_compact_of_a_model_with_nothing_to_compact_is_refused():
    """compact() of a model never decomposed nor channel-scaled raises a ValueError saying so."""
    with pytest.raises(ValueError, match="no basis layers and no channel scales"):
        bp.compact(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))


def test_apply_masks_with_a_missing_or_unknown_layer_names_it():
    """apply_masks refuses masks that miss a layer or name an unknown one, naming the layer."""
    d = bp.decompose(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1)))
    hs = bp.basis_layers(d)
    masks = {n: torch.ones_like(h.mask) for n, h in hs.items()}
    with pytest.raises(ValueError, match=r"no mask for layer\(s\) \['1'\]"):
        prune.apply_masks(hs, {"0": masks["0"]})
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['2'\]"):
        prune.apply_masks(hs, {**masks, "2": masks["1"]})
    with pytest.raises(ValueError, match="mask of layer '0' has shape"):
        prune.apply_masks(hs, {**masks, "0": torch.ones(2)})


def test_a_head_smaller_than_the_labels_is_named_before_training():
    """check_head with a 5-way head on 10-class labels: ValueError naming num_classes and the label
    range (not an IndexError from the loss later)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    ds = torch.utils.data.TensorDataset(torch.zeros(10, 12), torch.arange(10))
    ds.targets = torch.arange(10)
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    with pytest.raises(ValueError, match=r"num_classes=5 .* 0\.\.9"):
        models.check_head(model, {"train": loader})


def test_single_class_train_split_is_refused():
    """check_labels refuses a train split with one class (scores would all be zero)."""
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    ds.targets = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 2"):
        data.check_labels({"train": ds}, 10)


def test_failed_download_does_not_create_a_missing_root(tmp_path, monkeypatch):
    """A download into a missing data_root that fails removes the folders it made and says the
    folder did not exist."""
    import torchvision

    def failing(self, *a, **k):
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)
        raise OSError("no network (test)")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", failing)
    root = tmp_path / "new" / "data"
    with pytest.raises(data.DataUnavailableError, match="did not exist"):
        data.load("mnist", "test", 32, root=root, download=True)
    assert not (tmp_path / "new").exists()


def test_spec_choices_are_the_library_choices():
    """The allowed values of bn_mode, basis_scope and basis_normalize are those the code accepts."""
    assert set(profiles.SPECS["bn_mode"].allowed()) == set(train.BN_MODES)
    assert set(profiles.SPECS["precision"].allowed()) == set(train.PRECISIONS)
    assert set(profiles.SPECS["basis_scope"].allowed()) == set(prune._SCOPES)
    assert set(profiles.SPECS["basis_normalize"].allowed()) == set(prune._NORMALIZE)


def test_validate_gives_canonical_types():
    """validate keeps every profile's values and makes integral floats float (1 -> 1.0)."""
    for name in ("smoke", "default"):  # the paper profile asks for CUDA
        p = experiments.resolve_params("basis_pruning", name)
        assert profiles.validate(p) == p
    p = experiments.resolve_params("basis_pruning", "smoke", stop_drop=1)
    assert isinstance(p["stop_drop"], float)


def test_debug_shows_the_traceback(tmp_path, capsys):
    """--debug replaces the one-line message by the traceback (status 2 still)."""
    rc = cli_main(["--debug", "run", "basis_pruning", "--profile", "smoke", "--lr", "inf", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "ParameterError" in err


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    """clean_stale_temporaries removes only the writer's own temporaries older than the process
    start; a fresh one (a write going on), other dot files and real files stay."""
    old, fresh = tmp_path / ".basis.pt.abcd1234.tmp", tmp_path / ".r.json.x_y9zz00.tmp"
    keep = [tmp_path / ".basis.pt.tmp", tmp_path / "basis.pt", tmp_path / ".hidden.abcdefgh.txt"]
    for f in (old, fresh, *keep):
        f.write_text("x")
    os.utime(old, (results.PROCESS_START - 60, results.PROCESS_START - 60))
    assert results.clean_stale_temporaries(tmp_path) == [old]
    assert not old.exists() and fresh.exists() and all(f.exists() for f in keep)


def test_corrupt_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    """A truncated checkpoint in a workdir of the same run: one line naming the file and saying
    to delete it, status 2 (not a traceback), and the file left as it was."""
    params = dict(TINY, basis_rounds=1)
    wd = tmp_path / "wd"
    wd.mkdir()
    p = experiments.resolve_params("basis_pruning", "smoke", **params)
    results.write_json(wd / experiments.FINGERPRINT_FILE, experiments.fingerprint(p))
    (wd / "basis.pt").write_bytes(b"PK\x03\x04 truncated")
    args = ["run", "basis_pruning", "--profile", "smoke", "--workdir", str(wd), "--out", str(tmp_path / "r.json")]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in params.items()]
    rc = cli_main(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "basis.pt" in err and "corrupt" in err, err
    assert (wd / "basis.pt").read_bytes() == b"PK\x03\x04 truncated" and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ fingerprints and records
def test_results_and_workdir_carry_the_fingerprint(tmp_path):
    """A run writes fingerprint.json into its workdir and the code hash and digest into its
    results; resuming with the same parameters is accepted (and gives the same record), with
    another basis_fraction refused, naming both values."""
    wd = tmp_path / "wd"
    a = experiments.run("basis_pruning", profile="smoke", out=tmp_path / "a.json", workdir=wd, **dict(TINY, basis_rounds=1))
    fp = read_results(wd / experiments.FINGERPRINT_FILE)
    assert fp["params"] == results.to_jsonable(a["params"]) and a["fingerprint"]["digest"] == fp["digest"]
    b = experiments.run("basis_pruning", profile="smoke", out=tmp_path / "b.json", workdir=wd, **dict(TINY, basis_rounds=1))
    assert strip_volatile(a) == strip_volatile(b)
    with pytest.raises(errors.WorkdirMismatchError, match="made with basis_fraction=0.3, this run has basis_fraction=0.6"):
        experiments.run("basis_pruning", profile="smoke", workdir=wd, **dict(TINY, basis_rounds=1, basis_fraction=0.6))


def test_two_identical_runs_give_equal_stripped_records(tmp_path):
    """Two runs with the same parameters in two workdirs: their records differ only in what
    strip_volatile removes (timings and the compact model's path)."""
    params = dict(TINY, basis_rounds=1)
    a = experiments.run("basis_pruning", profile="smoke", out=tmp_path / "a.json", workdir=tmp_path / "w1", **params)
    b = experiments.run("basis_pruning", profile="smoke", out=tmp_path / "b.json", workdir=tmp_path / "w2", **params)
    assert a["compact_model"] != b["compact_model"]
    assert strip_volatile(read_results(tmp_path / "a.json")) == strip_volatile(read_results(tmp_path / "b.json"))


# --------------------------------------------------------------------------- kill and resume
_CHILD = r"""
import importlib, io, os, signal, sys
from pathlib import Path
from basisprune.repro.cli import main

target, nth = sys.argv[1], int(sys.argv[2])
seen = [0]

def atomic_write(path, write):
    # The nth write of `target`: half its bytes reach the temporary file, then the process dies.
    if Path(path).name == target:
        seen[0] += 1
        if seen[0] == nth:
            def half_then_die(f):
                buf = io.BytesIO()
                write(buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, half_then_die)
    return real(path, write)

results = importlib.import_module("basisprune.repro.results")
real = results.atomic_write
for name in ("basisprune.repro.results", "basisprune.repro.checkpoints", "basisprune.repro.train", "basisprune.compact"):  # every importer
    importlib.import_module(name).atomic_write = atomic_write
sys.exit(main(sys.argv[3:]))
"""

KILL_ARGS = ["--profile", "smoke", "--subset-train", "96", "--subset-test", "32", "--batch-size", "32",
             "--basis-rounds", "2", "--warmup-epochs", "1"]


def _cli(args: list[str], kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    cmd = ([sys.executable, "-c", _CHILD, kill[0], str(kill[1])] if kill else [sys.executable, "-m", "basisprune.repro.cli"])
    return subprocess.run([*cmd, "run", "basis_pruning", *KILL_ARGS, *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The results of an uninterrupted run (in a subprocess, like the killed ones)."""
    d = tmp_path_factory.mktemp("reference")
    proc = _cli(["--out", str(d / "r.json"), "--workdir", str(d / "wd")])
    assert proc.returncode == 0, proc.stderr
    return read_results(d / "r.json")


KILL_POINTS = [
    pytest.param("basis.pt", 2, id="checkpoint-round-1", marks=pytest.mark.slow),
    pytest.param("basis_pruning-compact.pt", 1, id="compact-model"),
    pytest.param("basis.pt", 1, id="first-checkpoint", marks=pytest.mark.slow),
    pytest.param("fingerprint.json", 1, id="fingerprint", marks=pytest.mark.slow),
    pytest.param("r.json", 1, id="results-file", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("target, nth", KILL_POINTS)
def test_killed_inside_a_write_resumes_to_the_same_result(target, nth, tmp_path, uninterrupted):
    """SIGKILL halfway through writing a file: the file is absent or its previous version, never
    truncated; a rerun ends with the uninterrupted run's results, and no temporary is left."""
    args = ["--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "wd")]
    killed = _cli(args, kill=(target, nth))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    orphans = list(tmp_path.rglob(f".{target}.*.tmp"))
    assert len(orphans) == 1, "the kill did not happen inside the write"
    dest = orphans[0].parent / target
    if nth == 1:
        assert not dest.exists()
    else:
        assert checkpoints.load_checkpoint(dest, weights_only=False)["round"] == nth - 2  # the previous round's
    time.sleep(0.05)  # the rerun starts strictly after the orphan was last written
    rerun = _cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    for f in (tmp_path / "wd").glob("*.pt"):
        torch.load(f, weights_only=False)  # complete files only
    rec = read_results(tmp_path / "r.json")
    assert strip_volatile(rec) == strip_volatile(uninterrupted)
    assert bp.load_model(rec["compact_model"]) is not None
