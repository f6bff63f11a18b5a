"""The run plan: which experiment runs each chapter of the book makes for a profile.

One table, :data:`CHAPTERS`, says per chapter which experiments it runs and over which seeds; the
notebooks loop over :func:`chapter_runs` (chapters 3 and 4 through
:func:`basisprune.repro.report.run_pruning`), and the book builder computes :func:`book_runs`, the
same runs as chains, before the notebooks that read them. A chapter's loop and the builder's
prefetch therefore cannot disagree (``tests/test_plan.py`` checks that the notebooks loop over it).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import profiles

__all__ = ["CHAPTERS", "Chapter", "Run", "book_runs", "chapter_of", "chapter_runs", "selection", "table_seeds"]

#: A run of :func:`basisprune.repro.experiments.run`: (profile, experiment, dataset, seed).
Run = tuple[str, str, str, int]


@dataclass(frozen=True)
class Chapter:
    """The experiments a chapter runs, per data set and seed, and over which seeds: ``"all"`` the
    selection's (:func:`selection`), ``"table"`` the main table's per data set (:func:`table_seeds`),
    ``"first"`` the first data set and seed only."""

    experiments: tuple[str, ...]
    seeds: str = "all"


#: Per chapter (the notebook's number), the runs it makes with :func:`basisprune.repro.experiments.run`.
CHAPTERS: dict[str, Chapter] = {
    "02": Chapter(("transfer",)),
    "03": Chapter(("channel_pruning",)),
    "04": Chapter(("basis_pruning",)),
    "05": Chapter(("channel_pruning", "basis_pruning", "double_pruning"), "table"),
    "07": Chapter(("basis_pruning", "double_pruning"), "first"),
    "09": Chapter(("double_pruning",), "table"),  # the CPU tier: chapter 5's runs, read back
}


def selection(profile: str, *, datasets=None, seeds=None, dataset=None, seed=None) -> tuple[list[str], list[int]]:
    """Datasets and seeds a notebook loops over: one ``dataset`` / ``seed`` if given, else the
    ``datasets`` / ``seeds`` lists if given, else the profile's."""

    p = profiles.get(profile)
    ds = [dataset] if dataset is not None else list(datasets or p["datasets"])
    ss = [int(seed)] if seed is not None else [int(s) for s in (seeds or p["seeds"])]
    return ds, ss


def table_seeds(profile: str, *, datasets=None, seeds=None, dataset=None, seed=None) -> dict[str, list[int]]:
    """Seeds per data set for the main table (notebook 05): one ``seed`` or the ``seeds`` list if
    given, else the profile's ``table_seeds`` for that data set, else the profile's ``seeds``."""

    p = profiles.get(profile)
    ds, default = selection(profile, datasets=datasets, seeds=seeds, dataset=dataset, seed=seed)
    if seed is not None or seeds:
        return {d: list(default) for d in ds}
    per = p.get("table_seeds") or {}
    return {d: [int(s) for s in per.get(d, default)] for d in ds}


def chapter_of(experiment: str) -> str:
    """The chapter whose only experiment is ``experiment`` (chapters 2-4)."""
    found = [ch for ch, c in CHAPTERS.items() if c.experiments == (experiment,)]
    if not found:
        raise KeyError(f"no chapter of the run plan runs {experiment!r} alone; chapters: {', '.join(CHAPTERS)}")
    return found[0]


def chapter_runs(chapter: str, profile: str, *, datasets=None, seeds=None, dataset=None,
                 seed=None) -> list[tuple[str, str, int]]:
    """``(experiment, dataset, seed)`` of every run of ``chapter``, in the order its notebook makes
    them, for the notebook's parameters (``None``: the profile's)."""
    if chapter not in CHAPTERS:
        raise KeyError(f"chapter {chapter!r} makes no runs of the plan; chapters: {', '.join(CHAPTERS)}")
    c = CHAPTERS[chapter]
    sel = {"datasets": datasets, "seeds": seeds, "dataset": dataset, "seed": seed}
    if c.seeds == "table":
        per = table_seeds(profile, **sel)
    else:
        ds, ss = selection(profile, **sel)
        per = {ds[0]: ss[:1]} if c.seeds == "first" else {d: ss for d in ds}
    return [(e, d, s) for d, ss in per.items() for s in ss for e in c.experiments]


def _pai_transfer_runs(profile: str) -> list[Run]:
    """Chapter 6's transfer comparison: the basis/double runs whose sizes set its targets."""
    t = profiles.section(profile, "pai").get("transfer", {})
    if not t.get("run"):
        return []
    ep = t.get("experiments_profile") or profile
    d = t.get("dataset") or profiles.get(ep)["datasets"][0]
    return [(ep, target, d, int(s)) for s in t.get("seeds", []) for target in t.get("targets", ())]


def book_runs(profile: str) -> list[tuple[Run, ...]]:
    """The runs of every chapter of :data:`CHAPTERS` (with the profile's own settings) and chapter
    6's transfer targets, each once, as chains.

    A chain is computed in one process, in order: double pruning follows the channel pruning run
    whose stage it reuses. The book builder computes these chains side by side before the
    notebooks that read them (which then load their checkpoints).
    """
    runs: list[Run] = []
    for chapter in CHAPTERS:
        runs += [(profile, e, d, s) for e, d, s in chapter_runs(chapter, profile)]
    runs += _pai_transfer_runs(profile)
    runs = list(dict.fromkeys(runs))
    chains: list[tuple[Run, ...]] = []
    for prof, e, d, s in runs:
        if e == "channel_pruning" and (prof, "double_pruning", d, s) in runs:
            continue  # computed as the first stage of the double pruning chain
        chains.append(((prof, "channel_pruning", d, s), (prof, e, d, s)) if e == "double_pruning" else ((prof, e, d, s),))
    return chains
