"""The checkpoint directory of a run: where it lives, what it belongs to, who may write in it.

* :func:`default_workdir`: ``runs/<digest>``, the digest of :func:`fingerprint` (the run's parameters
  and a hash of the package's code), so that runs with the same parameters share their checkpoints.
* :data:`FINGERPRINT_FILE`: written in the workdir; a later run with other parameters or code is
  refused before it loads a checkpoint (``_check_workdir``).
* :data:`STAGE_CHECKPOINTS`: the checkpoint files of the pruning experiments' stages.
* :func:`stage_lock`: one process at a time computes a stage; the others resume from its checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import WorkdirMismatchError
from .results import clean_stale_temporaries, read_results, to_jsonable, write_json

__all__ = ["FINGERPRINT_FILE", "STAGE_CHECKPOINTS", "default_workdir", "fingerprint", "stage_lock"]


#: The checkpoint files of each pruning experiment's stages in its workdir, in the order they are
#: written (double pruning shares its channel stage with channel pruning).
STAGE_CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "channel_pruning": ("channel.pt",),
    "basis_pruning": ("basis.pt",),
    "double_pruning": ("channel.pt", "double-basis.pt"),
}


#: The file in a checkpoint directory naming the parameters and code its checkpoints belong to.
FINGERPRINT_FILE = "fingerprint.json"


def _code_hash() -> str:
    """Hash of every Python file of the ``basisprune`` package, the library and this harness (names and
    contents, in path order): any code change, a renamed or new module included, gives a new cache
    key; no list of names to keep up to date."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]  # src/basisprune, not only src/basisprune/repro
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def fingerprint(p: dict[str, Any]) -> dict[str, Any]:
    """What a run's numbers depend on: its parameters, a hash of the library code, and a digest
    of both (``runs/<digest[:16]>`` is :func:`default_workdir`)."""
    code = _code_hash()
    digest = hashlib.sha256(json.dumps({"p": p, "code": code}, sort_keys=True, default=str).encode()).hexdigest()
    return {"params": to_jsonable(p), "code": code, "digest": digest}


def default_workdir(p: dict[str, Any]) -> Path:
    """``runs/<hash of parameters and library code>`` under $BASISPRUNE_RUNS or ./runs.

    Experiments with the same parameters share the directory, so double pruning reuses the channel
    stage that channel pruning checkpointed (the stages are identical), and a rerun resumes.
    """
    return Path(os.environ.get("BASISPRUNE_RUNS", "runs")) / fingerprint(p)["digest"][:16]


def _ck(workdir: Path | None, name: str) -> Path | None:
    return None if workdir is None else workdir / name


def _check_workdir(wd: Path, fp: dict[str, Any]) -> None:
    """Refuse to resume from checkpoints that another run (other parameters or code) wrote."""
    if not wd.is_dir():
        return
    path = wd / FINGERPRINT_FILE
    if not path.exists():
        stale = sorted(f.name for f in wd.glob("*.pt"))
        if stale:
            raise WorkdirMismatchError(
                f"workdir {str(wd)!r} holds checkpoints ({', '.join(stale)}) but no {FINGERPRINT_FILE}, so "
                "nothing says which run made them; use another workdir or delete it"
            )
        return
    try:
        saved = read_results(path)
        old, code = dict(saved["params"]), saved["code"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirMismatchError(
            f"workdir {str(wd)!r}: its {FINGERPRINT_FILE} is unreadable ({type(e).__name__}: {e}), so nothing says "
            "which run made its checkpoints; use another workdir or delete it"
        ) from e
    new = fp["params"]
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]
    if differ:
        was = ", ".join(f"{k}={old.get(k, '<absent>')!r}" for k in differ)
        now = ", ".join(f"{k}={new.get(k, '<absent>')!r}" for k in differ)
        raise WorkdirMismatchError(
            f"workdir {str(wd)!r} was made with {was}, this run has {now}; use another workdir or delete it"
        )
    if code != fp["code"]:
        raise WorkdirMismatchError(
            f"workdir {str(wd)!r} was made by other library code (code hash {code}, this run {fp['code']}); "
            "its checkpoints may not match: use another workdir or delete it"
        )


def _open_workdir(wd: Path, fp: dict[str, Any]) -> None:
    """Create the checkpoint directory, clear its stale temporaries, record the fingerprint."""
    wd.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(wd)
    if not (wd / FINGERPRINT_FILE).exists():
        write_json(wd / FINGERPRINT_FILE, fp)


@contextlib.contextmanager
def stage_lock(checkpoint: Path | None):
    """Hold ``<checkpoint>.lock`` while a stage runs: a second process that needs the same stage (two
    notebooks executed side by side, two sweep cells) waits, then resumes from the finished
    checkpoint instead of computing the stage again. No checkpoint, no lock; where ``fcntl`` is
    missing (Windows) no lock either, and the two compute the same numbers."""
    if checkpoint is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with open(checkpoint.with_suffix(".lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process computing {checkpoint.name} in {checkpoint.parent}", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
