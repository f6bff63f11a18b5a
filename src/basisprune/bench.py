"""Latency benchmarks (PyTorch and ONNX Runtime) and latency-aware compaction.

* :func:`latency` times a model's forward pass with ``torch.utils.benchmark.Timer`` in eval mode
  under ``torch.inference_mode``, one record per batch size (median, quartiles, IQR, runs,
  throughput, threads, device), eagerly, through ``torch.compile`` or replayed as a CUDA graph.
* :func:`export_onnx` exports a model with ``torch.onnx.export`` (dynamic batch axis) and
  :func:`onnxruntime_timer` times candidates in ONNX Runtime.
* :func:`cpu_model` names the CPU in every record (the harness's ``basisprune.repro.provenance``
  describes the whole machine).
* :func:`latency_fold_rule` builds a ``fold_rule`` for :func:`basisprune.compact` that folds a basis
  layer back into one conv whenever its kept pair (basis conv + 1x1 conv) is not clearly faster than
  the single folded conv on the layer's real input shape, so no compacted layer is slower in practice.
* :func:`interleaved_times` and :func:`clearly_faster` are how every timed choice is made: the
  candidates are timed in interleaved rounds (a burst of load hits all of them), and an alternative
  replaces the default (the unpruned layer, contiguous memory) only when the median over rounds of
  its paired time ratio is below ``1 - margin`` and its upper quartile below 1.

The timing primitives live in ``basisprune.timers`` and the fold rule in
``basisprune.fold_rule``; this module re-exports their public names, so ``bp.bench.*`` is the one
place to import them from. Every function returns plain dicts / lists of dicts
(``pandas.DataFrame(records)`` works).
Timings depend on the machine, its load and the thread count; none of them is asserted in tests.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .fold_rule import LatencyFoldRule, latency_fold_rule, layer_input_shapes
from .timers import (LayerTimer, benchmark_timer, check_batch_sizes, check_shape, clearly_faster, cpu_model,
                     device_name, eval_mode, interleaved_times, model_device, num_threads, quantile, timed_on,
                     timed_runs, timing_record)

__all__ = [
    "LatencyFoldRule",
    "MODES",
    "benchmark_timer",
    "check_batch_sizes",
    "check_shape",
    "cpu_model",
    "clearly_faster",
    "eval_mode",
    "export_onnx",
    "interleaved_times",
    "latency",
    "latency_fold_rule",
    "layer_input_shapes",
    "model_device",
    "num_threads",
    "onnxruntime_timer",
    "quantile",
    "timed_on",
    "timing_record",
]

MODES = ("eager", "compile", "cudagraph")
"""How :func:`latency` runs the model: eagerly, through ``torch.compile``, or replayed as a CUDA graph."""


def onnxruntime_timer(threads: int | None = None, min_run_time: float = 0.02, min_runs: int = 5) -> LayerTimer:
    """A :data:`LayerTimer` timing a module in ONNX Runtime (``CPUExecutionProvider``): the module
    is exported once (TorchScript exporter, dynamic batch; the session is kept while the module
    lives), then ``session.run`` is called until ``min_run_time`` seconds and ``min_runs`` calls
    have passed; returns the median seconds per call. For choices made for ONNX Runtime."""
    import weakref

    import onnxruntime as ort

    sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def session(module: nn.Module, x: torch.Tensor):
        if module not in sessions:
            with tempfile.TemporaryDirectory(prefix="basisprune-timer-") as tmp:
                path = Path(tmp) / "m.onnx"
                dev = model_device(module)
                if dev is not None and dev.type != "cpu":
                    raise ValueError(f"onnxruntime_timer times CPU modules; this one is on {dev}")
                export_onnx(module, tuple(x.shape[1:]), path, exporter="legacy")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = int(threads or torch.get_num_threads())
                opts.inter_op_num_threads, opts.log_severity_level = 1, 3
                sessions[module] = ort.InferenceSession(path.read_bytes(), sess_options=opts,
                                                        providers=["CPUExecutionProvider"])
        return sessions[module]

    def timer(module: nn.Module, x: torch.Tensor) -> float:
        sess = session(module, x)
        feed = {sess.get_inputs()[0].name: x.detach().cpu().contiguous().numpy()}
        sess.run(None, feed)  # warm-up
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_run_time:
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        return float(statistics.median(times))

    return timer


# ------------------------------------------------------------------------------------ latency
def latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 8, 64),
    threads: int | None = None,
    min_run_time: float = 0.5,
    device: str | torch.device = "cpu",
    *,
    min_runs: int = 5,
    warmup: int = 3,
    label: str | None = None,
    seed: int = 0,
    mode: str = "eager",
) -> list[dict[str, Any]]:
    """Forward-pass latency of ``model`` at each batch size (eval mode, ``torch.inference_mode``).

    Uses ``torch.utils.benchmark.Timer`` in blocks, as ``blocked_autorange`` does: each *run* is one
    ``Timer.timeit(number_per_run)`` block of forward passes (sized to take about
    ``min_run_time / 10``) and reports their mean time; runs are repeated until ``min_run_time``
    has passed and there are at least ``min_runs``; the statistics are over runs.

    Args:
        model: any module taking one tensor; put in eval mode for the timing, its modes are restored.
            It is moved to ``device`` for the timing and moved back afterwards.
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 224, 224)``.
        batch_sizes: batch sizes to time.
        threads: torch intra-op threads for the timing (default: the current
            ``torch.get_num_threads()``); restored afterwards.
        min_run_time: seconds spent measuring per batch size (at least).
        min_runs: runs per batch size (at least), so that quartiles are meaningful.
        device: ``"cpu"`` or a CUDA device (the timer synchronises CUDA).
        warmup: untimed forward passes per batch size before measuring.
        label: copied into every record as ``model`` (handy for concatenating tables).
        seed: seed of the random input batch.
        mode: ``"eager"``; ``"compile"``: ``torch.compile(model, dynamic=False)``, compiled for
            each batch size by its first call (timed as ``setup_s``, not in the latency); or
            ``"cudagraph"`` (CUDA only): the forward pass captured once per batch size in a CUDA
            graph (``torch.cuda.CUDAGraph``) on a static input and replayed.

    Returns:
        One dict per batch size: ``batch_size``, ``median_ms``, ``p25_ms``, ``p75_ms``, ``iqr_ms``,
        ``mean_ms``, ``min_ms`` (per batch), ``runs``, ``number_per_run``,
        ``median_ms_per_image``, ``throughput_ips`` (images/s at the median), ``threads``,
        ``device``, ``device_name``, ``backend`` (``"torch"``), ``mode``, ``setup_s`` (compile or
        capture seconds; 0 in eager mode) and ``model`` (the label).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    shape = check_shape(input_shape)
    sizes = check_batch_sizes(batch_sizes)
    dev = torch.device(device)
    if mode == "cudagraph" and dev.type != "cuda":
        raise ValueError(f"mode='cudagraph' needs a CUDA device, got device={str(device)!r}")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    home = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    out = []
    model.to(dev)
    # CUDA graph capture is documented under no_grad; inference tensors are not needed there
    grad_off = torch.no_grad() if mode == "cudagraph" else torch.inference_mode()
    try:
        with eval_mode(model), num_threads(threads) as n_threads, grad_off:
            compiled = torch.compile(model, dynamic=False) if mode == "compile" else model
            for b in sizes:
                x = torch.randn((b, *shape), generator=gen).to(dev)
                t0 = time.perf_counter()
                fn = _cuda_graph(model, x) if mode == "cudagraph" else compiled
                fn(x)  # compiles (compile mode) before the clock for the latency starts
                _sync(dev)
                setup = time.perf_counter() - t0 if mode != "eager" else 0.0
                for _ in range(max(0, warmup)):
                    fn(x)
                times, number = timed_runs({"model": fn, "x": x}, n_threads, min_run_time, min_runs)
                out.append(timing_record(
                    times, b, number_per_run=number, threads=n_threads,
                    device=str(dev), device_name=device_name(dev), backend="torch", mode=mode,
                    setup_s=setup, model=label,
                ))
                del x, fn
    finally:
        if home is not None:
            model.to(home)
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _cuda_graph(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward pass on ``x``'s shape captured in a CUDA graph; the returned callable
    copies its argument into the static input (unless it is that input) and replays the graph."""
    static_x = x.clone()
    stream = torch.cuda.Stream(device=x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as the CUDA graphs documentation does
            model(static_x)
    torch.cuda.current_stream(x.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = model(static_x)

    def replay(inp: torch.Tensor) -> torch.Tensor:
        if inp is not x and inp is not static_x:
            static_x.copy_(inp)
        graph.replay()
        return static_y

    return replay


# ------------------------------------------------------------------------------------- ONNX
def export_onnx(
    model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, *, exporter: str = "auto",
    opset_version: int | None = None, num_outputs: int = 1,
) -> str:
    """Export ``model`` (eval mode, CPU) to ``path`` with a dynamic batch axis; returns the exporter
    that worked: ``"dynamo"`` (``torch.export``-based, needs onnxscript) or ``"legacy"``
    (TorchScript-based). ``exporter="auto"`` tries dynamo first, then legacy. A model returning a
    tuple of ``num_outputs`` tensors gets outputs ``output``, ``output1``, ... all batch-dynamic."""
    if exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    shape = check_shape(input_shape)
    x = torch.randn(2, *shape)  # batch 2: a batch of 1 would let the tracer specialise on it
    names = ["output"] + [f"output{i}" for i in range(1, num_outputs)]
    tried = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    errors = []
    with eval_mode(model):
        for kind in tried:
            try:
                with _warnings_silenced(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                    if kind == "dynamo":
                        torch.onnx.export(
                            model, (x,), str(path), input_names=["input"], output_names=names,
                            dynamo=True, external_data=False, opset_version=opset_version,
                            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
                        )
                    else:
                        torch.onnx.export(
                            model, (x,), str(path), input_names=["input"], output_names=names,
                            dynamo=False, opset_version=opset_version or 17,
                            dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
                        )
                return kind
            except Exception as e:  # noqa: BLE001 - fall back to the other exporter
                errors.append(f"{kind}: {type(e).__name__}: {str(e)[:500]}")
    raise RuntimeError("ONNX export failed; " + " | ".join(errors))


@contextlib.contextmanager
def _warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ latency-aware compaction
