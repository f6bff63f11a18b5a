"""Tests for basisprune.repro.results: atomic JSON, provenance, results files, volatile stripping, timers."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import provenance as prov_module
from basisprune.repro import results
from basisprune.repro.results import (
    Timer,
    provenance,
    read_results,
    strip_volatile,
    to_jsonable,
    write_json,
    write_results,
)


class Unserialisable:
    """Not JSON-convertible; placed after valid keys so conversion fails part-way."""


def test_write_json_round_trips_and_converts_values(tmp_path):
    """Tensors, numpy values and paths are written as plain JSON and read back equal."""
    path = tmp_path / "deep" / "dir" / "r.json"  # parents are created
    record = {
        "b": torch.tensor([1.5, 2.0]),
        "a": np.float32(0.25),
        "c": {"path": Path("/x/y"), "n": np.int64(7), "t": torch.tensor(3), "arr": np.arange(3)},
        "d": (1, "two", None, True),
        "e": {3, 1, 2},
    }
    write_json(path, record)
    text = path.read_text()
    assert json.loads(text) == {
        "a": 0.25,
        "b": [1.5, 2.0],
        "c": {"arr": [0, 1, 2], "n": 7, "path": "/x/y", "t": 3},
        "d": [1, "two", None, True],
        "e": [1, 2, 3],
    }
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"  # sorted, indent 2
    assert read_results(path) == json.loads(text)


def test_write_json_failed_serialisation_keeps_old_file(tmp_path):
    """A value that cannot be serialised raises and leaves the previous file intact, no temp files."""
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    old = path.read_bytes()
    with pytest.raises(TypeError, match="Unserialisable"):
        write_json(path, {"a": list(range(1000)), "b": {"c": Unserialisable()}})
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_json_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    """A failure at the final rename leaves the previous file intact and removes the temp file."""
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    old = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_json(path, {"v": 2})
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["r.json"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
def test_write_json_round_trip_property(record):
    """Any JSON-shaped dict reads back equal after write_json."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.json"
        write_json(path, record)
        assert read_results(path) == record


def test_to_jsonable_rejects_unknown_types_with_location():
    """An unconvertible value raises TypeError naming where it sits."""
    with pytest.raises(TypeError, match=r"\$\.outer\.inner"):
        to_jsonable({"outer": {"inner": Unserialisable()}})


def test_hardware_names_cpu_and_torch():
    """provenance.hardware() names the CPU, the thread count and torch's version."""
    hw = prov_module.hardware()
    assert hw["cpu_model"] and hw["torch"] == torch.__version__ and hw["torch_threads"] >= 1


def test_provenance_has_required_keys():
    """provenance records git, params, versions, hardware, seed and a UTC timestamp."""
    prov = provenance({"lr": 0.1, "out": Path("/tmp/x"), "sizes": (1, 2)}, seed=7)
    assert set(prov) >= {"git", "params", "versions", "hardware", "seed", "timestamp_utc"}
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["params"] == {"lr": 0.1, "out": "/tmp/x", "sizes": [1, 2]}
    assert set(prov["versions"]) >= {"python", "torch", "torchvision", "numpy", "torch-pruning", "basisprune"}
    assert prov["versions"]["torch"] is not None
    assert set(prov["hardware"]) >= {"platform", "processor", "cpu_count", "torch_threads", "cuda_device"}
    assert prov["seed"] == 7
    assert prov["timestamp_utc"].endswith("+00:00")
    json.dumps(prov)  # plain JSON


def test_provenance_outside_git_does_not_crash(tmp_path, monkeypatch):
    """Outside a git checkout the commit and dirty flag are None."""
    monkeypatch.setattr(prov_module, "__file__", str(tmp_path / "provenance.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance({}, seed=None)["git"] == {"commit": None, "dirty": None}


def test_write_results_adds_provenance_and_timings(tmp_path):
    """write_results stores the record with provenance and timings; read_results returns it."""
    path = tmp_path / "res.json"
    written = write_results(path, {"acc": np.float64(0.5)}, params={"k": 1}, seed=3, timings={"fit": 1.25})
    back = read_results(path)
    assert back == written
    assert back["acc"] == 0.5 and back["timings"] == {"fit": 1.25}
    assert back["provenance"]["params"] == {"k": 1} and back["provenance"]["seed"] == 3


def test_write_results_refuses_reserved_keys(tmp_path):
    """A record that already has provenance/timings is refused rather than silently overwritten."""
    with pytest.raises(ValueError, match="reserved"):
        write_results(tmp_path / "r.json", {"timings": {}}, params={}, seed=0, timings={})


def test_strip_volatile_removes_only_volatile_fields():
    """strip_volatile drops timings, timestamps, wall seconds, hostname and dirty; keeps the rest."""
    record = {
        "final": {"val": {"loss": 0.5, "seconds": 1.0}},
        "history": [{"epoch": 1, "train": {"loss": 1.0, "seconds": 2.0}}],
        "provenance": {
            "git": {"commit": "abc", "dirty": True},
            "hardware": {"hostname": "h", "cpu_count": 2},
            "params": {"lr": 0.1},
            "seed": 0,
            "timestamp_utc": "2024-01-01T00:00:00+00:00",
        },
        "timings": {"fit": 3.0},
    }
    original = json.loads(json.dumps(record))
    assert strip_volatile(record) == {
        "final": {"val": {"loss": 0.5}},
        "history": [{"epoch": 1, "train": {"loss": 1.0}}],
        "provenance": {"git": {"commit": "abc"}, "hardware": {"cpu_count": 2}, "params": {"lr": 0.1}, "seed": 0},
    }
    assert record == original  # input untouched


def test_timer_records_wall_seconds():
    """Timer stores elapsed perf_counter seconds under its key, accumulating when asked."""
    timings: dict[str, float] = {}
    with Timer(timings, "sleep") as t:
        time.sleep(0.01)
    assert timings["sleep"] == t.seconds and 0.005 < t.seconds < 5
    with Timer(timings, "sleep", accumulate=True):
        pass
    assert timings["sleep"] >= t.seconds
    with pytest.raises(RuntimeError), Timer(timings, "err"):
        raise RuntimeError
    assert not math.isnan(timings["err"])
