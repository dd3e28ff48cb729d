"""Observed perturbation effects: mean deltas against control and the genes they move most."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bioworld.errors import BioworldError


def mean_deltas(X: np.ndarray, labels: Sequence[str], control: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({label: mean(X[label]) - mean(X[control])}, control mean)`` for every non-control label."""
    lab = np.asarray([str(x) for x in labels])
    ctrl = lab == control
    if not ctrl.any():
        raise BioworldError(f"no cells labelled {control!r}; expected control cells to compute deltas against")
    mu = X[ctrl].mean(0).astype(np.float64)
    out = {}
    for name in sorted(set(lab) - {control}):
        out[name] = X[lab == name].mean(0).astype(np.float64) - mu
    return out, mu


def top_de_genes(obs_delta: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` genes with the largest ``|obs_delta|`` (descending; ties by gene order).

    ``k`` larger than the panel returns all genes.
    """
    o = np.asarray(obs_delta, dtype=np.float64)
    if o.ndim != 1:
        raise BioworldError(f"obs_delta has shape {o.shape}; expected a 1-D per-gene delta vector [G]")
    if not np.isfinite(o).all():
        raise BioworldError("obs_delta contains NaN or infinite values; expected finite deltas")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BioworldError(f"k={k!r}; expected a positive integer number of top DE genes")
    return np.argsort(-np.abs(o), kind="stable")[: int(min(k, len(o)))]
