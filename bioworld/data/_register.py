"""Register an AnnData once: validate it and record what bioworld needs in ``uns['bioworld']``.

:func:`register` checks the perturbation labels, the control group, the expression matrix and the
gene names, and stores a :class:`Registration` (a JSON-able dict) in
``adata.uns['bioworld']['registration']``. Every problem raises
:class:`~bioworld.errors.DataValidationError` saying what was found, what was expected and how to
fix it; nothing is silently stripped, dropped or replaced.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioworld.errors import DataValidationError
from bioworld.errors import user_stacklevel
from bioworld.errors import preview as _preview

__all__ = [
    "DataWarning",
    "Registration",
    "register",
    "get_registration",
    "normalize",
]

_SCHEMA_VERSION = 1
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
_COMMON_CONTROLS = ("control", "ctrl", "non-targeting", "nontargeting", "NT", "DMSO", "vehicle",
                    "ctl_vehicle", "unperturbed", "safe-targeting")
_STRAY_WS_RE = re.compile(r"^\s|\s$|\s[+@:]|[+@:]\s")  # whitespace at ends or around separators
_LOG_MAX = 30.0  # a log1p/log2 expression matrix rarely exceeds this
_COUNTS_AS_LOG_MAX = 50.0  # integer data above this declared as 'log' is almost surely counts
_CHUNK_ROWS = 8192
ID_MAP_NAME = "genesets/gene_id_map_orgHsEgDb_3.16.tsv.gz"
#: ``var`` column ``register(..., id_map=...)`` writes the mapped symbols to.
ID_SYMBOLS_KEY = "bw_gene_symbol"


class DataWarning(UserWarning):
    """Something in the data is usable but deserves attention (e.g. tiny groups set aside)."""


@dataclass(frozen=True)
class Registration:
    """What :func:`register` found and recorded; stored in ``adata.uns['bioworld']['registration']``.

    Attributes
    ----------
    perturbation_key
        ``obs`` column with perturbation labels in the action grammar.
    control
        The control label in that column.
    input
        ``"counts"`` (raw, non-negative integers) or ``"log"`` (already log-normalised).
    n_cells, n_genes
        Shape of ``X`` at registration.
    genes
        Gene symbols of the panel in ``var`` order (``var_names``, or ``var[gene_symbols_key]``).
    perturbations
        Kept non-control label -> number of cells, largest group first.
    control_n_cells
        Number of control cells.
    dropped
        Label -> reason for groups set aside (fewer than ``min_cells_per_group`` cells).
    findings
        Human-readable notes (dropped groups, gene-id mapping, ...).
    obs_unit
        What one observation is (``"cells"``; ``"wells"`` for bulk L1000 profiles).
    """

    perturbation_key: str
    control: str
    input: Literal["counts", "log"]
    n_cells: int
    n_genes: int
    genes: list[str]
    perturbations: dict[str, int]
    control_n_cells: int
    dose_key: str | None = None
    compound_id_key: str | None = None
    gene_symbols_key: str | None = None
    replicate_key: str | None = None
    min_cells_per_group: int = 3
    dropped: dict[str, str] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    obs_unit: str = "cells"
    version: int = _SCHEMA_VERSION

    @property
    def labels(self) -> list[str]:
        """Control label followed by the kept perturbation labels."""
        return [self.control, *self.perturbations]

    def keep_mask(self, adata: Any) -> np.ndarray:
        """Boolean ``[cells]`` mask of cells whose label is the control or a kept perturbation."""
        values = adata.obs[self.perturbation_key].astype(str).to_numpy()
        return np.isin(values, np.asarray(self.labels, dtype=object))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; label tables are parallel lists so the dict also fits an h5ad ``uns``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "perturbations":
                value = {"labels": list(value), "n_cells": [int(v) for v in value.values()]}
            elif f.name == "dropped":
                value = {"labels": list(value), "reasons": list(value.values())}
            elif isinstance(value, list):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Registration:
        """Rebuild from :meth:`to_dict` output (also as read back from an h5ad file)."""
        if "perturbation_key" not in d or "control" not in d:
            raise DataValidationError(
                f"registration record has keys {sorted(d)}; expected at least 'perturbation_key' "
                "and 'control'. Fix: run bioworld.data.register(adata, ...) again."
            )

        def _strs(x: Any) -> list[str]:
            return [] if x is None else [str(v) for v in np.asarray(x, dtype=object).ravel()]

        def _opt(x: Any) -> str | None:
            return None if x is None or (isinstance(x, str) and x == "") else str(x)

        pert = d.get("perturbations") or {}
        drop = d.get("dropped") or {}
        return cls(
            perturbation_key=str(d["perturbation_key"]),
            control=str(d["control"]),
            input=str(d.get("input", "counts")),  # type: ignore[arg-type]
            n_cells=int(d["n_cells"]),
            n_genes=int(d["n_genes"]),
            genes=_strs(d.get("genes")),
            perturbations=dict(zip(_strs(pert.get("labels")),
                                   (int(v) for v in np.asarray(pert.get("n_cells", [])).ravel()))),
            control_n_cells=int(d["control_n_cells"]),
            dose_key=_opt(d.get("dose_key")),
            compound_id_key=_opt(d.get("compound_id_key")),
            gene_symbols_key=_opt(d.get("gene_symbols_key")),
            replicate_key=_opt(d.get("replicate_key")),
            min_cells_per_group=int(d.get("min_cells_per_group", 3)),
            dropped=dict(zip(_strs(drop.get("labels")), _strs(drop.get("reasons")))),
            findings=_strs(d.get("findings")),
            obs_unit=str(d.get("obs_unit", "cells")),
            version=int(d.get("version", _SCHEMA_VERSION)),
        )


# ----------------------------------------------------------------------------------------------
# helpers


def _iter_values(X: Any, rows: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(values, nonzero)`` chunks of ``X``: the stored values (``.data`` of an in-memory sparse X, else
    contiguous row blocks, so a backed X is streamed once) and, with ``rows``, each row's count of non-zero values
    in the block (``None`` for an in-memory sparse X, whose rows are counted without streaming)."""
    if sp.issparse(X):
        yield np.asarray(X.data), None
        return
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        block = X[start : start + _CHUNK_ROWS]  # a backed sparse X hands out csr blocks
        if sp.issparse(block):
            nz = np.asarray((abs(block) > 0).sum(axis=1)).ravel() if rows else None
            yield np.asarray(block.data), nz
        else:
            block = np.asarray(block)
            yield block, (np.count_nonzero(block, axis=1) if rows else None)


@dataclass
class _ValueStats:
    n_nan: int = 0
    n_inf: int = 0
    n_negative: int = 0
    n_noninteger: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf
    example_noninteger: float | None = None
    empty: np.ndarray | None = None  # [cells] bool, the all-zero cells (``_value_stats(X, rows=True)`` only)


def _value_stats(X: Any, rows: bool = False) -> _ValueStats:
    """One pass over the stored values of ``X`` (zeros of a sparse matrix are not visited); ``rows``: also the
    all-zero cells (``empty``), in the same pass."""
    s = _ValueStats()
    if sp.issparse(X) and X.nnz < np.prod(X.shape):
        s.minimum, s.maximum = 0.0, 0.0
    empty: list[np.ndarray] = []
    for chunk, nonzero in _iter_values(X, rows):
        if nonzero is not None:
            empty.append(nonzero == 0)
        if chunk.size == 0:
            continue
        if not np.issubdtype(chunk.dtype, np.number) or np.issubdtype(chunk.dtype, np.complexfloating):
            raise DataValidationError(
                f"X has dtype {chunk.dtype}; expected a real numeric matrix. "
                "Fix: convert it, e.g. adata.X = adata.X.astype(np.float32)."
            )
        chunk = chunk.ravel()
        if np.issubdtype(chunk.dtype, np.floating):
            nan = np.isnan(chunk)
            inf = np.isinf(chunk)
            s.n_nan += int(nan.sum())
            s.n_inf += int(inf.sum())
            finite = chunk[~(nan | inf)] if (s.n_nan or s.n_inf) else chunk
            nonint = finite != np.round(finite)
            n_nonint = int(nonint.sum())
            if n_nonint and s.example_noninteger is None:
                s.example_noninteger = float(finite[nonint][0])
            s.n_noninteger += n_nonint
        else:
            finite = chunk
        if finite.size:
            s.n_negative += int((finite < 0).sum())
            s.minimum = min(s.minimum, float(finite.min()))
            s.maximum = max(s.maximum, float(finite.max()))
    if rows:
        s.empty = _empty_mask(X) if sp.issparse(X) else np.concatenate(empty) if empty else np.zeros(0, bool)
    return s


def _empty_mask(X: Any, block: int = 8192) -> np.ndarray:
    """``[cells]`` bool: the cells that are all zero (one pass over contiguous row blocks, so a backed X is streamed)."""
    out = np.zeros(X.shape[0], dtype=bool)
    for start in range(0, X.shape[0], block):
        chunk = X[start:start + block]
        if sp.issparse(chunk):
            nonzero = np.asarray((abs(chunk) > 0).sum(axis=1)).ravel()
        else:
            nonzero = np.count_nonzero(np.asarray(chunk), axis=1)
        out[start:start + len(nonzero)] = nonzero == 0
    return out


def _integer_counts(X: Any) -> bool:
    """True when ``X`` holds only finite non-negative integers, not all zero (raw counts)."""
    s = _value_stats(X)
    return not (s.n_nan or s.n_inf or s.n_negative or s.n_noninteger) and s.maximum > 0


def counts_source_hint(adata: Any, name: str = "adata") -> str:
    """Where ``adata`` (called ``name`` in the hint) keeps raw counts besides ``X``, as the end of a "Fix:" hint:
    the first layer of integer counts, else ``.raw`` when it holds them, else how to provide them (CLI:
    ``--layer``, which reads ``.raw`` as ``raw``)."""
    layer = next((str(k) for k, v in adata.layers.items() if _integer_counts(v)), None)
    if layer is not None:
        return f"layers[{layer!r}] holds integer counts: {name}.X={name}.layers[{layer!r}] (CLI: --layer {layer})"
    raw = getattr(adata, "raw", None)
    if raw is not None and _integer_counts(raw.X):
        return f".raw holds integer counts: {name}={name}.raw.to_adata() (CLI: --layer raw)"
    return "no layer or .raw holds integer counts: write the raw counts into a layer and read that (CLI: --layer NAME)"


def _check_matrix(adata: Any, input: str, stats: _ValueStats | None = None) -> list[str]:
    """Refuse values that are not finite, negative, or do not match ``input``; findings for doubtful ones.
    ``stats``: :func:`_value_stats` of ``adata.X`` already taken (else one pass here)."""
    X = adata.X
    if X is None:
        raise DataValidationError(
            "adata.X is None; expected an expression matrix [cells, genes]. "
            f"Fix: set adata.X; {counts_source_hint(adata)}."
        )
    s = stats if stats is not None else _value_stats(X)
    if s.n_nan or s.n_inf:
        raise DataValidationError(
            f"X contains {s.n_nan} NaN and {s.n_inf} infinite values; expected finite numbers. "
            "Fix: remove or repair those cells/genes before registering (no value is imputed)."
        )
    if s.n_negative:
        raise DataValidationError(
            f"X contains {s.n_negative} negative values (min {s.minimum:g}); expected non-negative "
            f"{'counts' if input == 'counts' else 'log-normalised expression'}. Scaled or centred "
            "data (e.g. after sc.pp.scale or regress_out) cannot be used. Fix: register raw counts "
            "(input='counts') or log1p-normalised values (input='log')."
        )
    findings: list[str] = []
    if input == "counts" and s.n_noninteger:
        if s.maximum <= _LOG_MAX:
            raise DataValidationError(
                f"input='counts' but X has {s.n_noninteger} non-integer values (e.g. "
                f"{s.example_noninteger:g}) with max {s.maximum:g}: this looks log-normalised, "
                f"not raw counts. Fix: pass input='log', or register the raw counts; {counts_source_hint(adata)}."
            )
        raise DataValidationError(
            f"input='counts' but X has {s.n_noninteger} non-integer values (e.g. "
            f"{s.example_noninteger:g}, max {s.maximum:g}); expected raw integer UMI counts. "
            "This looks normalised (e.g. CP10k). Fix: register the raw counts, or log1p-transform "
            "the normalised values and pass input='log'."
        )
    if input == "log":
        if s.n_noninteger == 0 and s.maximum > _COUNTS_AS_LOG_MAX:
            raise DataValidationError(
                f"input='log' but X holds only integers with max {s.maximum:g}: this looks like raw "
                "counts, not log-normalised data. Fix: pass input='counts' (bioworld normalises "
                "counts itself with normalize_total 1e4 + log1p)."
            )
        if s.maximum > _COUNTS_AS_LOG_MAX:
            findings.append(
                f"input='log' but X reaches {s.maximum:g}; log-normalised data is usually below "
                f"{_LOG_MAX:g}. Check that X is log-transformed."
            )
    return findings


def _labels_of(adata: Any, key: str) -> pd.Series:
    obs = adata.obs
    if key not in obs.columns:
        close = difflib.get_close_matches(key, [str(c) for c in obs.columns], n=3, cutoff=0.5)
        hint = f" Close matches: {_preview(close)}." if close else ""
        raise DataValidationError(
            f"perturbation_key {key!r} is not a column of adata.obs; available columns: "
            f"{_preview(obs.columns, 20)}.{hint} Fix: pass perturbation_key=<column with "
            "perturbation labels> (e.g. 'perturbation', 'condition', 'gene')."
        )
    values = obs[key].astype(object)
    missing = values.isna()
    blank = [u for u in pd.unique(values[~missing]) if str(u).strip() == ""]
    bad = (missing | values.isin(blank)).to_numpy()
    if bad.any():
        examples = list(obs.index[bad][:3])
        raise DataValidationError(
            f"adata.obs[{key!r}] has {int(bad.sum())} empty or missing (NaN) labels (e.g. cells "
            f"{_preview(examples)}); expected a perturbation label for every cell (bioworld drops no cell "
            "silently). Fix: fill them (e.g. with the control label if they are unperturbed) or remove those cells: "
            f"adata=adata[adata.obs[{key!r}].notna()].copy() (CLI: do so in the file, then run again)."
        )
    labels = values.astype(str)
    uniq = pd.unique(labels)
    stray = [u for u in uniq if _STRAY_WS_RE.search(u)]
    if stray:
        raise DataValidationError(
            f"adata.obs[{key!r}] has labels with stray whitespace: {_preview(stray)}; expected "
            "labels without leading/trailing spaces. bioworld does not strip them silently. "
            f"Fix: strip them (Python: adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).str.strip(); command "
            "line: in the file, then run again)."
        )
    return labels


def _check_control(labels: pd.Series, control: str, key: str) -> None:
    uniq = [str(u) for u in pd.unique(labels)]
    if not isinstance(control, str):  # e.g. control=0 for integer-coded labels: labels are compared as text
        raise DataValidationError(
            f"control={control!r} ({type(control).__name__}); expected the control label as a string (labels of "
            f"adata.obs[{key!r}] are compared as text: {_preview(uniq[:5])}). Fix: pass control={str(control)!r} "
            "(CLI: --control)")
    if control in uniq:
        return
    reasons: dict[str, str] = {}  # candidate label -> first reason it is suggested
    folded = control.strip().casefold()
    common = {c.casefold() for c in _COMMON_CONTROLS}
    for u in uniq:
        if u.strip().casefold() == folded:
            reasons.setdefault(u, "differs only in case or whitespace")
        elif u.strip().casefold() in common:
            reasons.setdefault(u, "looks like a control label")
    for u in difflib.get_close_matches(control, uniq, n=3, cutoff=0.6):
        reasons.setdefault(u, "is close")
    hint = (" Candidates: " + "; ".join(f"{u!r} {r}" for u, r in reasons.items()) + ".") if reasons else ""
    raise DataValidationError(
        f"control label {control!r} not found in adata.obs[{key!r}]; found {len(uniq)} labels: "
        f"{_preview(sorted(uniq), 8)}.{hint} Fix: pass control=<the label of unperturbed cells>."
    )


def _other_control_labels(counts: pd.Series, control: str) -> list[str]:
    """A finding for labels besides ``control`` that read like a control label (``non-targeting`` next to ``NT``):
    their cells are trained as a perturbation of that name."""
    common = {c.casefold() for c in _COMMON_CONTROLS}
    other = {str(u): int(n) for u, n in counts.items() if str(u) != control and str(u).strip().casefold() in common}
    if not other:
        return []
    shown = ", ".join(f"{u!r} ({n} cells)" for u, n in other.items())
    return [f"{shown} {'reads' if len(other) == 1 else 'read'} like a control label but the control is {control!r}: "
            "these cells are treated as a perturbation of that name; if they are unperturbed, relabel them "
            f"{control!r} (one control label per screen)"]


def _check_doses_used(labels: pd.Series, control: str, key: str, dose_key: str) -> None:
    """Refuse a dose column next to labels none of which is a compound action ``NAME@DOSE``: the doses would be
    ignored and the bare names trained as gene knockouts (the CLI joins them itself; the Python API does not)."""
    treated = pd.unique(labels[labels != control])
    if len(treated) == 0 or any("@" in str(u) for u in treated):
        return
    raise DataValidationError(
        f"dose_key {dose_key!r} is given but no label in obs[{key!r}] is a compound action NAME@DOSE (e.g. "
        f"{_preview(treated[:2])}), so the doses would be ignored and the names trained as gene knockouts; expected "
        "NAME@DOSE labels. Fix: join names and doses first, bioworld.data.compound_labels(adata, "
        f"name_key={key!r}, dose_key={dose_key!r}, control={control!r}), then pass "
        "perturbation_key='bw_perturbation' (the CLI's --dose-key does this itself), or leave out dose_key."
    )


def _zero_dose_finding(labels: pd.Series, control: str) -> list[str]:
    """A finding for labels that give a compound at dose 0 (``NAME@0``): their cells are trained as a perturbation
    of their own, though often they are vehicle controls under another name."""
    def zero(label: str) -> bool:
        for part in label.split("+"):
            if "@" in part:
                try:
                    if float(part.rsplit("@", 1)[1]) == 0:
                        return True
                except ValueError:  # not a number: the action grammar reports it
                    continue
        return False

    found = [str(u) for u in pd.unique(labels[labels != control]) if zero(str(u))]
    if not found:
        return []
    return [f"{len(found)} label(s) give a compound at dose 0 ({_preview(found[:3])}): their cells are trained as "
            f"perturbations of their own; if they are vehicle-treated controls, label them {control!r} instead "
            "(or give them the dose they received)"]


def _check_obs_key(adata: Any, key: str | None, what: str) -> None:
    if key is not None and key not in adata.obs.columns:
        close = difflib.get_close_matches(key, [str(c) for c in adata.obs.columns], n=3, cutoff=0.5)
        hint = f" Close matches: {_preview(close)}." if close else ""
        raise DataValidationError(
            f"{what} {key!r} is not a column of adata.obs; available columns: "
            f"{_preview(adata.obs.columns, 20)}.{hint} Fix: pass an existing column, or {what}=None (CLI: leave out "
            f"--{what.replace('_', '-')}) to go without."
        )


def _check_dose(adata: Any, dose_key: str) -> list[str]:
    from bioworld.data._doses import check_one_way, describe_conversions, parse_doses

    raw = adata.obs[dose_key]
    as_obj = raw.astype(object)
    numeric, with_unit, converted = parse_doses(as_obj)
    bad = np.isnan(numeric) & as_obj.notna().to_numpy()
    if bad.any():
        examples = [str(v) for v in pd.unique(as_obj[bad].astype(str))]
        raise DataValidationError(
            f"dose column adata.obs[{dose_key!r}] has {int(bad.sum())} non-numeric values (e.g. "
            f"{_preview(examples, 3)}); expected numbers in one unit, or numbers with a molar unit (10uM, 0.1 µM, "
            "100 nM). Fix: write those doses as numbers or with one of those units."
        )
    finite = numeric[~np.isnan(numeric)]
    if (~np.isfinite(finite)).any() or (finite < 0).any():
        raise DataValidationError(
            f"dose column adata.obs[{dose_key!r}] has negative or infinite values (min "
            f"{finite.min():g}); expected doses >= 0. Fix: correct those doses (placeholders such "
            "as -666 should become 0 for vehicle controls or NaN)."
        )
    check_one_way(as_obj, numeric, with_unit, np.ones(len(numeric), bool), dose_key)
    findings = [f"dose column {dose_key!r}: doses written with units, read in µM ({describe_conversions(converted)})"
                ] if converted else []
    n_missing = int(np.isnan(numeric).sum())
    return findings + ([f"dose column {dose_key!r}: {n_missing} cells without a dose"] if n_missing else [])


def _ensembl_map(id_map: Any) -> dict[str, str]:
    """Ensembl gene id (no version) -> symbol, from the bundled org.Hs.eg.db table or a mapping."""
    if isinstance(id_map, Mapping):
        return {str(k).split(".")[0]: str(v) for k, v in id_map.items()}
    if id_map != "auto":
        raise DataValidationError(
            f"id_map={id_map!r}; expected None, 'auto' (bundled org.Hs.eg.db table) or a mapping "
            "{ensembl_id: symbol}. Fix: pass one of those."
        )
    from bioworld.data._bundled import bundled_path

    with gzip.open(bundled_path(ID_MAP_NAME), "rt") as fh:
        table = pd.read_csv(fh, sep="\t", dtype=str, usecols=["symbol", "ensembl_id"])
    table = table.dropna()
    table = table[table["ensembl_id"].str.startswith("ENS")]
    # one Ensembl id can map to several symbols (several Entrez ids): keep the first in file order
    table = table.drop_duplicates("ensembl_id", keep="first")
    return dict(zip(table["ensembl_id"], table["symbol"]))


def _make_unique(names: list[str]) -> tuple[list[str], list[str]]:
    """Keep the first occurrence; later ones get ``-1``, ``-2``, ... Returns (names, duplicated)."""
    seen: dict[str, int] = {}
    taken = set(names)
    out, dups = [], []
    for n in names:
        if n not in seen:
            seen[n] = 0
            out.append(n)
            continue
        dups.append(n)
        k = seen[n]
        while True:
            k += 1
            cand = f"{n}-{k}"
            if cand not in taken:
                break
        seen[n] = k
        taken.add(cand)
        out.append(cand)
    return out, sorted(set(dups))


def _symbols_column(adata: Any, key: str, findings: list[str]) -> list[str]:
    """The symbols of ``adata.var[key]``, one per gene: a missing / empty symbol keeps the gene's var_name, a symbol
    shared by several genes is suffixed -1, -2, ... after its first gene (as :func:`read_gears` does); each a finding."""
    col = adata.var[key].astype(object)
    names = [str(v) for v in adata.var_names]
    missing = (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()
    genes = [name if gone else str(sym) for name, sym, gone in zip(names, col, missing)]
    if missing.any():
        findings.append(f"adata.var[{key!r}]: {int(missing.sum())} gene(s) without a symbol keep their var_name "
                        f"(e.g. {_preview([n for n, gone in zip(names, missing) if gone], 3)})")
    genes, dups = _make_unique(genes)
    if dups:
        findings.append(f"adata.var[{key!r}]: {len(dups)} symbol(s) shared by several genes (e.g. {_preview(dups, 3)}); "
                        "the first gene keeps the symbol, the others are suffixed -1, -2, ...")
    return genes


def _resolve_genes(
    adata: Any, gene_symbols_key: str | None, id_map: Any, inplace: bool = True
) -> tuple[list[str], list[str], str | None]:
    """Gene symbols of the panel, findings, and the var column holding them (None = var_names);
    ``inplace``: mapped Ensembl ids are written to ``adata.var['bw_gene_symbol']``."""
    findings: list[str] = []
    if gene_symbols_key is not None:
        if gene_symbols_key not in adata.var.columns:
            raise DataValidationError(
                f"gene_symbols_key {gene_symbols_key!r} is not a column of adata.var; available "
                f"columns: {_preview(adata.var.columns, 20)}. Fix: pass the var column holding gene "
                "symbols, or gene_symbols_key=None (CLI: leave out --gene-symbols-key) to use var_names."
            )
        genes, source = _symbols_column(adata, gene_symbols_key, findings), f"adata.var[{gene_symbols_key!r}]"
    else:
        genes, source = [str(v) for v in adata.var_names], "adata.var_names"
    dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
    if dup:
        raise DataValidationError(
            f"{source} has {len(dup)} duplicated gene names (e.g. {_preview(dup)}); expected unique "
            "genes. Fix: aggregate the duplicates, or make the names unique before registering "
            "(adata.var_names_make_unique() suffixes -1, -2, ...; a var column of symbols next to unique ids is "
            "made unique that way by gene_symbols_key=COLUMN (CLI: --gene-symbols-key COLUMN))."
        )
    n_ens = sum(bool(_ENSEMBL_RE.match(g)) for g in genes)
    if n_ens and n_ens >= 0.5 * len(genes):
        if id_map is None:
            raise DataValidationError(
                f"{source} look like Ensembl ids ({n_ens}/{len(genes)}, e.g. "
                f"{_preview([g for g in genes if _ENSEMBL_RE.match(g)], 2)}); expected gene symbols "
                "(entities and perturbations are named by symbol). Fix: pass id_map='auto' (CLI: --id-map auto) to "
                "map them with the bundled human org.Hs.eg.db table (another organism: id_map={id:symbol} (CLI: "
                "--id-map TABLE)), or gene_symbols_key=<var column with symbols>."
            )
        mapping = _ensembl_map(id_map)
        mapped = [mapping.get(g.split(".")[0]) if _ENSEMBL_RE.match(g) else g for g in genes]
        n_unmapped = sum(m is None for m in mapped)
        if n_unmapped > 0.5 * len(genes):
            raise DataValidationError(
                f"only {len(genes) - n_unmapped}/{len(genes)} Ensembl ids in {source} could be "
                "mapped to symbols; expected most to map (the bundled table is human, "
                "org.Hs.eg.db 3.16). Fix: pass id_map={id:symbol} (CLI: --id-map TABLE, columns id, symbol) for "
                "this organism, or gene_symbols_key=<var column with symbols>."
            )
        symbols = [m if m is not None else g for m, g in zip(mapped, genes)]
        symbols, dups = _make_unique(symbols)
        findings.append(
            f"mapped {n_ens - n_unmapped}/{n_ens} Ensembl ids to symbols"
            + (" (written to adata.var['bw_gene_symbol'])" if inplace else "")
            + f"; {n_unmapped} without a symbol keep their id"
            + (f"; {len(dups)} symbols shared by several ids were suffixed -1, -2, ..." if dups else "")
        )
        if inplace:
            adata.var[ID_SYMBOLS_KEY] = symbols
        return symbols, findings, ID_SYMBOLS_KEY
    return genes, findings, gene_symbols_key


# ----------------------------------------------------------------------------------------------
# public API


def _check_arguments(adata: Any, input: str, min_cells_per_group: int) -> None:
    """Refuse what is not an AnnData, an unknown input scale, a group minimum below 1 and an empty matrix."""
    if not (hasattr(adata, "obs") and hasattr(adata, "var") and hasattr(adata, "X")):
        raise DataValidationError(
            f"adata is a {type(adata).__name__}; expected an AnnData (cells x genes). "
            "Fix: load it with bioworld.data.read_h5ad(path) or anndata.AnnData(X, obs, var)."
        )
    if input not in ("counts", "log"):
        raise DataValidationError(
            f"input={input!r}; expected 'counts' (raw UMI counts) or 'log' (log-normalised). "
            "Fix: pass one of those."
        )
    if int(min_cells_per_group) < 1:
        raise DataValidationError(
            f"min_cells_per_group={min_cells_per_group}; expected an integer >= 1. Fix: pass 1 to keep every "
            "group, or the default 3."
        )
    if adata.shape[0] == 0 or adata.shape[1] == 0:
        raise DataValidationError(
            f"adata has shape {adata.shape}; expected at least one cell and one gene. "
            "Fix: check the filtering that produced it."
        )


def _check_control_cells(adata: Any, labels: Any, control: str, control_n: int, min_cells_per_group: int,
                         empty: np.ndarray | None = None) -> list[str]:
    """Refuse too few control cells or only empty ones; a finding when some control or perturbed cells are empty.
    ``empty``: the all-zero cells, when the value pass already found them (else one pass here)."""
    if control_n < min_cells_per_group:
        raise DataValidationError(
            f"control {control!r} has {control_n} cells; expected at least min_cells_per_group="
            f"{min_cells_per_group}. Fix: check the control label or lower min_cells_per_group."
        )
    if empty is None:
        empty = _empty_mask(adata.X)
    is_control = np.asarray(labels == control)
    n_empty = int(empty[is_control].sum())
    if n_empty == control_n:
        raise DataValidationError(
            f"all {control_n} control cells ({control!r}) have zero expression in every gene; expected measured "
            "unperturbed cells (every effect is measured against them). Fix: check that X holds the expression "
            f"({counts_source_hint(adata)}) and that the control label is right."
        )
    findings = []
    if n_empty:
        findings.append(f"{n_empty} of {control_n} control cells have zero expression in every gene (kept; they "
                        "carry no information: filter empty cells first, e.g. sc.pp.filter_cells(min_counts=1))")
    empty_perturbed = empty & ~is_control
    if empty_perturbed.any():
        per_group = pd.Series(np.asarray(labels)[empty_perturbed]).value_counts()
        findings.append(
            f"{int(empty_perturbed.sum())} of {int((~is_control).sum())} perturbed cells have zero expression in every "
            f"gene (kept; they read as the loss of every gene and pull their group's mean effect down: filter empty "
            f"cells first, e.g. sc.pp.filter_cells(min_counts=1)): "
            + ", ".join(f"{lab} ({n})" for lab, n in per_group.head(5).items())
            + (f" (+{len(per_group) - 5} more groups)" if len(per_group) > 5 else ""))
    return findings


def _split_groups(counts: Any, control: str, min_cells_per_group: int,
                  findings: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Perturbation groups kept (label -> cells) and set aside (label -> reason; a finding and a warning)."""
    perturbations: dict[str, int] = {}
    dropped: dict[str, str] = {}
    for label, n in counts.items():
        if label == control:
            continue
        if n < min_cells_per_group:
            dropped[str(label)] = f"{int(n)} cells < min_cells_per_group={min_cells_per_group}"
        else:
            perturbations[str(label)] = int(n)
    if dropped:
        msg = (
            f"{len(dropped)} perturbation group(s) with fewer than {min_cells_per_group} cells set "
            f"aside (listed in registration.dropped): {_preview(dropped, 8)}"
        )
        findings.append(msg)
        warnings.warn(msg + ". Lower min_cells_per_group to keep them.", DataWarning, stacklevel=user_stacklevel())
    return perturbations, dropped


def register(
    adata: Any,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    dose_key: str | None = None,
    compound_id_key: str | None = None,
    gene_symbols_key: str | None = None,
    input: Literal["counts", "log"] = "counts",
    replicate_key: str | None = None,
    min_cells_per_group: int = 3,
    id_map: Literal["auto"] | Mapping[str, str] | None = None,
    inplace: bool = True,
) -> Registration:
    """Validate ``adata`` for bioworld and record the result.

    Parameters
    ----------
    adata
        Cells x genes. ``X`` holds raw counts (``input='counts'``) or log-normalised values
        (``input='log'``); dense or sparse (only stored values of a sparse matrix are scanned).
    perturbation_key
        ``obs`` column with labels in the action grammar (``control``, ``STAT1``, ``A+B``,
        ``drug@1.11``).
    control
        Label of unperturbed cells in that column.
    dose_key, compound_id_key, replicate_key
        Optional ``obs`` columns (numeric dose; compound identifier, e.g. a BRD id; replicate).
    gene_symbols_key
        ``var`` column with gene symbols, if ``var_names`` are not symbols.
    input
        ``"counts"`` or ``"log"``.
    min_cells_per_group
        Groups with fewer cells are set aside: listed in ``Registration.dropped`` with the reason
        and reported with a :class:`DataWarning` (never silently).
    id_map
        When gene names are Ensembl ids: ``"auto"`` maps them with the bundled
        ``genesets/gene_id_map_orgHsEgDb_3.16.tsv.gz``, or pass ``{ensembl_id: symbol}``.
    inplace
        ``False``: only return the registration; ``adata`` is left exactly as it was (``WorldModel``
        and ``bioworld.eval.evaluate`` register this way, so the AnnData you pass them, or a view
        ``adata[mask]``, is not modified).

    Returns
    -------
    The :class:`Registration`. Writes ``adata.uns['bioworld']['registration']`` (its
    :meth:`~Registration.to_dict`, ``None`` entries omitted so the AnnData stays writable as h5ad)
    and, when Ensembl ids were mapped, ``adata.var['bw_gene_symbol']`` (unless ``inplace=False``).
    ``X`` is never modified.

    Raises
    ------
    DataValidationError
        Missing perturbation/control/dose/... columns or labels, empty or whitespace-padded labels,
        NaN/inf or negative values, non-integer counts, counts declared as log, duplicated or
        unmapped Ensembl gene names, non-numeric doses.
    """
    _check_arguments(adata, input, min_cells_per_group)
    n_cells, n_genes = adata.shape
    labels = _labels_of(adata, perturbation_key)
    _check_control(labels, control, perturbation_key)
    _check_obs_key(adata, dose_key, "dose_key")
    _check_obs_key(adata, compound_id_key, "compound_id_key")
    _check_obs_key(adata, replicate_key, "replicate_key")
    findings: list[str] = []
    if dose_key is not None:
        findings += _check_dose(adata, dose_key)
        _check_doses_used(labels, control, perturbation_key, dose_key)
    findings += _zero_dose_finding(labels, control)
    stats = _value_stats(adata.X, rows=True) if adata.X is not None else None  # one pass: values and empty cells
    findings += _check_matrix(adata, input, stats)
    genes, gene_findings, symbols_key = _resolve_genes(adata, gene_symbols_key, id_map, inplace)
    findings += gene_findings

    counts = labels.value_counts(sort=False)
    counts = counts.sort_values(ascending=False, kind="stable")
    control_n = int(counts[control])
    findings += _check_control_cells(adata, labels, control, control_n, min_cells_per_group, stats.empty)
    perturbations, dropped = _split_groups(counts, control, min_cells_per_group, findings)
    findings += _other_control_labels(counts, control)
    if not perturbations:
        findings.append("no perturbation group besides the control is kept")
    if replicate_key is not None:
        reps = adata.obs[replicate_key].astype(str).nunique()
        findings.append(f"{reps} replicates in obs[{replicate_key!r}]")

    bw_uns = adata.uns.get("bioworld", {})
    obs_unit = str(bw_uns.get("obs_unit", "cells")) if isinstance(bw_uns, Mapping) else "cells"
    reg = Registration(
        perturbation_key=perturbation_key,
        control=control,
        input=input,
        n_cells=int(n_cells),
        n_genes=int(n_genes),
        genes=list(genes),
        perturbations=perturbations,
        control_n_cells=control_n,
        dose_key=dose_key,
        compound_id_key=compound_id_key,
        gene_symbols_key=symbols_key,
        replicate_key=replicate_key,
        min_cells_per_group=int(min_cells_per_group),
        dropped=dropped,
        findings=findings,
        obs_unit=obs_unit,
    )
    if inplace:
        if not isinstance(adata.uns.get("bioworld"), Mapping):
            adata.uns["bioworld"] = {}
        adata.uns["bioworld"]["registration"] = {k: v for k, v in reg.to_dict().items() if v is not None}
    return reg


def get_registration(adata: Any) -> Registration:
    """Read the :class:`Registration` stored by :func:`register` in ``adata.uns['bioworld']``."""
    bw_uns = adata.uns.get("bioworld") if hasattr(adata, "uns") else None
    record = bw_uns.get("registration") if isinstance(bw_uns, Mapping) else None
    if record is None:
        raise DataValidationError(
            "adata is not registered: adata.uns['bioworld']['registration'] is missing. "
            "Fix: call bioworld.data.register(adata, perturbation_key=..., control=...) first."
        )
    return Registration.from_dict(record)


def normalize(adata: Any, registration: Registration) -> np.ndarray:
    """Expression on the log scale, as a dense ``float32`` array ``[cells, G]``.

    ``input='counts'``: each cell is scaled to 10,000 total counts, then ``log1p`` (as scanpy's
    ``normalize_total(target_sum=1e4)`` + ``log1p``; cells with zero counts stay zero).
    ``input='log'``: ``X`` as is. ``adata`` is not modified.
    """
    if adata.shape[1] != registration.n_genes:
        raise DataValidationError(
            f"adata has {adata.shape[1]} genes; expected {registration.n_genes} as registered. "
            "Fix: use the AnnData that was registered, or register this one."
        )
    from bioworld.data._backed import is_backed, iter_row_blocks, normalize_block

    if is_backed(adata):  # read block by block; the result is still the full dense matrix
        out = np.empty(adata.shape, dtype=np.float32)
        for start, stop, block in iter_row_blocks(adata.X):
            out[start:stop] = normalize_block(block, registration.input)
        return out
    return normalize_block(adata.X, registration.input)
