"""Timing primitives the library's benchmarks and timed choices share.

* :data:`LayerTimer`, :func:`benchmark_timer` (``torch.utils.benchmark``) and :func:`timed_runs`: one
  forward pass timed on its real input, the median over runs;
* :func:`interleaved_times` and :func:`clearly_faster`: how every timed choice is made (candidates
  timed in interleaved rounds, an alternative chosen only when clearly faster);
* the checks and contexts around them (:func:`check_batch_sizes`, :func:`check_shape`,
  :func:`eval_mode`, :func:`num_threads`, :func:`model_device`), the records (:func:`quantile`,
  :func:`timing_record`, :func:`timed_on`) and the processor's name (:func:`cpu_model`,
  :func:`device_name`).

:mod:`basisprune.bench` re-exports the public names; timings are never asserted in tests.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["LayerTimer", "benchmark_timer", "check_batch_sizes", "check_shape", "clearly_faster", "cpu_model",
           "device_name", "eval_mode", "interleaved_times", "model_device", "num_threads", "quantile", "timed_on",
           "timed_runs", "timing_record"]

LayerTimer = Callable[[nn.Module, torch.Tensor], float]
"""``timer(module, x) -> seconds`` for one forward pass of ``module`` on ``x`` (eval, no grad)."""


# ------------------------------------------------------------------------------------ device
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else the machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.getdevice_name(device)
    return cpu_model()


# ------------------------------------------------------------------------------------ helpers
def check_batch_sizes(batch_sizes: Iterable[int]) -> list[int]:
    """``batch_sizes`` as a list of ints; ``ValueError`` unless non-empty and all positive."""
    out = [int(b) for b in batch_sizes]
    if not out or any(b < 1 for b in out):
        raise ValueError(f"batch_sizes must be a non-empty list of positive ints, got {batch_sizes!r}")
    return out


def check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """One sample's shape (no batch dimension) as a tuple; ``ValueError`` unless all positive."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"input_shape is the shape of one sample without the batch dimension, e.g. (3, 224, 224); "
            f"got {input_shape!r}"
        )
    return shape


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the block; every submodule's own train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def num_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` for the block (``None``: unchanged), then restored;
    yields the count in force."""
    old = torch.get_num_threads()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (``None`` when it has neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


def quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def timing_record(times_s: list[float], batch_size: int, **extra: Any) -> dict[str, Any]:
    """One batch size's record from per-run seconds: median, quartiles, IQR, mean and minimum in
    milliseconds, runs, milliseconds per image and images per second, plus ``extra``."""
    xs = sorted(times_s)
    med = statistics.median(xs)
    p25, p75 = quantile(xs, 0.25), quantile(xs, 0.75)
    mean = statistics.fmean(xs)
    return {
        "batch_size": batch_size,
        "median_ms": med * 1e3,
        "p25_ms": p25 * 1e3,
        "p75_ms": p75 * 1e3,
        "iqr_ms": (p75 - p25) * 1e3,
        "mean_ms": mean * 1e3,
        "min_ms": xs[0] * 1e3,
        "runs": len(xs),
        "median_ms_per_image": med * 1e3 / batch_size,
        "throughput_ips": batch_size / med if med > 0 else float("inf"),
        **extra,
    }


def timed_runs(stmt_globals: dict[str, Any], threads: int, min_run_time: float, min_runs: int) -> tuple[list[float], int]:
    """Seconds per call of ``model(x)`` for each of >= ``min_runs`` runs, and calls per run.

    Like ``Timer.blocked_autorange``: each run is one ``Timer.timeit(number)`` block, the block size
    chosen so that a block takes about ``min_run_time / 10`` (at least one call); blocks are
    measured until ``min_run_time`` has passed *and* there are ``min_runs`` of them, so the
    quartiles always come from several runs (``blocked_autorange`` alone gives a single run for
    small models).
    """
    from torch.utils.benchmark import Timer

    t = Timer("model(x)", globals=stmt_globals, num_threads=threads)
    single = statistics.median(t.timeit(1).mean for _ in range(3))
    number = max(1, int(round((min_run_time / 10) / max(single, 1e-9))))
    times: list[float] = []
    spent = 0.0
    while spent < min_run_time or len(times) < min_runs:
        m = t.timeit(number)
        times.append(float(m.mean))
        spent += float(m.mean) * number
    return times, number


def benchmark_timer(min_run_time: float = 0.02, threads: int | None = None, min_runs: int = 5) -> LayerTimer:
    """A :data:`LayerTimer` returning the median seconds per call over timed runs (see :func:`latency`)."""

    def timer(module: nn.Module, x: torch.Tensor) -> float:
        with eval_mode(module), torch.inference_mode():
            module(x)  # warm-up
            times, _ = timed_runs({"model": module, "x": x}, threads or torch.get_num_threads(), min_run_time, min_runs)
        return float(statistics.median(times))

    return timer


def timed_on(threads: int | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The short hardware record a timed choice carries: device name, threads, torch version."""
    dev = torch.device(device)
    return {"device": str(dev), "device_name": device_name(dev), "threads": int(threads or torch.get_num_threads()),
            "torch": torch.__version__, "hostname": platform.node() or None}


# ------------------------------------------------------------------------- robust choices
def interleaved_times(candidates: Sequence[tuple[nn.Module, Sequence[torch.Tensor]]], timer: LayerTimer,
                      rounds: int = 5) -> list[list[list[float]]]:
    """Seconds ``[candidate][round][input]`` of ``timer(module, x)`` for every candidate
    ``(module, inputs)``, in ``rounds`` interleaved rounds: each round times every candidate once
    per input, in an order rotated (and reversed every other round) from round to round, so that
    load on a shared machine falls on all candidates alike and the rounds can be paired."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    n = len(candidates)
    out = [[[0.0] * len(xs) for _ in range(rounds)] for _, xs in candidates]
    for r in range(rounds):
        order = [(r + k) % n for k in range(n)]
        for c in (order[::-1] if r % 2 else order):
            module, xs = candidates[c]
            for b, x in enumerate(xs):
                out[c][r][b] = float(timer(module, x))
    return out


def clearly_faster(alt: Sequence[Sequence[float]], base: Sequence[Sequence[float]], *, margin: float = 0.02,
                   each: bool = False) -> dict[str, Any]:
    """Whether ``alt`` is clearly faster than ``base`` (both ``[round][input]`` seconds from one
    :func:`interleaved_times` call).

    Each round's score is ``alt / base`` averaged over the inputs (each input weighs the same);
    ``alt`` is clearly faster when the median score is below ``1 - margin`` and the upper quartile
    below 1 (with ``each``: at every input on its own). Anything else, a tie or noise, keeps
    ``base``. Returns ``faster`` and the scores' ``ratio_median``, ``ratio_p25``, ``ratio_p75``.
    """
    if len(alt) != len(base) or not alt:
        raise ValueError("alt and base need the same non-zero number of rounds")

    def verdict(scores: list[float]) -> tuple[bool, float, float, float]:
        xs = sorted(scores)
        med, p25, p75 = statistics.median(xs), quantile(xs, 0.25), quantile(xs, 0.75)
        return med < 1 - margin and p75 < 1, med, p25, p75

    ratios = [[a / max(b, 1e-12) for a, b in zip(ra, rb)] for ra, rb in zip(alt, base)]
    faster, med, p25, p75 = verdict([statistics.fmean(r) for r in ratios])
    if each:
        faster = faster and all(verdict([r[b] for r in ratios])[0] for b in range(len(ratios[0])))
    return {"faster": bool(faster), "ratio_median": med, "ratio_p25": p25, "ratio_p75": p75}
