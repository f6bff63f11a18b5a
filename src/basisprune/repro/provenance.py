"""Where results and timings come from: the machine, the package versions and the code's git commit.

Provenance for the harness's results files (:func:`basisprune.repro.results.provenance`), the
benchmarks and the book; the library itself only names the device of a timing
(:func:`basisprune.bench.cpu_model`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..bench import cpu_model

__all__ = ["git_info", "hardware", "package_version"]


def _physical_cores() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    cores = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if phys is not None or core is not None:
                cores.add((phys, core))
            phys = core = None
        elif line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            core = line.split(":", 1)[1].strip()
    return len(cores) or None


def package_version(name: str) -> str | None:
    """The installed version of a distribution (``torch-pruning``) or module (``onnxruntime``), or
    ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return __import__(name.replace("-", "_")).__version__
    except Exception:  # noqa: BLE001 - optional packages
        return None


def hardware() -> dict[str, Any]:
    """Where timings and results come from: CPU model, logical/physical cores, cores this process may
    use, torch intra-op threads, platform, machine, Python / torch / onnxruntime versions, the CUDA
    device (if any) and the host name. The one hardware description of results and timings."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    cuda = torch.cuda.is_available()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": package_version("onnxruntime"),
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "hostname": platform.node() or None,
    }


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info() -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding this package (``None`` outside git)."""
    here = Path(__file__).resolve().parent
    if _git(["rev-parse", "--is-inside-work-tree"], here) != "true":
        return {"commit": None, "dirty": None}
    commit = _git(["rev-parse", "--verify", "--quiet", "HEAD"], here) or None  # None before 1st commit
    status = _git(["status", "--porcelain"], here)
    return {"commit": commit, "dirty": None if status is None else bool(status)}
