"""Expression programs learned with NMF, for the genes no curated gene set covers."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from bioworld.entities._entity import Entity, EntitySet
from bioworld.errors import EntityError


def nmf_programs(
    X: Any,
    var_names: Sequence[str] | None,
    *,
    n_programs: int = 10,
    seed: int = 0,
    top_genes: int = 30,
    exclude_genes: Iterable[str] | None = None,
    max_iter: int = 400,
) -> EntitySet:
    """Fit NMF and turn its components into entities; see `EntitySet.from_nmf`."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    if hasattr(X, "X") and hasattr(X, "var_names"):  # AnnData
        if var_names is None:
            var_names = list(X.var_names)
        X = X.X
    if var_names is None:
        raise EntityError(
            "Found a matrix without var_names; expected the gene names of its columns. "
            "Fix: EntitySet.from_nmf(X, var_names, ...) or pass an AnnData."
        )
    names = [str(v) for v in var_names]
    X = X.tocsr().astype(np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise EntityError(
            f"Found X of shape {X.shape} and {len(names)} var_names; expected a [cells, genes] matrix "
            "with one name per column. Fix: pass matching X and var_names."
        )
    for arg, value in (("n_programs", n_programs), ("top_genes", top_genes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EntityError(f"Found {arg}={value!r}; expected a positive integer.")
    data = X.data if sp.issparse(X) else X
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise EntityError(
            f"Found negative or non-finite values in X (min {np.nanmin(data):.3g}); expected nonnegative "
            "log expression for NMF. Fix: pass log1p-normalised expression, not z-scores or residuals."
        )

    keep = np.ones(len(names), dtype=bool)
    if exclude_genes is not None:
        excluded = set(exclude_genes)
        keep &= np.array([g not in excluded for g in names], dtype=bool)
    col_sum = np.asarray(X.sum(axis=0)).ravel()
    keep &= col_sum > 0  # all-zero genes carry no program
    cols = np.flatnonzero(keep)
    if len(cols) < n_programs:
        raise EntityError(
            f"Found {len(cols)} expressed genes left for NMF (of {len(names)}; excluded ones and all-zero "
            f"genes removed); expected at least n_programs={n_programs}. Fix: lower n_programs or exclude fewer genes."
        )
    Xk = X[:, cols]
    model = NMF(n_components=n_programs, init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        # programs are a summary; an unconverged fit is still deterministic and usable
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xk)
    H = model.components_  # [n_programs, genes kept]
    kept_names = [names[i] for i in cols]
    entities = []
    for k, row in enumerate(H, start=1):
        order = np.argsort(-row, kind="stable")[:top_genes]
        order = order[row[order] > 0]
        if order.size == 0:
            raise EntityError(
                f"NMF program {k} has no gene with a positive loading; expected nonzero programs. "
                "Fix: lower n_programs (the data may have fewer independent programs)."
            )
        w = row[order] / row[order[0]]
        entities.append(Entity(f"NMF_{k}", tuple(kept_names[i] for i in order), tuple(float(x) for x in w), "nmf"))
    return EntitySet(entities)
