"""Checkpoints and random streams of a resumable run.

:func:`save_checkpoint` writes a dict of state atomically and :func:`load_checkpoint` reads it back
(a corrupt file is a :class:`CheckpointError` that names it). A run that saves :func:`stream_state`
with its model and optimizer, and puts it back with :func:`restore_streams`, draws the same batches
and random numbers when resumed as an uninterrupted run (on CPU; on GPU up to the determinism of the
kernels); this needs loaders whose randomness comes from torch's global RNG or their ``generator``
and either ``num_workers=0`` or non-persistent workers. :mod:`basisprune.repro.experiments`
resumes so.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BasisPruneError
from ..io import atomic_write

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "restore_streams",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "stream_state",
]


class CheckpointError(BasisPruneError, RuntimeError):
    """A checkpoint is corrupt, unreadable, or does not belong to the run resuming from it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"checkpoint {self.path} {reason}. Delete it (or pass another checkpoint path) "
            "to start from scratch."
        )


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Save ``state`` with :func:`torch.save`, atomically (temporary file + :func:`os.replace`).

    Keep values to tensors, containers and Python scalars/strings so that :func:`load_checkpoint`
    can read them with ``weights_only=True``. Parent directories are created. Returns the path.
    """
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(
    path: str | os.PathLike, *, map_location: Any = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (onto the CPU by default).

    Raises :class:`FileNotFoundError` if there is none and :class:`CheckpointError` (naming the
    file and saying to delete it) if it cannot be read or does not hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # corrupt, truncated, or holds objects weights_only refuses
        raise CheckpointError(path, f"is corrupt or unreadable ({_load_error_reason(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a dict of state")
    return state


def _load_error_reason(exc: Exception) -> str:
    """A one-line reason from a torch.load failure (its weights-only errors are paragraphs long)."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
        text = "weights-only unpickler: " + " ".join(detail.split())
    else:
        text = (text.splitlines() or [""])[0].split(". ", 1)[0]
    return f"{type(exc).__name__}: {text[:300]}"


def loader_generators(loaders: Mapping[str, Any]) -> dict[str, torch.Generator]:
    """The torch generators that drive each loader's shuffling (deduplicated), by attribute path."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    for name, loader in loaders.items():
        for attr in ("generator", "sampler.generator", "batch_sampler.sampler.generator"):
            obj: Any = loader
            for part in attr.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, torch.Generator) and id(obj) not in seen:
                seen.add(id(obj))
                found[f"{name}.{attr}"] = obj
    return found


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def rng_state(device: torch.device) -> dict[str, Any]:
    """The Python, numpy and torch (and the device's) global random states, as saved in checkpoints."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_rng_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def stream_state(loaders: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Every random stream a training run draws from: ``{"rng": rng_state(device), "generators":
    {path: state}}`` (the loaders' shuffling generators). Saved with a run's model and optimizer, it
    makes a resumed run draw the same batches and the same random numbers as an uninterrupted one."""
    return {"rng": rng_state(device), "generators": {n: g.get_state() for n, g in loader_generators(loaders).items()}}


def restore_streams(state: Mapping[str, Any], loaders: Mapping[str, Any], device: torch.device) -> None:
    """Put back what :func:`stream_state` returned (the same loaders, or loaders built alike)."""
    for name, g in loader_generators(loaders).items():
        g.set_state(state["generators"][name])
    set_rng_state(state["rng"], device)
