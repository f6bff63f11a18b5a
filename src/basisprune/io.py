"""Atomic file writing, for the library's own files (:func:`basisprune.save_model`,
:func:`basisprune.export`) and the harness's results (temporaries are ``.NAME.XXXXXXXX.tmp``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def _new_file_mode(path: Path) -> int:
    """Permission bits for the destination: keep an existing file's, else 0o666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file that then replaces ``path``.

    The temporary file lives in the destination directory (so :func:`os.replace` is atomic), is
    flushed and fsynced before the rename, and is removed if anything fails, in which case the
    previous content of ``path`` (if any) is left intact. Parent directories are created.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (best effort; not possible on every platform).
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path
