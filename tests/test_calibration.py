"""Reading the schedule calibration: labels, replayed selection rules, extension gains per seed."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import calibration
from basisprune.repro.results import write_json

P = dict(warmup_epochs=10, epochs_per_round=2, basis_fraction=0.1, channel_fraction=0.15, lr=1e-3,
         basis_normalize="none", distill=0.0, image_size=32, stop_drop=0.04, seed=0)


def _run(name, rows, **params):
    hist = [{"round": i, "param_pruning_ratio": pp, "flop_pruning_ratio": pp / 2, "drop_val": dv,
             "drop_se_val": se, "accuracy_drop": dt, "reference_test": 0.9,
             "accuracy_test": 0.9 - dt} for i, (pp, dv, se, dt) in enumerate(rows)]
    final = dict(hist[-1])
    return {"name": name, "experiment": "basis_pruning", "params": {**P, **params}, "history": hist, "final": final,
            "timings": {"compute_seconds": 60.0}, "provenance": {"git": {"commit": "abc"}}}


def test_labels_name_the_schedule_and_the_extension():
    """The faithful run is 'faithful'; the fold-aware ranking and distillation are named."""
    assert calibration.label(P) == ("warm-up 10, 10%/round, 2 ep/round, lr 0.001", "faithful")
    assert calibration.label({**P, "basis_normalize": "saved", "distill": 0.5})[1] == "fold-aware ranking + distillation 0.5"


def test_an_input_size_other_than_the_default_is_an_extension_of_the_same_schedule():
    """64 px is labelled as an extension; the schedule label is the 32 px run's, so that the two pair up."""
    assert calibration.label({**P, "image_size": 64}) == (calibration.label(P)[0], "64 px")


def test_load_runs_reads_every_file_with_its_name(tmp_path):
    """Every JSON file of the folder is one run, named by its file stem, in name order."""
    write_json(tmp_path / "b.json", _run("x", [(0.0, 0.0, 0.0, 0.0)]))
    write_json(tmp_path / "a.json", _run("y", [(0.0, 0.0, 0.0, 0.0)]))
    assert [r["name"] for r in calibration.load_runs(tmp_path)] == ["a", "b"]


def test_replay_picks_the_most_pruned_round_within_budget_and_a_margin_is_stricter():
    """Margin 0: the most pruned round whose validation drop is within the budget (round 2 here,
    although round 1 failed it); margin 1: round 2's drop plus one SE is over the budget, and
    round 1 was over already, so round 0."""
    r = _run("r", [(0.0, 0.0, 0.0, 0.0), (0.2, 0.012, 0.004, 0.02), (0.4, 0.008, 0.005, 0.03)])
    rep = calibration.replay_selection([r], max_drop=0.01, margins=(0.0, 1.0))
    got = dict(zip(rep["margin"], rep["params_pruned"]))
    assert got == {0.0: 0.4, 1.0: 0.0}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-0.05, 0.1), st.floats(0, 0.02), st.floats(-0.05, 0.1)),
                min_size=1, max_size=8))
def test_a_larger_margin_never_selects_a_more_pruned_round(rows):
    """Whatever the rounds, raising the margin can only keep or lower the pruning of the selection."""
    rows = [(0.0, 0.0, 0.0, 0.0)] + rows
    rep = calibration.replay_selection([_run("r", rows)], 0.01, margins=(0.0, 1.0, 2.0))
    pruned = list(rep.sort_values("margin")["params_pruned"])
    assert pruned[0] >= pruned[1] >= pruned[2]


def test_a_stop_replay_cuts_the_stage_at_the_first_round_over_the_stop():
    """Round 2's validation drop (2.5 points) is over a 2-point stop: the stage computes rounds 1 and
    2 only, and round 3, which came back within the budget, is lost; a 3-point stop keeps it."""
    r = _run("r", [(0.0, 0.0, 0.0, 0.0), (0.2, 0.0, 0.0, 0.0), (0.4, 0.025, 0.0, 0.03), (0.6, 0.005, 0.0, 0.01)])
    rep = calibration.replay_stop([r], stop_drops=(0.03, 0.02), max_drop=0.01, margin=0.0).set_index("stop_drop")
    assert list(rep.loc[0.03, ["rounds", "params_pruned", "selection_changed"]]) == [3, 0.6, False]
    assert list(rep.loc[0.02, ["rounds", "params_pruned", "selection_changed"]]) == [2, 0.2, True]
    assert set(rep["recorded_rounds"]) == {3}


def test_a_stop_replay_refuses_a_stop_later_than_the_run_used():
    """A run that stopped at 2 points never computed the rounds a 3-point stop would add."""
    r = _run("r", [(0.0, 0.0, 0.0, 0.0), (0.2, 0.025, 0.0, 0.03)], stop_drop=0.02)
    with pytest.raises(ValueError, match="stopped at stop_drop 0.02"):
        calibration.replay_stop([r], stop_drops=(0.03, 0.02), max_drop=0.01, margin=0.0)
    assert len(calibration.replay_stop([r], stop_drops=(0.02,), max_drop=0.01, margin=0.0)) == 1
    assert calibration.replay_stop([r], stop_drops=(0.03, 0.02), max_drop=0.01, margin=0.0,
                                   skip_earlier_stops=True).empty


def test_extension_gains_are_per_seed_differences_from_the_faithful_run():
    """The gain is the extension's value minus the faithful run's on the same seed, averaged."""
    runs = [_run(f"f{s}", [(0.0, 0, 0, 0), (0.3 + s / 10, 0, 0, 0.01)], seed=s) for s in (0, 1)]
    runs += [_run(f"e{s}", [(0.0, 0, 0, 0), (0.5 + s / 10, 0, 0, 0.02)], seed=s, basis_normalize="saved") for s in (0, 1)]
    g = calibration.extension_gains(calibration.run_summary(runs)).set_index("extension")
    assert g.loc["fold-aware ranking", "gain in params pruned (pts)"] == "20.0 ± 0.0"
    assert g.loc["fold-aware ranking", "change in test drop (pts)"] == "1.00 ± 0.00"
    assert g.loc["faithful", "seeds"] == 2


def test_best_within_takes_the_most_pruned_round_inside_the_budget():
    """best_within keeps the round with the highest parameter pruning ratio among those whose test
    accuracy is within max_drop of round 0's; a more pruned round outside the budget is passed over."""
    from basisprune.repro.calibration import best_within

    hist = [{"round": 0, "accuracy_test": 0.90, "param_pruning_ratio": 0.0},
            {"round": 1, "accuracy_test": 0.895, "param_pruning_ratio": 0.3},
            {"round": 2, "accuracy_test": 0.85, "param_pruning_ratio": 0.6},
            {"round": 3, "accuracy_test": 0.891, "param_pruning_ratio": 0.5}]
    assert best_within(hist, 0.01)["round"] == 3
    assert best_within(hist, 0.06)["round"] == 2
    assert best_within(hist, 0.0)["round"] == 0
