"""basisprune.repro.plan: one run plan for the notebooks' loops and the book builder's prefetch."""

import ast
from pathlib import Path

import nbformat
import pytest

from basisprune.repro import plan, profiles
from basisprune.repro.pai_parameters import PAI_EXPERIMENTS

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: The calls that make experiment runs: each must take its experiment, data set and seed from the plan.
RUN_CALLS = {("experiments", "run"), ("comparison", "timed_run")}


def _code(path: Path) -> ast.Module:
    nb = nbformat.read(path, as_version=4)
    return ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))


def _dotted(node: ast.AST) -> tuple[str, str] | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
        return node.func.value.id, node.func.attr
    return None


def _plan_chapter(node: ast.AST, planned: dict[str, str]) -> str | None:
    """The chapter of ``report.chapter_runs("NN", ...)``, directly or through a name assigned from it."""
    if isinstance(node, ast.Name):
        return planned.get(node.id)
    if _dotted(node) == ("report", "chapter_runs") and isinstance(node.args[0], ast.Constant):
        return node.args[0].value
    return None


def _runs_of(path: Path) -> list[tuple[str | None, str | None]]:
    """Per run-making call of a notebook: (chapter of the plan it loops over, experiment literal of
    ``report.run_pruning``); ``(None, None)`` for a call that does not come from the plan."""
    tree = _code(path)
    planned = {t.id: _plan_chapter(n.value, {}) for n in ast.walk(tree) if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Name) and _plan_chapter(n.value, {})}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        call = _dotted(node)
        if call == ("report", "run_pruning"):
            found.append((None, node.args[0].value if isinstance(node.args[0], ast.Constant) else None))
        elif call in RUN_CALLS:
            chapter, up = None, node
            while up in parents and chapter is None:
                up = parents[up]
                loops = [up] if isinstance(up, ast.For) else list(getattr(up, "generators", []))
                for loop in loops:
                    names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
                    if isinstance(node.args[0], ast.Name) and node.args[0].id in names:
                        chapter = _plan_chapter(loop.iter, planned)
            found.append((chapter, None))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_makes_its_runs_from_its_chapter_of_the_plan(path):
    """Every run a notebook makes (experiments.run, comparison.timed_run) loops over its own chapter
    of the plan (report.chapter_runs("NN", ...)) or goes through report.run_pruning with the
    experiment its chapter runs; a chapter of the plan makes runs. So a notebook's runs are the
    plan's, which the book builder prefetches."""
    number = path.stem[:2]
    runs = _runs_of(path)
    for chapter, experiment in runs:
        if experiment is not None:
            assert plan.chapter_of(experiment) == number, f"{path.stem}: run_pruning({experiment!r}) is another chapter's"
        else:
            assert chapter == number, f"{path.stem}: a run not taken from report.chapter_runs({number!r}, ...)"
    assert bool(runs) == (number in plan.CHAPTERS), f"{path.stem}: runs made and the plan's chapters disagree"


@pytest.mark.parametrize("profile", list(profiles.PROFILES))
def test_the_builder_prefetches_every_run_of_the_plan_once(profile):
    """book_runs (the builder's prefetch) holds every run of every chapter of the plan with the
    profile's settings and chapter 6's transfer targets, each once, and nothing else; a double
    pruning run follows the channel pruning run of the same data set and seed, and a pai_transfer
    run follows its last target in the same chain."""
    chains = plan.book_runs(profile)
    runs = [r for chain in chains for r in chain]
    assert len(runs) == len(set(runs))
    want = {(profile, *r) for ch in plan.CHAPTERS for r in plan.chapter_runs(ch, profile)}
    t = profiles.section(profile, "pai").get("transfer", {})
    if t.get("run"):
        ep = t.get("experiments_profile") or profile
        d_ep = t.get("dataset") or profiles.get(ep)["datasets"][0]
        want |= {(ep, e, d_ep, int(s)) for e in t["targets"] for s in t["seeds"]}
    want |= {(p, "channel_pruning", d, s) for p, e, d, s in want if e == "double_pruning"}
    assert set(runs) == want
    for chain in chains:
        for i, (p, e, d, s) in enumerate(chain):
            if e == "double_pruning":
                assert chain[i - 1] == (p, "channel_pruning", d, s)
            if e == "pai_transfer" and t["targets"]:
                assert chain[i - 1] == (ep, t["targets"][-1], d_ep, s)


def test_the_builder_prefetches_what_the_plan_says(tmp_path, monkeypatch):
    """The builder's prefetch is the plan's chains (in some order), whatever the plan holds."""
    from basisprune_book.execute import _prefetch_chains

    assert sorted(_prefetch_chains("smoke", tmp_path)) == sorted(plan.book_runs("smoke"))
    monkeypatch.setitem(plan.CHAPTERS, "04", plan.Chapter(("basis_pruning",), "table"))
    assert sorted(_prefetch_chains("smoke", tmp_path)) == sorted(plan.book_runs("smoke"))
    assert (("smoke", "basis_pruning", "digits", 1),) in _prefetch_chains("smoke", tmp_path)


def test_chapter_runs_follow_the_notebook_parameters():
    """One dataset/seed given narrows a chapter to it; chapter 5 runs the main table's seeds per
    data set; chapter 7 only the first data set and seed."""
    assert plan.chapter_runs("03", "default", dataset="mnist5k", seed=4) == [("channel_pruning", "mnist5k", 4)]
    per = plan.table_seeds("default")
    assert plan.chapter_runs("05", "default") == [(e, d, s) for d, ss in per.items() for s in ss
                                                   for e in plan.CHAPTERS["05"].experiments]
    (d0, *_), (s0, *_) = plan.selection("default")
    assert plan.chapter_runs("07", "default") == [(e, d0, s0) for e in plan.CHAPTERS["07"].experiments]
    with pytest.raises(KeyError, match="chapters"):
        plan.chapter_runs("01", "default")


def test_chapter_6_runs_follow_its_pai_settings():
    """Chapter 6 makes, per pai experiment in the plan's order, one run per seed of the notebook's
    settings of its part (the profile's where none are given; the cost experiment seed 0), none
    where the part's run is false, on the data set the settings name; the selection keywords of
    the other chapters are refused."""
    S = profiles.pai_settings("scratch", "default", seeds=[2, 5])
    T = profiles.pai_settings("transfer", "default", run=False)
    runs = plan.chapter_runs("06", "default", settings={"pai_scratch": S, "pai_transfer": T})
    assert runs == [("pai_scratch", S["dataset"], 2), ("pai_scratch", S["dataset"], 5), ("pai_cost", None, 0)]
    own = {e: profiles.pai_settings(part, "default") for e, part in PAI_EXPERIMENTS.items()}
    assert plan.chapter_runs("06", "default") == plan.chapter_runs("06", "default", settings=own)
    with pytest.raises(ValueError, match="seeds"):
        plan.chapter_runs("06", "default", seeds=[1])
    with pytest.raises(ValueError, match="pai chapter"):
        plan.chapter_runs("03", "default", settings={})


def test_the_seeds_tier_covers_the_main_table_of_the_default_profile():
    """sweeps/seeds.yaml (the seeds tier) runs chapter 5's experiments on the default profile for at
    least every data set and seed of the main table (plan.chapter_runs("05", "default")), so the
    tier widens the book's table rather than measuring something else."""
    from basisprune.repro import sweep

    spec = sweep.load(Path(__file__).resolve().parents[1] / "sweeps" / "seeds.yaml")
    cells = sweep.expand(spec)
    assert {c.profile for c in cells} == {"default"}
    assert {c.experiment for c in cells} == set(plan.CHAPTERS["05"].experiments)
    covered = {(c.experiment, c.params["dataset"], c.seed) for c in cells}
    assert set(plan.chapter_runs("05", "default")) <= covered
