"""The run plan: which experiment runs each chapter of the book makes for a profile.

One table, :data:`CHAPTERS`, says per chapter which experiments it runs and over which seeds; the
notebooks loop over :func:`chapter_runs` (chapters 3 and 4 through
:func:`basisprune.repro.report.run_pruning`; chapter 6 over its pruning-at-initialization runs,
whose seeds are the profile's ``pai`` settings), and the book builder computes :func:`book_runs`,
the same runs as chains, before the notebooks that read them. A chapter's loop and the builder's
prefetch therefore cannot disagree (``tests/test_plan.py`` checks that the notebooks loop over it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from . import profiles
from .pai_parameters import PAI_EXPERIMENTS

__all__ = ["CHAPTERS", "Chapter", "Run", "book_runs", "chapter_of", "chapter_runs", "selection", "table_seeds"]

#: A run of :func:`basisprune.repro.experiments.run`: (profile, experiment, dataset, seed); the
#: dataset is None for a pruning-at-initialization run whose settings name none (its settings say).
Run = tuple[str, str, str | None, int]


@dataclass(frozen=True)
class Chapter:
    """The experiments a chapter runs, per data set and seed, and over which seeds: ``"all"`` the
    selection's (:func:`selection`), ``"table"`` the main table's per data set (:func:`table_seeds`),
    ``"first"`` the first data set and seed only, ``"pai"`` (pruning at initialization) for each
    experiment the seeds of its part of the profile's ``pai`` settings (seed 0 where the part has
    none, no run where its ``run`` is false) on the data set the settings name."""

    experiments: tuple[str, ...]
    seeds: str = "all"


#: Per chapter (the notebook's number), the runs it makes with :func:`basisprune.repro.experiments.run`.
CHAPTERS: dict[str, Chapter] = {
    "02": Chapter(("transfer",)),
    "03": Chapter(("channel_pruning",)),
    "04": Chapter(("basis_pruning",)),
    "05": Chapter(("channel_pruning", "basis_pruning", "double_pruning"), "table"),
    "06": Chapter(("pai_scratch", "pai_transfer", "pai_cost"), "pai"),
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


def chapter_runs(chapter: str, profile: str, *, datasets=None, seeds=None, dataset=None, seed=None,
                 settings: Mapping[str, Mapping[str, Any]] | None = None) -> list[tuple[str, str | None, int]]:
    """``(experiment, dataset, seed)`` of every run of ``chapter``, in the order its notebook makes
    them, for the notebook's parameters (``None``: the profile's). A ``"pai"`` chapter takes its
    seeds from ``settings`` instead: per experiment, its part of the ``pai`` settings as the
    notebook resolved them (:func:`basisprune.repro.profiles.pai_settings`; an experiment left out:
    the profile's)."""
    if chapter not in CHAPTERS:
        raise KeyError(f"chapter {chapter!r} makes no runs of the plan; chapters: {', '.join(CHAPTERS)}")
    c = CHAPTERS[chapter]
    sel = {"datasets": datasets, "seeds": seeds, "dataset": dataset, "seed": seed}
    if c.seeds == "pai":
        given = sorted(k for k, v in sel.items() if v is not None)
        if given:
            raise ValueError(f"chapter {chapter} takes its data sets and seeds from its pai settings "
                             f"(settings=...), not {', '.join(given)}")
        return _pai_runs(c.experiments, profile, settings or {})
    if settings is not None:
        raise ValueError(f"chapter {chapter} runs with the profile's parameters; settings are for a pai chapter")
    if c.seeds == "table":
        per = table_seeds(profile, **sel)
    else:
        ds, ss = selection(profile, **sel)
        per = {ds[0]: ss[:1]} if c.seeds == "first" else {d: ss for d in ds}
    return [(e, d, s) for d, ss in per.items() for s in ss for e in c.experiments]


def _pai_runs(experiments: tuple[str, ...], profile: str,
              settings: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str | None, int]]:
    """The runs of a ``"pai"`` chapter: per experiment (in order), one per seed of its settings."""
    pai = profiles.section(profile, "pai")
    runs = []
    for e in experiments:
        s = settings.get(e) or pai[PAI_EXPERIMENTS[e]]
        if s.get("run", True):
            runs += [(e, s.get("dataset"), int(seed)) for seed in s.get("seeds", [0])]
    return runs


def _pai_transfer_targets(profile: str, chapter_6: list[Run]) -> dict[Run, list[Run]]:
    """Per ``pai_transfer`` run of chapter 6, the basis/double runs whose sizes set its targets."""
    t = profiles.section(profile, "pai")["transfer"]
    ep = t.get("experiments_profile") or profile
    d = t.get("dataset") or profiles.get(ep)["datasets"][0]
    return {r: [(ep, target, d, r[3]) for target in t.get("targets", ())] for r in chapter_6 if r[1] == "pai_transfer"}


def book_runs(profile: str) -> list[tuple[Run, ...]]:
    """The runs of every chapter of :data:`CHAPTERS` (with the profile's own settings) and chapter
    6's transfer targets, each once, as chains.

    A chain is computed in one process, in order: double pruning follows the channel pruning run
    whose stage it reuses, and a ``pai_transfer`` run follows the chain of its last target (it
    reads the targets' final sizes). The book builder computes these chains side by side before
    the notebooks that read them (which then load their checkpoints).
    """
    runs: list[Run] = []
    for chapter in CHAPTERS:
        runs += [(profile, e, d, s) for e, d, s in chapter_runs(chapter, profile)]
    targets = {r: ts for r, ts in _pai_transfer_targets(profile, runs).items() if ts}
    runs = list(dict.fromkeys(runs + [t for ts in targets.values() for t in ts]))
    chains: list[tuple[Run, ...]] = []
    for prof, e, d, s in runs:
        if e == "channel_pruning" and (prof, "double_pruning", d, s) in runs:
            continue  # computed as the first stage of the double pruning chain
        if (prof, e, d, s) in targets:
            continue  # appended to its last target's chain below
        chains.append(((prof, "channel_pruning", d, s), (prof, e, d, s)) if e == "double_pruning" else ((prof, e, d, s),))
    for r, ts in targets.items():
        i = next(i for i, chain in enumerate(chains) if ts[-1] in chain)
        chains[i] += (r,)
    return chains
