"""The parameters ``execute`` injects into the notebooks, checked before anything runs.

A parameter must be declared by a selected notebook (in its cell tagged ``parameters``, as papermill
reads it), and its value must be what the notebook takes: experiment parameters are checked by their
:data:`basisprune.repro.profiles.SPECS`, the notebooks' other parameters by a
:class:`basisprune.repro.profiles.Spec` each (per item for a list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from basisprune.errors import ParameterError
from basisprune.repro.profiles import SPECS, Spec

__all__ = ["check_notebook_parameters"]


# Parameters of the notebooks that are not experiment parameters (those are checked with
# basisprune.repro.profiles.SPECS): one spec per value, or per item of a list.
def _notebook_specs() -> tuple[dict[str, Any], dict[str, Any]]:
    scalars = {
        "n_images": Spec("int", low=1, optional=True), "threads": Spec("int", low=1, optional=True),
        "peer_epochs": Spec("int", low=0, optional=True), "onnx": Spec("bool", optional=True),
        "results_dir": Spec("path", optional=True),
        "calibration_dir": Spec("path", optional=True),
    }
    lists = {
        "datasets": SPECS["dataset"], "seeds": SPECS["seed"], "batch_sizes": Spec("int", low=1),
        "sparsities": Spec("float", low=0.0, high=1.0, low_open=True, high_open=True), "methods": Spec("str"),
    }
    return scalars, lists


_MAPPINGS = ("overrides", "transfer_overrides", "cost_overrides")


def _check_notebook_value(name: str, value: Any) -> None:
    scalars, lists = _notebook_specs()
    if value is None:  # None: the profile's value, for every notebook parameter
        return
    if name in SPECS:
        SPECS[name].check(name, value)
    elif name in scalars:
        scalars[name].check(name, value)
    elif name in lists:
        if not isinstance(value, (list, tuple)) or not value:
            raise ParameterError(name, f"{name} must be a non-empty list (e.g. -p {name} '[...]'), each item "
                                 f"{lists[name].describe()}, got {value!r}", value)
        for item in value:
            try:
                lists[name].check(name, item)
            except ParameterError:
                raise ParameterError(name, f"{name} must be a list, each item {lists[name].describe()}, "
                                     f"got {value!r}", value) from None
    elif name in _MAPPINGS and not isinstance(value, dict):
        raise ParameterError(name, f"{name} must be a mapping (e.g. -p {name} '{{key: value}}'), got {value!r}", value)


def check_notebook_parameters(selected: Sequence[Path], parameters: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """The parameters to inject into each notebook, after checking them; nothing runs here.

    A parameter no selected notebook declares (in its cell tagged ``parameters``, as papermill
    reads it) is refused, naming the parameters those notebooks take; so is a value of the wrong
    kind (``-p seed abc``). Each notebook receives only the parameters it declares (``profile``
    always). Raises :class:`~basisprune.errors.ParameterError`.
    """
    import papermill as pm

    declared = {nb: set(pm.inspect_notebook(str(nb))) for nb in selected}
    known = set().union(*declared.values()) | {"profile"}
    for name, value in parameters.items():
        if name not in known:
            where = selected[0].stem if len(selected) == 1 else f"any of the {len(selected)} selected notebooks"
            raise ParameterError(name, f"parameter {name!r} is not declared by {where}; allowed: "
                                 f"{', '.join(sorted(known - {'profile'}))}", value)
        _check_notebook_value(name, value)
    return {nb: {k: v for k, v in parameters.items() if k in declared[nb] or k == "profile"} for nb in selected}
