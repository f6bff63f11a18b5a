"""The pruning-at-initialization cost experiment ``pai_cost`` (chapter 6).

:func:`cost` -- for every method, :func:`prune_cost` (a run of
:func:`basisprune.repro.experiments.run`): wall time of one method's whole pruning step (scores and
top-k, SynFlow's rounds included), the median of ``repeats`` runs, in the ProsPr paper's ResNet-20 setting
(3x32x32 inputs, batch 128, M = 3 inner steps) on random inputs and labels (the cost does not
depend on the pixel values), with :func:`basisprune.repro.provenance.hardware` naming the machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import pai
from . import profiles, provenance, smallnets
from .pruning_at_init import prunable_counts, resumed, sync
from .devices import pick_device

__all__ = ["cost", "prune_cost"]


def _hardware_name(device: torch.device, hw: Mapping[str, Any]) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{hw['cpu_model']}, {hw['torch_threads']} torch thread(s), {hw['usable_cores']} usable core(s)"


def prune_cost(method: str, repeats: int = 5, model: str = "resnet20", batch: int = 128, steps: int = 3, *,
               width: int = 16, image_size: int = 32, sparsity: float = 0.9, warmup: int = 0,
               synflow_iterations: int = 100, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Wall time of ``pai.prune(model, method, sparsity, batches)``: the median of ``repeats`` runs
    (after ``warmup`` untimed ones) on a fresh ``model`` from :mod:`basisprune.repro.smallnets` with
    ``3 x image_size x image_size`` random inputs and random labels, ``batch`` images per batch.

    ProsPr (full and first order) takes ``steps`` inner steps on ``steps`` batches and its
    meta-loss on one more; SNIP and GraSP use one batch; SynFlow runs ``synflow_iterations``
    rounds on one all-ones sample (100 in the official code).  Returns ``median_seconds``,
    ``times_seconds``, the settings, ``hardware`` (:func:`basisprune.repro.provenance.hardware`) and
    ``hardware_name``.
    """
    profiles.pai_params("cost", model=model, width=width, batch=batch, steps=steps, image_size=image_size,
                        repeats=repeats, warmup=warmup, sparsity=sparsity, synflow_iterations=synflow_iterations,
                        device=device, methods=[method], seed=seed)  # bad input: one line, before any work
    dev = pick_device(device)
    torch.manual_seed(seed)
    net = smallnets.build(model, 10, 3, width=width).to(dev)
    g = torch.Generator().manual_seed(seed)
    n_batches = steps + 1 if method in ("prospr", "prospr_first_order") else 1
    batches = [(torch.randn(batch, 3, image_size, image_size, generator=g).to(dev),
                torch.randint(0, 10, (batch,), generator=g).to(dev)) for _ in range(n_batches)]
    opts: dict[str, Any] = {}
    if method in ("prospr", "prospr_first_order"):
        opts = {"steps": steps}
    elif method == "synflow":
        opts = {"iterations": synflow_iterations}
    times = []
    for i in range(warmup + repeats):
        sync(dev)
        t0 = time.perf_counter()
        pai.prune(net, method, sparsity, batches, **opts)
        sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    hw = provenance.hardware()
    return {
        "method": method, "median_seconds": statistics.median(times), "times_seconds": times,
        "model": model, "width": width, "batch": batch, "steps": steps, "image_size": image_size,
        "repeats": repeats, "warmup": warmup, "sparsity": sparsity,
        "synflow_iterations": synflow_iterations if method == "synflow" else None,
        "params_prunable": prunable_counts(net)[0], "device": str(dev),
        "hardware": hw, "hardware_name": _hardware_name(dev, hw),
    }


def cost(ctx, workdir: Path | None) -> dict[str, Any]:
    """Experiment ``pai_cost``: :func:`prune_cost` for every method of the settings (each kept in
    the workdir as it finishes); ``methods``: one record each."""
    s = ctx.p
    kw = {k: s[k] for k in ("repeats", "model", "batch", "steps", "width", "image_size", "sparsity", "warmup",
                            "synflow_iterations", "device", "seed")}
    return {"methods": [resumed(workdir, f"pai-cost-{m}.pt", lambda m=m: prune_cost(m, **kw))
                        for m in tqdm(s["methods"], desc="pruning cost")]}
