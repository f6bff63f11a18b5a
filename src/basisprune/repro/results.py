"""Results files with provenance: atomic JSON writing, run metadata and timers.

A results file is one JSON object: the experiment's own record (metrics, histories, ...) plus
``"provenance"`` (code version, parameters, package versions, hardware, seed, timestamp) and
``"timings"`` (wall seconds). :func:`strip_volatile` removes what legitimately differs between two
identical runs (timestamps, wall times, hostname, working-tree dirtiness) so that determinism can be
checked with a plain ``==``.

Every file the project writes goes through :func:`atomic_write`: the content is written to a
temporary file ``.NAME.XXXXXXXX.tmp`` in the destination directory, flushed and fsynced, then moved
over the destination with :func:`os.replace`. A failure at any point leaves the previous file
untouched and no temporary file behind; a process killed while writing leaves only its temporary
file, which :func:`clean_stale_temporaries` removes on the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import json
import os
import platform
import re
import time
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from ..io import atomic_write
from .provenance import git_info, hardware, package_version

__all__ = [
    "VOLATILE_KEYS",
    "Timer",
    "atomic_write",
    "check_writable",
    "clean_stale_temporaries",
    "provenance",
    "read_results",
    "strip_volatile",
    "to_jsonable",
    "write_json",
    "write_results",
    "write_text",
]

#: Keys removed at any depth by :func:`strip_volatile`: wall times, timestamps, host names and the
#: paths of files a run wrote (``compact_model``: two identical runs may write to two places).
VOLATILE_KEYS = frozenset({"timings", "seconds", "wall_seconds", "timestamp_utc", "hostname", "compact_model"})

#: When this process started writing (module import): temporaries older than this are not its own.
PROCESS_START = time.time()

# The names tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") gives: 8 random characters.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

#: Distributions whose versions :func:`provenance` records (``None`` when not installed).
_PACKAGES = ("torch", "torchvision", "numpy", "torch-pruning", "basisprune")


# --------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------
def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically with :func:`atomic_write`; returns the path."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def clean_stale_temporaries(directory: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` left in ``directory`` when it was killed.

    Only regular files named like this writer's temporaries (``.NAME.XXXXXXXX.tmp``) and last
    modified before ``before`` (default :data:`PROCESS_START`: no write of this process, and no
    write still going on in another process that started earlier and keeps writing) are removed.
    Returns the removed paths; a missing directory is not an error.
    """
    cutoff = PROCESS_START if before is None else before
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not _TEMP_NAME.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def check_writable(path: str | os.PathLike, param: str, *, directory: bool = False) -> Path:
    """Refuse, before any work, an output ``path`` that could not be written; creates nothing.

    ``directory``: ``path`` is a folder to create or reuse (else a file to create or replace).
    Refused: a file where a folder is wanted and vice versa, a path under a file, and a path whose
    nearest existing folder this process may not write. Raises
    :class:`~basisprune.errors.ParameterError` naming ``param``; returns ``path`` as a Path.
    """
    from ..errors import ParameterError

    if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)).strip():
        raise ParameterError(param, f"{param} must be a path, got {path!r}", path)
    path = Path(path).expanduser()
    if path.exists():
        if directory and not path.is_dir():
            raise ParameterError(param, f"{param} {str(path)!r} is a file, not a folder", path)
        if not directory and path.is_dir():
            raise ParameterError(param, f"{param} {str(path)!r} is a folder; give a file name", path)
    folder = path if directory else path.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        raise ParameterError(param, f"{param} {str(path)!r} cannot be created: {str(folder)!r} is a file", path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ParameterError(param, f"{param} {str(path)!r} cannot be written: folder {str(folder)!r} is not writable", path)
    return path


# --------------------------------------------------------------------------------------------
# JSON conversion
# --------------------------------------------------------------------------------------------
def _json_key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, (np.generic, torch.Tensor)):
        key = key.item()
    if key is None or isinstance(key, (bool, int, float, PurePath)):
        return str(key)
    raise TypeError(f"cannot use a key of type {type(key).__name__} at {where} as a JSON key")


def to_jsonable(obj: Any, _where: str = "$") -> Any:
    """Convert ``obj`` to plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Tensors and numpy arrays become (nested) lists, 0-d tensors and numpy scalars become Python
    scalars, paths/devices/dtypes become strings, tuples and sets become lists (sets sorted, so the
    output does not depend on hash randomisation), dataclasses become dicts, enums their value and
    dates their ISO string. Anything else raises :class:`TypeError` naming where it was found.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            skey = _json_key(key, _where)
            if skey in out:
                raise ValueError(f"two keys at {_where} both become the JSON key {skey!r}")
            out[skey] = to_jsonable(value, f"{_where}.{skey}")
        return out
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v, f"{_where}[]") for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (PurePath, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, _where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), _where)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    raise TypeError(f"cannot convert {type(obj).__module__}.{type(obj).__qualname__} at {_where} to JSON")


def write_json(path: str | os.PathLike, record: Any) -> Path:
    """Write ``record`` as JSON (sorted keys, indent 2) atomically; returns the path.

    Values are converted with :func:`to_jsonable` and the whole text is produced before the file
    is touched, so a value that cannot be serialised raises without creating or damaging anything.
    """
    return write_text(path, json.dumps(to_jsonable(record), sort_keys=True, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------
def provenance(params: Mapping[str, Any], seed: int | None) -> dict[str, Any]:
    """Everything needed to say where a result came from.

    Keys: ``git`` (``commit``, ``dirty``; both ``None`` outside a git checkout), ``params`` (every
    parameter, JSON-converted), ``versions`` (python, torch, torchvision, numpy, torch-pruning,
    basisprune; ``None`` when not installed), ``hardware`` (platform, machine, processor, CPU count
    and affinity, torch threads, CUDA device name/count/versions, hostname), ``seed`` and
    ``timestamp_utc`` (ISO 8601).
    """
    versions: dict[str, Any] = {"python": platform.python_version()}
    versions.update({name: package_version(name) for name in _PACKAGES})
    return {
        "git": git_info(),
        "params": to_jsonable(dict(params)),
        "versions": versions,
        "hardware": hardware(),
        "seed": None if seed is None else int(seed),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }


# --------------------------------------------------------------------------------------------
# Results files
# --------------------------------------------------------------------------------------------
def write_results(
    path: str | os.PathLike,
    record: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int | None,
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """Write ``record`` plus ``"provenance"`` and ``"timings"`` atomically; returns what was written.

    ``params`` should hold the experiment's parameters, not output locations: a path that differs
    between two otherwise identical runs makes their results differ after :func:`strip_volatile`.
    """
    clash = {"provenance", "timings"} & set(record)
    if clash:
        raise ValueError(f"record already has reserved key(s) {sorted(clash)}; remove them first")
    full = to_jsonable({**record, "provenance": provenance(params, seed), "timings": dict(timings)})
    write_json(path, full)
    return full


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results (or any JSON) file written by :func:`write_results` / :func:`write_json`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def strip_volatile(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` without what differs between two identical runs.

    Removes, at any depth, the keys in :data:`VOLATILE_KEYS` (``timings``, ``seconds``,
    ``wall_seconds``, ``timestamp_utc``, ``hostname``, ``compact_model``) and ``provenance.git.dirty`` (the working
    tree may be edited while a run is going on). The input is not modified.
    """

    def strip(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    out = strip(to_jsonable(record))
    git = out.get("provenance", {}).get("git") if isinstance(out.get("provenance"), dict) else None
    if isinstance(git, dict):
        git.pop("dirty", None)
    return out


class Timer:
    """Context manager measuring wall seconds with :func:`time.perf_counter`.

    ``with Timer(timings, "train"): ...`` stores the elapsed seconds in ``timings["train"]`` (added
    to an existing value when ``accumulate=True``); the value is also on ``.seconds``. The time is
    recorded even when the block raises.
    """

    def __init__(self, store: dict[str, float] | None = None, key: str | None = None, *, accumulate: bool = False):
        if (store is None) != (key is None):
            raise ValueError("give both store and key, or neither")
        self.store = store
        self.key = key
        self.accumulate = accumulate
        self.seconds: float | None = None
        self._start: float | None = None

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.seconds = time.perf_counter() - self._start
        if self.store is not None:
            previous = self.store.get(self.key, 0.0) if self.accumulate else 0.0
            self.store[self.key] = previous + self.seconds
