"""What one setting accepts: :class:`Spec`, the one validator of profiles, experiment parameters,
sweep specs and notebook parameters (a kind, a range or choices, None or not), with one clear
:class:`~basisprune.errors.ParameterError` naming the setting and what it allows."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import ParameterError

__all__ = ["Spec"]


@dataclass(frozen=True)
class Spec:
    """What one parameter accepts: a kind, an optional range or list of choices, and None or not.

    ``kind`` is ``"bool"``, ``"int"`` (bools refused), ``"float"`` (ints accepted, made float;
    infinities and NaN refused), ``"str"``, ``"path"`` (a str or os.PathLike), ``"list"`` (a list
    or tuple of values each checked by ``item``) or ``"mapping"`` (string labels to values checked
    by ``item``). ``low``/``high``
    bound numbers (open bounds with ``low_open``/``high_open``); ``choices`` is a tuple of allowed
    strings or a function returning them (for lists only known at run time).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None
    optional: bool = False
    choices_name: str = ""  # "known models": how a message refers to a long list of choices
    item: Spec | None = None  # what each element of a list or mapping accepts

    def allowed(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices or ())

    def describe(self) -> str:
        """What is allowed, in words (e.g. ``a number in (0, 1)``, ``an integer >= 1 or None``)."""
        if self.kind == "bool":
            text = "true or false"
        elif self.kind in ("list", "mapping"):
            text = ("a list of " if self.kind == "list" else "a mapping of labels to ") + self.item.describe()
        elif self.kind == "path":
            text = "a folder path"
        elif self.choices is not None:
            names = self.allowed()
            if not self.choices_name:
                text = "one of " + ", ".join(map(repr, names))
            elif len(names) <= 12:
                text = f"one of the {self.choices_name} ({', '.join(names)})"
            else:
                text = f"one of the {self.choices_name}"
        else:
            text = {"int": "an integer", "float": "a finite number", "str": "a string"}[self.kind]
            lo = None if self.low is None else f"{'>' if self.low_open else '>='} {_num(self.low)}"
            hi = None if self.high is None else f"{'<' if self.high_open else '<='} {_num(self.high)}"
            if lo and hi:
                text += f" in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
            elif lo or hi:
                text += " " + (lo or hi)
        return text + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        """``value`` in its canonical type (int, float, ...), or :class:`ParameterError` naming ``name``."""
        if value is None:
            if self.optional:
                return None
            self._fail(name, value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                self._fail(name, value)
            return value
        if self.kind == "list":
            if not isinstance(value, (list, tuple)):
                self._fail(name, value)
            return [self.item.check(f"{name}[{i}]", v) for i, v in enumerate(value)]
        if self.kind == "mapping":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                self._fail(name, value)
            return {k: self.item.check(f"{name}[{k!r}]", v) for k, v in value.items()}
        if self.kind == "int":
            if isinstance(value, bool) or not _is_int(value):
                self._fail(name, value)
            value = int(value)
        elif self.kind == "float":
            if isinstance(value, bool) or not (_is_int(value) or _is_float(value)) or not math.isfinite(value):
                self._fail(name, value)
            value = float(value)
        elif self.kind == "path":
            if not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip():
                self._fail(name, value)
            return value
        elif not isinstance(value, str):
            self._fail(name, value)
        if self.choices is not None and value not in self.allowed():
            names = self.allowed()
            extra = f"; {self.choices_name}: {', '.join(names)}" if len(names) > 12 else ""
            raise ParameterError(name, f"{name} must be {self.describe()}, got {value!r}{extra}", value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            self._fail(name, value)
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            self._fail(name, value)
        return value

    def _fail(self, name: str, value: Any):
        hint = " (true/false is not a number)" if isinstance(value, bool) and self.kind in ("int", "float") else ""
        raise ParameterError(name, f"{name} must be {self.describe()}, got {value!r}{hint}", value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral)  # int and numpy integers


def _is_float(value: Any) -> bool:
    return isinstance(value, numbers.Real)
