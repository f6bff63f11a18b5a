"""The statistics of the book's tables: a mean with its 95% interval over seeds (a fixed-seed
bootstrap, or ± 1.96 paired standard errors for one run), where a change stands against the
accuracy budget, and how the numbers are written."""

from __future__ import annotations

__all__ = ["BOOTSTRAP_RESAMPLES", "budget_verdict", "format_interval", "interval", "mean_ci", "mean_std"]


def _fmt(x: float, digits: int, signed: bool = False) -> str:
    text = f"{x:{'+' if signed else ''}.{digits}f}"
    if text.startswith("-") and not any(ch in "123456789" for ch in text):  # no "-0.0"
        return ("+" if signed else "") + text[1:]
    return text


def format_interval(mean: float, low: float, high: float, scale: float = 1.0, digits: int = 1,
                    signed: bool = False) -> str:
    """``"mean [low, high]"`` of a mean and its 95% interval times ``scale`` (``signed``: with a
    ``+`` on positive values, for changes); just the mean when the interval is NaN."""
    import math

    if math.isnan(low) or math.isnan(high):
        return _fmt(mean * scale, digits, signed)
    return f"{_fmt(mean * scale, digits, signed)} [{_fmt(low * scale, digits, signed)}, {_fmt(high * scale, digits, signed)}]"


def mean_std(values, scale: float = 1.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values * scale`` (sample std; just the mean for a single value)."""
    import numpy as np

    v = np.asarray(list(values), dtype=float) * scale
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return _fmt(v[0], digits)
    return f"{_fmt(v.mean(), digits)} ± {_fmt(v.std(ddof=1), digits)}"


#: Bootstrap resamples of :func:`interval` (a fixed generator: the book's numbers do not move).
BOOTSTRAP_RESAMPLES = 10_000


def interval(values, se=None) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its 95% interval.

    Several values (one per seed): the percentile bootstrap over them (:data:`BOOTSTRAP_RESAMPLES`
    resamples, generator seeded with 0). With three seeds it is narrower than the truth (it cannot
    look past the three values); the seeds tier is there for that. One value with its standard error
    ``se`` (a paired drop): mean ± 1.96 se. One value without: no interval (low = high = NaN).
    """
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size == 1:
        if se is None:
            return m, float("nan"), float("nan")
        half = 1.96 * float(np.asarray(list(se), dtype=float).mean())
        return m, m - half, m + half
    rng = np.random.default_rng(0)
    boots = v[rng.integers(0, v.size, (BOOTSTRAP_RESAMPLES, v.size))].mean(1)
    return m, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def mean_ci(values, scale: float = 1.0, digits: int = 1, se=None) -> str:
    """``"mean [low, high]"`` of ``values * scale`` with the 95% interval of :func:`interval` (``se``:
    the standard errors of the values, used when there is one); just the mean when there is none."""
    import math

    vals = [float(x) * scale for x in values]
    m, lo, hi = interval(vals, None if se is None else [float(x) * abs(scale) for x in se])
    if math.isnan(m):
        return "n/a"
    return format_interval(m, lo, hi, digits=digits)


def budget_verdict(change, max_drop: float, se=None) -> str:
    """Where a row's accuracy change (negative: a loss, as a fraction) stands against the budget
    ``max_drop``, judged by its 95% interval (:func:`interval`): ``"within"`` when the whole
    interval loses less than the budget, ``"beyond"`` when it loses more, ``"unresolved"`` when it
    straddles the budget or there is no interval."""
    import math

    _, lo, hi = interval(change, se)
    if math.isnan(lo):
        return "unresolved"
    if lo > -max_drop:
        return "within"
    if hi < -max_drop:
        return "beyond"
    return "unresolved"
