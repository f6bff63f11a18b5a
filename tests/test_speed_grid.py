"""The speed grid's reading (``basisprune.repro.speed_grid``) on a small made-up results record."""

from __future__ import annotations

import pytest

from basisprune.repro import speed_grid


def row(size, model, backend, b, speedups, vs_tp=None, ms=10.0):
    s = sorted(speedups)
    r = {"size": size, "model": model, "backend": backend, "batch_size": b, "median_ms": ms,
         "speedup_median": s[len(s) // 2], "speedup_min": s[0], "speedup_max": s[-1], "speedup_p75": s[-1]}
    if vs_tp is not None:
        v = sorted(vs_tp)
        r.update(vs_tp_median=v[len(v) // 2], vs_tp_min=v[0], vs_tp_max=v[-1], vs_tp_p75=v[-1])
    return r


def form(flops, acts, guard=None):
    return {"form_flops": flops, "activation_elements": acts, "guard": guard}


@pytest.fixture
def record():
    rows = []
    for backend in ("eager", "onnxruntime"):
        for b in (1, 64):
            rows.append(row(224, "unpruned", backend, b, [1, 1, 1], vs_tp=[0.5, 0.5, 0.5]))
            rows.append(row(224, "bases -30%", backend, b, [0.8, 0.9, 0.95] if b == 64 else [1.0, 1.1, 1.2]))
            rows.append(row(224, "bases -80%", backend, b, [1.4, 1.5, 1.6], vs_tp=[0.6, 0.7, 0.8]))
            rows.append(row(224, "Torch-Pruning", backend, b, [2.9, 3.0, 3.1], vs_tp=[1, 1, 1]))
    forms = {"224": {
        "unpruned": {"flops": 600, "eager": form(600, 100), "onnxruntime": form(600, 100)},
        "bases -30%": {"flops": 500, "eager": form(520, 101, {"kept": "folded"}),
                       "onnxruntime": form(520, 101, {"kept": "folded"})},
        "bases -80%": {"flops": 200, "eager": form(200, 99, {"kept": "pairs"}),
                       "onnxruntime": form(200, 99, {"kept": "pairs"})},
        "Torch-Pruning": {"flops": 200, "eager": form(200, 40), "onnxruntime": form(200, 40)}}}
    rec = {"rows": rows, "forms": forms, "settings": {"depths": [0.3, 0.8], "threads": 1, "rounds": 3,
                                                       "form_batch_sizes": [1, 64], "form_rounds": 3}}
    rec["targets"] = speed_grid.targets(rows, forms, {"depths": [0.3, 0.8]})
    return rec


def test_never_slower_lists_exactly_the_forms_whose_upper_quartile_is_below_one(record):
    """A form is a miss where even its best rounds are slower than the unpruned form's."""
    t = record["targets"]["never_slower"]
    assert not t["holds"]
    assert sorted(m[:4] for m in t["misses"]) == [(224, "bases -30%", "eager", 64), (224, "bases -30%", "onnxruntime", 64)]


def test_speedup_against_flops_is_the_median_over_the_compact_models_flops_ratio(record):
    """At 3x fewer FLOPs a 1.5x speed-up is half of the FLOPs ratio: below the 0.7 target."""
    t = record["targets"]["speedup_vs_flops"]
    assert [r["model"] for r in t["rows"]] == ["bases -80%"]  # -30% is under 2.5x fewer FLOPs
    assert t["rows"][0]["fraction"] == pytest.approx(0.5) and not t["holds"]


def test_vs_torch_pruning_misses_where_the_paired_ratio_stays_below_one(record):
    t = record["targets"]["vs_torch_pruning_onnx"]
    assert not t["holds"] and [m[:2] for m in t["misses"]] == [(224, 1), (224, 64)]


def test_traffic_ratios_are_the_unpruned_forms_over_each_forms(record):
    """Torch-Pruning's form writes 2.5x fewer activation elements; the basis form writes about as many."""
    t = {(r["model"], r["backend"]): r for r in speed_grid.traffic(record["rows"], record["forms"])}
    assert t[("Torch-Pruning", "onnxruntime")]["activation_ratio"] == pytest.approx(2.5)
    assert t[("bases -80%", "eager")]["flops_ratio"] == pytest.approx(3.0)
    assert t[("bases -80%", "eager")]["activation_ratio"] == pytest.approx(100 / 99)
    assert all(r["batch_size"] == 64 for r in t.values())


def test_grid_table_has_a_row_per_setting_and_a_column_per_form(record):
    table = speed_grid.grid_table(record)
    assert len(table) == 4  # 1 size x 2 runtimes x 2 batch sizes
    assert {"bases -30% speed-up", "bases -80% speed-up", "Torch-Pruning speed-up",
            "bases -80% / Torch-Pruning"} <= set(table.columns)
    assert table.loc[(224, "ONNX Runtime", 64), "bases -80% speed-up"] == "1.50 [1.40, 1.60]"


def test_guard_counts_and_target_lines_say_what_the_record_holds(record):
    assert speed_grid.guard_counts(record) == {"pairs": 2, "folded": 2}
    lines = speed_grid.target_lines(record)
    assert lines["never_slower"].startswith("missed at 224 px, bases -30%")
    assert "0.50 of it" in lines["speedup_vs_flops"]


def test_time_split_recovers_a_known_activation_share():
    """Speed-ups made from t = 0.4 / F + 0.6 / A give back a = 0.6, the bound 1 / 0.6, and predict
    the channel-pruned form's speed-up exactly."""
    def t(f, a):
        return 1 / (0.4 / f + 0.6 / a)

    rows, forms = [], {224: {"unpruned": {"eager": form(600, 100)}}}
    for model, flops, acts in (("unpruned", 600, 100), ("bases -80%", 200, 100), ("Torch-Pruning", 200, 50)):
        rows.append(row(224, model, "eager", 64, [t(600 / flops, 100 / acts)] * 3))
        forms[224].setdefault(model, {})["eager"] = form(flops, acts)
    split = speed_grid.time_split({"rows": rows, "forms": forms, "settings": {"depths": [0.8]}})
    assert len(split) == 1
    assert split[0]["activation_share"] == pytest.approx(0.6)
    assert split[0]["basis_bound"] == pytest.approx(1 / 0.6)
    assert split[0]["tp_predicted"] == pytest.approx(split[0]["tp_measured"]) == pytest.approx(t(3, 2))


def test_never_slower_separates_misses_from_forms_slower_in_every_round(record):
    """Both -30% rows at batch 64 miss (upper quartile 0.95); only the one whose best round is
    below 1 too is slower in every round (the other had a round at 1.05)."""
    record["rows"] = [dict(r, speedup_max=1.05) if r["model"] == "bases -30%" and r["batch_size"] == 64
                      and r["backend"] == "onnxruntime" else r for r in record["rows"]]
    t = speed_grid.targets(record["rows"], record["forms"], record["settings"])["never_slower"]
    assert [m[:4] for m in t["slower_every_round"]] == [(224, "bases -30%", "eager", 64)]
    assert "slower in every round: 224 px, bases -30%, PyTorch eager, batch 64" in speed_grid.target_lines(record)["never_slower"]


def test_time_split_lines_name_each_size_with_its_share_and_prediction(record):
    lines = speed_grid.time_split_lines(record)
    split = speed_grid.time_split(record)[0]
    assert lines["eager"] == f"224 px: {split['activation_share']:.2f} of the time, so at most {split['basis_bound']:.2f}x"
    assert "predicted" in lines["onnxruntime_prediction"] and "measured" in lines["onnxruntime_prediction"]


def test_beyond_target_lists_sizes_whose_activation_share_rules_the_target_out(record):
    """The fixture's 224 px basis form gains 1.5x at 3x fewer FLOPs: a share of 0.5 > 0.29."""
    assert speed_grid.time_split(record)[0]["activation_share"] == pytest.approx(0.5, abs=0.02)
    assert speed_grid.time_split_lines(record)["beyond_target"] == "224 px"


def test_predict_applies_a_time_split_to_another_runs_forms(record):
    """A form with 3x fewer FLOPs and 2.5x fewer activations under a share of 0.5 is predicted
    at 1 / (0.5 / 3 + 0.5 / 2.5) = 2.73x; rows without a split for their setting are left out."""
    split = [{"size": 224, "backend": "onnxruntime", "activation_share": 0.5}]
    rows = {r["model"]: r for r in speed_grid.predict(record, split)}
    assert set(rows) == {"bases -30%", "bases -80%", "Torch-Pruning"}
    assert all(r["backend"] == "onnxruntime" for r in rows.values())
    assert rows["Torch-Pruning"]["predicted"] == pytest.approx(1 / (0.5 / 3 + 0.5 / 2.5))
    assert rows["Torch-Pruning"]["speedup"] == pytest.approx(3.0)
