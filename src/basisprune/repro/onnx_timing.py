"""ONNX Runtime latency of a model, checked against torch: the ONNX column of chapter 7's speed table.

:func:`onnx_latency` exports the model with :func:`basisprune.bench.export_onnx` (dynamic batch
axis), checks that ONNX Runtime reproduces torch's outputs and times ``InferenceSession.run``; its
records have the fields of :func:`basisprune.bench.latency`'s. Timings depend on the machine, its
load and the thread count: nothing asserts on them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .. import bench

__all__ = ["onnx_latency"]


def onnx_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 8, 64),
    path: str | os.PathLike | None = None,
    repeats: int = 20,
    *,
    warmup: int = 3,
    threads: int | None = None,
    exporter: str = "auto",
    atol: float = 1e-4,
    rtol: float = 1e-4,
    label: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Export ``model`` to ONNX and time it with ONNX Runtime's ``CPUExecutionProvider``.

    Before timing each batch size, ONNX Runtime's output is compared with torch's on the same batch
    (``allclose(atol, rtol)``); a mismatch raises ``AssertionError``.

    Args:
        model: a module taking one tensor (exported in eval mode on the CPU; modes restored).
        input_shape: one sample's shape without the batch dimension.
        batch_sizes: batch sizes to time (one exported model with a dynamic batch axis).
        path: where to write the ``.onnx`` file; default a temporary file, deleted afterwards.
        repeats: timed ``session.run`` calls per batch size (each is one run).
        warmup: untimed calls per batch size.
        threads: ONNX Runtime intra-op threads (default ``torch.get_num_threads()``).
        exporter: ``"auto"`` (dynamo, then legacy), ``"dynamo"`` or ``"legacy"``.

    Returns:
        One dict per batch size with :func:`basisprune.bench.latency`'s fields (``number_per_run`` = 1,
        ``backend`` = ``"onnxruntime"``) plus ``exporter`` and ``max_abs_diff`` (vs torch).
    """
    import onnxruntime as ort

    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    shape = bench.check_shape(input_shape)
    sizes = bench.check_batch_sizes(batch_sizes)
    n_threads = int(threads or torch.get_num_threads())
    home = bench.model_device(model)
    model.to("cpu")
    tmp = None
    try:
        if path is None:
            tmp = tempfile.TemporaryDirectory(prefix="basisprune-onnx-")
            path = Path(tmp.name) / "model.onnx"
        kind = bench.export_onnx(model, shape, path, exporter=exporter)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        gen = torch.Generator().manual_seed(seed)
        out = []
        for b in sizes:
            x = torch.randn((b, *shape), generator=gen)
            feed = {in_name: x.numpy()}
            got = torch.from_numpy(sess.run(None, feed)[0])
            with bench.eval_mode(model), torch.inference_mode():
                want = model(x)
            diff = float((got - want).abs().max()) if got.numel() else 0.0
            if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=rtol):
                raise AssertionError(
                    f"ONNX Runtime output differs from torch at batch {b}: shapes {tuple(got.shape)} vs "
                    f"{tuple(want.shape)}, max |diff| = {diff:.3g} (atol={atol}, rtol={rtol})"
                )
            for _ in range(max(0, warmup)):
                sess.run(None, feed)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            out.append(bench.timing_record(
                times, b, number_per_run=1, threads=n_threads, device="cpu", device_name=bench.cpu_model(),
                backend="onnxruntime", model=label, exporter=kind, max_abs_diff=diff,
            ))
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()
        if home is not None:
            model.to(home)
