"""ONNX export of a model's inference form, checked in ONNX Runtime before anything is written.

:func:`export` checks what it is given before any work: the path (a file name in a folder that
exists or can be created, writable, not a folder itself, no file standing where a folder should be;
folders are created, but never directly in the filesystem root), the example (a batch the model
runs on) and the model (no pruning masks left: compact it or build its form first). It then builds
the inference form (:func:`basisprune.inference_form`, ``merge="flops"``, channel widths padded
to 8) unless the model is one already, exports it, runs ONNX Runtime on the example and on a batch
of another size, and writes the file only if every output matches PyTorch's. Every refusal is one
line naming what was wrong and what to do.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import bench
from .channel import channel_scales
from .decompose import basis_layers
from .inference import ExportCheckError, check_inputs, max_diff, inference_form, outputs
from .io import atomic_write

__all__ = ["check_path", "export"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    """The exception's first non-empty line, without terminal colour codes, at most 200 characters."""
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def check_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` where a file can be written, or a one-line error.

    Missing parent folders are allowed (the writer creates them) except directly in the
    filesystem root, where a typo (``/modles/m.onnx``) would otherwise create a top-level folder.

    Raises:
        ValueError: not a path, an existing folder, a file standing where a folder should be, or
            a missing folder that would be created in the filesystem root.
        PermissionError: the folder that would hold the file (or its nearest existing ancestor)
            is not writable.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a file path (str or os.PathLike), got {path!r:.80}")
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise ValueError(f"path: {p} is a folder; give a file name such as {p / 'model.onnx'}")
    parent = p.parent
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"path: {parent} is a file, so {p.parent} cannot be a folder; choose another path")
    if missing and parent == Path(parent.anchor):
        raise ValueError(f"path: the folder {missing[-1]} does not exist and export does not create folders in "
                         f"the filesystem root; create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"path: cannot write in {parent} (no permission); choose another path")
    if p.exists() and not os.access(p, os.W_OK) and not missing:
        # os.replace would succeed in a writable folder, but a read-only file says "do not overwrite"
        raise PermissionError(f"path: {p} exists and is read-only; remove it or choose another path")
    return p


def _is_form(model: nn.Module) -> bool:
    return isinstance(getattr(model, "inference_report", None), dict)


def export(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    *,
    form: bool = True,
    exporter: str = "auto",
    opset_version: int | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export the inference form of ``model`` to ONNX at ``path``, once ONNX Runtime reproduces PyTorch.

    Checked first, before any work, each failure one line: ``path`` (:func:`check_path`),
    ``example`` (a batch tensor the model runs on), the model (still-masked models are refused:
    call :func:`basisprune.compact` or :func:`basisprune.inference_form` first) and its outputs (a
    tensor or a tuple of tensors). Then, with ``form`` (default), the model's inference form is
    built (:func:`basisprune.inference_form` with ``merge="flops"``: batch norms folded, chains
    merged where that saves multiply-accumulates, channel widths padded to 8 for ONNX Runtime's
    kernels) unless ``model`` is a form already; ``form=False`` exports the model as it is. For the
    form measured fastest where it will run, build it first from the masked model and export that:
    ``bp.export(bp.inference_form(masked, x, merge="latency", runtime="onnxruntime",
    batch_sizes=(b,)), path, x)`` times every choice in ONNX Runtime at batch ``b`` and keeps the
    basis pairs only where the whole form is faster with them (its guard).

    The model is exported on the CPU in eval mode with a dynamic batch axis
    (:func:`basisprune.bench.export_onnx`; ``exporter="auto"`` tries the ``torch.export``-based
    exporter, then the TorchScript one). ONNX Runtime (``CPUExecutionProvider``) runs it on
    ``example`` and on a batch of another size; every output must match PyTorch's within
    ``atol + rtol * max |output|``. Only then is the file written, atomically, so a failed check
    leaves no file and an existing file untouched.

    Returns:
        ``path``, ``exporter`` (the one that worked), ``form`` (whether the form was built here),
        ``batch_sizes`` checked, ``outputs`` (their number), ``max_abs_diff`` (the largest over
        them) and ``bytes``.

    Raises:
        ValueError: bad arguments, a masked model, or a model whose form cannot be built.
        PermissionError: the path is not writable.
        ExportCheckError: ONNX Runtime's outputs differ from PyTorch's (nothing written).
    """
    import onnxruntime as ort

    check_inputs(model, example)
    if exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    target = check_path(path)
    if basis_layers(model) or channel_scales(model):
        raise ValueError(
            f"model: still has pruning masks ({len(basis_layers(model))} basis layers, "
            f"{len(channel_scales(model))} channel scales); export bp.inference_form(model, example) "
            "(or bp.compact(model, example)) instead"
        )
    dev = bench.model_device(model)
    m = model if dev is None or dev.type == "cpu" else copy.deepcopy(model).cpu()
    x = example.detach().cpu()
    try:
        with bench.eval_mode(m), torch.no_grad():
            y = m(x)
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the example is what is wrong
        raise ValueError(f"example: the model cannot run on a batch of shape {tuple(x.shape)} "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    n_out = len(outputs(y))
    built = False
    if form and not _is_form(m):
        try:
            m = inference_form(m, x, merge="flops")
        except ValueError as e:
            raise ValueError(f"{_first_line(e)}; pass form=False to export the model as it is") from None
        built = True
    sizes = [x.shape[0], x.shape[0] + 1]
    gen = torch.Generator().manual_seed(0)
    batches = [x, torch.randn((sizes[1], *x.shape[1:]), generator=gen, dtype=x.dtype)]
    with tempfile.TemporaryDirectory(prefix="basisprune-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        kind = bench.export_onnx(m, tuple(x.shape[1:]), onnx_path, exporter=exporter, opset_version=opset_version,
                                 num_outputs=n_out)
        data = onnx_path.read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    with bench.eval_mode(m), torch.no_grad():
        for b in batches:
            want = m(b)
            got = [torch.from_numpy(a) for a in sess.run(None, {name: b.numpy()})]
            ok, diff = max_diff(got, want, rtol, atol)
            if not ok:
                raise ExportCheckError(
                    f"ONNX Runtime's output differs from PyTorch's at batch {b.shape[0]}: max |diff| {diff:.3g}, "
                    f"shapes {[tuple(g.shape) for g in got]} vs {[tuple(w.shape) for w in outputs(want)]} "
                    f"(allowed {atol} + {rtol} * max |output|); {path} was not written"
                )
            worst = max(worst, diff)
    atomic_write(target, lambda f: f.write(data))
    return {"path": str(path), "exporter": kind, "form": built, "batch_sizes": sizes, "outputs": n_out,
            "max_abs_diff": worst, "bytes": len(data)}
