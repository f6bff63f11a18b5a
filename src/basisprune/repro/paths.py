"""Where the project and its results are: the repository root, the executed notebooks of a profile
and the folder a notebook writes its results to.

The book builder (:mod:`basisprune_book`) finds the project with :func:`repo_root` and tells the
kernels where to write results through ``$BASISPRUNE_RESULTS`` (:func:`results_dir`). Nothing here
imports pandas or matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BasisPruneError
from . import profiles

__all__ = ["RESULTS_ENV", "ROOT_ENV", "ProjectNotFoundError", "executed_dir", "repo_root", "results_dir"]


RESULTS_ENV = "BASISPRUNE_RESULTS"  # the book builder sets it to <out>/results for the kernels
ROOT_ENV = "BASISPRUNE_ROOT"


class ProjectNotFoundError(BasisPruneError, FileNotFoundError):
    """No project directory (with ``_toc.yml`` and ``notebooks/``) was found."""


def _is_root(path: Path) -> bool:
    return (path / "_toc.yml").is_file() and (path / "notebooks").is_dir()


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The project directory (holding ``_toc.yml`` and ``notebooks/``).

    ``$BASISPRUNE_ROOT`` if set; else the first parent of ``start`` (default: the working
    directory) that holds both; else the checkout this module was imported from (src layout).
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if _is_root(p):
            return p
    src = Path(__file__).resolve().parents[3]  # src/basisprune/repro/paths.py
    if _is_root(src):
        return src
    raise ProjectNotFoundError(
        f"cannot find the project directory (with _toc.yml and notebooks/) from {here}; "
        f"run from the checkout or set ${ROOT_ENV}"
    )


def executed_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """Where ``execute`` puts a profile's executed notebooks by default."""
    return Path(root or repo_root()) / "notebooks" / "_executed" / profiles.check_profile(profile)


def results_dir(profile: str, override: str | os.PathLike | None = None) -> Path:
    """Where a notebook writes its results JSON (created).

    ``override`` if given; else ``$BASISPRUNE_RESULTS`` (``execute`` sets it to
    ``<out>/results``); else ``notebooks/_executed/<profile>/results`` of the project; outside a
    checkout, ``./results/<profile>``.
    """
    if override is not None:
        path = Path(override)
    elif os.environ.get(RESULTS_ENV):
        path = Path(os.environ[RESULTS_ENV])
    else:
        try:
            path = executed_dir(profile) / "results"
        except ProjectNotFoundError:
            path = Path.cwd() / "results" / profiles.check_profile(profile)
    path.mkdir(parents=True, exist_ok=True)
    return path
