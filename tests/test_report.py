"""basisprune.repro.report: the helpers the notebooks call (results folder, tables, fronts)."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import report


def test_mean_std_formats_like_the_tables():
    """mean ± sample std of the scaled values, just the mean for one value, never "-0.00"."""
    assert report.mean_std([0.5]) == "0.5"
    assert report.mean_std([0.5, 0.7], 100, 1) == "60.0 ± 14.1"
    assert report.mean_std([-0.0, 0.0], 100, 2) == "0.00 ± 0.00"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 100)), min_size=1, max_size=15))
def test_pareto_front_keeps_exactly_the_rows_no_smaller_model_beats(points):
    """A row is on the front iff every model at most as large is less accurate (ties: the first)."""
    df = pd.DataFrame(points, columns=["params", "accuracy"])
    front = report.pareto_front(df)
    kept = set(front.index)
    for i, row in df.iterrows():
        beaten = any(j != i and (r["params"], -r["accuracy"], j) < (row["params"], -row["accuracy"], i)
                     and r["accuracy"] >= row["accuracy"] for j, r in df.iterrows())
        assert (i in kept) == (not beaten)
    assert list(front["params"]) == sorted(front["params"]) and list(front["accuracy"]) == sorted(front["accuracy"])


def test_results_dir_prefers_the_argument_then_the_environment(tmp_path, monkeypatch):
    """results_dir: the given folder, else $BASISPRUNE_RESULTS, else the project's executed copies."""
    monkeypatch.setenv(report.RESULTS_ENV, str(tmp_path / "env"))
    assert report.results_dir("smoke", tmp_path / "arg") == tmp_path / "arg" and (tmp_path / "arg").is_dir()
    assert report.results_dir("smoke") == tmp_path / "env"
    monkeypatch.delenv(report.RESULTS_ENV)
    monkeypatch.setenv(report.ROOT_ENV, str(tmp_path / "project"))
    assert report.results_dir("smoke") == tmp_path / "project" / "notebooks" / "_executed" / "smoke" / "results"
    with pytest.raises(ValueError, match="profile must be one of"):
        report.results_dir("nope")


def test_method_table_orders_data_sets_as_given_and_counts_seeds():
    """One row per data set and method, data sets in the given order, seeds counted per row."""
    rec = {"final": {"reference_test": 0.9, "accuracy_test": 0.8, "accuracy_drop": 0.1, "drop_se_test": 0.01,
                     "params": 10, "flops": 20, "param_pruning_ratio": 0.5, "flop_pruning_ratio": 0.4},
           "reference": {"round0_accuracy_test": 0.85, "params": 20, "flops": 40}}
    records = {(exp, ds, s): rec for exp in ("basis_pruning", "channel_pruning") for ds in ("b", "a") for s in (0, 1)}
    table = report.method_table(report.method_runs(records), ["b", "a"])
    assert list(zip(table["dataset"], table["method"])) == [
        ("b", "channel pruning"), ("b", "basis pruning"), ("a", "channel pruning"), ("a", "basis pruning")]
    assert set(table["seeds"]) == {2} and set(table["change (pts)"]) == {"-10.00 [-10.00, -10.00]"}


def test_show_table_writes_the_rows_it_shows_and_links_them(tmp_path, capsys):
    """The CSV holds every row and column of the table shown (a Styler's data, a non-default index
    kept), and the links name the CSV and the results file under the results folder as downloads."""
    IPython = pytest.importorskip("IPython")
    shown = []
    from IPython import display as ipd

    original = ipd.display
    ipd.display = lambda *objs, **kw: shown.extend(objs)
    try:
        frame = pd.DataFrame({"a": [1.23456, 2.5], "b": ["x", "y"]}, index=["r1", "r2"])
        (tmp_path / "run.json").write_text("{}")
        report.show_table(frame.style.format(precision=1), "t1", tmp_path, tmp_path / "run.json")
    finally:
        ipd.display = original
    back = pd.read_csv(tmp_path / "tables" / "t1.csv", index_col=0)
    pd.testing.assert_frame_equal(back, frame)
    links = shown[-1].data
    assert "{download}`t1.csv <results/tables/t1.csv>`" in links and "<results/run.json>" in links


def test_show_table_refuses_a_name_that_is_not_a_file_name(tmp_path):
    """A table name with a path separator is refused before anything is written."""
    with pytest.raises(ValueError, match="table name"):
        report.show_table(pd.DataFrame({"a": [1]}), "../x", tmp_path)
    assert not (tmp_path / "tables").exists()


def test_mean_ci_brackets_the_mean_with_a_bootstrap_interval_over_seeds():
    """Several values: "mean [low, high]" with low <= mean <= high inside the values' range; one value
    with its standard error: mean ± 1.96 se; one value without: the mean alone."""
    assert report.mean_ci([0.5]) == "0.5"
    assert report.mean_ci([0.01], -100, 2, se=[0.005]) == "-1.00 [-1.98, -0.02]"
    m, lo, hi = report.interval([1.0, 2.0, 4.0])
    assert 1.0 <= lo <= m <= hi <= 4.0 and m == pytest.approx(7 / 3)
    assert report.mean_ci([0.5, 0.5], 100, 1) == "50.0 [50.0, 50.0]"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-0.05, 0.05), min_size=2, max_size=8))
def test_budget_verdict_agrees_with_the_interval(changes):
    """within iff the whole 95% interval loses less than the budget; beyond iff it all loses more."""
    _, lo, hi = report.interval(changes)
    verdict = report.budget_verdict(changes, 0.01)
    assert (verdict == "within") == (lo > -0.01)
    assert (verdict == "beyond") == (hi < -0.01)
