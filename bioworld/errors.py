"""User-facing errors.

Every error a user can trigger with bad input derives from :class:`BioworldError`. Messages say
what was found, what was expected and how to fix it; the CLI prints them on one line.
"""

from __future__ import annotations

import difflib
from typing import Sequence


class BioworldError(ValueError):
    """Base class for all user-facing bioworld errors."""


class DataValidationError(BioworldError):
    """The AnnData (or a data file) does not satisfy what bioworld needs."""


class EntityError(BioworldError):
    """Gene-set / entity definitions are missing, malformed or do not fit the gene panel."""


class PerturbationParseError(BioworldError):
    """A perturbation or intervention string does not follow the action grammar."""


class UnknownPerturbationError(BioworldError):
    """A perturbation names a gene, compound or entity the model does not know."""


class CheckpointError(BioworldError):
    """A model directory is missing, corrupt, tampered with or does not match the data."""


class TrainingError(BioworldError):
    """Training cannot proceed (e.g. latent collapse)."""


class OutputError(BioworldError):
    """An output cannot be written: it exists (and may not be replaced), would destroy an input or a
    model folder, the folder is not writable or another job holds it, or the write failed (disk
    full); nothing was written in its place."""


def preview(items, n: int = 5) -> str:
    """``'a', 'b', ... (12 in total)``: the first ``n`` items for an error or summary message; ``none`` for none."""
    items = list(items)
    if not items:
        return "none"
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in total)" if len(items) > n else "")


def close_matches(
    name: str, known: Sequence[str], *, n: int = 3, lower_index: dict[str, list[str]] | None = None
) -> list[str]:
    """Known names that differ from ``name`` only by case, then difflib close matches (at most ``n``)."""
    if lower_index is None:
        lower_index = {}
        for k in known:
            lower_index.setdefault(k.lower(), []).append(k)
    out = [k for k in lower_index.get(name.lower(), []) if k != name]
    for k in difflib.get_close_matches(name, known, n=n, cutoff=0.75):
        if k not in out and k != name:
            out.append(k)
    if len(out) < n:  # case-insensitive fuzzy pass (stat1 -> STAT1, STAT2)
        for low in difflib.get_close_matches(name.lower(), list(lower_index), n=n, cutoff=0.75):
            for k in lower_index[low]:
                if k not in out and k != name:
                    out.append(k)
    return out[:n]


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` made by the function that calls this: the first frame outside the
    bioworld package, so a warning points at the user's own line whatever the depth of the call inside."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
