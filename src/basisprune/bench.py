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

Every function returns plain dicts / lists of dicts (``pandas.DataFrame(records)`` works).
Timings depend on the machine, its load and the thread count; none of them is asserted in tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .compact import compact_basis_layer, fold_by_params, kept_indices
from .decompose import BasisLayer, basis_layers

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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
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


def _timed_runs(stmt_globals: dict[str, Any], threads: int, min_run_time: float, min_runs: int) -> tuple[list[float], int]:
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
            times, _ = _timed_runs({"model": module, "x": x}, threads or torch.get_num_threads(), min_run_time, min_runs)
        return float(statistics.median(times))

    return timer


def timed_on(threads: int | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The short hardware record a timed choice carries: device name, threads, torch version."""
    dev = torch.device(device)
    return {"device": str(dev), "device_name": _device_name(dev), "threads": int(threads or torch.get_num_threads()),
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
                times, number = _timed_runs({"model": fn, "x": x}, n_threads, min_run_time, min_runs)
                out.append(timing_record(
                    times, b, number_per_run=number, threads=n_threads,
                    device=str(dev), device_name=_device_name(dev), backend="torch", mode=mode,
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
def layer_input_shapes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """One sample's input shape (no batch dimension) of every basis layer, from forward hooks."""
    layers = basis_layers(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, layer in layers.items():
        def hook(mod, args, name=name):
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
    missing = set(layers) - set(shapes)
    if missing:
        raise ValueError(f"basis layers never called on example_input: {sorted(missing)}")
    return shapes


class LatencyFoldRule:
    """A ``fold_rule`` for :func:`basisprune.compact` that folds slow pairs (see
    :func:`latency_fold_rule`). Call it as ``rule(name, layer, kept_per_group) -> bool``.

    Attributes:
        records: one dict per timed (or skipped) layer: ``name``, ``kept_per_group``, ``bases``,
            ``input_shape``, ``pair_ms`` / ``folded_ms`` (lists, one per batch size; empty when the
            parameter rule already folds), ``fold`` and ``reason`` (``"params"``, ``"latency"``
            or ``"pair faster"``).
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        batch_sizes: list[int],
        criterion: str,
        timer: LayerTimer,
        base_rule: Callable[[str, BasisLayer, int], bool],
        device: torch.device,
        seed: int,
        rounds: int = 5,
        margin: float = 0.02,
    ):
        self.shapes = shapes
        self.batch_sizes = batch_sizes
        self.criterion = criterion
        self.timer = timer
        self.base_rule = base_rule
        self.device = device
        self.seed = seed
        self.rounds = rounds
        self.margin = margin
        self.timed_on = timed_on(None, device)
        self._cache: dict[tuple[str, int], dict[str, Any]] = {}

    @property
    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._cache.values()]

    def decide(self, name: str, layer: BasisLayer, kept_per_group: int) -> dict[str, Any]:
        """Time (once, then cached) and decide one layer; returns its record."""
        key = (name, int(kept_per_group))
        if key in self._cache:
            return self._cache[key]
        rec: dict[str, Any] = {
            "name": name, "kept_per_group": int(kept_per_group), "bases": layer.rank,
            "input_shape": list(self.shapes.get(name, ())), "batch_sizes": list(self.batch_sizes),
            "pair_ms": [], "folded_ms": [],
        }
        if self.base_rule(name, layer, kept_per_group):
            rec.update(fold=True, reason="params")
        elif name not in self.shapes:
            raise KeyError(f"no input shape recorded for basis layer {name!r}; build the rule on this model")
        else:
            pair = compact_basis_layer(layer, fold=False).to(self.device)
            single = compact_basis_layer(layer, fold=True).to(self.device)
            gen = torch.Generator().manual_seed(self.seed)
            xs = [torch.randn((b, *self.shapes[name]), generator=gen).to(self.device) for b in self.batch_sizes]
            t_pair, t_single = interleaved_times([(pair, xs), (single, xs)], self.timer, self.rounds)
            rec["pair_ms"] = [1e3 * statistics.median(r[b] for r in t_pair) for b in range(len(xs))]
            rec["folded_ms"] = [1e3 * statistics.median(r[b] for r in t_single) for b in range(len(xs))]
            verdict = clearly_faster(t_pair, t_single, margin=self.margin, each=self.criterion == "each")
            rec.update(fold=not verdict["faster"], reason="pair faster" if verdict["faster"] else "latency",
                       pair_to_folded=verdict["ratio_median"], pair_to_folded_p25=verdict["ratio_p25"],
                       pair_to_folded_p75=verdict["ratio_p75"], rounds=self.rounds)
        self._cache[key] = rec
        return rec

    def __call__(self, name: str, layer: BasisLayer, kept_per_group: int) -> bool:
        return bool(self.decide(name, layer, kept_per_group)["fold"])


def latency_fold_rule(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 8, 64),
    *,
    criterion: str = "each",
    min_run_time: float = 0.02,
    min_runs: int = 5,
    threads: int | None = None,
    timer: LayerTimer | None = None,
    base_rule: Callable[[str, BasisLayer, int], bool] = fold_by_params,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rounds: int = 5,
    margin: float = 0.02,
) -> LatencyFoldRule:
    """A fold rule that keeps a basis pair only where it is measurably faster than one conv.

    For every basis layer of ``model`` (with its current masks), the kept pair
    (basis conv + 1x1 conv, as ``basisprune.compact.compact_basis_layer`` builds it) and the
    single folded conv are timed, in eval mode, on random inputs of the layer's real input shape (captured with
    forward hooks on ``example_input``) at each batch size. The layer is folded when

    * ``base_rule`` says so (default ``basisprune.compact.fold_by_params``: the pair would
      not have fewer weights; these layers are not timed), or
    * the pair is not clearly faster (:func:`clearly_faster` over ``rounds`` interleaved rounds of
      both: median paired ratio below ``1 - margin``, upper quartile below 1): with
      ``criterion="each"`` (default) at every measured batch size; with ``criterion="sum"`` on the
      ratio averaged over batch sizes. A pair that cannot be told apart from its folded conv is
      folded: where pruning a layer does not pay, the layer stays as it was.

    So, up to timing noise, ``compact(model, fold_rule=rule)`` has no layer slower than the
    original conv at the measured batch sizes, and no layer with more weights.

    Cost: ``2 * rounds * len(batch_sizes)`` timings of about ``min_run_time`` seconds (at least
    ``min_runs`` runs of one call) per layer the parameter rule keeps, plus one warm-up pass each. The timings are done eagerly here, on the masks present now;
    a layer whose kept count differs at ``compact`` time is timed again then.

    Args:
        timer: ``timer(module, x) -> seconds`` replacing the default
            :func:`benchmark_timer` (median seconds per call over at least ``min_runs`` runs and
            ``min_run_time`` seconds), e.g. fake timings in tests.
        threads: torch threads for the default timer.
        device: where the layers are timed.
        rounds, margin: the interleaved rounds and the margin of :func:`clearly_faster`.

    Returns:
        A :class:`LatencyFoldRule`; its ``records`` list every decision with its timings (medians
        over rounds) and paired ratios, and its ``timed_on`` the hardware that made them.
    """
    if criterion not in ("each", "sum"):
        raise ValueError(f"criterion must be 'each' or 'sum', got {criterion!r}")
    sizes = check_batch_sizes(batch_sizes)
    if not basis_layers(model):
        raise ValueError("the model has no basis layers; call basisprune.decompose first")
    dev = torch.device(device)
    shapes = layer_input_shapes(model, example_input.to(model_device(model) or "cpu"))
    rule = LatencyFoldRule(shapes, sizes, criterion, timer or benchmark_timer(min_run_time, threads, min_runs),
                           base_rule, dev, seed, rounds, margin)

    with num_threads(threads):
        rule.timed_on = timed_on(threads, dev)
        for name, layer in basis_layers(model).items():
            _, k = kept_indices(layer)
            rule.decide(name, layer, k)
    return rule
