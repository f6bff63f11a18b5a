"""Sweep specs: the YAML form, its validation and its expansion into cells.

Everything here runs before any job starts and writes nothing: a spec that is refused is one
line naming the spec, the key and what is allowed (:func:`load`, :func:`expand`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import data, experiments, profiles

try:
    import yaml
except ModuleNotFoundError:  # the CLI turns this into one line
    raise ModuleNotFoundError("basisprune sweeps need PyYAML: pip install 'basisprune[sweep]' (or pip install pyyaml)",
                              name="yaml") from None

__all__ = ["BACKENDS", "Cell", "SweepSpec", "cell_dir", "cell_status", "expand", "fingerprint", "load"]

BACKENDS = ("local", "slurm", "submitit-local")

_SPEC_KEYS = ("name", "experiment", "profile", "params", "seeds", "folder", "backend", "local", "slurm")

# Backend option -> what it accepts (:class:`basisprune.repro.profiles.Spec`, the parameters' validator).
# For ``setup`` (a list, _LISTS) and ``additional_parameters`` (a mapping, _MAPPINGS) the Spec is that of
# each element. submitit-local reads the slurm section too and uses what its executor has
# (timeout_min, gpus_per_node, setup).
_POS_INT, _NONNEG_INT = profiles.Spec("int", low=1), profiles.Spec("int", low=0)
_STR, _NUMBER = profiles.Spec("str"), profiles.Spec("float")
_OPTIONS: dict[str, dict[str, profiles.Spec]] = {
    "local": {"workers": _POS_INT},
    "slurm": {
        "partition": _STR, "gpus_per_node": _NONNEG_INT, "cpus_per_task": _POS_INT, "timeout_min": _POS_INT,
        "mem_gb": profiles.Spec("float", low=0, low_open=True), "array_parallelism": _POS_INT,
        "max_num_timeout": _NONNEG_INT, "account": _STR, "qos": _STR, "constraint": _STR, "setup": _STR,
        "additional_parameters": _STR,
    },
}
_LISTS = {"setup"}  # a list of shell lines, each a string
_MAPPINGS = {"additional_parameters"}  # sbatch option -> value: a string, or a number (_NUMBER)

_DEVICE = re.compile(r"^(auto|cpu|mps(:0)?|cuda(:\d+)?)$", re.IGNORECASE)


# -------------------------------------------------------------------------------------- spec
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (not last-wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec (see the module docstring for the YAML form)."""

    name: str
    experiments: tuple[str, ...]
    profile: str
    grids: tuple[dict[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...]
    folder: Path
    backend: str
    options: dict[str, dict[str, Any]]
    source: str = "<spec>"
    #: Per grid, its own seeds (None: :attr:`seeds`); empty: every grid takes :attr:`seeds`.
    grid_seeds: tuple[tuple[int, ...] | None, ...] = ()

    def seeds_of(self, i: int) -> tuple[int, ...]:
        """The seeds of grid ``i``."""
        own = self.grid_seeds[i] if i < len(self.grid_seeds) else None
        return self.seeds if own is None else own


def _fail(source: str, where: str, what: str) -> ValueError:
    return ValueError(f"{source}: {where}: {what}")


def _number(spec: profiles.Spec, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: a string is parsed where a number is expected."""
    if spec.kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _coerce(source: str, where: str, name: str, value: Any, spec: profiles.Spec) -> Any:
    """One value of a grid checked by its parameter's ``spec``. A list-valued setting (a pai
    experiment's ``methods``, ``sparsities``, ...) takes a list per cell, a single item meaning a
    list of one; it is kept as a tuple, so that a cell stays hashable."""
    if spec.kind == "list":
        items = value if isinstance(value, (list, tuple)) else [value]
        value = [_number(spec.item, v) for v in items]
    elif spec.kind == "mapping":
        raise _fail(source, where, f"{name} is a mapping of labels to values; a sweep cannot vary it (set it in the "
                    "profile's pai section)")
    elif isinstance(value, (list, dict)):
        raise _fail(source, where, f"expected a single value inside the list, got {value!r}")
    try:
        value = spec.check(name, _number(spec, value))
    except ValueError as e:
        raise _fail(source, where, str(e)) from None
    return tuple(value) if isinstance(value, list) else value


def _values(source: str, where: str, raw: Any, coerce: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A list of distinct values (a scalar is a list of one)."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _fail(source, where, "empty list; give at least one value")
    out: list[Any] = []
    for v in items:
        v = coerce(v)
        if v in out:
            raise _fail(source, where, f"value {v!r} is listed twice")
        out.append(v)
    return tuple(out)


def _grid(source: str, where: str, raw: Any, seed: Callable[[Any], int],
          specs: Mapping[str, Mapping[str, profiles.Spec]]) -> tuple[dict[str, tuple[Any, ...]], tuple[int, ...] | None]:
    """A grid's parameter value lists, and its own seeds (None when it has no ``seeds`` key).
    ``specs``: per experiment of the spec, its parameters (:func:`experiments.parameter_specs`);
    every experiment must take each of the grid's parameters."""
    if not isinstance(raw, dict):
        raise _fail(source, where, f"expected a mapping of parameter name to a list of values, got {raw!r}")
    grid = {}
    raw = dict(raw)
    seeds = _values(source, f"{where}.seeds", raw.pop("seeds"), seed) if "seeds" in raw else None
    for name, vals in raw.items():
        if name == "seed":
            raise _fail(source, f"{where}.seed", "give seeds as the top-level 'seeds' list (or a grid's 'seeds')")
        for exp, own in specs.items():
            if name not in own:
                of = f" of {exp}" if len(specs) > 1 or exp in experiments.PAI_EXPERIMENTS else ""
                raise _fail(source, f"{where}.{name}",
                            f"unknown parameter {name!r}{of}; allowed: {', '.join(sorted(own))}")
        for own in specs.values():  # each experiment's own check; the values of the last one are kept
            grid[name] = _values(source, f"{where}.{name}", vals,
                                 lambda v, n=name, sp=own[name]: _coerce(source, f"{where}.{n}", n, v, sp))
    return grid, seeds


def _check_option(source: str, where: str, name: str, spec: profiles.Spec, value: Any, nonempty: bool = True) -> None:
    """``value`` checked by ``spec`` (a string also non-empty unless ``nonempty`` is False), or one line
    naming ``where``."""
    try:
        spec.check(name, value)
    except ValueError as e:
        raise _fail(source, where, str(e)) from None
    if nonempty and value == "":
        raise _fail(source, where, f"{name} must be a non-empty string, got ''")


def _options(source: str, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``local`` and ``slurm`` sections as given, each option checked (:data:`_OPTIONS`)."""
    out: dict[str, dict[str, Any]] = {}
    for section, allowed in _OPTIONS.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise _fail(source, section, f"expected a mapping of options, got {given!r}")
        for key, value in given.items():
            where = f"{section}.{key}"
            if key not in allowed:
                raise _fail(source, where, f"unknown {section} option {key!r}; allowed: {', '.join(sorted(allowed))}")
            if key in _LISTS:
                if not isinstance(value, list):
                    raise _fail(source, where, f"{key} must be a list of strings, got {value!r}")
                for i, item in enumerate(value):
                    _check_option(source, f"{where}[{i}]", f"{key}[{i}]", allowed[key], item, nonempty=False)
            elif key in _MAPPINGS:
                if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                    raise _fail(source, where, f"{key} must be a mapping of sbatch option to value, got {value!r}")
                for k, item in value.items():
                    number = isinstance(item, (int, float)) and not isinstance(item, bool)
                    _check_option(source, f"{where}.{k}", k, _NUMBER if number else allowed[key], item)
            else:
                _check_option(source, where, key, allowed[key], value)
        out[section] = dict(given)
    return out


def load(spec: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> SweepSpec:
    """Parse and check a spec (a YAML file or a mapping); ``overrides`` replace top-level keys.

    Raises ValueError with one line naming the spec, the key and what is allowed. Parameter values
    are checked per cell by :func:`expand`.
    """
    if isinstance(spec, Mapping):
        raw, source, stem = dict(spec), "<spec>", "sweep"
    else:
        path = Path(spec)
        source, stem = str(path), path.stem
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe
        except OSError as exc:
            raise ValueError(f"{source}: cannot read the spec: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping with keys {', '.join(_SPEC_KEYS)}, got {raw!r}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(raw) - set(_SPEC_KEYS))
    if unknown:
        raise _fail(source, ", ".join(map(str, unknown)), f"unknown key; allowed: {', '.join(_SPEC_KEYS)}")

    exps = raw.get("experiment")
    exps = exps if isinstance(exps, list) else [exps] if exps is not None else None
    if not exps:
        raise _fail(source, "experiment", f"give one or a list of: {', '.join(sorted(experiments.EXPERIMENTS))}")
    for e in exps:
        if e not in experiments.EXPERIMENTS:
            raise _fail(source, "experiment",
                        f"unknown experiment {e!r}; allowed: {', '.join(sorted(experiments.EXPERIMENTS))}")
    if len(set(exps)) != len(exps):
        raise _fail(source, "experiment", "an experiment is listed twice")

    profile = raw.get("profile", "default")
    if profile not in profiles.PROFILES:
        raise _fail(source, "profile", f"unknown profile {profile!r}; allowed: {', '.join(sorted(profiles.PROFILES))}")

    params = raw.get("params", {})
    if params is None or params == []:  # not "no overrides": likely a list whose items were lost
        raise _fail(source, "params", f"{'empty list of grids' if params == [] else 'no value'}; give a mapping of "
                    "parameter to values (or a list of such mappings), or leave params out to run the profile's values")

    def seed(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _fail(source, "seeds", f"expected non-negative integers, got {v!r}")
        return v

    specs = {e: experiments.parameter_specs(e) for e in exps}
    parsed = tuple(_grid(source, f"params[{i}]", g, seed, specs) for i, g in enumerate(params)) \
        if isinstance(params, list) else (_grid(source, "params", params, seed, specs),)
    grids, grid_seeds = tuple(g for g, _ in parsed), tuple(s for _, s in parsed)

    seeds = _values(source, "seeds", raw["seeds"], seed) if "seeds" in raw \
        else tuple(profiles.get(profile)["seeds"])

    name = raw.get("name", stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _fail(source, "name", f"expected letters, digits, '_', '.' or '-', got {name!r}")
    folder = raw.get("folder") or Path("runs") / "sweeps" / name
    if not isinstance(folder, (str, os.PathLike)):
        raise _fail(source, "folder", f"expected a path, got {folder!r}")
    backend = raw.get("backend", "local")
    if backend not in BACKENDS:
        raise _fail(source, "backend", f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    return SweepSpec(name=name, experiments=tuple(exps), profile=profile, grids=grids, seeds=seeds,
                     folder=Path(folder), backend=backend, options=_options(source, raw), source=source,
                     grid_seeds=grid_seeds)


# ------------------------------------------------------------------------------------- cells
def fingerprint(experiment: str, profile: str, overrides: Mapping[str, Any], seed: int) -> str:
    """16 hex digits of the sha256 of the cell's canonical JSON (sorted keys, no whitespace).

    It identifies what the cell asks for, not the profile's current values or the code: editing a
    profile keeps existing results (their files record the parameters they ran with).
    """
    text = json.dumps({"experiment": experiment, "profile": profile, "params": dict(overrides), "seed": seed},
                      sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep: an experiment with the spec's overrides and a seed."""

    experiment: str
    profile: str
    overrides: tuple[tuple[str, Any], ...]  # sorted by name
    seed: int
    fingerprint: str
    params: dict[str, Any] = dataclasses.field(compare=False, hash=False, repr=False)  # resolved

    @property
    def name(self) -> str:
        """Its folder's name: ``<experiment>-<dataset>-seed<k>-<8 hex digits of the fingerprint>``."""
        dataset = re.sub(r"[^A-Za-z0-9_.]+", "_", str(self.params.get("dataset", "data")))
        return f"{self.experiment}-{dataset}-seed{self.seed}-{self.fingerprint[:8]}"

    def describe(self) -> str:
        kv = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in self.overrides)
        return f"{self.experiment} {kv + ' ' if kv else ''}seed={self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "name": self.name, "experiment": self.experiment,
                "profile": self.profile,
                "params": dict(self.overrides), "seed": self.seed}


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the spec, each validated with :func:`experiments.resolve_params`.

    Order: grids, experiments, the cross product of the parameter lists (in the spec's order), seeds.
    A cell that two grids both produce appears once. For the slurm backend the device is not
    checked against this machine (the login node may have no GPU), only its spelling.
    """
    cells: dict[str, Cell] = {}
    remote = spec.backend == "slurm"
    for i, grid in enumerate(spec.grids):
        names = list(grid)
        for experiment, values, seed in itertools.product(spec.experiments, itertools.product(*grid.values()),
                                                          spec.seeds_of(i)):
            overrides = tuple(sorted(zip(names, values)))
            fp = fingerprint(experiment, spec.profile, dict(overrides), seed)
            if fp in cells:
                continue
            check = dict(overrides, seed=seed)
            if remote and "device" in experiments.parameter_specs(experiment):  # pai_transfer has none of its own
                part = experiments.PAI_EXPERIMENTS.get(experiment)
                defaults = profiles.section(spec.profile, "pai")[part] if part else profiles.get(spec.profile)
                device = check.get("device", defaults["device"])
                if not (isinstance(device, str) and _DEVICE.match(device)):
                    raise ValueError(f"{spec.source}: params.device: unknown device {device!r}; allowed: auto, cpu, "
                                     "cuda, cuda:N, mps")
                check["device"] = "cpu"
            try:
                resolved = experiments.resolve_params(experiment, spec.profile, **check)
            except (ValueError, TypeError) as exc:
                where = " ".join(f"{k}={v!r}" for k, v in overrides) or "(no overrides)"
                raise ValueError(f"{spec.source}: cell {experiment} {where}: {exc}") from None
            if remote and "device" in check:
                resolved["device"] = device
            _check_subsets(spec.source, experiment, overrides, resolved)
            cells[fp] = Cell(experiment, spec.profile, overrides, seed, fp, resolved)
    names = [c.name for c in cells.values()]
    if len(set(names)) != len(names):  # 8 hex digits of two fingerprints agree: one in 4e9 per pair
        raise ValueError(f"{spec.source}: two cells share the folder name {max(names, key=names.count)}")
    return list(cells.values())


def _check_subsets(source: str, experiment: str, overrides: tuple[tuple[str, Any], ...], p: dict[str, Any]) -> None:
    """Subset sizes larger than the data set's split are refused here, not when the cell runs."""
    if p.get("dataset") is None:  # pai_cost has no data; pai_transfer's None is its experiments profile's
        return
    sizes = data.split_sizes(p["dataset"], p.get("val_fraction", 0.0))
    for split in ("train", "test"):
        n, want = (sizes or {}).get(split), p.get(f"subset_{split}")
        if n is not None and want is not None and want > n:
            where = " ".join(f"{k}={v!r}" for k, v in overrides) or "(no overrides)"
            raise ValueError(f"{source}: cell {experiment} {where}: subset_{split}={want} is larger than the "
                             f"{p['dataset']} {split} split, which has {n} images")


def cell_dir(folder: str | os.PathLike, cell: Cell) -> Path:
    """The cell's folder, ``<folder>/cells/<cell.name>``."""
    return Path(folder) / "cells" / cell.name


def cell_status(folder: str | os.PathLike, cell: Cell) -> str:
    """``done`` (its results file exists), ``failed`` (an error is recorded) or ``missing``."""
    d = cell_dir(folder, cell)
    if (d / "results.json").exists():
        return "done"
    return "failed" if (d / "error.json").exists() else "missing"


