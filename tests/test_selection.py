"""Round selection on recorded histories: the validation/test gap and the margin's replay."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import selection
from basisprune.repro.stages import select_round

ROOT = Path(__file__).resolve().parents[1]


def _round(r, drop_val, drop_test, pruned, se=0.005):
    return {"round": r, "drop_val": drop_val, "accuracy_drop": drop_test, "drop_se_val": se, "param_pruning_ratio": pruned}


def _record(seed, history, margin=1.0, dataset="d", experiment="basis_pruning", max_drop=0.01):
    best, _ = select_round(history, max_drop, margin)
    return {"experiment": experiment, "params": {"dataset": dataset, "seed": seed, "max_drop": max_drop, "select_margin": margin},
            "history": history, "final": {"round": best["round"]}}


def test_selection_gap_is_the_test_drop_beyond_the_validation_drop_per_seed():
    """Each run losing d more on test than on validation gives a gap of d; a seed's runs count as one
    value (two runs of one seed weigh as much as one run of another)."""
    rows = [{"dataset": "a", "seed": s, "val_change": -0.01, "change": -0.01 - d}
            for s, d in ((0, 0.004), (0, 0.004), (1, 0.004))]
    rows += [{"dataset": "b", "seed": 0, "val_change": 0.0, "change": -0.002},
             {"dataset": "b", "seed": 0, "val_change": 0.0, "change": -0.002},
             {"dataset": "b", "seed": 0, "val_change": 0.0, "change": -0.002},
             {"dataset": "b", "seed": 1, "val_change": 0.0, "change": -0.008}]
    gap = selection.selection_gap(rows).set_index("dataset")
    assert gap.loc["a", "gap"] == pytest.approx(0.004) and gap.loc["a", "gap_low"] == pytest.approx(0.004)
    assert gap.loc["b", "gap"] == pytest.approx(0.005)  # per seed 0.002 and 0.008, not 0.0035 over runs
    assert gap.loc["b", "seeds"] == 2 and gap.loc["b", "runs"] == 4


def test_gap_by_round_separates_the_selected_round_from_the_others():
    """Histories whose test and validation drops agree everywhere except at the selected round show the
    gap in the ``selected`` row only: a selection effect, not a split effect."""
    records = []
    for seed in range(3):
        h = [_round(0, 0.0, 0.0, 0.0), _round(1, 0.002, 0.002, 0.2), _round(2, 0.003, 0.009, 0.4),
             _round(3, 0.03, 0.03, 0.6)]
        records.append(_record(seed, h))
    assert [r["final"]["round"] for r in records] == [2, 2, 2]
    gap = selection.gap_by_round(records).set_index("rounds")["gap"]
    assert list(gap.index) == list(selection.GAP_KINDS)
    assert gap[selection.GAP_KINDS[0]] == pytest.approx(0.0) and gap[selection.GAP_KINDS[1]] == pytest.approx(0.0)
    assert gap["selected"] == pytest.approx(0.006)


def test_gap_by_round_counts_each_stage_of_double_pruning_once():
    """A double-pruning record contributes both stages' rounds; its channel stage, the same computation
    as channel pruning alone with that seed, is not counted a second time."""
    ch = [_round(0, 0.0, 0.0, 0.0), _round(1, 0.001, 0.004, 0.3)]
    basis = [_round(0, 0.0, 0.001, 0.3), _round(1, 0.02, 0.02, 0.5)]
    double = {"experiment": "double_pruning", "params": {"dataset": "d", "seed": 0, "max_drop": 0.01, "select_margin": 1.0},
              "stages": {"channel": {"history": ch, "final": {"round": 1}}, "basis": {"history": basis, "final": {"round": 0}}}}
    stages = selection.stage_histories([double])
    assert [s["pipeline"] for s in stages] == ["double pruning (channel stage)", "double pruning (basis stage)"]
    kinds = selection.gap_by_round([double]).set_index("rounds")["n_rounds"]
    assert kinds[selection.GAP_KINDS[0]] == 2 and kinds["selected"] == 1 and kinds[selection.GAP_KINDS[1]] == 1
    alone = _record(0, ch, experiment="channel_pruning")
    both = selection.stage_histories([alone, double])
    assert [s["pipeline"] for s in both] == ["channel pruning", "double pruning (basis stage)"]


def test_margin_replay_at_the_recorded_margin_reproduces_the_recorded_selection():
    """Replaying the selection with the margin a run used selects the round it recorded."""
    h = [_round(0, 0.0, 0.0, 0.0), _round(1, 0.001, 0.003, 0.2, se=0.004), _round(2, 0.004, 0.008, 0.4, se=0.004),
         _round(3, 0.008, 0.012, 0.6, se=0.004)]
    rec = _record(0, h, margin=1.0)
    row = selection.margin_replay([rec], [1.0]).iloc[0]
    chosen = next(x for x in h if x["round"] == rec["final"]["round"])
    assert row["test_drop"] == pytest.approx(chosen["accuracy_drop"])
    assert row["params_pruned"] == pytest.approx(chosen["param_pruning_ratio"])
    assert row["runs_within_budget"] == int(chosen["accuracy_drop"] <= 0.01)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.02, 0.03), st.floats(0.0, 0.01)), min_size=1, max_size=8),
       st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_a_larger_margin_never_prunes_more(rounds, m1, m2):
    """Selection is monotone in the margin: a stricter margin keeps a round that is pruned no more."""
    h = [_round(0, 0.0, 0.0, 0.0)] + [_round(i + 1, dv, dv, (i + 1) / 10, se=se) for i, (dv, se) in enumerate(rounds)]
    rec = _record(0, h)
    lo, hi = sorted((m1, m2))
    t = selection.margin_replay([rec], [lo, hi]).set_index("margin")["params_pruned"]
    assert t.iloc[1] <= t.iloc[0]


def test_split_rotation_reads_the_committed_summary():
    """The committed rotation summary gives one row per run with its test partition, and the gap per
    fold is the mean of that run's recorded per-round gaps."""
    summary = json.loads((ROOT / "data" / "calibration" / "split_gap.json").read_text())
    rot = selection.split_rotation(summary).set_index("run")
    assert set(rot["test_split"]) >= {f"fold{i}" for i in range(5)}
    for name, run in summary["rotation"].items():
        gaps = [r["gap"] for r in run["rounds"]]
        assert rot.loc[name, "gap"] == pytest.approx(sum(gaps) / len(gaps))


def test_gap_by_fold_groups_unselected_rounds_by_the_fold_each_seed_was_scored_on():
    """With ``test_split: seed`` seeds 0 and 5 share fold 0: a gap present only in their unselected
    rounds shows in fold 0's row and nowhere else; selected rounds are left out."""
    records = []
    for seed in (0, 1, 5, 6):
        d = 0.006 if seed % 5 == 0 else 0.0
        h = [_round(0, 0.0, 0.0, 0.0), _round(1, 0.001, 0.001 + d, 0.2), _round(2, 0.004, 0.02, 0.4),
             _round(3, 0.03, 0.03 + d, 0.6)]
        r = _record(seed, h)
        r["params"]["test_split"] = "seed"
        records.append(r)
    assert {r["final"]["round"] for r in records} == {2}
    folds = selection.gap_by_fold(records, "d").set_index("test_fold")
    assert list(folds.index) == ["fold0", "fold1"] and list(folds["seeds"]) == [2, 2]
    assert folds.loc["fold0", "gap"] == pytest.approx(0.006) and folds.loc["fold1", "gap"] == pytest.approx(0.0)


def test_gaps_text_gives_each_rows_gap_in_points_with_its_interval_and_label():
    """One phrase per row, in points with a sign, labelled from the row's own columns."""
    import pandas as pd

    frame = pd.DataFrame([{"dataset": "a", "gap": 0.004, "gap_low": -0.001, "gap_high": 0.009},
                          {"dataset": "b", "gap": -0.002, "gap_low": -0.004, "gap_high": 0.0}])
    assert selection.gaps_text(frame, "on {dataset}") == "+0.40 [-0.10, +0.90] on a; -0.20 [-0.40, +0.00] on b"


def test_margin_sentences_name_the_widest_interval_and_the_stricter_margins_cost():
    """At the margin used, the pipeline whose test-drop interval reaches highest is named; the stricter
    margin's phrase goes from the used margin's numbers to its own."""
    h1 = [_round(0, 0.0, 0.0, 0.0), _round(1, 0.002, 0.004, 0.3, se=0.002), _round(2, 0.008, 0.012, 0.5, se=0.002)]
    h2 = [_round(0, 0.0, 0.0, 0.0), _round(1, 0.001, 0.001, 0.2, se=0.002)]
    records = [_record(0, h1, experiment="basis_pruning"), _record(0, h2, experiment="channel_pruning")]
    replay = selection.margin_replay(records, [1.0, 3.0])
    text = selection.margin_sentences(replay, 1.0, 3.0)
    assert text["worst"] == "basis pruning on d" and text["worst_high"] == "1.20"
    assert "basis pruning on d 50.0% → 30.0% of parameters, test drop 1.20 → 0.40 points" in text["stricter_cost"]
