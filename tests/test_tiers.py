"""Result tiers: a committed tier is one sweep's results with what ran where; nothing else is read."""

from pathlib import Path

import pytest

from basisprune.repro import tiers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_tier(tmp_path_factory):
    """The GPU tier's spec run through the same code on the CPU at tiny sizes (two seeds)."""
    base = tmp_path_factory.mktemp("tier")
    tier = tiers.run_tier(ROOT / "sweeps" / "gpu_tier.yaml", base / "out", folder=base / "sweep", smoke=True,
                          workers=2, log=lambda *_: None)
    return base, tier


def test_a_tier_holds_every_run_and_says_where_it_ran(smoke_tier):
    """Every cell of the spec is one results file (with its provenance), and tier.json names the
    device, the torch version, the commit and the wall time."""
    base, tier = smoke_tier
    assert tier["cells"] == 2 and tier["failed"] == []
    assert len(tier["files"]) == 2 and all((base / "out" / f).exists() for f in tier["files"])
    assert tier["device"] and tier["versions"]["torch"] and tier["wall_seconds"] > 0
    assert "commit" in tier["git"]
    loaded = tiers.load_tier(base / "out")
    assert loaded is not None
    on_disk, records = loaded
    assert on_disk["files"] == tier["files"]
    assert sorted(r["params"]["seed"] for r in records) == [0, 1]
    assert all(r["experiment"] == "double_pruning" and "provenance" in r for r in records)


def test_the_tier_table_summarises_runs_over_seeds(smoke_tier):
    """One row per tier, model, size, dataset and experiment, the seeds counted, the hardware named;
    the change is minus the test drop against the fair reference."""
    base, _ = smoke_tier
    _, records = tiers.load_tier(base / "out")
    rows = tiers.tier_rows(records, "GPU (committed)")
    assert [r["change"] for r in rows] == [-r["final"]["accuracy_drop"] for r in records]
    table = tiers.tier_table(rows)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["tier"], row["model"], row["dataset"], row["seeds"]) == ("GPU (committed)", "mobilenet_v2", "digits", 2)
    assert row["hardware"] == tiers.processor(records[0]["provenance"]["hardware"]) != "unknown"


def test_a_folder_without_a_tier_is_missing_not_empty(tmp_path):
    """No tier.json: load_tier answers None (the chapter then says that no results exist)."""
    assert tiers.load_tier(tmp_path) is None
    (tmp_path / "stray.json").write_text("{}")
    assert tiers.load_tier(tmp_path) is None


def test_the_gpu_tier_spec_is_the_issue_s_grid():
    """Two models at 96 px or more, mnist5k and at least 20,000 Fashion-MNIST training images,
    three seeds, on CUDA."""
    from basisprune.repro import profiles, sweep

    spec = sweep.load(ROOT / "sweeps" / "gpu_tier.yaml")
    assert spec.profile == "gpu" and list(spec.seeds) == [0, 1, 2]
    grid = spec.grids[0]
    assert set(grid["model"]) == {"mobilenet_v2", "efficientnet_lite0"}
    assert set(grid["dataset"]) == {"mnist5k", "fashion_mnist"}
    p = profiles.get("gpu", "fashion_mnist")
    assert p["image_size"] >= 96 and p["subset_train"] >= 20000 and p["device"] == "cuda"


def test_the_seeds_tier_spec_is_the_issue_s_grid():
    """Channel, basis and double pruning on the default profile: 10 seeds on mnist5k, 5 on
    Fashion-MNIST with its whole 10,000-image test split."""
    from basisprune.repro import sweep

    cells = sweep.expand(sweep.load(ROOT / "sweeps" / "seeds.yaml"))
    assert {c.profile for c in cells} == {"default"}
    assert {c.experiment for c in cells} == {"channel_pruning", "basis_pruning", "double_pruning"}
    seeds = {}
    for c in cells:
        seeds.setdefault((c.experiment, c.params["dataset"]), set()).add(c.seed)
        if c.params["dataset"] == "fashion_mnist":
            assert c.params["subset_test"] is None
        else:  # each seed its own test fold: every fold of mnist5k is used twice
            assert c.params["test_split"] == "seed"
    assert {k: len(v) for k, v in seeds.items()} == {(e, d): n for e in ("channel_pruning", "basis_pruning", "double_pruning")
                                                     for d, n in (("mnist5k", 10), ("fashion_mnist", 5))}


def test_tier_check_says_whether_the_recomputed_mean_is_inside_the_tier_interval():
    """inside is True exactly when the recomputed mean lies in the tier's 95% interval of that column."""
    import pandas as pd

    rows = [{"dataset": "d", "experiment": "basis_pruning", "seed": s, "change": c, "se": 0.005, "params_pruned": p}
            for s, (c, p) in enumerate([(-0.01, 0.3), (-0.02, 0.4), (0.0, 0.5), (-0.01, 0.4)])]
    recomputed = pd.DataFrame([{"dataset": "d", "method": "basis pruning", "seed": 0, "change": -0.01, "params_pruned": 0.9},
                               {"dataset": "d", "method": "channel pruning", "seed": 0, "change": 0.0, "params_pruned": 0.1}])
    check = tiers.tier_check(recomputed, rows).set_index("column")
    assert list(check["experiment"]) == ["basis_pruning"] * 2
    assert check.loc["change", "inside"] and not check.loc["params_pruned", "inside"]
    assert check.loc["change", "tier_low"] <= -0.01 <= check.loc["change", "tier_high"]
    assert check.loc["params_pruned", "tier_seeds"] == 4 and check.loc["params_pruned", "recomputed_seeds"] == 1


def test_without_a_committed_seeds_tier_the_status_says_so(tmp_path):
    """No tier.json in the folder: a sentence naming the command, and no table."""
    import pandas as pd

    text, table = tiers.seeds_tier_status(pd.DataFrame(), tmp_path)
    assert table is None and "benchmarks/seeds_tier.py" in text


def test_tier_intervals_hold_each_mean_and_say_whether_the_interval_meets_the_precision():
    """Per data set and experiment, the interval contains the mean; precise is True exactly when the
    half-width is within the precision asked for (tight seeds: yes; spread seeds: no)."""
    rows = [{"dataset": d, "experiment": "double_pruning", "seed": s, "change": c + spread * (s - 2), "se": 0.001,
             "params_pruned": 0.5 + spread * (s - 2)}
            for d, c, spread in (("tight", -0.01, 0.0001), ("spread", -0.01, 0.05)) for s in range(5)]
    table = tiers.tier_intervals(rows).set_index("dataset")
    assert list(table["seeds"]) == [5, 5]
    for col in ("change", "params_pruned"):
        assert (table[f"{col}_low"] <= table[col]).all() and (table[col] <= table[f"{col}_high"]).all()
        assert table.loc["tight", f"{col}_precise"] and not table.loc["spread", f"{col}_precise"]
    assert abs(table.loc["tight", "change"] + 0.01) < 1e-12
