"""Chapter 7's verdict: the pipeline's cost against the Torch-Pruning peer, and the three targets.

* :func:`pipeline_cost` tabulates :func:`basisprune.repro.comparison.peer_comparison` records.
* :func:`never_slower`, :func:`speed_targets` and :func:`assess_targets` read the latency tables of
  :mod:`basisprune.repro.speed` and the comparisons, and say whether each target is met.

Conventions: ``speedup = median_ref / median`` at the same batch size, threads and device, paired
by timing round where both rows have the same rounds. Timings depend on the machine, its load and
the thread count: nothing here asserts on them.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "assess_targets",
    "never_slower",
    "pipeline_cost",
    "speed_targets",
]


# ------------------------------------------------------------------------- cost and targets
def pipeline_cost(comparisons: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per :func:`basisprune.repro.comparison.peer_comparison`: our pipeline's wall time and epochs against the peer's
    (Torch-Pruning + fine-tuning) time to reach our test accuracy.

    ``time_ratio`` is ours / the peer's time to our accuracy; when the peer never reached it,
    ``peer_to_accuracy_s`` is ``None`` and ``time_ratio_bound`` is ours / the peer's whole run (an
    upper bound on the true ratio, which is what can be said).
    """
    rows = []
    for c in comparisons:
        o, pr = c["ours"], c["peer"]
        ours_s = o["pipeline_seconds"]
        reach = pr["reached_seconds"]
        rows.append({
            "method": c["experiment"].replace("_", " "),
            "dataset": c["dataset"],
            "FLOPs pruned": o["flop_pruning_ratio"],
            "our accuracy": o["accuracy_test"],
            "our epochs": o["epochs"]["total"],
            "our wall s": ours_s,
            "our time measured": o["pipeline_seconds_source"],
            "peer FLOPs pruned": pr["flop_pruning_ratio"],
            "peer epochs run": pr["epochs_run"],
            "peer accuracy": pr["accuracy_test"],
            "peer wall s": pr["seconds"],
            "peer prune s": pr["prune_seconds"],
            "peer epochs to our accuracy": pr["reached_epoch"],
            "peer s to our accuracy": reach,
            "time_ratio": ours_s / reach if ours_s is not None and reach else None,
            "time_ratio_bound": ours_s / pr["seconds"] if ours_s is not None and reach is None else None,
        })
    return rows


def _row(rows: Sequence[Mapping[str, Any]], model: str, batch: int) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["batch_size"] == batch), None)


def _paired_ratio(slow: Mapping[str, Any], fast: Mapping[str, Any], pre: str = "") -> float:
    """``slow / fast`` latency: the median over rounds of the ratio within each round when both rows
    have the same rounds (as :func:`basisprune.repro.speed.speed_table`'s ``speedup``), else the ratio of the medians.
    ``pre`` selects a backend's fields (``"onnx_"``, ...)."""
    import statistics

    a, b = slow.get(pre + "round_medians_ms"), fast.get(pre + "round_medians_ms")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return slow[pre + "median_ms"] / fast[pre + "median_ms"]


def never_slower(rows: Sequence[Mapping[str, Any]], model: str, reference: str,
                 backend: str = "torch") -> dict[str, Any]:
    """Whether ``model`` is slower than ``reference`` at any measured batch size: by median
    (speedup below 1, paired by round as in :func:`basisprune.repro.speed.speed_table`) and clearly (its
    first quartile above the reference's third quartile). ``backend`` as in :func:`basisprune.repro.speed.latency_pivot`;
    batch sizes where either has no timing are skipped."""
    pre = "" if backend == "torch" else f"{backend}_"
    out = {"model": model, "backend": backend, "min_speedup": None, "slower_median_at": [], "clearly_slower_at": []}
    speedups = []
    for r in rows:
        ref = _row(rows, reference, r["batch_size"]) if r["model"] == model else None
        if ref is None or r.get(pre + "median_ms") is None or ref.get(pre + "median_ms") is None:
            continue
        speedups.append(_paired_ratio(ref, r, pre))
        if speedups[-1] < 1.0:
            out["slower_median_at"].append(r["batch_size"])
        if r[pre + "p25_ms"] > ref[pre + "p75_ms"]:
            out["clearly_slower_at"].append(r["batch_size"])
    out["min_speedup"] = min(speedups) if speedups else None
    return out


def speed_targets(
    rows: Sequence[Mapping[str, Any]],
    *,
    ours: str,
    pruned: str,
    peer: str,
    reference: str,
    batch_size: int = 64,
    fraction: float = 0.7,
    backend: str = "torch",
) -> dict[str, dict[str, Any]]:
    """The speed targets of an inference form, each with ``met`` (True / False / None for not
    measured), the numbers and a sentence.

    (never) No model of ``rows`` is slower (median) than ``reference`` at any batch size.
    (ratio) At ``batch_size``, ``ours`` is faster than ``reference`` by at least ``fraction`` of
        the FLOP reduction of ``pruned`` (the compact model ``ours`` comes from: merging may add
        FLOPs to the inference form, the pruning's saving is the compact model's).
    (peer) At ``batch_size``, ``ours`` is at least as fast as ``peer`` (Torch-Pruning's model of
        equal FLOPs).
    """
    pre = "" if backend == "torch" else f"{backend}_"
    out: dict[str, dict[str, Any]] = {}
    models = [m for m in dict.fromkeys(r["model"] for r in rows) if m != reference]
    checks = [never_slower(rows, m, reference, backend) for m in models]
    slower = {c["model"]: c["slower_median_at"] for c in checks if c["slower_median_at"]}
    out["never"] = {"met": not slower, "slower": slower,
                    "text": "(never) met: no model is slower than the unpruned one at any batch size."
                    if not slower else "(never) not met: slower than the unpruned model (median) "
                    + "; ".join(f"{m} at batch {b}" for m, b in slower.items()) + "."}
    o, c, q, ref = (_row(rows, m, batch_size) for m in (ours, pruned, peer, reference))
    if o is None or c is None or ref is None or o.get(pre + "median_ms") is None:
        out["ratio"] = {"met": None, "text": f"(ratio) not measured: no {backend} timing of {ours!r} at batch {batch_size}."}
    else:
        speed = _paired_ratio(ref, o, pre)
        need = fraction * c["flop_reduction"]
        out["ratio"] = {"met": speed >= need, "speedup": speed, "flop_reduction": c["flop_reduction"], "required": need,
                        "text": f"(ratio) {'met' if speed >= need else 'not met'}: at batch {batch_size}, {ours} is "
                                f"{speed:.2f}x faster than the unpruned model for {c['flop_reduction']:.2f}x fewer "
                                f"FLOPs (target >= {need:.2f}x)."}
    if o is None or q is None or o.get(pre + "median_ms") is None or q.get(pre + "median_ms") is None:
        out["peer"] = {"met": None, "text": f"(peer) not measured: no {backend} timings of {ours!r} and {peer!r}."}
    else:
        speed = _paired_ratio(q, o, pre)
        out["peer"] = {"met": speed >= 1.0, "speed_ratio": speed,
                       "text": f"(peer) {'met' if speed >= 1.0 else 'not met'}: at batch {batch_size}, {ours} takes "
                               f"{o[pre + 'median_ms']:.2f} ms and {peer} {q[pre + 'median_ms']:.2f} ms "
                               f"(ours {speed:.2f}x as fast)."}
    return out


def assess_targets(
    rows: Sequence[Mapping[str, Any]],
    comparison: Mapping[str, Any],
    *,
    ours: str,
    peer: str,
    batch_size: int = 64,
    accuracy_tolerance: float = 0.01,
    time_fraction: float = 1 / 3,
    speedup_fraction: float = 0.5,
    cost_comparison: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The chapter's three targets from the measurements, each with ``met`` (True / False / None
    for not measured), the numbers and a sentence.

    (a) CPU, ``batch_size``: the measured speedup of ``ours`` (a label of ``rows``) is at least
        ``speedup_fraction`` of its FLOP reduction.
    (b) At equal accuracy (the peer's test accuracy at most ``accuracy_tolerance`` above ours),
        ``ours`` is at least as fast as ``peer`` at ``batch_size`` (latency ratio paired by round).
    (c) Our pipeline's wall time is at most ``time_fraction`` of the peer's prune-then-fine-tune
        wall time to our accuracy (``cost_comparison``, default ``comparison``).
    """
    out: dict[str, dict[str, Any]] = {}
    r = _row(rows, ours, batch_size)
    if r is None:
        out["a"] = {"met": None, "text": f"(a) not measured: no timing of {ours!r} at batch {batch_size}."}
    else:
        need = speedup_fraction * r["flop_reduction"]
        met = r["speedup"] >= need
        out["a"] = {"met": met, "speedup": r["speedup"], "flop_reduction": r["flop_reduction"], "required": need,
                    "text": f"(a) {'met' if met else 'not met'}: at batch {batch_size} on {r['device']} "
                            f"({r['threads']} thread(s)), {ours} runs {r['speedup']:.2f}x faster than the unpruned "
                            f"model; its FLOPs are {r['flop_reduction']:.2f}x fewer, so the target is "
                            f">= {need:.2f}x."}
    o, q = _row(rows, ours, batch_size), _row(rows, peer, batch_size)
    if o is None or q is None:
        out["b"] = {"met": None,
                    "text": f"(b) not measured: no timings of {ours!r} and {peer!r} at batch {batch_size}."}
    else:
        speed = _paired_ratio(q, o)
        acc_o, acc_p = comparison["ours"]["accuracy_test"], comparison["peer"]["accuracy_test"]
        equal_acc = acc_p <= acc_o + accuracy_tolerance
        faster = speed >= 1.0
        met = bool(faster and equal_acc)
        why = []
        if not faster:
            why.append("the Torch-Pruning model is faster")
        if not equal_acc:
            why.append(f"the Torch-Pruning model is more accurate by {100 * (acc_p - acc_o):.1f} points "
                       f"(more than the {100 * accuracy_tolerance:.1f}-point tolerance)")
        out["b"] = {"met": met, "speed_ratio": speed, "accuracy_ours": acc_o, "accuracy_peer": acc_p,
                    "text": f"(b) {'met' if met else 'not met'}: at batch {batch_size}, ours takes "
                            f"{o['median_ms']:.2f} ms and Torch-Pruning's equal-FLOPs model {q['median_ms']:.2f} ms "
                            f"(ours {speed:.2f}x as fast); test accuracy {100 * acc_o:.1f}% vs "
                            f"{100 * acc_p:.1f}% after "
                            f"{comparison['peer']['epochs_run']} fine-tuning epochs"
                            + (f" ({'; '.join(why)})." if why else ".")}
    c = cost_comparison or comparison
    ours_s, reach, whole = c["ours"]["pipeline_seconds"], c["peer"]["reached_seconds"], c["peer"]["seconds"]
    name = c["experiment"].replace("_", " ")
    if ours_s is None:
        out["c"] = {"met": None, "text": f"(c) not measured: the {name} record has no pipeline time "
                                         "(records from timed_run have one)."}
    elif reach is not None:
        ratio = ours_s / reach
        met = ratio <= time_fraction
        out["c"] = {"met": met, "ratio": ratio,
                    "text": f"(c) {'met' if met else 'not met'}: {name} took {ours_s:.1f} s; Torch-Pruning + "
                            f"fine-tuning reached that accuracy after {c['peer']['reached_epoch']} epoch(s), "
                            f"{reach:.1f} s (ratio {ratio:.2f}, target <= {time_fraction:.2f})."}
    else:
        bound = ours_s / whole
        met = True if bound <= time_fraction else None
        out["c"] = {"met": met, "ratio": None, "ratio_bound": bound,
                    "text": f"(c) {'met' if met else 'undecided'}: {name} took {ours_s:.1f} s; Torch-Pruning + "
                            f"fine-tuning did not reach its accuracy within its {c['peer']['epochs_run']} epochs "
                            f"({whole:.1f} s), so the ratio is below {bound:.2f}"
                            + ("." if met else f", which does not show <= {time_fraction:.2f}.")}
    return out
