"""Readers: bundled datasets and public h5ad layouts, converted to bioworld conventions.

bioworld conventions: ``obs['perturbation']`` holds labels in the action grammar (``control``,
``STAT1``, ``A+B``, ``drug@1.11``); ``var_names`` are unique gene symbols; identifiers the source
used instead (probe ids, Ensembl ids) are kept in ``var``. Loaders return raw, *unregistered*
AnnData: call :func:`bioworld.data.register` next.

Foreign layouts are converted here, once, into the grammar; parsing the grammar itself is the job
of :mod:`bioworld.actions`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from bioworld.data._bundled import bundled_path
from bioworld.data._doses import check_one_way, describe_conversions, parse_doses
from bioworld.data._register import DataWarning, _check_control, _make_unique
from bioworld.errors import DataValidationError
from bioworld.errors import user_stacklevel

__all__ = ["read_h5ad", "use_layer", "load_papalexi", "load_l1000", "read_gears", "format_dose", "compound_labels", "has_bare_names"]

PAPALEXI = "perturbseq/papalexi2021_thp1_ko.h5ad"
L1000 = "compounds/l1000_a375_lincs_dose_response.h5ad"
L1000_REGISTER_KWARGS = {
    "input": "log", "dose_key": "pert_dose", "compound_id_key": "pert_id", "min_cells_per_group": 1
}
_L1000_CONTROL_NAMES = {"dmso"}
_L1000_CONTROL_TYPES = {"ctl_vehicle"}
_GEARS_CONTROL = "ctrl"
_SYMBOL_COLUMNS = ("gene_name", "gene_symbols", "gene_symbol", "symbol")
_GRAMMAR_RESERVED = re.compile(r"[+@:\s]")


def _loader_report(adata: Any, **items: Any) -> None:
    """Record what a loader changed in ``adata.uns['bioworld']['loader']``."""
    bw = adata.uns.get("bioworld")
    if not isinstance(bw, dict):
        bw = {}
        adata.uns["bioworld"] = bw
    bw.setdefault("loader", {}).update(items)


def _unique_symbols(adata: Any, symbols: list[str], source: str) -> list[str]:
    """Make ``symbols`` unique (first keeps the name, repeats get ``-1``, ``-2``); warn and record."""
    unique, dups = _make_unique(symbols)
    if dups:
        warnings.warn(
            f"{len(dups)} gene symbols occur more than once in {source} (e.g. {dups[:5]}); the first "
            "occurrence keeps the symbol, later ones get the suffix -1, -2, ... (recorded in "
            "adata.uns['bioworld']['loader']['duplicated_symbols']).",
            DataWarning,
            stacklevel=user_stacklevel(),
        )
    _loader_report(adata, duplicated_symbols=list(dups))
    return unique


def read_h5ad(path: str | Path, layer: str | None = None) -> Any:
    """Read an ``.h5ad`` file, with a clear error when it is missing or not a valid h5ad.

    Parameters
    ----------
    path
        The file.
    layer
        Use ``adata.layers[layer]`` as the expression matrix ``X`` (scverse files often keep the raw counts
        in ``layers['counts']`` and normalised values in ``X``); the other layers are kept, the file's ``X``
        is not (recorded in ``adata.uns['bioworld']['loader']['layer']``). None: ``X`` as stored.

    Returns
    -------
    The AnnData, fully loaded in memory.

    Raises
    ------
    DataValidationError
        The path does not exist, is a folder, is not an HDF5 file, anndata cannot read it, or it has no
        layer ``layer``.
    """
    adata = _read_h5ad(path)
    return adata if layer is None else use_layer(adata, layer, source=str(path))


def use_layer(adata: Any, layer: str, *, source: str = "the data") -> Any:
    """``adata`` with ``X`` replaced by ``adata.layers[layer]`` (in place; returned for chaining).

    ``layer='raw'`` on data without a layer of that name reads ``adata.raw`` (scanpy keeps the counts there
    after ``adata.raw = adata``): in place when ``raw`` has the same genes as ``var``, else a new AnnData with
    ``raw``'s genes (``var`` = ``raw.var``; the layers, which have the other genes, are left out with a
    warning): use the returned object.

    Raises
    ------
    DataValidationError
        ``adata`` has no such layer (the message lists the layers it has, and ``raw`` when it has one).
    """
    if layer == "raw" and layer not in adata.layers and getattr(adata, "raw", None) is not None:
        return _use_raw(adata, source)
    layers = sorted(map(str, adata.layers.keys()))
    if layer not in adata.layers:
        have = f"its layers are {layers}" if layers else "it has no layers (only X)"
        raw = "; it has no .raw either" if getattr(adata, "raw", None) is None else "; its .raw is read as layer 'raw'"
        raise DataValidationError(
            f"layer {layer!r} not found in {source}; {have}{raw}. Fix: pass one of those layer names, or leave out "
            "the layer to read X."
        )
    adata.X = adata.layers[layer]
    _loader_report(adata, layer=layer)
    return adata


def _use_raw(adata: Any, source: str) -> Any:
    """:func:`use_layer` for ``adata.raw``."""
    import anndata as ad

    raw = adata.raw
    if list(map(str, raw.var_names)) == list(map(str, adata.var_names)):
        adata.X = raw.X
        _loader_report(adata, layer="raw")
        return adata
    if adata.layers.keys():
        warnings.warn(
            f"{source}: .raw has {raw.n_vars} genes and X {adata.n_vars}; reading .raw as X leaves out the layers "
            f"{sorted(map(str, adata.layers.keys()))} (they hold X's genes).",
            DataWarning,
            stacklevel=user_stacklevel(),
        )
    out = ad.AnnData(X=raw.X, obs=adata.obs, var=raw.var.copy(), obsm=dict(adata.obsm), obsp=dict(adata.obsp),
                     uns=dict(adata.uns))
    _loader_report(out, layer="raw")
    return out


def _read_h5ad(path: str | Path) -> Any:
    """:func:`read_h5ad` without a layer."""
    import anndata as ad
    import h5py

    p = Path(path).expanduser()
    if not p.exists():
        raise DataValidationError(
            f"file not found: {p}; expected an existing .h5ad file. Fix: check the path "
            f"(current folder: {Path.cwd()})."
        )
    if p.is_dir():
        raise DataValidationError(
            f"{p} is a folder; expected an .h5ad file. Fix: pass the file inside it "
            f"(found: {sorted(x.name for x in p.glob('*.h5ad'))[:5] or 'no .h5ad files'})."
        )
    if not h5py.is_hdf5(p):
        raise DataValidationError(
            f"{p} is not an HDF5 file ({p.stat().st_size} bytes): it is corrupt, truncated, or "
            "another format; expected an AnnData .h5ad. Fix: re-download/re-export it "
            "(adata.write_h5ad), or use the reader for its format (e.g. anndata.read_csv)."
        )
    try:
        from anndata._io.specs.registry import IORegistryError
    except ImportError:  # pragma: no cover - older/newer anndata layouts
        IORegistryError = ValueError  # type: ignore[misc,assignment]
    try:
        with warnings.catch_warnings():  # said below in bioworld's words (anndata's names a Python method)
            warnings.filterwarnings("ignore", message="Observation names are not unique")
            adata = ad.read_h5ad(p)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IORegistryError) as exc:
        raise DataValidationError(
            f"{p} is an HDF5 file but could not be read as AnnData ({type(exc).__name__}: {exc}); "
            "expected the h5ad layout written by anndata. Fix: re-export it with a current "
            "anndata (adata.write_h5ad)."
        ) from exc
    _warn_repeated_cell_names(adata, p)
    return adata


def _warn_repeated_cell_names(adata: Any, path: Path) -> None:
    """A :class:`DataWarning` when cell names repeat: harmless for bioworld (cells are not keyed by name; answers
    with a row per cell suffix repeats), said once, instead of anndata's advice to call a Python method."""
    names = adata.obs_names
    if names.is_unique:
        return
    repeated = names[names.duplicated()].unique().tolist()
    warnings.warn(
        f"{path.name}: {len(repeated)} cell name(s) (obs_names) occur more than once (e.g. {repeated[:3]}); bioworld "
        "does not key cells by name, and answers with a row per cell suffix repeats -1, -2, ...",
        DataWarning,
        stacklevel=user_stacklevel(),
    )


def load_papalexi() -> Any:
    """Papalexi et al. 2021 THP-1 ECCITE-seq CRISPR-KO screen (bundled, checksum-verified).

    Returns
    -------
    AnnData 16,527 cells x 299 genes; ``X`` raw UMI counts (CSR float32);
    ``obs['perturbation']`` = 20 target genes + ``control``; gRNA assignment columns
    (``grna``, ``grna_umis``, ``grna_frac``, ``n_grnas_ge5umi``), ``bio_rep``. Unregistered;
    ``uns['bioworld']['loader']['register_kwargs']`` holds the suggested :func:`register` keywords.
    """
    adata = read_h5ad(bundled_path(PAPALEXI))
    _loader_report(adata, source=PAPALEXI, register_kwargs={"input": "counts", "replicate_key": "bio_rep"})
    return adata


def format_dose(dose: float) -> str:
    """Dose as written in a label: positional notation without trailing zeros (``10``, ``3.33``)."""
    value = float(dose)
    if not np.isfinite(value):
        raise DataValidationError(f"dose {dose!r} is not a finite number; expected e.g. 3.33.")
    return np.format_float_positional(value, trim="-")


def has_bare_names(adata: Any, perturbation_key: str, control: str) -> bool:
    """True when no label in ``obs[perturbation_key]`` besides ``control`` is a compound action
    (``NAME@DOSE``): a dose column then still has to be joined to the names (:func:`compound_labels`)."""
    labels = adata.obs[perturbation_key].astype(str)
    return not labels[labels != str(control)].str.contains("@", regex=False).any()


#: ``obs`` column :func:`compound_labels` writes its ``NAME@DOSE`` labels to (the CLI's ``--dose-key``).
COMPOUND_LABELS_KEY = "bw_perturbation"


def compound_labels(
    adata: Any,
    *,
    name_key: str,
    dose_key: str,
    control: str,
    key_added: str = COMPOUND_LABELS_KEY,
) -> str:
    """Turn a compound-name column and a dose column into compound actions ``NAME@DOSE``.

    Raw compound screens (the LINCS L1000 plates, sci-Plex) store the compound in one ``obs``
    column and its dose in another; the action grammar reads ``vemurafenib@3.33`` as "this compound
    at this dose" and a bare name as a gene knockout. This writes the grammar labels to a new column
    and leaves the given columns as they are.

    Parameters
    ----------
    adata
        Cells x genes; annotated in place (only ``obs[key_added]`` is written).
    name_key
        ``obs`` column with compound names (e.g. ``pert_iname``).
    dose_key
        ``obs`` column with numeric doses (µM or the screen's unit; written without trailing zeros).
    control
        Label of vehicle / unperturbed cells in ``name_key``; they keep it and need no dose.
    key_added
        ``obs`` column to write.

    Returns
    -------
    ``key_added``. ``adata.obs[key_added]`` = ``NAME@DOSE`` per treated cell, ``control`` for control
    cells (categorical); ``adata.uns['bioworld']['loader']['compound_labels']`` records the columns.

    Raises
    ------
    DataValidationError
        A missing column, a compound name with ``+``, ``@``, ``:`` or whitespace (reserved by the
        grammar), or treated cells without a numeric, finite, non-negative dose.
    """
    obs = adata.obs
    for key, what, flag in ((name_key, "compound names", "--perturbation-key"), (dose_key, "doses", "--dose-key")):
        if key not in obs.columns:
            raise DataValidationError(
                f"obs has no column {key!r} ({what}); found columns {list(obs.columns)[:12]}. "
                f"Fix: pass the column that holds the {what} ({flag} on the command line)."
            )
    name = obs[name_key].astype(str)
    _check_control(name, str(control), name_key)  # not found: the error lists close / control-like labels
    is_control = (name == str(control)).to_numpy()
    bad_names = sorted({n for n in name[~is_control] if _GRAMMAR_RESERVED.search(n) or n == ""})
    if bad_names:
        raise DataValidationError(
            f"compound names {bad_names[:5]} in obs[{name_key!r}] are empty or contain '+', '@', ':' or spaces, "
            "which the action grammar reserves; expected plain names. Fix: rename them, e.g. "
            f"adata.obs[{name_key!r}] = adata.obs[{name_key!r}].str.replace(' ', '-')."
        )
    dose = _treated_doses(obs, name, dose_key, is_control)
    labels = [str(control) if ctl else f"{n}@{format_dose(d)}" for n, d, ctl in zip(name, dose, is_control)]
    obs[key_added] = pd.Categorical(labels)
    _loader_report(adata, compound_labels={"name_key": name_key, "dose_key": dose_key, "key_added": key_added})
    return key_added


def _treated_doses(obs: Any, name: pd.Series, dose_key: str, is_control: np.ndarray) -> np.ndarray:
    """The dose of every cell (read by :func:`parse_doses`; in µM when written with a unit, with a warning);
    refuses treated cells without a readable dose and treated doses that mix numbers with and without a unit."""
    column = obs[dose_key]
    dose, with_unit, converted = parse_doses(column)
    treated = ~is_control
    bad = treated & ~(np.isfinite(dose) & (dose >= 0))
    if bad.any():
        examples = [str(v) for v in pd.unique(column[bad].astype(object).astype(str))[:5]]
        compounds = [str(v) for v in pd.unique(name[bad])[:5]]
        raise DataValidationError(
            f"{int(bad.sum())} treated cells (compounds {compounds}) have a missing, non-numeric, negative or infinite "
            f"dose in obs[{dose_key!r}] (e.g. {examples}); expected a dose >= 0 per treated cell: a number, or a "
            "number with a molar unit (10uM, 0.1 µM, 100 nM). Fix: fill in those doses, or remove those cells from "
            "the data (vehicle cells belong under the control label and need no dose)."
        )
    check_one_way(column, dose, with_unit, treated, dose_key)
    if converted:
        warnings.warn(
            f"doses in obs[{dose_key!r}] are written with units; read in µM (the unit of the bundled compound data): "
            f"{describe_conversions(converted)}. The labels are NAME@DOSE with the dose in µM.",
            DataWarning,
            stacklevel=user_stacklevel(),
        )
    return dose


def load_l1000() -> Any:
    """LINCS L1000 A375 dose-response profiles (bundled, checksum-verified).

    Returns
    -------
    AnnData 341 wells x 978 landmark genes; ``X`` log2 quantile-normalised expression (register
    with ``input='log'``). Conversions:

    - ``var_names`` = gene symbols from ``var['pr_gene_symbol']``; probe ids in ``var['probe_id']``.
      Repeated symbols are made unique (the first occurrence keeps the symbol, later ones get
      ``-1``, ``-2``, ...), with a :class:`~bioworld.data._register.DataWarning`; the repeated
      symbols are listed in ``uns['bioworld']['loader']['duplicated_symbols']``.
    - ``obs['perturbation']`` = ``control`` for DMSO / ``pert_type == 'ctl_vehicle'`` wells, else
      ``NAME@DOSE`` with the dose in µM without trailing zeros (``vemurafenib@3.33``,
      ``PLX-4720@10``). ``pert_iname`` and ``pert_dose`` are kept.
    - ``uns['bioworld']['obs_unit'] = 'wells'`` (used by summaries).

    There is one well per compound and dose, so register it with ``min_cells_per_group=1``:
    ``register(adata, **adata.uns['bioworld']['loader']['register_kwargs'])`` (= ``input='log',
    dose_key='pert_dose', compound_id_key='pert_id', min_cells_per_group=1``).
    """
    adata = read_h5ad(bundled_path(L1000))
    var = adata.var
    if "pr_gene_symbol" not in var.columns:
        raise DataValidationError(
            f"{L1000}: var has no 'pr_gene_symbol' column (found {list(var.columns)}); expected the "
            "L1000 GCT row metadata. Fix: restore the bundled file."
        )
    if "probe_id" not in var.columns:
        var["probe_id"] = adata.var_names.astype(str)
    symbols = var["pr_gene_symbol"].astype(object)
    missing = symbols.isna() | (symbols.astype(str).str.strip() == "")
    symbols = symbols.where(~missing, var["probe_id"]).astype(str).tolist()
    adata.var_names = pd.Index(_unique_symbols(adata, symbols, "var['pr_gene_symbol']"), dtype=object)
    if missing.any():
        _loader_report(adata, probes_without_symbol=var.loc[missing.to_numpy(), "probe_id"].tolist())

    obs = adata.obs
    name = obs["pert_iname"].astype(str)
    dose = pd.to_numeric(obs["pert_dose"], errors="coerce")
    is_control = name.str.casefold().isin(_L1000_CONTROL_NAMES) | obs["pert_type"].astype(str).isin(
        _L1000_CONTROL_TYPES
    )
    bad_names = sorted({n for n in name[~is_control] if _GRAMMAR_RESERVED.search(n)})
    if bad_names:
        raise DataValidationError(
            f"compound names {bad_names[:5]} contain '+', '@', ':' or spaces, which the action "
            "grammar reserves; expected plain names. Fix: rename them in obs['pert_iname']."
        )
    no_dose = ~is_control & dose.isna()
    if no_dose.any():
        raise DataValidationError(
            f"{int(no_dose.sum())} treated wells have no numeric pert_dose; expected a dose in µM. "
            "Fix: restore the bundled file."
        )
    labels = [
        "control" if ctl else f"{n}@{format_dose(d)}"
        for n, d, ctl in zip(name, dose, is_control)
    ]
    obs["perturbation"] = pd.Categorical(labels)
    adata.uns["bioworld"]["obs_unit"] = "wells"
    _loader_report(adata, source=L1000, register_kwargs=dict(L1000_REGISTER_KWARGS))
    return adata


# ----------------------------------------------------------------------------------------------
# GEARS / scPerturb


def _gears_condition_to_label(condition: str) -> str:
    """GEARS ``condition`` (``ctrl``, ``A+ctrl``, ``ctrl+A``, ``A+B``) -> bioworld label."""
    parts = [p.strip() for p in str(condition).split("+")]
    if any(p == "" for p in parts):
        raise DataValidationError(
            f"GEARS condition {condition!r} has an empty component; expected 'ctrl', 'A+ctrl' or "
            "'A+B'. Fix: correct obs['condition']."
        )
    genes = sorted(p for p in parts if p != _GEARS_CONTROL)
    return "+".join(genes) if genes else "control"


def _scperturb_label(label: str, nperts: Any, known: set[str]) -> str | None:
    """scPerturb label -> bioworld label; None when a '_' label cannot be split reliably."""
    if label == "control":
        return "control"
    if "_" not in label:
        return label
    parts = label.split("_")
    if nperts is not None and not pd.isna(nperts):
        return "+".join(sorted(parts)) if int(nperts) == len(parts) else (label if int(nperts) == 1 else None)
    return "+".join(sorted(parts)) if all(p in known for p in parts) else None


def _detect_layout(adata: Any) -> str:
    if "condition" in adata.obs.columns:
        return "gears"
    if "perturbation" in adata.obs.columns:
        return "scperturb"
    raise DataValidationError(
        f"cannot detect the layout: obs has neither 'condition' (GEARS) nor 'perturbation' "
        f"(scPerturb); found obs columns {list(adata.obs.columns)[:20]}. Fix: rename the column "
        "with perturbation labels, or load the file with read_h5ad and register(perturbation_key=...)."
    )


def _symbols_to_var_names(adata: Any, layout: str) -> None:
    var = adata.var
    ids = adata.var_names.astype(str)
    col = next((c for c in _SYMBOL_COLUMNS if c in var.columns), None)
    if col is None:
        looks_ensembl = ids.str.match(r"^ENS[A-Z]*G\d{11}").mean() >= 0.5
        if layout == "gears" or looks_ensembl:
            raise DataValidationError(
                f"var has none of the symbol columns {list(_SYMBOL_COLUMNS)} (found "
                f"{list(var.columns)[:10]}) and var_names look like "
                f"{'Ensembl ids' if looks_ensembl else 'ids'} (e.g. {list(ids[:2])}); expected "
                "var['gene_name'] with gene symbols. Fix: add it, or read with read_h5ad and "
                "register(..., id_map='auto')."
            )
        var["gene_id"] = list(ids)
        _loader_report(adata, symbol_column="var_names")
        return
    symbols = var[col].astype(object)
    missing = symbols.isna() | (symbols.astype(str).str.strip() == "")
    if missing.any():
        symbols = symbols.where(~missing, pd.Series(list(ids), index=var.index))
    if "gene_id" not in var.columns:
        var["gene_id"] = list(ids)
    unique = _unique_symbols(adata, symbols.astype(str).tolist(), f"var[{col!r}]")
    adata.var_names = pd.Index(unique, dtype=object)
    _loader_report(adata, symbol_column=col, genes_without_symbol=int(missing.sum()))


def read_gears(path: str | Path, *, layout: Literal["auto", "gears", "scperturb"] = "auto") -> Any:
    """Read a GEARS or scPerturb h5ad and convert it to bioworld conventions.

    Layouts
    -------
    GEARS (``layout='gears'``, detected by ``obs['condition']``): conditions ``ctrl``, ``A+ctrl``
    (or ``ctrl+A``) and ``A+B`` become ``control``, ``A`` and ``A+B``; the original string stays in
    ``obs['condition']``. Components of a combination are sorted (``B+A`` -> ``A+B``), as in the
    canonical :attr:`bioworld.actions.Action.label`.

    scPerturb (``layout='scperturb'``, detected by ``obs['perturbation']`` without
    ``obs['condition']``): ``control`` stays; combinations are joined with ``_`` there (``A_B``).
    A ``_`` label is split into ``A+B`` (components sorted) when ``obs['nperts']`` (scPerturb's number of
    perturbations) equals the number of parts, or, without ``nperts``, when every part is a gene
    symbol of the panel. Labels that cannot be split reliably are kept unchanged and reported with
    a :class:`~bioworld.data._register.DataWarning` (listed in
    ``uns['bioworld']['loader']['unsplit_labels']``). The original labels go to
    ``obs['perturbation_source']``.

    Genes: ``var_names`` become the symbols of ``var['gene_name']`` (or ``gene_symbols``,
    ``gene_symbol``, ``symbol``); the original ``var_names`` (usually Ensembl ids) are kept in
    ``var['gene_id']``. Repeated symbols get ``-1``, ``-2``, ... suffixes (with a warning).

    Returns
    -------
    AnnData with ``obs['perturbation']`` (categorical, action grammar), unregistered;
    ``uns['bioworld']['loader']`` records the layout and what was changed.
    """
    adata = read_h5ad(path)
    found = _detect_layout(adata) if layout == "auto" else layout
    if found not in ("gears", "scperturb"):
        raise DataValidationError(
            f"layout={layout!r}; expected 'auto', 'gears' or 'scperturb'. Fix: pass one of those."
        )
    _loader_report(adata, layout=found, source=str(path))
    _symbols_to_var_names(adata, found)
    obs = adata.obs
    if found == "gears":
        if "condition" not in obs.columns:
            raise DataValidationError(
                f"layout='gears' but obs has no 'condition' column (found {list(obs.columns)[:20]}); "
                "expected GEARS conditions like 'A+B', 'A+ctrl', 'ctrl'. Fix: use layout='auto'."
            )
        cond = obs["condition"].astype(object)
        if cond.isna().any():
            raise DataValidationError(
                f"obs['condition'] has {int(cond.isna().sum())} missing values; expected a condition "
                "for every cell. Fix: fill or remove those cells."
            )
        mapping = {c: _gears_condition_to_label(c) for c in pd.unique(cond.astype(str))}
        obs["perturbation"] = pd.Categorical(cond.astype(str).map(mapping))
        return adata

    if "perturbation" not in obs.columns:
        raise DataValidationError(
            f"layout='scperturb' but obs has no 'perturbation' column (found "
            f"{list(obs.columns)[:20]}). Fix: use layout='auto'."
        )
    source = obs["perturbation"].astype(object)
    obs["perturbation_source"] = source.astype("category")
    known = set(adata.var_names)
    nperts = obs["nperts"] if "nperts" in obs.columns else pd.Series(None, index=obs.index)
    converted, unsplit = [], set()
    cache: dict[tuple[str, Any], str] = {}
    for lab, n in zip(source, nperts):
        if pd.isna(lab):
            converted.append(lab)  # left for register() to report
            continue
        key = (str(lab), None if n is None or pd.isna(n) else int(n))
        if key not in cache:
            out = _scperturb_label(key[0], key[1], known)
            if out is None:
                unsplit.add(key[0])
                out = key[0]
            cache[key] = out
        converted.append(cache[key])
    if unsplit:
        warnings.warn(
            f"{len(unsplit)} scPerturb labels contain '_' but could not be split reliably into a "
            f"combination (e.g. {sorted(unsplit)[:5]}); they are kept unchanged. Fix: set "
            "obs['nperts'] or rewrite them as 'A+B'.",
            DataWarning,
            stacklevel=user_stacklevel(),
        )
    _loader_report(adata, unsplit_labels=sorted(unsplit))
    obs["perturbation"] = pd.Categorical(converted)
    return adata
