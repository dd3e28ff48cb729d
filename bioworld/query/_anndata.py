"""Query answers as AnnData, in scanpy / scvi-tools conventions (one place for every key).

Keys written (documented once, used by ``WorldModel`` and ``Ensemble``):

- ``X``: predicted expression on the model's scale;
- ``layers['delta']``: X minus the same cells' (or the control's) predicted unperturbed state;
  ``layers['delta_sd']`` (ensembles): the members' spread of that delta;
- ``var``: indexed by the model's ``var_names`` (the training file's); when those are not the gene
  symbols the model works in (trained with ``gene_symbols_key`` / ``id_map``), ``var['bw_gene_symbol']``
  holds the symbol of each gene; a counterfactual keeps the given cells' ``var`` columns (gene ids,
  ``highly_variable``, ...) when the cells hold every gene of the answer (their ``var_names`` match);
- ``obs``: a counterfactual keeps every column of the given cells, plus ``bw_intervention`` and
  ``bw_cell``; ``obsm``: the cells' embeddings (``X_umap``, ...) are kept, plus
  ``obsm['bw_entity_shift']``, a DataFrame (columns = entity names) of how far each entity latent
  moved, in units of the slot's spread over control cells;
- ``uns['bioworld']['entity_effects'][SPEC]``: a DataFrame ``entity, shift, share`` ordered by shift; a
  counterfactual keeps the cells' ``uns['<column>_colors']`` (scanpy's category colours) of the ``obs``
  columns it keeps, and no other ``uns`` entry (neighbour graphs and the like describe the given cells only).

Everything written here is storable by plain ``AnnData.write_h5ad`` (no lists of dicts, no None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bioworld.data._register import ID_SYMBOLS_KEY

__all__ = ["ENTITY_SHIFT", "GENE_SYMBOL", "counterfactual_adata", "effects_frame", "gene_var"]

ENTITY_SHIFT = "bw_entity_shift"
GENE_SYMBOL = ID_SYMBOLS_KEY  # the column register(..., id_map=) writes
_OWN_OBS = ("bw_intervention", "bw_cell")


def gene_var(var_names: Sequence[str], genes: Sequence[str] | None = None) -> pd.DataFrame:
    """``var`` of an answer: indexed by ``var_names``, with ``bw_gene_symbol`` = ``genes`` (the model's
    symbols) when they differ from ``var_names`` (ids / probes in the training file)."""
    names = [str(g) for g in var_names]
    var = pd.DataFrame(index=pd.Index(names, dtype=str))
    if genes is not None and [str(g) for g in genes] != names:
        var[GENE_SYMBOL] = [str(g) for g in genes]
    return var


def effects_frame(effects: Any) -> pd.DataFrame:
    """Entity effects of one intervention as a DataFrame ``entity, shift, share`` (ordered as given).

    Accepts records ``[{entity, shift, share}, ...]`` (:func:`bioworld.query.explain_shifts`), a dict
    of columns, or a DataFrame.
    """
    if isinstance(effects, pd.DataFrame):
        df = effects.copy()
    elif isinstance(effects, Mapping):
        if set(effects) == {"entity", "shift", "share"}:  # columns (shift_effects): built directly, ~10x faster
            return pd.DataFrame({"entity": [str(e) for e in effects["entity"]],
                                 "shift": np.asarray(effects["shift"], dtype=np.float64),
                                 "share": np.asarray(effects["share"], dtype=np.float64)},
                                index=pd.Index([str(i) for i in range(len(effects["entity"]))], dtype=str))
        df = pd.DataFrame({k: list(v) for k, v in effects.items()})
    else:
        df = pd.DataFrame.from_records(list(effects), columns=["entity", "shift", "share"])
    df = df[["entity", "shift", "share"]].reset_index(drop=True)
    df["entity"] = df["entity"].astype(str)
    df[["shift", "share"]] = df[["shift", "share"]].astype(np.float64)
    df.index = df.index.astype(str)
    return df


def _tile_obsm(value: Any, n_reps: int, index: pd.Index) -> Any:
    if isinstance(value, pd.DataFrame):
        out = pd.concat([value] * n_reps, ignore_index=True)
        out.index = index
        return out
    if hasattr(value, "tocsr"):  # sparse
        import scipy.sparse as sp

        return sp.vstack([value] * n_reps).tocsr()
    arr = np.asarray(value)
    return np.concatenate([arr] * n_reps, axis=0)


def _rows(parts: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per-intervention blocks ``[cells, k]`` stacked intervention-major into float32 rows ``[interventions * cells, k]``."""
    if isinstance(parts, np.ndarray):
        return parts.reshape(-1, parts.shape[-1]).astype(np.float32, copy=False)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _unique_cell_names(names: list[str]) -> list[str]:
    """``names``, with repeats suffixed ``-1``, ``-2``, ... (anndata's ``obs_names_make_unique`` rule) and a warning,
    so every answer row has its own ``obs_name``; ``obs['bw_cell']`` keeps the names as given."""
    index = pd.Index(names)
    if not index.has_duplicates:
        return names
    import warnings

    from anndata.utils import make_index_unique

    from bioworld.data import DataWarning
    from bioworld.errors import user_stacklevel

    dup = index[index.duplicated()].unique().tolist()
    warnings.warn(
        f"cells.obs_names has {int(index.duplicated().sum())} repeated names (e.g. {dup[:3]}); the answer's obs_names "
        "suffix them -1, -2, ... as anndata's obs_names_make_unique does (obs['bw_cell'] keeps the names as given). "
        "Fix: give the cells unique names first to choose them yourself (Python: cells.obs_names_make_unique(); "
        "command line: in the --cells file).",
        DataWarning, stacklevel=user_stacklevel())
    return [str(c) for c in make_index_unique(index.astype(str))]


def _cells_var(var: pd.DataFrame, given: pd.DataFrame) -> pd.DataFrame:
    """``var`` with the given cells' ``var`` columns joined on, when the cells name every gene of ``var`` (a
    reindex over missing genes would turn boolean and integer columns into objects with NaN); the answer's own
    columns win a name clash."""
    cols = [c for c in given.columns if c not in var.columns]
    if not cols or given.index.has_duplicates or not var.index.isin(given.index).all():
        return var
    extra = given.loc[var.index, cols]
    extra.index = var.index
    return pd.concat([var, extra], axis=1)


def counterfactual_adata(
    cells: Any,
    specs: Sequence[str],
    X: Sequence[np.ndarray],
    delta: Sequence[np.ndarray],
    shifts: Sequence[np.ndarray],
    *,
    var_names: Sequence[str],
    entity_names: Sequence[str],
    effects: Mapping[str, Any],
    uns: Mapping[str, Any] | None = None,
    genes: Sequence[str] | None = None,
) -> Any:
    """One row per (intervention, cell), intervention-major, keeping the cells' ``obs`` and ``obsm``.

    Parameters
    ----------
    cells
        The AnnData the counterfactual was asked on (its ``obs`` columns and ``obsm`` entries are kept).
    specs
        Interventions, in order.
    X, delta, shifts
        Per intervention: ``[cells, G]`` predicted expression, ``[cells, G]`` delta, ``[cells, E]`` shift
        (a sequence of arrays, or one array ``[interventions, cells, ...]``, used without a copy where it
        is float32 already).
    var_names, entity_names
        Genes (columns of ``X``) and entities (columns of ``obsm['bw_entity_shift']``).
    genes
        The model's gene symbols (``var['bw_gene_symbol']`` where they differ from ``var_names``).
    effects
        Per intervention, its entity effects (:func:`effects_frame` input).
    uns
        Extra entries for ``uns['bioworld']``.

    Returns
    -------
    The AnnData described in this module's docstring.
    """
    import anndata as ad

    n = cells.n_obs
    specs = [str(s) for s in specs]
    cell_names = [str(c) for c in cells.obs_names]
    obs = pd.concat([cells.obs.drop(columns=[c for c in _OWN_OBS if c in cells.obs.columns])] * len(specs),
                    ignore_index=True)
    obs["bw_intervention"] = pd.Categorical(np.repeat(specs, n), categories=list(dict.fromkeys(specs)))
    obs["bw_cell"] = np.tile(cell_names, len(specs))
    row_cells = np.tile(_unique_cell_names(cell_names), len(specs))
    obs.index = pd.Index([f"{s}|{c}" for s, c in zip(np.repeat(specs, n), row_cells)], dtype=str)
    out = ad.AnnData(X=_rows(X), obs=obs, var=_cells_var(gene_var(var_names, genes), cells.var))
    out.layers["delta"] = _rows(delta)
    for key, value in cells.obsm.items():
        if key != ENTITY_SHIFT:
            out.obsm[key] = _tile_obsm(value, len(specs), out.obs_names)
    out.obsm[ENTITY_SHIFT] = pd.DataFrame(_rows(shifts), index=out.obs_names,
                                          columns=pd.Index([str(e) for e in entity_names], dtype=str))
    for key, value in getattr(cells, "uns", {}).items():  # scanpy's colours of the obs columns kept
        if str(key).endswith("_colors") and str(key)[: -len("_colors")] in out.obs.columns:
            out.uns[key] = value
    out.uns["bioworld"] = {"entity_effects": {s: effects_frame(effects[s]) for s in specs},
                           "entity_names": [str(e) for e in entity_names], **dict(uns or {})}
    return out


def relabel_interventions(cf: Any, names: dict[str, str]) -> Any:
    """``cf`` (a :func:`counterfactual_adata` answer) with its interventions renamed by ``names``
    (spec -> row label, e.g. a genetic model's compound scored as its targets' knockouts:
    ``IL1B+TNF`` -> ``bergenin``); specs not in ``names`` keep their label. Changes ``cf`` in place."""
    old = cf.obs["bw_intervention"].astype(str).to_numpy()
    new = np.array([names.get(s, s) for s in old], dtype=object)
    cf.obs["bw_intervention"] = pd.Categorical(new, categories=list(dict.fromkeys(new)))
    cf.obs_names = pd.Index([f"{s}|{c}" for s, c in zip(new, cf.obs["bw_cell"].astype(str))], dtype=str)
    eff = cf.uns["bioworld"]["entity_effects"]
    cf.uns["bioworld"]["entity_effects"] = {names.get(k, k): v for k, v in eff.items()}
    return cf
