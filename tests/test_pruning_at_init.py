"""Tests for basisprune.repro.pruning_at_init, pai_transfer and pai_cost: the pruning-at-initialization
experiments (chapter 6), run through experiments.run like the others."""

from __future__ import annotations

import types

import pytest
import torch

from basisprune import pai
from basisprune.repro import cli, data, experiments, pai_cost, pai_transfer, pruning_at_init as pe, smallnets
from basisprune.repro.results import read_results
from basisprune.repro.devices import seed_everything

# Tiny smoke settings: a few hundred images, one epoch, width-4 vgg_small.
TINY = dict(subset_train=96, subset_test=64, batch_size=32, prune_batch_size=16, synflow_iterations=3)


def scratch_run(method: str, sparsity: float, seed: int, **kw):
    """One from-scratch run on a fresh context of the smoke profile."""
    return pe.from_scratch(experiments.context("pai_scratch", "smoke", seed=seed, **TINY), method, sparsity, **kw)


@pytest.mark.parametrize("method, sparsity", [("prospr", 0.8), ("snip", 0.5), ("synflow", 0.9), ("dense", 0.0)])
def test_from_scratch_density_and_accuracy(method, sparsity):
    """The kept fraction of prunable weights is 1 - sparsity (to one weight), accuracy is a fraction."""
    r = scratch_run(method, sparsity, 0)
    assert {"method", "sparsity", "seed", "accuracy_test", "density_kept", "prune_seconds",
            "train_seconds"} <= set(r)
    assert r["method"] == method and r["sparsity"] == sparsity and r["seed"] == 0
    assert r["density_kept"] == pytest.approx(1 - sparsity, abs=1 / r["prunable_weights"])
    assert r["kept_weights"] == round((1 - sparsity) * r["prunable_weights"])
    assert 0.0 <= r["accuracy_test"] <= 1.0
    assert r["pruned_nonzero_after_training"] == 0
    assert r["train_seconds"] > 0
    if method == "dense":
        assert r["prune_seconds"] == 0 and r["density_kept"] == 1.0
    else:  # scoring took measurable time
        assert r["prune_seconds"] > 0


def test_prune_seconds_is_the_time_spent_pruning(monkeypatch):
    """prune_seconds is the clock time spent in pai.prune: with a clock that only pai.prune moves
    (by 7 s), it is 7 s, and training, which does not move it, adds nothing."""
    now = [100.0]
    real_prune = pe.pai.prune

    def prune_taking_7s(*args, **kwargs):
        now[0] += 7.0
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(pe.pai, "prune", prune_taking_7s)
    monkeypatch.setattr(pe, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    r = scratch_run("snip", 0.5, 0)
    assert r["prune_seconds"] == 7.0 and r["train_seconds"] == 0.0


def test_pruned_weights_stay_zero_after_training():
    """Training moves the kept weights; every pruned weight is exactly zero afterwards."""
    r = scratch_run("snip", 0.7, 1, return_model=True)
    model = r["model"]
    seed_everything(1)  # from_scratch builds the network right after seeding with the run's seed
    init = smallnets.build("vgg_small", 10, 3, width=4)
    init_params = dict(init.named_parameters())
    modules = dict(model.named_modules())
    n_pruned = n_moved = 0
    for name in pai.prunable_weights(init):
        mname, _, pname = name.rpartition(".")
        module = modules[mname]
        mask = getattr(module, f"{pname}_mask")
        weight = getattr(module, pname).detach()
        orig = getattr(module, f"{pname}_orig").detach()
        assert torch.all(weight[mask == 0] == 0)
        assert torch.all(orig[mask == 0] == 0)
        n_pruned += int((mask == 0).sum())
        n_moved += int((weight[mask == 1] != init_params[name][mask == 1]).sum())
    assert n_pruned == r["prunable_weights"] - r["kept_weights"] > 0
    assert n_moved > 0  # it did train


def test_same_seed_same_result():
    """Two runs with the same settings and seed give the same accuracy and loss."""
    a = scratch_run("magnitude", 0.5, 2)
    b = scratch_run("magnitude", 0.5, 2)
    assert a["accuracy_test"] == b["accuracy_test"] and a["loss_test"] == b["loss_test"]


def no_work(*a, **k):
    raise AssertionError("work started before the input was validated")


@pytest.mark.parametrize(
    "experiment, kwargs, match",
    [("pai_scratch", {"profile": "huge"}, "profile must be one of smoke, default, gpu, paper"),
     ("pai_scratch", {"epoch": 3}, "unknown setting"),
     ("pai_scratch", {"seed": -1}, "seed"),
     ("pai_scratch", {"seeds": [0, 1]}, "give seed"),
     ("pai_scratch", {"net": "resnet50"}, "resnet20, vgg_small"),
     ("pai_scratch", {"optimizer": "lbfgs"}, "'sgd', 'adamw'"),
     ("pai_scratch", {"epochs": 0}, "epochs"),
     ("pai_scratch", {"dataset": "imagenet"}, "known datasets"),
     ("pai_scratch", {"methods": ["prospr", "obd"]}, r"methods\[1\] must be one of 'dense', 'prospr'"),
     ("pai_scratch", {"sparsities": [0.5, 1.2]}, r"sparsities\[1\] must be a finite number in \[0, 1\)"),
     ("pai_transfer", {"methods": ["obd"]}, "'prospr'"),
     ("pai_transfer", {"fixed": {"half": 1.5}}, r"fixed\['half'\]"),
     ("pai_transfer", {"targets": ["channel_pruning"]}, "'basis_pruning', 'double_pruning'"),
     ("pai_cost", {"model": "resnet18"}, "resnet20, vgg_small"),
     ("pai_cost", {"repeats": 0}, "repeats")],
)
def test_bad_settings_fail_before_work(experiment, kwargs, match, monkeypatch, tmp_path):
    """Bad names and values raise one ValueError naming what is allowed, before any data is loaded
    or anything is written."""
    monkeypatch.setattr(data, "load", no_work)
    monkeypatch.setattr(data, "make_loaders", no_work)
    kwargs = {"profile": "smoke", **kwargs}
    with pytest.raises(ValueError, match=match):
        experiments.run(experiment, out=tmp_path / "r.json", workdir=tmp_path / "wd", **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method, sparsity, match", [("nope", 0.5, "allowed: dense, prospr"),
                                                     ("snip", 1.0, r"sparsity must be a number in \[0, 1\)"),
                                                     ("snip", "0.5", "sparsity"),
                                                     ("dense", 0.5, "sparsity must be 0")])
def test_bad_method_or_sparsity_fails_before_a_model_is_built(method, sparsity, match, monkeypatch):
    """from_scratch refuses a bad method or sparsity before it builds a network."""
    ctx = experiments.context("pai_scratch", "smoke", **TINY)
    monkeypatch.setattr(smallnets, "build", no_work)
    with pytest.raises(ValueError, match=match):
        pe.from_scratch(ctx, method, sparsity)


def test_scratch_experiment_matches_single_runs_and_table(tmp_path):
    """pai_scratch runs the dense baseline, then each method at each sparsity, each as a single
    run on a fresh context would (the training order is the same for every run); its results file
    holds the runs with provenance, and the accuracy table has a row per method."""
    records = [experiments.run("pai_scratch", profile="smoke", seed=s, methods=["random"], sparsities=[0.5],
                               out=tmp_path / f"s{s}.json", workdir=False, **TINY) for s in (0, 1)]
    runs = [r for rec in records for r in rec["runs"]]
    assert [(r["method"], r["seed"]) for r in runs] == [("dense", 0), ("random", 0), ("dense", 1), ("random", 1)]
    single = scratch_run("random", 0.5, 1)
    assert runs[3]["accuracy_test"] == single["accuracy_test"] and runs[3]["loss_test"] == single["loss_test"]
    saved = read_results(tmp_path / "s1.json")
    assert saved["experiment"] == "pai_scratch" and "provenance" in saved and saved["runs"][1]["method"] == "random"
    table = pe.accuracy_table(runs)
    assert list(table.index) == ["dense", "random"]
    assert list(table.columns) == ["0%", "50%"]
    assert "±" in table.loc["random", "50%"]


def test_scratch_experiment_resumes_from_its_workdir(tmp_path, monkeypatch):
    """A rerun in the same workdir loads every finished run instead of training it again."""
    kw = dict(profile="smoke", methods=["magnitude"], sparsities=[0.5], workdir=tmp_path / "wd", **TINY)
    first = experiments.run("pai_scratch", **kw)
    monkeypatch.setattr(pe, "from_scratch", no_work)
    again = experiments.run("pai_scratch", **kw)
    assert again["runs"] == first["runs"]


def test_layer_collapse_is_flagged_not_fatal():
    """When the global top-k empties a layer, pai.prune refuses; the experiment keeps that mask."""
    torch.manual_seed(0)
    net = smallnets.vgg_small(10, 3, width=4)
    with torch.no_grad():
        net.features[3].weight.mul_(1e-6)  # second conv: tiny weights, lowest magnitudes
    masks, collapsed = pe.prune_with_collapse(net, "magnitude", 0.9, None, {})
    assert collapsed
    assert masks["features.3.weight"].sum() == 0
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
    masks, collapsed = pe.prune_with_collapse(net, "magnitude", 0.01, None, {})  # 47 of its 144 weights go
    assert not collapsed


def test_matched_sparsity_equal_parameter_count():
    """The matched sparsity leaves exactly the asked parameter count (kept weights + non-prunable)."""
    net = smallnets.resnet20(10, 3, width=4)
    total = sum(p.numel() for p in net.parameters())
    prunable = sum(dict(net.named_parameters())[n].numel() for n in pai.prunable_weights(net))
    m = pai_transfer.matched_sparsity(net, 0.3 * total)
    assert m["reference"] == total and m["prunable"] == prunable
    assert m["kept"] + m["non_prunable"] == round(0.3 * total)
    assert m["sparsity"] == pytest.approx(1 - m["kept"] / prunable)
    assert pai_transfer.matched_sparsity(net, total)["sparsity"] == 0.0
    with pytest.raises(ValueError, match="prunable weights"):
        pai_transfer.matched_sparsity(net, total - prunable)  # nothing left to keep
    with pytest.raises(ValueError, match="prunable weights"):
        pai_transfer.matched_sparsity(net, total + 10)


def test_prune_cost_tiny():
    """prune_cost reports the median of its timed calls and names the hardware."""
    r = pai_cost.prune_cost("prospr", repeats=3, model="resnet20", batch=2, steps=1, width=2, image_size=8, sparsity=0.5)
    assert len(r["times_seconds"]) == 3
    assert min(r["times_seconds"]) <= r["median_seconds"] <= max(r["times_seconds"])
    assert r["hardware"]["cpu_model"] and r["hardware_name"]
    assert r["batch"] == 2 and r["steps"] == 1


def test_cli_runs_the_cost_experiment(tmp_path, capsys):
    """`basisprune run pai_cost --profile smoke` writes a results file with one record per method."""
    out = tmp_path / "cost.json"
    assert cli.main(["run", "pai_cost", "--profile", "smoke", "--out", str(out), "--workdir", str(tmp_path / "wd")]) == 0
    saved = read_results(out)
    assert [r["method"] for r in saved["methods"]] == list(pai.METHODS)
    assert all(r["median_seconds"] > 0 for r in saved["methods"])
    assert str(out) in capsys.readouterr().out


def test_sweep_spec_cells_of_a_pai_experiment():
    """A sweep spec can name a PaI experiment: its cells carry the same parameters as a direct run."""
    from basisprune.repro import sweep

    spec = sweep.load({"name": "pai", "experiment": "pai_scratch", "profile": "smoke", "params": {"lr": [0.05, 0.1]},
                       "seeds": [0, 1]})
    cells = sweep.expand(spec)
    assert len(cells) == 4
    assert cells[0].params == experiments.resolve_params("pai_scratch", "smoke", lr=0.05, seed=0)


def test_sweep_spec_sets_a_pai_experiments_own_settings():
    """A sweep spec's params take the pai experiment's own settings (width, methods, ...): each cell
    resolves to what a direct run with those settings resolves to; a list-valued setting takes a
    list per cell, a single item meaning a list of one."""
    from basisprune.repro import sweep

    spec = sweep.load({"experiment": "pai_cost", "profile": "smoke", "seeds": [0],
                       "params": {"width": [8, 16], "methods": ["snip", ["prospr", "random"]]}})
    cells = sweep.expand(spec)
    asked = [(w, m) for w in (8, 16) for m in (["snip"], ["prospr", "random"])]
    assert [(c.params["width"], c.params["methods"]) for c in cells] == asked
    for c, (w, m) in zip(cells, asked):
        assert c.params == experiments.resolve_params("pai_cost", "smoke", width=w, methods=m, seed=0)
    assert len({c.fingerprint for c in cells}) == 4


@pytest.mark.parametrize("experiment, params, match", [
    ("pai_cost", {"dataset": ["mnist"]}, r"params\.dataset: unknown parameter 'dataset' of pai_cost; allowed: batch, "
                                         r"device, image_size, methods, model, .*width$"),
    ("basis_pruning", {"width": [8]}, r"params\.width: unknown parameter 'width'; allowed: basis_fraction, "),
    (["pai_scratch", "pai_transfer"], {"width": [8]}, r"unknown parameter 'width' of pai_transfer; allowed: "),
    ("pai_scratch", {"width": [0]}, r"params\.width: width must be an integer >= 1, got 0"),
    ("pai_scratch", {"methods": [["snip", "nope"]]}, r"params\.methods: methods\[1\] must be one of 'dense', "),
    ("pai_transfer", {"fixed": [{"half": 0.5}]}, r"params\.fixed: fixed is a mapping of labels to values; a sweep "
                                                 r"cannot vary it"),
])
def test_sweep_spec_refuses_a_setting_the_pai_experiment_lacks(tmp_path, monkeypatch, experiment, params, match):
    """A name the experiment does not take, or a value its spec refuses: one line naming what is
    allowed, before any job starts or the sweep folder is made."""
    from basisprune.repro import sweep

    def no_job(*args, **kwargs):
        raise AssertionError("a job started before the spec was validated")

    monkeypatch.setattr(sweep, "run_local", no_job)
    spec = {"experiment": experiment, "profile": "smoke", "params": params, "folder": str(tmp_path / "sw")}
    with pytest.raises(ValueError, match=match) as err:
        sweep.run(spec)
    assert "\n" not in str(err.value) and not (tmp_path / "sw").exists()


def test_cli_takes_a_pai_experiments_own_settings(tmp_path, capsys):
    """`basisprune run pai_cost --width ... --methods a,b` runs with those settings (a list option
    is comma-separated) and records them in its results file."""
    out = tmp_path / "cost.json"
    args = ["run", "pai_cost", "--profile", "smoke", "--out", str(out), "--workdir", str(tmp_path / "wd"),
            "--width", "2", "--batch", "2", "--steps", "1", "--image-size", "8", "--repeats", "1",
            "--methods", "random,snip"]
    assert cli.main(args) == 0, capsys.readouterr().err
    saved = read_results(out)
    assert {k: saved["params"][k] for k in ("width", "batch", "steps", "image_size", "repeats", "methods")} == {
        "width": 2, "batch": 2, "steps": 1, "image_size": 8, "repeats": 1, "methods": ["random", "snip"]}
    assert [r["method"] for r in saved["methods"]] == ["random", "snip"]
    assert all(r["width"] == 2 and r["batch"] == 2 for r in saved["methods"])


@pytest.mark.parametrize("experiment, args, match", [
    ("basis_pruning", ["--width", "8"], "argument --width: basis_pruning has no parameter width; its parameters: "
                                        "--basis-fraction, "),
    ("pai_cost", ["--dataset", "mnist"], "argument --dataset: pai_cost has no parameter dataset; its parameters: "
                                         "--batch, --device, --image-size, --methods, "),
    ("pai_cost", ["--width", "0"], "width must be an integer >= 1, got 0"),
    ("pai_scratch", ["--methods", "snip,nope"], "methods[1] must be one of 'dense', "),
    ("pai_transfer", ["--fixed", "half"], "argument --fixed: expected label=value pairs separated by commas"),
])
def test_cli_refuses_a_setting_the_experiment_lacks(tmp_path, monkeypatch, capsys, experiment, args, match):
    """A setting the experiment does not take, or a value its spec refuses: exit status 2, one line
    naming the option and what is allowed, before the experiment starts, nothing written."""

    def no_work(*a, **kw):
        raise AssertionError("the experiment started although an input was bad")

    monkeypatch.setitem(experiments.EXPERIMENTS, experiment, no_work)
    rc = cli.main(["run", experiment, "--profile", "smoke", "--out", str(tmp_path / "r.json"),
                   "--workdir", str(tmp_path / "wd"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("basisprune: error: ") and err.count("\n") == 1, err
    assert match in err
    assert list(tmp_path.iterdir()) == []
