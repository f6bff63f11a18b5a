"""Where a run computes and how reproducibly: :func:`pick_device` resolves a device name (one line
naming what is allowed on this machine otherwise) and :func:`seed_everything` seeds every global
random generator and switches deterministic kernels on."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything"]


_DEVICE_FORMS = "'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _allowed_here() -> str:
    allowed = ["'auto'", "'cpu'"]
    if torch.cuda.is_available():
        allowed += ["'cuda'", f"'cuda:0'..'cuda:{torch.cuda.device_count() - 1}'"]
    if _mps_available():
        allowed.append("'mps'")
    return ", ".join(allowed)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name; ``"auto"`` picks CUDA, then MPS, then CPU.

    Accepts ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"`` (case-insensitive) or a
    :class:`torch.device`. Asking for a device that is not available, or an unknown name, raises
    :class:`ValueError` saying what is allowed on this machine.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    elif isinstance(device, str):
        spec = device.strip().lower()
    else:
        raise TypeError(f"device must be a str or torch.device, not {type(device).__name__}")

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("mps", "mps:0"):
        if not _mps_available():
            raise ValueError(f"device {device!r}: no MPS device is available; allowed here: {_allowed_here()}")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if spec != "cuda" and not index_text.isdigit():
            raise ValueError(f"unknown device {device!r}; expected {_DEVICE_FORMS}")
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: no CUDA device is available (torch.cuda.is_available() is False); "
                f"allowed here: {_allowed_here()}"
            )
        if index_text:
            index = int(index_text)
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s); "
                    f"allowed here: {_allowed_here()}"
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    raise ValueError(f"unknown device {device!r}; expected {_DEVICE_FORMS}")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global RNGs.

    With ``deterministic=True`` also calls ``torch.use_deterministic_algorithms(True,
    warn_only=True)``, sets cuDNN to deterministic/non-benchmark mode and, if unset, sets
    ``CUBLAS_WORKSPACE_CONFIG`` (needed by deterministic cuBLAS; effective only before CUDA is
    initialised). ``deterministic=False`` switches those back off.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
