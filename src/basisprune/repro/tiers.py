"""Result tiers: the CPU tier that ``make book`` recomputes, and tiers run elsewhere and committed.

A committed tier (the GPU tier) is one sweep (``sweeps/gpu_tier.yaml``) run on one machine; its
results files, each with its own provenance, are copied to ``data/results/<tier>/`` with a
``tier.json`` that says what ran where: the device and its driver, torch, the commit, the sweep's
wall time. The book reads them and never shows a number no run produced: a tier without results
is reported as missing.

    python benchmarks/gpu_tier.py                      # on a GPU machine: run and commit the tier
    python benchmarks/gpu_tier.py --smoke --out DIR    # the same code path on a CPU, tiny sizes
"""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import sweep
from .results import provenance, read_results, write_json

__all__ = ["TIER_FILE", "SMOKE_OVERRIDES", "gpu_driver", "run_tier", "load_tier", "tier_rows", "tier_table"]

TIER_FILE = "tier.json"

#: What ``--smoke`` changes in a tier's spec: the smoke profile's data on the CPU, a few rounds.
SMOKE_OVERRIDES: dict[str, Any] = {
    "profile": "smoke",
    "params": {"model": ["mobilenet_v2"], "dataset": ["digits"], "image_size": 32, "subset_train": 160,
               "subset_test": 64, "batch_size": 32, "device": "cpu"},
    "seeds": [0, 1],
}


def gpu_driver() -> str | None:
    """The NVIDIA driver version (``nvidia-smi``), or None where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def run_tier(spec: str | Path | dict, out: str | Path, *, workers: int | None = None,
             folder: str | Path | None = None, smoke: bool = False, log=print) -> dict[str, Any]:
    """Run every cell of ``spec`` (a sweep spec) and copy its results into ``out`` with ``tier.json``.

    ``smoke`` applies :data:`SMOKE_OVERRIDES` (the same code path on a CPU). A tier where any cell
    failed raises :class:`RuntimeError` naming the cells, after writing the ones that ran (so a
    rerun only does what is missing): a tier is committed whole or not at all.
    """
    import yaml

    raw = yaml.safe_load(Path(spec).read_text(encoding="utf-8")) if not isinstance(spec, dict) else dict(spec)
    if smoke:
        raw = {**raw, **{k: v for k, v in SMOKE_OVERRIDES.items() if k != "params"},
               "params": {**raw.get("params", {}), **SMOKE_OVERRIDES["params"]}, "name": f"{raw.get('name', 'tier')}-smoke"}
    if folder is not None:
        raw["folder"] = str(folder)
    spec_obj = sweep.load(raw)
    result = sweep.run(spec_obj, workers=workers, log=log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for cell in result.cells:
        src = sweep.cell_dir(spec_obj.folder.resolve(), cell) / "results.json"
        if result.status[cell.fingerprint] != "done":
            failed.append(cell.describe())
            continue
        p = cell.params
        name = f"{cell.experiment}-{p['model']}-{p['dataset']}-{p['image_size']}px-seed{cell.seed}.json"
        shutil.copyfile(src, out / name)
        written.append(name)
    prov = provenance({}, None)
    hw = prov["hardware"]
    tier = {"spec": raw, "files": sorted(written), "cells": len(result.cells), "failed": failed,
            "wall_seconds": round(result.wall_seconds, 1), "git": prov["git"], "versions": prov["versions"],
            "device": hw["cuda_device"] or hw["processor"] or hw["machine"], "cuda_driver": gpu_driver(),
            "cuda_version": hw["cuda_version"], "hardware": hw,
            "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    write_json(out / TIER_FILE, tier)
    if failed:
        raise RuntimeError(f"{len(failed)} cell(s) of the tier failed: {'; '.join(failed)}; see {spec_obj.folder}")
    return tier


def load_tier(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """``(tier.json, records)`` of a committed tier, or None when the folder holds no tier."""
    directory = Path(directory)
    if not (directory / TIER_FILE).exists():
        return None
    tier = read_results(directory / TIER_FILE)
    records = [read_results(directory / f) for f in tier["files"]]
    return tier, records


def tier_rows(records: list[dict[str, Any]], tier: str) -> list[dict[str, Any]]:
    """One row per run: tier, model, image size, dataset, experiment, seed and the selected round."""
    rows = []
    for r in records:
        p, f = r["params"], r["final"]
        rows.append({"tier": tier, "model": p["model"], "image_size": p["image_size"], "dataset": p["dataset"],
                     "experiment": r["experiment"], "seed": p["seed"],
                     "train_images": r.get("split_sizes", {}).get("train"),
                     "reference": f["reference_test"], "after": f["accuracy_test"], "change": -f["accuracy_drop"],
                     "params_pruned": f["param_pruning_ratio"], "flops_pruned": f["flop_pruning_ratio"],
                     "device": (r.get("provenance", {}).get("hardware", {}) or {}).get("cuda_device") or "CPU"})
    return rows


def tier_table(rows: list[dict[str, Any]]):
    """Mean ± std over seeds per tier, model, image size, dataset and experiment."""
    import pandas as pd

    from .report import mean_std

    df = pd.DataFrame(rows)
    out = []
    keys = ["tier", "model", "image_size", "dataset", "experiment"]
    for k, g in df.groupby(keys, sort=False):
        out.append({**dict(zip(keys, k)), "train images": int(g["train_images"].iloc[0]),
                    "reference (%)": mean_std(g["reference"], 100, 1), "after (%)": mean_std(g["after"], 100, 1),
                    "change (pts)": mean_std(g["change"], 100, 2), "params pruned (%)": mean_std(g["params_pruned"], 100, 1),
                    "FLOPs pruned (%)": mean_std(g["flops_pruned"], 100, 1), "seeds": g["seed"].nunique(),
                    "hardware": ", ".join(sorted(set(g["device"])))})
    return pd.DataFrame(out)
