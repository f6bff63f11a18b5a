"""The training-set-size study (experiment ``data_size``): one cell runs every method at double
pruning's FLOPs and budget; its tables pair methods by seed."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from basisprune.errors import ParameterError
from basisprune.repro import data_size, experiments, tiers
from basisprune.repro.results import strip_volatile
from basisprune.repro.workdir import fingerprint


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), floor=st.integers(1, 120), batch=st.integers(1, 16))
def test_a_floored_epoch_draws_every_image_before_any_twice(n, floor, batch):
    """An epoch holds max(n, floor) images, and within it no image is drawn k+1 times before every
    image was drawn k times (whole permutations back to back)."""
    ds = TensorDataset(torch.arange(n))
    loader = data_size.floored_loader(DataLoader(ds, batch_size=batch, shuffle=True), floor, seed=0)
    drawn = torch.cat([b[0] for b in loader]).tolist()
    total = max(n, floor)
    assert total - 1 <= len(drawn) <= total  # a lone last image is dropped (BatchNorm cannot train on it)
    for k in range(0, len(drawn), n):
        chunk = drawn[k:k + n]
        assert len(set(chunk)) == len(chunk)


def test_a_set_as_large_as_the_floor_keeps_its_loader():
    """From the floor up an epoch is the set itself: the loader is returned unchanged."""
    loader = DataLoader(TensorDataset(torch.arange(50)), batch_size=8, shuffle=True)
    assert data_size.floored_loader(loader, 50, seed=0) is loader


def test_an_unbalanced_training_subset_is_refused_before_anything_is_written(tmp_path):
    """A training subset that is not a multiple of the classes is one ParameterError naming
    subset_train, and neither the results file nor the workdir's checkpoints are written."""
    out = tmp_path / "r.json"
    with pytest.raises(ParameterError, match="subset_train.*class-balanced"):
        experiments.run("data_size", profile="smoke", subset_train=105, out=out, workdir=tmp_path / "wd")
    assert not out.exists()
    assert not list((tmp_path / "wd").glob("*.pt"))


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """One smoke cell (digits, 10 images per class, epochs of 500 images), run twice on one
    workdir: the second run resumes every method from its checkpoint but the last, which it
    computes again."""
    mp = pytest.MonkeyPatch()
    mp.setattr(data_size, "EPOCH_IMAGES", 500)
    base = tmp_path_factory.mktemp("data_size")
    params = dict(profile="smoke", subset_train=100, subset_test=64, workdir=base / "wd")
    first = experiments.run("data_size", out=base / "r.json", **params)
    # A cell killed before its last method: that one is computed again in a fresh process state.
    (base / "wd" / "data_size-head_only.pt").unlink()
    again = experiments.run("data_size", **params)
    mp.undo()
    return first, again, base


def test_every_method_runs_at_double_prunings_flops_and_budget(cell):
    """Each method is recorded; peers are pruned to at most double pruning's FLOPs (within the
    bisection's tolerance), the unpruned baselines prune nothing, and every trained method trains
    double pruning's epoch budget."""
    rec, _, _ = cell
    m = rec["methods"]
    assert set(m) == set(data_size.METHODS)
    assert rec["train_per_class"] == 10
    target = m["double_pruning"]["flop_pruning_ratio"]
    for peer in ("peer_finetune", "peer_scales_head"):
        assert target - 1e-9 <= m[peer]["flop_pruning_ratio"] <= target + 0.011
    for base in ("full_finetune", "head_only", "scales_head"):
        assert m[base]["flop_pruning_ratio"] == 0.0
    if target <= 0.005:  # nothing to prune: the peer is the unpruned model, trained the same way
        assert m["peer_finetune"]["accuracy_test"] == m["full_finetune"]["accuracy_test"]
    for name in ("peer_finetune", "peer_scales_head", "full_finetune", "head_only"):
        assert m[name]["epochs"] == rec["budget_epochs"] == m["double_pruning"]["epochs"]
    assert m["full_finetune"]["trainable_params"] == m["full_finetune"]["params"]
    assert m["head_only"]["trainable_params"] < m["peer_scales_head"]["trainable_params"] < m["peer_finetune"]["trainable_params"]


def test_a_resumed_cell_gives_the_same_numbers(cell):
    """The second run on the same workdir records the same numbers, the method it computed again
    included (each method trains on the same batches whatever ran before it)."""
    first, again, _ = cell
    assert strip_volatile(first["methods"]) == strip_volatile(again["methods"])


def test_the_study_pairs_methods_by_seed(cell):
    """study_rows holds one row per method; the gap of a method against itself is zero, a tie."""
    rec, _, base = cell
    rows = data_size.study_rows([json.loads((base / "r.json").read_text())])
    assert len(rows) == len(data_size.METHODS)
    table = data_size.study_table(rows)
    assert list(table["method"]) == list(data_size.METHODS)
    gaps = data_size.paired_gaps(rows + [{**r, "seed": 1} for r in rows], "double_pruning", "double_pruning")
    assert gaps["gap"].tolist() == [0.0] and gaps["winner"].tolist() == ["tie"]


def _rows(gap_by_size):
    """Synthetic rows: three seeds per size, ours = theirs + gap (+ seed noise of 0.1 points)."""
    rows = []
    for k, gap in gap_by_size.items():
        for s in range(3):
            base = 0.7 + 0.001 * s
            rows += [{"per_class": k, "seed": s, "method": "double_pruning", "accuracy": base + gap + 0.001 * s},
                     {"per_class": k, "seed": s, "method": "peer_finetune", "accuracy": base}]
    return rows


def test_the_crossing_is_the_largest_size_below_which_ours_always_wins():
    """Wins at 10 and 30 per class, a loss at 100: the sentence names 30 and below, then what happens
    above it; no win at any size: it says so."""
    gaps = data_size.paired_gaps(_rows({10: 0.05, 30: 0.02, 100: -0.03}))
    assert gaps["winner"].tolist() == ["ours", "ours", "other"]
    text = data_size.crossing(gaps)
    assert "30 images per class and below" in text and text.endswith("above it, fine-tuning wins at 100")
    never = data_size.crossing(data_size.paired_gaps(_rows({10: -0.05, 30: -0.02})))
    assert "none of the sizes" in never and "wins at 2 of them" in never


def test_code_status_says_whether_todays_code_computed_the_records():
    """Records with today's code hash are today's; any other hash is named as other code."""
    today = fingerprint({})["code"]
    assert "today's code" in tiers.code_status([{"fingerprint": {"code": today}}])
    assert "other code" in tiers.code_status([{"fingerprint": {"code": "0" * 64}}])


def test_collecting_a_tier_still_being_computed_lists_what_is_missing(tmp_path):
    """collect_only runs nothing: with no cell done, no file is copied, every cell is listed as
    missing, nothing counts as failed and the wall time is None."""
    spec = {"name": "ds", "experiment": "data_size", "profile": "smoke",
            "params": {"subset_train": [100, 200], "subset_test": 64}, "seeds": [0]}
    tier = tiers.run_tier(spec, tmp_path / "out", folder=tmp_path / "sweep", collect_only=True)
    assert tier["files"] == [] and tier["failed"] == [] and len(tier["missing"]) == 2
    assert tier["wall_seconds"] is None and tier["cells"] == 2
