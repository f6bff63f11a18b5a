"""Result tiers: the CPU tier that ``make book`` recomputes, and tiers run elsewhere and committed.

A committed tier (the GPU tier, the seeds tier) is one sweep (``sweeps/gpu_tier.yaml``,
``sweeps/seeds.yaml``) run on one machine; its
results files, each with its own provenance, are copied to ``data/results/<tier>/`` with a
``tier.json`` that says what ran where: the device and its driver, torch, the commit, the sweep's
wall time. The book reads them and never shows a number no run produced: a tier without results
is reported as missing.

    python benchmarks/gpu_tier.py                      # on a GPU machine: run and commit the tier
    python benchmarks/gpu_tier.py --smoke --out DIR    # the same code path on a CPU, tiny sizes
    python benchmarks/seeds_tier.py                    # the seeds tier (chapter 5's runs, many seeds)

:func:`tier_check` says whether a recomputed table's means fall inside a tier's 95% intervals.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import sweep
from .arguments import ArgumentParser
from .results import provenance, read_results, write_json

__all__ = ["TIER_FILE", "SMOKE_OVERRIDES", "gpu_driver", "processor", "run_tier", "load_tier", "tier_rows", "tier_table",
           "PRECISION", "tier_intervals", "tier_check", "code_status", "SEEDS_TIER", "DATA_SIZE_TIER", "seeds_tier_status"]

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


def processor(hardware: dict[str, Any]) -> str:
    """What ran a results file's numbers: the GPU's name, else the CPU model, else the machine type."""
    return hardware.get("cuda_device") or hardware.get("cpu_model") or hardware.get("processor") or \
        hardware.get("machine") or "unknown"


def tier_parser(doc: str | None, spec: Path, out: Path) -> argparse.ArgumentParser:
    """The command line a tier runner in ``benchmarks/`` shares: ``--spec``, ``--out``, ``--folder``, ``--workers``."""
    ap = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=spec)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--folder", type=Path, default=None, help="sweep folder (default: runs/sweeps/<name>)")
    ap.add_argument("--workers", type=int, default=None, help="cells at a time (default: the spec's)")
    return ap


def run_tier(spec: str | Path | dict, out: str | Path, *, workers: int | None = None,
             folder: str | Path | None = None, smoke: bool = False, collect_only: bool = False,
             log=print) -> dict[str, Any]:
    """Run every cell of ``spec`` (a sweep spec) and copy its results into ``out`` with ``tier.json``.

    ``smoke`` applies :data:`SMOKE_OVERRIDES` (the same code path on a CPU). A tier where any cell
    failed raises :class:`RuntimeError` naming the cells, after writing the ones that ran (so a
    rerun only does what is missing): a tier is committed whole or not at all. ``collect_only``
    runs nothing: it copies the cells the sweep folder holds and lists the others in
    ``tier.json``'s ``missing`` (a tier still being computed, shown as such); its ``wall_seconds``
    is None. ``core_seconds`` sums the copied runs' ``timings.total_seconds``.
    """
    import yaml

    raw = yaml.safe_load(Path(spec).read_text(encoding="utf-8")) if not isinstance(spec, dict) else dict(spec)
    if smoke:
        raw = {**raw, **{k: v for k, v in SMOKE_OVERRIDES.items() if k != "params"},
               "params": {**raw.get("params", {}), **SMOKE_OVERRIDES["params"]}, "name": f"{raw.get('name', 'tier')}-smoke"}
    if folder is not None:
        raw["folder"] = str(folder)
    spec_obj = sweep.load(raw)
    if collect_only:
        cells = sweep.expand(spec_obj)
        status = {c.fingerprint: sweep.cell_status(spec_obj.folder.resolve(), c) for c in cells}
        wall = None
    else:
        result = sweep.run(spec_obj, workers=workers, log=log)
        cells, status, wall = result.cells, result.status, round(result.wall_seconds, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, failed, missing, core = [], [], [], 0.0
    for cell in cells:
        src = sweep.cell_dir(spec_obj.folder.resolve(), cell) / "results.json"
        if status[cell.fingerprint] != "done":
            (missing if status[cell.fingerprint] == "missing" and collect_only else failed).append(cell.describe())
            continue
        p = cell.params
        name = f"{cell.experiment}-{p['model']}-{p['dataset']}-{p['image_size']}px-seed{cell.seed}.json"
        if "subset_train" in dict(cell.overrides):  # a grid over training sizes: one file per size
            name = name.replace(f"-seed{cell.seed}", f"-train{p['subset_train']}-seed{cell.seed}")
        shutil.copyfile(src, out / name)
        core += float(read_results(src)["timings"]["total_seconds"])
        written.append(name)
    prov = provenance({}, None)
    hw = prov["hardware"]
    tier = {"spec": raw, "files": sorted(written), "cells": len(cells), "failed": failed, "missing": missing,
            "wall_seconds": wall, "core_seconds": round(core, 1), "git": prov["git"], "versions": prov["versions"],
            "device": processor(hw), "cuda_driver": gpu_driver(),
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
    """One row per run: tier, model, image size, dataset, experiment, seed, the selected round (with the
    paired standard error of its test change) and the processor that ran it."""
    rows = []
    for r in records:
        p, f = r["params"], r["final"]
        rows.append({"tier": tier, "model": p["model"], "image_size": p["image_size"], "dataset": p["dataset"],
                     "experiment": r["experiment"], "seed": p["seed"],
                     "train_images": r.get("split_sizes", {}).get("train"),
                     "test_images": r.get("split_sizes", {}).get("test"), "se": f["drop_se_test"],
                     "reference": f["reference_test"], "after": f["accuracy_test"], "change": -f["accuracy_drop"],
                     "val_change": -f["drop_val"],
                     "params_pruned": f["param_pruning_ratio"], "flops_pruned": f["flop_pruning_ratio"],
                     "device": processor(r.get("provenance", {}).get("hardware", {}) or {})})
    return rows


def tier_table(rows: list[dict[str, Any]]):
    """Per tier, model, image size, dataset and experiment, the mean over seeds with its 95% interval
    (:func:`basisprune.repro.report.mean_ci`; one seed: the change ± 1.96 paired standard errors)."""
    import pandas as pd

    from .stats import mean_ci

    df = pd.DataFrame(rows)
    out = []
    keys = ["tier", "model", "image_size", "dataset", "experiment"]
    for k, g in df.groupby(keys, sort=False):
        out.append({**dict(zip(keys, k)), "train images": int(g["train_images"].iloc[0]),
                    "reference (%)": mean_ci(g["reference"], 100, 1), "after (%)": mean_ci(g["after"], 100, 1),
                    "change (pts)": mean_ci(g["change"], 100, 2, se=g["se"]),
                    "params pruned (%)": mean_ci(g["params_pruned"], 100, 1),
                    "FLOPs pruned (%)": mean_ci(g["flops_pruned"], 100, 1), "seeds": g["seed"].nunique(),
                    "hardware": ", ".join(sorted(set(g["device"])))})
    return pd.DataFrame(out)


#: The precision the seeds tier aims at (issue 24): a 95% interval no wider than ± 0.5 points of test
#: change and ± 5 points of parameters pruned (fractions here).
PRECISION = {"change": 0.005, "params_pruned": 0.05}


def tier_intervals(rows: list[dict[str, Any]], precision: dict[str, float] = PRECISION):
    """Per data set and experiment of a tier's :func:`tier_rows`: the mean and 95% interval over seeds
    (:func:`basisprune.repro.stats.interval`) of the test change and of the parameters pruned, as
    fractions, each interval's half-width (the larger side) and whether it is within ``precision``."""
    import pandas as pd

    from .stats import interval

    df = pd.DataFrame(rows)
    out = []
    for (ds, exp), g in df.groupby(["dataset", "experiment"], sort=False):
        row: dict[str, Any] = {"dataset": ds, "experiment": exp, "seeds": int(g["seed"].nunique())}
        for col in ("change", "params_pruned"):
            m, lo, hi = interval(g[col], g["se"] if col == "change" else None)
            half = max(m - lo, hi - m)
            row |= {col: m, f"{col}_low": lo, f"{col}_high": hi, f"{col}_halfwidth": half,
                    f"{col}_precise": bool(half <= precision[col])}
        out.append(row)
    return pd.DataFrame(out)


def tier_check(recomputed, rows: list[dict[str, Any]], columns=("change", "params_pruned")):
    """Whether each mean of a recomputed table lies inside the tier's 95% interval over seeds.

    ``recomputed``: chapter 5's :func:`basisprune.repro.report.method_runs` frame (``method`` is
    ``"channel pruning"``, ``"basis pruning"``, ``"double pruning"``, ...); ``rows``: a tier's
    :func:`tier_rows`. One row per data set and experiment that both have, per column: the tier's
    mean, interval and seeds, the recomputed mean and seeds, and ``inside`` (True/False).
    """
    import pandas as pd

    from .stats import interval

    tier = pd.DataFrame(rows)
    out = []
    for (ds, exp), g in tier.groupby(["dataset", "experiment"], sort=False):
        mine = recomputed[(recomputed["dataset"] == ds) & (recomputed["method"] == exp.replace("_", " "))]
        if mine.empty:
            continue
        for col in columns:
            m, lo, hi = interval(g[col], g["se"] if col == "change" else None)
            r = float(mine[col].mean())
            out.append({"dataset": ds, "experiment": exp, "column": col, "tier_mean": m, "tier_low": lo,
                        "tier_high": hi, "tier_seeds": int(g["seed"].nunique()), "recomputed_mean": r,
                        "recomputed_seeds": int(mine["seed"].nunique()), "inside": bool(lo <= r <= hi)})
    return pd.DataFrame(out)


def code_status(records: list[dict[str, Any]]) -> str:
    """One sentence: whether the records were computed by today's harness code (their fingerprint's
    code hash against :func:`basisprune.repro.workdir.fingerprint`'s)."""
    from .workdir import fingerprint

    today = fingerprint({})["code"]
    hashes = sorted({r["fingerprint"]["code"] for r in records})
    commits = sorted({str(r.get("provenance", {}).get("git", {}).get("commit", "?"))[:7] for r in records})
    if hashes == [today]:
        return f"computed by today's code (code hash {today[:12]})"
    return (f"computed by other code than today's (code hash {', '.join(h[:12] for h in hashes)} at commit "
            f"{', '.join(commits)}; today {today[:12]}): rerun the sweep to recompute them with this code")


#: Where the seeds tier (``sweeps/seeds.yaml``, ``benchmarks/seeds_tier.py``) is committed, in the project.
SEEDS_TIER = Path("data") / "results" / "seeds"

#: Where the data-size tier (``sweeps/data_size.yaml``, ``benchmarks/data_size_tier.py``) is committed.
DATA_SIZE_TIER = Path("data") / "results" / "data_size"


def seeds_tier_status(recomputed, directory: str | Path | None = None) -> tuple[str, Any]:
    """One sentence about the committed seeds tier (``directory``, default :data:`SEEDS_TIER` in the
    project) and the table of :func:`tier_check` (None when the tier is not committed): how many runs,
    on which processor, and how many of the recomputed table's means fall inside its 95% intervals."""
    from .paths import repo_root

    loaded = load_tier(directory if directory is not None else repo_root() / SEEDS_TIER)
    if loaded is None:
        return ("No seeds tier is committed yet (data/results/seeds/): run `python benchmarks/seeds_tier.py` "
                "(sweeps/seeds.yaml) and commit what it writes.", None)
    tier, records = loaded
    check = tier_check(recomputed, tier_rows(records, "seeds"))
    inside = int(check["inside"].sum()) if len(check) else 0
    commit = (tier["git"].get("commit") or "unknown")[:10]
    return (f"The seeds tier: {len(records)} runs on {tier['device']} (code commit {commit}, "
            f"{tier['wall_seconds'] / 60:.0f} minutes); {inside} of {len(check)} means of the recomputed table "
            f"lie inside the tier's 95% intervals. Its runs were {code_status(records)}.", check)
