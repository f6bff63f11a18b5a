"""Where the book builder finds and puts things: the notebooks, the build tree, the HTML, the
timings file; and the error it raises. Shared by :mod:`~basisprune_book.execute` and
:mod:`~basisprune_book.build`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from basisprune.errors import BasisPruneError, ParameterError
from basisprune.repro import profiles
from basisprune.repro.paths import repo_root

__all__ = ["BookError", "NOTEBOOK_PATTERN", "PROFILES", "TIMINGS_FILE", "build_dir", "html_dir", "notebooks",
           "read_json", "utc_now"]


PROFILES = tuple(profiles.PROFILES)
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[A-Za-z0-9_\-]+\.ipynb$")
TIMINGS_FILE = "timings.json"


class BookError(BasisPruneError, RuntimeError):
    """Execution or build failed; the message says which notebook or step."""


def notebooks(root: str | os.PathLike | None = None, only: Sequence[str] | None = None) -> list[Path]:
    """The book's notebooks ``notebooks/NN_*.ipynb``, sorted; ``only`` keeps those whose stem
    equals, or starts with, one of the given names (``"04"``, ``"04_basis_pruning"``)."""
    nb_dir = Path(root or repo_root()) / "notebooks"
    found = sorted(p for p in nb_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if only:
        keys = [o.removesuffix(".ipynb") for o in only]
        picked = [p for p in found if any(p.stem == k or p.stem.startswith(k) for k in keys)]
        missing = [k for k in keys if not any(p.stem == k or p.stem.startswith(k) for p in found)]
        if missing:
            raise ParameterError(
                "only", f"only: no notebook matches {missing}; notebooks: {', '.join(p.stem for p in found)}", missing
            )
        return picked
    return found


def build_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """The build tree ``_build/src-<profile>`` (sources copied there, then built)."""
    return Path(root or repo_root()) / "_build" / f"src-{profiles.check_profile(profile)}"


def html_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """The built HTML of a profile: ``_build/src-<profile>/_build/html``."""
    return build_dir(profile, root) / "_build" / "html"


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
