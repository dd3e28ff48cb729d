"""Data preparation for :class:`bioworld.WorldModel`: registration, normalisation, scaling, reference cells.

:func:`prepare` turns one AnnData into :class:`PreparedData`: the registration (validated labels,
gene symbols, input scale), the standardised training matrix (centred on the control cells, scaled
by the overall spread; a row source over the file for a backed AnnData), the per-cell labels and
replicate codes the sampler pairs cells by, and a seeded reference population of control cells
that queries start from by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bioworld.data._backed import BackedExpression, is_backed, normalize_block, read_rows, scans_shown, streaming_moments
from bioworld.data._register import Registration, _check_arguments, normalize, register
from bioworld.errors import DataValidationError, user_stacklevel

__all__ = ["PreparedData", "prepare", "align_panel", "cells_to_std", "REPLICATE_CANDIDATES", "N_REFERENCE_CELLS", "BACKED_SUBSAMPLE", "MIN_SPREAD"]

#: Observation columns tried (in order) as the pairing context when no replicate key is given.
REPLICATE_CANDIDATES = ("replicate", "bio_rep", "batch", "gem_group", "plate", "det_plate")
#: Number of control cells kept in the model directory as the default starting population.
N_REFERENCE_CELLS = 512
#: Cells read from a backed AnnData to fit the NMF programs.
BACKED_SUBSAMPLE = 20000
#: Floor of the per-gene spread the data are scaled by.
MIN_SPREAD = 0.05


@dataclass
class PreparedData:
    """One AnnData, registered and standardised (what a model is fitted to)."""

    registration: Registration
    var_names: list[str]
    genes: list[str]  # symbols, var order
    perturbation_key: str
    replicate_key: str | None
    labels: np.ndarray  # [cells] perturbation label of every cell (str)
    replicate: np.ndarray  # [cells] int codes of the pairing context
    mu: np.ndarray  # [G] control mean (normalised scale)
    sd: np.ndarray  # [G] overall spread, floored at MIN_SPREAD
    X: Any  # [cells, G] standardised float32 (np.ndarray), or a BackedExpression over the file
    reference: np.ndarray  # [<= N_REFERENCE_CELLS, G] standardised control cells (seeded)
    seed: int
    _adata: Any = None  # kept until :meth:`release`: NMF programs read normalised columns from it
    _normalised: np.ndarray | None = None  # in memory: the normalised (unscaled) matrix, until :meth:`release`

    @property
    def in_memory(self) -> bool:
        return isinstance(self.X, np.ndarray)

    def nmf_input(self, gene_idx: list[int]) -> np.ndarray:
        """Normalised expression of genes ``gene_idx`` to fit NMF programs on (backed: a seeded subsample)."""
        if self._normalised is not None:
            return self._normalised[:, gene_idx]
        if self._adata is None:
            raise RuntimeError("nmf_input after release(); fit the programs before releasing the data")
        n = len(self.labels)
        rng = np.random.default_rng(self.seed)
        sub = np.sort(rng.choice(n, size=min(BACKED_SUBSAMPLE, n), replace=False))
        return normalize_block(read_rows(self._adata.X, sub), self.registration.input)[:, gene_idx]

    def release(self) -> None:
        """Drop what only setup needs (the unscaled matrix, the AnnData handle)."""
        self._adata, self._normalised = None, None


def prepare(adata: Any, *, perturbation_key: str, control: str, dose_key: str | None, compound_id_key: str | None,
            gene_symbols_key: str | None, input: str, replicate_key: str | None, id_map: Any,
            min_cells_per_group: int | None, seed: int) -> PreparedData:
    """Register ``adata`` (:func:`bioworld.data.register`) and standardise it; see :class:`PreparedData`.

    ``replicate_key`` None: the first of ``REPLICATE_CANDIDATES`` in ``obs``; ``min_cells_per_group``
    None: 1 for log input, 3 for counts. A backed AnnData costs one streaming pass for the statistics.
    """
    if min_cells_per_group is None:
        min_cells_per_group = 1 if input == "log" else 3
    _check_arguments(adata, input, min_cells_per_group)  # an AnnData, before its obs is read
    if replicate_key is None:
        replicate_key = next((k for k in REPLICATE_CANDIDATES if k in adata.obs.columns), None)
    reg = register(
        adata, perturbation_key=perturbation_key, control=control, dose_key=dose_key,
        compound_id_key=compound_id_key, gene_symbols_key=gene_symbols_key, input=input,
        replicate_key=replicate_key, min_cells_per_group=min_cells_per_group, id_map=id_map,
        inplace=False,  # the caller's AnnData (or view) is read, never written
    )
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    is_ctrl = labels == control
    normalised = None
    if is_backed(adata):  # out of core: X stays on disk; one streaming pass for the statistics
        ctrl_mean, _, spread = streaming_moments(adata.X, reg.input, is_ctrl, progress=scans_shown())
        mu = ctrl_mean
        sd = np.maximum(spread, MIN_SPREAD).astype(np.float32)
        Xs: Any = BackedExpression(adata.X, reg.input, mu, sd)
    else:
        normalised = normalize(adata, reg).astype(np.float32)
        mu = normalised[is_ctrl].mean(0)
        sd = np.maximum(normalised.std(0), MIN_SPREAD).astype(np.float32)
        Xs = ((normalised - mu) / sd).astype(np.float32)
    rep = adata.obs[replicate_key].astype(str).to_numpy() if replicate_key else np.zeros(len(labels), str)
    rng = np.random.default_rng(seed)
    ctrl_idx = np.flatnonzero(is_ctrl)
    take = np.sort(rng.choice(ctrl_idx, size=min(N_REFERENCE_CELLS, len(ctrl_idx)), replace=False))
    return PreparedData(
        registration=reg, var_names=[str(v) for v in adata.var_names], genes=list(reg.genes),
        perturbation_key=perturbation_key, replicate_key=replicate_key, labels=labels,
        replicate=pd.factorize(rep)[0], mu=mu, sd=sd, X=Xs, reference=Xs[take], seed=seed,
        _adata=adata, _normalised=normalised,
    )


def _panel_hint(cells: Any, var_names: list[str], symbols: list[str] | None) -> str:
    """Where else ``cells`` holds the model's genes: a ``var`` column, or the model's gene symbols among more genes."""
    want = set(var_names)
    for col in cells.var.columns:
        values = cells.var[col]
        if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype):
            if want <= set(values.astype(str)):
                return (f" cells.var[{col!r}] holds the model's genes: use cells.var_names = "
                        f"cells.var[{col!r}].astype(str) (then cells.var_names_make_unique() if needed).")
    if symbols and list(symbols) != var_names and set(symbols) <= {str(v) for v in cells.var_names}:
        return (" The cells are keyed by the model's gene symbols (wm.genes) and hold other genes too: subset "
                "them to those, cells[:, wm.genes].")
    return ""


def align_panel(cells: Any, var_names: list[str], genes: list[str] | None = None) -> Any:
    """``cells`` with its genes in the order of ``var_names``; refuses a panel that lacks a model gene.

    ``genes``: the model's symbols, when its ``var_names`` are ids (trained with ``gene_symbols_key`` /
    ``id_map``); cells whose ``var_names`` are those symbols are read by symbol. Cells with more genes than
    the model's (the full file a panel was chosen from) are cut to the model's genes before anything is
    normalised, as the training data were, with a :class:`~bioworld.data.DataWarning` saying how many are
    not used (``bioworld evaluate`` reads such files the same way)."""
    names = [str(v) for v in cells.var_names]
    if names == var_names:
        return cells
    if set(names) == set(var_names) and len(names) == len(var_names):
        return cells[:, var_names].copy()
    symbols = [str(g) for g in genes] if genes is not None else var_names
    if symbols != var_names and set(names) == set(symbols) and len(names) == len(symbols):
        out = cells[:, symbols].copy()
        out.var_names = pd.Index(var_names, dtype=str)
        return out
    index = pd.Index(names)
    for wanted in dict.fromkeys([tuple(var_names), tuple(symbols)]):  # a superset, each wanted gene once
        want = set(wanted)
        if want <= set(names) and not index[index.isin(list(want))].has_duplicates:
            _warn_extra(len(names) - len(wanted), [g for g in names if g not in want][:5], len(wanted))
            out = cells[:, list(wanted)].copy()
            out.var_names = pd.Index(var_names, dtype=str)
            return out
    have = set(names)
    missing = [g for g in var_names if g not in have]
    extra = [g for g in names if g not in set(var_names)]
    index = pd.Index(names)
    repeated = index[index.duplicated()].unique().tolist()
    also = f" or its gene symbols (e.g. {symbols[:3]})" if symbols != var_names else ""
    raise DataValidationError(
        f"cells have a different gene panel: {len(missing)} of the model's {len(var_names)} genes are "
        f"missing (e.g. {missing[:5]})" + (f" and {len(extra)} are extra (e.g. {extra[:5]})" if extra else "")
        + (f"; {len(repeated)} names are repeated (e.g. {repeated[:5]})" if repeated else "")
        + f". Expected the model's var_names{also} (any order, each once)." + _case_hint(missing, extra)
        + " Fix: give cells measured on the model's genes (missing genes are not imputed); subset/reindex the "
        "cells to the training panel." + _panel_hint(cells, var_names, symbols)
    )


def _case_hint(missing: list[str], extra: list[str]) -> str:
    """Missing model genes that the cells hold in another case (``'irf1'`` for ``'IRF1'``), as a sentence."""
    lower = {g.lower(): g for g in extra}
    pairs = [(lower[g.lower()], g) for g in missing if g.lower() in lower]
    if not pairs:
        return ""
    return (f" {len(pairs)} missing gene(s) are in the cells in another case (e.g. "
            + ", ".join(f"{a!r} for {b!r}" for a, b in pairs[:3]) + "): gene names are matched case-sensitively, "
            "write them as the model does.")


def _warn_extra(n_extra: int, examples: list[str], n_model: int) -> None:
    import warnings

    from bioworld.data._register import DataWarning
    from bioworld.errors import user_stacklevel

    warnings.warn(f"cells have {n_extra} genes the model was not trained on (e.g. {examples}); they are not used: the "
                  f"answers cover the model's {n_model} genes, normalised over those genes as the training data were.",
                  DataWarning, stacklevel=user_stacklevel())


def _counts_expected(cells: Any, registration: Registration) -> DataValidationError | None:
    """For a model trained on counts, cells whose ``X`` is not integer: the error a query should give (the
    registration's says "pass input='log'", which a query does not take), naming a layer of raw counts if any."""
    from bioworld.data._register import _value_stats, counts_source_hint

    if registration.input != "counts":
        return None
    s = _value_stats(cells.X)
    if s.n_nan or s.n_inf or s.n_negative or not s.n_noninteger:
        return None
    return DataValidationError(
        f"cells hold {s.n_noninteger} non-integer values in X (e.g. {s.example_noninteger:g}, max {s.maximum:g}): "
        "they look normalised, but this model was trained on raw counts (input='counts') and normalises cells "
        f"itself (normalize_total 1e4 + log1p). Fix: give the cells' raw counts; {counts_source_hint(cells, 'cells')}."
    )


def cells_to_std(cells: Any, registration: Registration, var_names: list[str], mu: np.ndarray, sd: np.ndarray
                 ) -> np.ndarray:
    """Standardised expression ``[cells, G]`` of new cells, normalised and checked as the training data were
    (genes matched by ``var_names``, or by the registration's symbols: :func:`align_panel`)."""
    from dataclasses import replace

    from bioworld.data._register import _check_matrix, _value_stats

    if not (hasattr(cells, "obs") and hasattr(cells, "var") and hasattr(cells, "X")):
        raise DataValidationError(
            f"cells is a {type(cells).__name__}; expected an AnnData (cells x genes) with the model's genes as "
            "var_names. Fix: anndata.AnnData(X, obs=..., var=pandas.DataFrame(index=wm.var_names)).")
    if cells.n_obs == 0:
        raise DataValidationError("cells is empty (0 cells); expected at least one cell")
    cells = align_panel(cells, var_names, list(registration.genes))
    try:
        _check_matrix(cells, registration.input)  # same value checks as at registration
    except DataValidationError as error:
        raise _counts_expected(cells, registration) or error from None
    if registration.input == "log":
        s = _value_stats(cells.X)
        if s.n_noninteger == 0 and s.maximum >= 1:
            raise DataValidationError(
                f"cells hold only integers (max {s.maximum:g}): they look like raw counts, but this model was "
                "trained on log-normalised values (input='log') and would read counts as log values. Fix: "
                "normalise and log-transform the cells as the training data were (e.g. sc.pp.normalize_total "
                "+ sc.pp.log1p)."
            )
    X = normalize(cells, replace(registration, n_cells=cells.n_obs)).astype(np.float32)
    if not np.isfinite(X).all():
        raise DataValidationError("cells contain NaN or infinite values after normalisation; clean the input first")
    n_empty = int((~X.any(axis=1)).sum())
    if n_empty:
        import warnings

        from bioworld.data._register import DataWarning

        warnings.warn(f"{n_empty} of {len(X)} cells have zero expression in every gene of the model's panel (kept: they "
                      "are answered as cells that express nothing). Filter empty cells first, e.g. "
                      "sc.pp.filter_cells(min_counts=1)", DataWarning, stacklevel=user_stacklevel())
    return ((X - mu) / sd).astype(np.float32)
