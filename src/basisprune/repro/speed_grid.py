"""Reading the speed grid (``benchmarks/speed_grid.py``): its targets, its traffic comparison and
the tables chapter 7 shows from the committed results file.

The benchmark times MobileNetV2's inference forms over input sizes, batch sizes and runtimes in
rounds (forms rotated each round); every speed-up here is paired within a round (unpruned form /
form) and summarised by its median and range over rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .paths import repo_root
from .stats import format_interval

__all__ = ["COMMITTED", "COMMITTED_CHANNELS", "grid_table", "guard_counts", "load", "ours", "predict", "predict_table", "setting_line", "split_speedup",
           "target_lines", "targets", "time_split", "time_split_lines", "time_split_table", "traffic", "traffic_lines",
           "traffic_table"]

COMMITTED = Path("data") / "benchmarks" / "speed_grid-cpu.json"
"""The committed CPU run of the basis forms chapter 7 reads (relative to the repository root)."""
COMMITTED_CHANNELS = Path("data") / "benchmarks" / "speed_grid_channels-cpu.json"
"""The committed CPU run of our channel and double pruning (``--ours channels``)."""

BACKENDS = {"eager": "PyTorch eager", "onnxruntime": "ONNX Runtime"}


def load(path: str | Path | None = None) -> dict[str, Any]:
    """A speed-grid results file (with its provenance); by default the committed basis run
    (:data:`COMMITTED`; :data:`COMMITTED_CHANNELS` is the other)."""
    from .results import read_results

    path = Path(path) if path is not None else COMMITTED
    return read_results(path if path.is_absolute() else repo_root() / path)


CHANNEL_FORMS = ["channels (ours)", "double (ours)"]


def ours(settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Our forms in a run (``--ours``: basis pruning at ``depths``, or our channel and double
    pruning) and those of them at Torch-Pruning's FLOPs (the deepest basis form; both others)."""
    if settings.get("ours") == "channels":
        return CHANNEL_FORMS, CHANNEL_FORMS
    depths = settings["depths"]
    labels = [f"bases -{d:.0%}" for d in depths]
    return labels, [labels[depths.index(max(depths))]]


def targets(rows: list[dict[str, Any]], info: dict[Any, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The three targets of the deployment-speed issue, each with the settings that miss it.

    * ``never_slower``: every form of ours at least as fast as the unpruned form at every setting,
      within the spread (a miss: the upper quartile of the paired speed-ups below 1;
      ``slower_every_round`` lists the misses whose best round is below 1 too);
    * ``speedup_vs_flops``: at 2.5x fewer FLOPs or more (the compact model's), the median speed-up
      at least 0.7x the FLOPs ratio in ONNX Runtime at the largest batch;
    * ``vs_torch_pruning_onnx``: our forms at its FLOPs at least as fast as Torch-Pruning's form
      at equal FLOPs in ONNX Runtime (upper quartile of the paired ratios at least 1).
    """
    info = {int(k): v for k, v in info.items()}
    mine, at_peer = ours(settings)
    slower = [r for r in rows if r["model"] in mine and r["speedup_p75"] < 1]
    b_max = max(r["batch_size"] for r in rows)
    flops_rows = []
    for r in rows:
        if r["model"] in mine and r["backend"] == "onnxruntime" and r["batch_size"] == b_max:
            fr = info[r["size"]]["unpruned"]["flops"] / info[r["size"]][r["model"]]["flops"]
            if fr >= 2.5:
                flops_rows.append({"size": r["size"], "model": r["model"], "flops_ratio": fr,
                                   "speedup": r["speedup_median"], "fraction": r["speedup_median"] / fr})
    vs_tp = [r for r in rows if r["model"] in at_peer and r["backend"] == "onnxruntime" and "vs_tp_p75" in r]
    return {
        "never_slower": {"holds": not slower, "misses": [(r["size"], r["model"], r["backend"], r["batch_size"],
                                                          round(r["speedup_median"], 3)) for r in slower],
                         "slower_every_round": [(r["size"], r["model"], r["backend"], r["batch_size"],
                                                 round(r["speedup_max"], 3)) for r in slower if r["speedup_max"] < 1]},
        "speedup_vs_flops": {"holds": bool(flops_rows) and all(f["fraction"] >= 0.7 for f in flops_rows),
                             "rows": flops_rows},
        "vs_torch_pruning_onnx": {"holds": bool(vs_tp) and all(r["vs_tp_p75"] >= 1 for r in vs_tp),
                                  "misses": [(r["size"], r["batch_size"], round(r["vs_tp_median"], 3))
                                             + ((r["model"],) if len(at_peer) > 1 else ())
                                             for r in vs_tp if r["vs_tp_p75"] < 1]},
    }


def traffic(rows: list[dict[str, Any]], info: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per input size, pruned form and backend at the largest batch: the form's FLOPs ratio and
    activation-elements ratio against the unpruned form's, and the measured speed-up (median,
    range over rounds)."""
    info = {int(k): v for k, v in info.items()}
    b = max(r["batch_size"] for r in rows)
    out = []
    for r in rows:
        if r["batch_size"] != b or r["model"] == "unpruned":
            continue
        ref, form = info[r["size"]]["unpruned"][r["backend"]], info[r["size"]][r["model"]][r["backend"]]
        out.append({"size": r["size"], "model": r["model"], "backend": r["backend"], "batch_size": b,
                    "flops_ratio": ref["form_flops"] / form["form_flops"],
                    "activation_ratio": ref["activation_elements"] / form["activation_elements"],
                    "speedup": r["speedup_median"], "speedup_min": r["speedup_min"],
                    "speedup_max": r["speedup_max"]})
    return out


def _spread(median: float, lo: float, hi: float) -> str:
    return format_interval(median, lo, hi, digits=2)


def _frame(rows: list[dict[str, Any]], spread: str | None = None):
    """Rows with a ``backend`` as a data frame with the runtime's name; with ``spread``, also the
    speed-up (``speedup`` / ``speedup_min`` / ``speedup_max``) as ``median [min, max]`` there."""
    import pandas as pd

    t = pd.DataFrame(rows)
    t["runtime"] = t["backend"].map(lambda b: BACKENDS.get(b, b))
    if spread:
        t[spread] = [_spread(a, b, c) for a, b, c in zip(t["speedup"], t["speedup_min"], t["speedup_max"])]
    return t


def split_speedup(share: float, flops_ratio: float, activation_ratio: float) -> float:
    """The speed-up of a form with ``flops_ratio`` times fewer FLOPs and ``activation_ratio`` times
    fewer activation elements when ``share`` of the unpruned time scales with activations."""
    return 1 / ((1 - share) / flops_ratio + share / activation_ratio)


def grid_table(record: dict[str, Any]):
    """One row per input size, backend and batch size: the unpruned form's median ms, then every
    other form's speed-up against it (median [min, max] over rounds) and our forms at Torch-Pruning's FLOPs
    against Torch-Pruning's."""
    import pandas as pd

    rows = record["rows"]
    _, at_peer = ours(record["settings"])
    forms = [m for m in dict.fromkeys(r["model"] for r in rows) if m != "unpruned"]
    by = {(r["size"], r["backend"], r["batch_size"], r["model"]): r for r in rows}
    out = []
    for size, backend, b in dict.fromkeys((r["size"], r["backend"], r["batch_size"]) for r in rows):
        line: dict[str, Any] = {"px": size, "runtime": BACKENDS.get(backend, backend), "batch": b,
                                "unpruned form ms": round(by[(size, backend, b, "unpruned")]["median_ms"], 2)}
        for m in forms:
            r = by[(size, backend, b, m)]
            line[f"{m} speed-up"] = _spread(r["speedup_median"], r["speedup_min"], r["speedup_max"])
        for m in at_peer:
            r = by[(size, backend, b, m)]
            if "vs_tp_median" in r:
                line[f"{m} / Torch-Pruning"] = _spread(r["vs_tp_median"], r["vs_tp_min"], r["vs_tp_max"])
        out.append(line)
    return pd.DataFrame(out).set_index(["px", "runtime", "batch"])


def traffic_table(record: dict[str, Any]):
    """:func:`traffic` as a table: FLOPs ratio, activation ratio and speed-up per pruned form."""
    t = _frame(traffic(record["rows"], record["forms"]), "speed-up").rename(columns={"size": "px", "model": "form", "flops_ratio": "FLOPs ratio",
                          "activation_ratio": "activation ratio"})
    return t.set_index(["px", "runtime", "form"])[["FLOPs ratio", "activation ratio", "speed-up"]].round(2)


def _guard_kept(record: dict[str, Any], size: int, model: str, backend: str) -> str | None:
    g = ((record["forms"].get(str(size)) or record["forms"].get(size) or {}).get(model, {}).get(backend) or {}).get("guard")
    return g["kept"] if g else None


def _tp_miss(px: int, b: int, ratio: float, model: str | None = None) -> str:
    return f"{px} px, batch {b}{', ' + model if model else ''} ({ratio:.2f}x)"


def target_lines(record: dict[str, Any]) -> dict[str, str]:
    """One sentence per target (recomputed from the rows): whether it holds and, if not, where it
    is missed, with the guard's verdict on each form that misses the first."""
    t = targets(record["rows"], record["forms"], record["settings"])
    ns = t["never_slower"]

    def miss(px, m, be, b, s):
        kept = _guard_kept(record, px, m, be)
        note = {"folded": ", a form the guard folded back to the unpruned layers",
                "pairs": ", a form with basis pairs"}.get(kept or "", "")
        return f"{px} px, {m}, {BACKENDS.get(be, be)}, batch {b} ({s:.2f}x{note})"

    every = ns["slower_every_round"]
    lines = {"never_slower": "holds at every setting" if ns["holds"] else
             "missed at " + "; ".join(miss(*m) for m in ns["misses"]) + (
                 "; slower in every round: " + "; ".join(f"{px} px, {m}, {BACKENDS.get(be, be)}, batch {b}"
                                                         for px, m, be, b, _ in every) if every else
                 "; none of them slower in every round")}
    sf = t["speedup_vs_flops"]
    lines["speedup_vs_flops"] = ("holds" if sf["holds"] else "missed") + (": " + "; ".join(
        f"{r['model']} at {r['size']} px: {r['speedup']:.2f}x for {r['flops_ratio']:.2f}x fewer FLOPs "
        f"({r['fraction']:.2f} of it)" for r in sf["rows"]) if sf["rows"] else " (no form reaches 2.5x fewer FLOPs)")
    vt = t["vs_torch_pruning_onnx"]
    lines["vs_torch_pruning_onnx"] = "holds at every setting" if vt["holds"] else (
        "missed at " + "; ".join(_tp_miss(*m) for m in vt["misses"]))
    return lines


def setting_line(record: dict[str, Any]) -> str:
    """Where and how the grid was timed: processor, threads, versions, commit, rounds, load, wall time."""
    hw, st, prov = record["hardware"], record["settings"], record.get("provenance", {})
    load = record["load_average"]
    git = prov.get("git") or {}
    quiet = "a shared machine" if record.get("shared_machine") else "an otherwise idle machine"
    return (f"{hw['cpu_model']} ({hw['cpu_count']} cores), {st['threads']} thread(s), torch {hw['torch']}, "
            f"ONNX Runtime {hw['onnxruntime']}; commit {str(git.get('commit', '?'))[:7]}"
            f"{' (uncommitted changes)' if git.get('dirty') else ''}, {prov.get('timestamp_utc', '?')[:10]}; "
            f"{st['rounds']} rounds, forms' choices timed at batch {', '.join(map(str, st['form_batch_sizes']))} in "
            f"{st['form_rounds']} rounds; {quiet} (load average {load['before'][0]:.1f} before, "
            f"{load['after'][0]:.1f} after); {record['timings']['total'] / 60:.0f} min")


def guard_counts(record: dict[str, Any]) -> dict[str, int]:
    """How many of our forms kept their basis pairs and how many the guard folded back."""
    out = {"pairs": 0, "folded": 0}
    for forms in record["forms"].values():
        for label, info in forms.items():
            for backend in BACKENDS:
                g = (info.get(backend) or {}).get("guard")
                if g:
                    out[g["kept"]] += 1
    return out


def traffic_lines(record: dict[str, Any]) -> list[str]:
    """Per input size and runtime at the largest batch: our forms at Torch-Pruning's FLOPs and
    Torch-Pruning's: FLOPs ratio, activation ratio and speed-up, in words."""
    _, at_peer = ours(record["settings"])
    t = traffic(record["rows"], record["forms"])
    by = {(r["size"], r["backend"], r["model"]): r for r in t}
    lines = []
    for size, backend in dict.fromkeys((r["size"], r["backend"]) for r in t):
        parts = []
        for m in (*at_peer, "Torch-Pruning"):
            r = by.get((size, backend, m))
            if r:
                parts.append(f"{m}: {r['flops_ratio']:.2f}x fewer FLOPs, {r['activation_ratio']:.2f}x fewer "
                             f"activation elements, {r['speedup']:.2f}x faster")
        lines.append(f"{size} px, {BACKENDS.get(backend, backend)}: " + "; ".join(parts))
    return lines


def time_split(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A two-term account of the time at the largest batch, per input size and runtime.

    The unpruned form's time is split into a share ``1 - a`` that scales with FLOPs and a share
    ``a`` that scales with activation elements: a form with ``F`` times fewer FLOPs and ``A`` times
    fewer activation elements takes ``(1 - a) / F + a / A`` of it. ``a`` is solved from the deepest
    basis form's measured speed-up (its ``A`` is about 1, so it measures the activation share
    directly); the split then predicts Torch-Pruning's speed-up from its own ``F`` and ``A``, which
    is compared with the measured one, and bounds what any basis form can reach (``1 / a``: all
    FLOPs pruned, activations untouched). Each row: ``size``, ``backend``, ``activation_share``,
    ``basis_bound``, ``tp_predicted``, ``tp_measured``. Empty for a run without basis forms.
    """
    if record["settings"].get("ours") == "channels":
        return []
    deepest = ours(record["settings"])[1][0]
    by = {(r["size"], r["backend"], r["model"]): r for r in traffic(record["rows"], record["forms"])}
    out = []
    for size, backend in dict.fromkeys((k[0], k[1]) for k in by):
        b = by.get((size, backend, deepest))
        if b is None or abs(1 / b["activation_ratio"] - 1 / b["flops_ratio"]) < 1e-9:
            continue
        t = 1 / b["speedup"]
        a = (t - 1 / b["flops_ratio"]) / (1 / b["activation_ratio"] - 1 / b["flops_ratio"])
        row = {"size": size, "backend": backend, "activation_share": a,
               "basis_bound": 1 / a if a > 0 else float("inf"), "tp_predicted": None, "tp_measured": None}
        p = by.get((size, backend, "Torch-Pruning"))
        if p is not None:
            row["tp_predicted"] = split_speedup(a, p["flops_ratio"], p["activation_ratio"])
            row["tp_measured"] = p["speedup"]
        out.append(row)
    return out


def time_split_table(record: dict[str, Any]):
    """:func:`time_split` as a table."""
    t = _frame(time_split(record)).rename(columns={"size": "px", "activation_share": "time share of activations",
                          "basis_bound": "best basis speed-up (1 / share)",
                          "tp_predicted": "Torch-Pruning speed-up, predicted",
                          "tp_measured": "Torch-Pruning speed-up, measured"})
    return t.set_index(["px", "runtime"]).drop(columns="backend").round(2)


def time_split_lines(record: dict[str, Any]) -> dict[str, str]:
    """:func:`time_split` in words, per runtime: the activation share and the basis bound at each
    input size, and Torch-Pruning's predicted against measured speed-up; ``beyond_target``: the
    input sizes where the share exceeds, in every runtime, the largest share at which a form with
    no fewer activations and 2.5x fewer FLOPs can still reach 0.7 of them (``0.3 / (0.7 * 1.5)``)."""
    split = time_split(record)
    limit = 0.3 / (0.7 * 1.5)
    sizes = [size for size in dict.fromkeys(r["size"] for r in split)
             if all(r["activation_share"] > limit for r in split if r["size"] == size)]
    out = {"beyond_target": " and ".join(f"{size} px" for size in sizes) or "none of the input sizes"}
    for backend, name in BACKENDS.items():
        rows = [r for r in split if r["backend"] == backend]
        if not rows:
            continue
        out[backend] = "; ".join(f"{r['size']} px: {r['activation_share']:.2f} of the time, so at most "
                                 f"{r['basis_bound']:.2f}x" for r in rows)
        out[backend + "_prediction"] = "; ".join(
            f"{r['size']} px: {r['tp_predicted']:.2f}x predicted, {r['tp_measured']:.2f}x measured"
            for r in rows if r["tp_predicted"] is not None)
    return out


def predict(record: dict[str, Any], split: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pruned form of ``record`` at the largest batch, its speed-up predicted by a time split
    (:func:`time_split`, usually of another run: the basis forms') from its own FLOPs and
    activation ratios, beside the measured one (median, range over rounds)."""
    share = {(r["size"], r["backend"]): r["activation_share"] for r in split}
    out = []
    for r in traffic(record["rows"], record["forms"]):
        a = share.get((r["size"], r["backend"]))
        if a is not None:
            out.append({**r, "activation_share": a,
                        "predicted": split_speedup(a, r["flops_ratio"], r["activation_ratio"])})
    return out


def predict_table(record: dict[str, Any], split: list[dict[str, Any]]):
    """:func:`predict` as a table."""
    t = _frame(predict(record, split), "measured").rename(columns={"size": "px", "model": "form", "flops_ratio": "FLOPs ratio",
                          "activation_ratio": "activation ratio", "activation_share": "activation share (basis run)",
                          "predicted": "predicted speed-up", "measured": "measured speed-up"})
    cols = ["FLOPs ratio", "activation ratio", "activation share (basis run)", "predicted speed-up", "measured speed-up"]
    return t.set_index(["px", "runtime", "form"])[cols].round(2)
