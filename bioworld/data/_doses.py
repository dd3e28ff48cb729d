"""Doses as screens write them: numbers, or numbers with a molar unit (``10uM``, ``0.1 µM``, ``100 nM``).

A dose column of numbers is read as it is (the screen's unit). A column whose values carry a molar unit is
read in µM, the unit of the bundled compound data (L1000, the atlas), every conversion reported; a column
that mixes numbers with and without a unit is refused (which unit would the bare numbers be in?).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import DataValidationError

#: molar unit (lower case; µ and the Greek mu both) -> factor to µM
_UNITS = {"pm": 1e-6, "nm": 1e-3, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "mm": 1e3}
_WITH_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([pnu\u00b5\u03bcm][mM])\s*$")


def _with_unit(text: str) -> float | None:
    """``'10uM'`` -> 10.0 (µM); None when ``text`` is not a number with a molar unit."""
    match = _WITH_UNIT.match(text)
    if match is None:
        return None
    try:
        return float(match.group(1)) * _UNITS[match.group(2).lower()]
    except (OverflowError, ValueError):
        return None


def _numbers(series: pd.Series) -> np.ndarray:
    """The values that are numbers (NaN elsewhere), as floats."""
    try:
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    except (OverflowError, TypeError, ValueError):  # e.g. an integer beyond float range: value by value
        out = np.full(len(series), np.nan)
        for i, v in enumerate(series):
            try:
                out[i] = float(pd.to_numeric(pd.Series([v], dtype=object), errors="coerce").iloc[0])
            except (OverflowError, TypeError, ValueError):
                pass
        return out


def parse_doses(values: Any) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``values`` (a dose column) -> (doses as floats, NaN where missing or unreadable; which values carried a
    molar unit; each distinct value with a unit -> its dose in µM). Numbers without a unit are kept as they are."""
    series = pd.Series(values, dtype=object).reset_index(drop=True)
    doses = _numbers(series)
    with_unit = np.zeros(len(series), dtype=bool)
    rest = np.isnan(doses) & series.notna().to_numpy()
    converted: dict[str, float] = {}
    for text in pd.unique(series[rest].astype(str)):  # each distinct text once (a column of a million cells)
        value = _with_unit(str(text))
        if value is not None:
            converted[str(text)] = value
    if converted:
        texts = series.astype(str).to_numpy()
        hit = rest & np.isin(texts, list(converted))
        doses[hit] = [converted[t] for t in texts[hit]]
        with_unit = hit
    return doses, with_unit, converted


def describe_conversions(converted: dict[str, float], limit: int = 4) -> str:
    """``'10uM' -> 10, '100 nM' -> 0.1`` (the first ``limit``, then how many more)."""
    items = [f"{k!r} -> {np.format_float_positional(v, trim='-')}" for k, v in list(converted.items())[:limit]]
    more = f" (+{len(converted) - limit} more)" if len(converted) > limit else ""
    return ", ".join(items) + more


def check_one_way(column: Any, doses: np.ndarray, with_unit: np.ndarray, mask: np.ndarray, dose_key: str) -> None:
    """Refuse non-zero doses among ``mask`` written some with a unit and some without (0 is 0 in any unit)."""
    nonzero = mask & np.isfinite(doses) & (doses != 0)
    if not (with_unit[nonzero].any() and not with_unit[nonzero].all()):
        return
    values = pd.Series(column, dtype=object).reset_index(drop=True).astype(str)
    units = [str(v) for v in pd.unique(values[nonzero & with_unit])[:2]]
    bare = [str(v) for v in pd.unique(values[nonzero & ~with_unit])[:3]]
    raise DataValidationError(
        f"obs[{dose_key!r}] writes some doses with a unit (e.g. {units}) and others without (e.g. {bare}); expected "
        "one way for the whole column (which unit would the bare numbers be in?). Fix: write every dose with its "
        "unit, or every dose as a number in one unit."
    )
