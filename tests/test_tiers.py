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
    assert row["hardware"] == "CPU"


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
