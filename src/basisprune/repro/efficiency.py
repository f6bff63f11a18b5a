"""Efficiency of pruned models against Torch-Pruning: the peer, the pipeline's cost and the targets.

The functions behind chapter 7 (``notebooks/07_efficiency.ipynb``) that compare; the latency tables
they read are :mod:`basisprune.repro.speed`'s:

* :func:`timed_run` runs (or loads) an experiment and says how long the pipeline took to compute.
* :func:`peer_comparison` prunes the same transfer model with Torch-Pruning's magnitude channel
  pruning to the FLOPs of one of our models and fine-tunes all its weights with the epoch budget
  our pipeline used, recording when it first reaches our accuracy.
* :func:`pipeline_cost` and :func:`assess_targets` turn those measurements into the chapter's
  tables and the verdict on its three targets.

Conventions: FLOPs are for one image (:func:`basisprune.measure.count_flops`, 2 per MAC);
``flop_pruning_ratio = 1 - flops / flops_ref`` and ``flop_reduction = flops_ref / flops`` (the speedup
FLOPs promise); ``speedup = median_ref / median`` at the same batch size, threads and device.
Timings depend on the machine, its load and the thread count: nothing here asserts on them.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import experiments
from ..compact import load_model, save_model
from ..measure import count_flops, count_params
from .results import write_json

__all__ = [
    "assess_targets",
    "never_slower",
    "peer_comparison",
    "prune_to_flops",
    "pipeline_cost",
    "speed_targets",
    "timed_run",
    "training_epochs",
]


# ------------------------------------------------------------------------------------ tables


# -------------------------------------------------------------------- latency-aware compaction


# -------------------------------------------------------------------------- pipeline timings
def training_epochs(record: Mapping[str, Any]) -> dict[str, int]:
    """Training epochs a pruning record used: warm-up plus ``epochs_per_round`` per round run.

    For double pruning both stages count (the channel stage's warm-up is
    ``channel_warmup_epochs`` when set). Returns ``{"channel": ..., "basis": ..., "total": ...}``.
    """
    p = record["params"]
    epr = int(p["epochs_per_round"])
    out = {"channel": 0, "basis": 0}
    if record.get("stages"):
        ch_warm = p["channel_warmup_epochs"] if p.get("channel_warmup_epochs") is not None else p["warmup_epochs"]
        out["channel"] = int(ch_warm) + (len(record["stages"]["channel"]["history"]) - 1) * epr
        out["basis"] = int(p["warmup_epochs"]) + (len(record["stages"]["basis"]["history"]) - 1) * epr
    elif record.get("experiment") == "channel_pruning":
        ch_warm = p["channel_warmup_epochs"] if p.get("channel_warmup_epochs") is not None else p["warmup_epochs"]
        out["channel"] = int(ch_warm) + (len(record["history"]) - 1) * epr
    else:
        out["basis"] = int(p["warmup_epochs"]) + (len(record["history"]) - 1) * epr
    out["total"] = out["channel"] + out["basis"]
    return out


def timed_run(experiment: str, profile: str = "default", **params: Any) -> dict[str, Any]:
    """:func:`basisprune.repro.experiments.run` plus the wall time the pipeline took to *compute*.

    A run that loads its rounds from checkpoints returns at once, so its ``timings.total_seconds``
    is not the pipeline's cost; its ``timings.compute_seconds`` is (the stages keep their compute
    time in their checkpoints, so it survives resumes). Returns the record with
    ``pipeline_seconds``, ``pipeline_seconds_source``, ``epochs`` (:func:`training_epochs`) and
    ``workdir`` added.
    """
    p = experiments.resolve_params(experiment, profile, **params)
    record = experiments.run(experiment, profile=profile, **params)
    record["pipeline_seconds"] = float(record["timings"]["compute_seconds"])
    record["pipeline_seconds_source"] = "recorded"
    record["epochs"] = training_epochs(record)
    record["workdir"] = str(experiments.default_workdir(p))
    return record


# ------------------------------------------------------------------------------ the peer
def prune_to_flops(reference: nn.Module, example_input: torch.Tensor, target_ratio: float,
                   importance: str = "magnitude") -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's channel pruning of a copy of ``reference`` to FLOPs at most
    ``(1 - target_ratio) * flops_ref`` (:func:`basisprune.repro.peer.torch_pruning_channel_prune`);
    below a ratio of 0.005 there is nothing to prune and the copy is returned as it is."""
    from . import peer as _peer

    if target_ratio > 0.005:
        return _peer.torch_pruning_channel_prune(reference, example_input, target_ratio, importance=importance,
                                                 return_info=True)
    return copy.deepcopy(reference), {"pruning_ratio": 0.0, "iterations": 0}


def _prefix(history: Sequence[Mapping[str, Any]], epochs: int, stop_at_target: bool,
            target: float) -> list[Mapping[str, Any]]:
    """The part of a fine-tuning history a request for ``epochs`` (stopping at ``target``) needs."""
    out = []
    for h in history:
        if h["epoch"] > epochs:
            break
        out.append(h)
        if stop_at_target and h["accuracy_test"] >= target:
            break
    return out


def _covers(history: Sequence[Mapping[str, Any]], epochs: int, stop_at_target: bool, target: float) -> bool:
    """Whether a stored history holds a request: fine-tuning is seeded and the same whatever its
    length, so a longer run's first epochs are the shorter run."""
    pre = _prefix(history, epochs, stop_at_target, target)
    return bool(pre) and (pre[-1]["epoch"] == epochs or (stop_at_target and pre[-1]["accuracy_test"] >= target))


def peer_comparison(
    profile: str = "default",
    dataset: str | None = None,
    seed: int | None = None,
    *,
    experiment: str = "double_pruning",
    importance: str = "magnitude",
    epochs: int | None = None,
    stop_at_target: bool = False,
    record: Mapping[str, Any] | None = None,
    cache: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Torch-Pruning's channel pruning of our transfer model to our FLOPs, fine-tuned with our budget.

    1. Our run: :func:`timed_run` of ``experiment`` (double pruning by default) with the profile's
       parameters (``dataset``, ``seed`` and ``params`` override them), or ``record`` if given.
    2. The peer starts from the same transfer model our pipelines start from (pretrained backbone,
       new classifier initialised from the run's seed), and
       :func:`basisprune.repro.peer.torch_pruning_channel_prune` (global ``GroupMagnitudeImportance(p=2)``
       by default) removes channel groups until its FLOPs are at most ours (FLOP pruning ratio
       within 0.01 above ours).
    3. It is fine-tuned like the full fine-tuning baseline (all weights, Adam at ``full_lr``,
       BatchNorm in train mode) for ``epochs`` epochs, by default as many as our pipeline trained
       (:func:`training_epochs`: warm-up plus rounds of every stage), on the same data; the
       test split is evaluated after every epoch to find when it first reaches our test accuracy.
       ``stop_at_target`` stops there (to measure the time to our accuracy only).

    The peer's run is cached in our run's checkpoint directory, per importance and FLOP target; as
    fine-tuning is seeded, a cached longer run answers a shorter request with its first epochs (the
    returned ``peer_model`` then has the longer run's weights: the same architecture, so the same
    latency).

    Returns:
        ``ours`` (accuracy_test, params, flops, ratios, pipeline_seconds and its source, epochs,
        compact_model path), ``peer`` (accuracy_test after the last epoch, params, flops, ratios,
        prune_seconds, seconds, epochs_run, history, reached_epoch / reached_seconds: the first
        epoch, and the cumulative wall seconds including pruning, at which the peer's test accuracy
        is at least ours, or ``None``), ``target_accuracy``, ``budget_epochs`` and the models
        ``peer_model`` and ``reference_model`` (the unpruned transfer model).
    """
    from .devices import seed_everything

    overrides = {k: v for k, v in {"dataset": dataset, "seed": seed, **params}.items() if v is not None}
    p = experiments.resolve_params(experiment, profile, **overrides)
    rec = dict(record) if record is not None else timed_run(experiment, profile, **overrides)
    budget = training_epochs(rec)["total"]
    n_epochs = int(budget if epochs is None else epochs)
    target_ratio = float(rec["final"]["flop_pruning_ratio"])
    target_acc = float(rec["final"]["accuracy_test"])
    ctx = experiments.Context(p)
    reference = ctx.fresh_model().eval()
    wd = Path(rec.get("workdir") or experiments.default_workdir(p))
    key = f"peer-{importance}-r{target_ratio:.4f}"
    meta_path, model_path = wd / f"{key}.json", wd / f"{key}.pt"
    run, stored = None, None
    if cache and meta_path.exists() and model_path.exists():
        stored = json.loads(meta_path.read_text(encoding="utf-8"))
        if _covers(stored["history"], n_epochs, stop_at_target, target_acc):
            run, peer_model = stored, load_model(model_path).eval()
    cached = run is not None
    if run is None:
        seed_everything(p["seed"])
        t0 = time.perf_counter()
        peer_model, info = prune_to_flops(reference, ctx.example, target_ratio, importance)
        prune_seconds = time.perf_counter() - t0
        from . import peer as _peer  # imported by prune_to_flops already (torch_pruning is slow to import)

        hist = _peer.finetune(peer_model, ctx.loaders, n_epochs, p["full_lr"], ctx.device, target=target_acc,
                              stop_at_target=stop_at_target, start_seconds=prune_seconds,
                              memory_format=p["memory_format"])
        peer_model = peer_model.cpu().eval()
        stats = {"params": count_params(peer_model), "flops": count_flops(peer_model, ctx.example.cpu())}
        run = {
            "importance": importance,
            "pruning_ratio": info.get("pruning_ratio"),
            "bisection_iterations": info.get("iterations"),
            **stats,
            "param_pruning_ratio": 1.0 - stats["params"] / rec["reference"]["params"],
            "flop_pruning_ratio": 1.0 - stats["flops"] / rec["reference"]["flops"],
            "prune_seconds": prune_seconds,
            "lr": p["full_lr"],
            "threads": torch.get_num_threads(),
            "device": str(ctx.device),
            "history": hist,
        }
        if cache and (stored is None or len(hist) >= len(stored["history"])):
            wd.mkdir(parents=True, exist_ok=True)
            save_model(peer_model, model_path)
            write_json(meta_path, run)
    hist = _prefix(run["history"], n_epochs, stop_at_target, target_acc)
    reached = next((h for h in hist if h["accuracy_test"] >= target_acc), None)
    result = {
        **{k: v for k, v in run.items() if k != "history"},
        "accuracy_test": hist[-1]["accuracy_test"],
        "seconds": hist[-1]["wall_seconds"],
        "epochs": n_epochs,
        "epochs_run": hist[-1]["epoch"],
        "stop_at_target": stop_at_target,
        "history": hist,
        "reached_epoch": reached["epoch"] if reached else None,
        "reached_seconds": reached["wall_seconds"] if reached else None,
        "cached": cached,
    }
    fin = rec["final"]
    ours = {
        "experiment": experiment,
        "accuracy_test": target_acc,
        "accuracy_val": fin.get("accuracy_val"),
        "params": fin["params"], "flops": fin["flops"],
        "param_pruning_ratio": fin["param_pruning_ratio"], "flop_pruning_ratio": target_ratio,
        "pipeline_seconds": rec.get("pipeline_seconds"),
        "pipeline_seconds_source": rec.get("pipeline_seconds_source"),
        "epochs": training_epochs(rec),
        "compact_model": rec.get("compact_model"),
    }
    return {
        "experiment": experiment, "dataset": p["dataset"], "seed": p["seed"], "model": p["model"],
        "image_size": p["image_size"], "input_shape": tuple(ctx.example.shape[1:]),
        "reference": dict(rec["reference"]), "ours": ours, "peer": result,
        "target_accuracy": target_acc, "budget_epochs": budget,
        "record": rec, "peer_model": peer_model, "reference_model": reference.cpu(),
        "example_input": ctx.example.cpu(),
    }


# ------------------------------------------------------------------------- cost and targets
def pipeline_cost(comparisons: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per :func:`peer_comparison`: our pipeline's wall time and epochs against the peer's
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
    have the same rounds (as :func:`speed_table`'s ``speedup``), else the ratio of the medians.
    ``pre`` selects a backend's fields (``"onnx_"``, ...)."""
    import statistics

    a, b = slow.get(pre + "round_medians_ms"), fast.get(pre + "round_medians_ms")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return slow[pre + "median_ms"] / fast[pre + "median_ms"]


def never_slower(rows: Sequence[Mapping[str, Any]], model: str, reference: str,
                 backend: str = "torch") -> dict[str, Any]:
    """Whether ``model`` is slower than ``reference`` at any measured batch size: by median
    (speedup below 1, paired by round as in :func:`speed_table`) and clearly (its
    first quartile above the reference's third quartile). ``backend`` as in :func:`latency_pivot`;
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


# ------------------------------------------------------------------------- inference forms


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
