"""Preranked GSEA of a predicted change (``bw.tl.enrichment``; the HTML report lists its pathways)."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError


def _gene_sets(gene_sets: Any) -> tuple[dict[str, list[str]], str]:
    """``{set: genes}`` and a description from a bundled name, a GMT / weight-table path, a dict or an EntitySet."""
    from bioworld.entities import BUNDLED, EntitySet, load_bundled

    if isinstance(gene_sets, str) and gene_sets in BUNDLED:
        es, what = load_bundled(gene_sets), f"bundled {gene_sets}"
    elif isinstance(gene_sets, (str, os.PathLike)):
        from bioworld.entities import resolve_entities

        name = str(gene_sets)
        if not os.path.exists(name) and not os.path.splitext(name)[1] and os.sep not in name:
            from bioworld.entities._bundled import unknown_collection

            raise unknown_collection(name, "gene_sets")
        es, what = resolve_entities([str(gene_sets)]), str(gene_sets)
    elif isinstance(gene_sets, EntitySet):
        es, what = gene_sets, "the given EntitySet"
    elif isinstance(gene_sets, dict):
        return ({str(k): [v] if isinstance(v, str) else [str(g) for g in v] for k, v in gene_sets.items()},
                "the given gene sets")  # a set of one gene given as a string is that gene, not its letters
    else:
        raise BioworldError(f"gene_sets is a {type(gene_sets).__name__}; expected a bundled name "
                            f"({', '.join(sorted(BUNDLED))}), a GMT / weight-table path, a dict or an EntitySet. Fix: e.g. "
                            "gene_sets='hallmark' or gene_sets={'my_set': ['STAT1', 'IRF1', ...]}")
    return {e.name: [str(g) for g in e.genes] for e in es}, what


def answer_genes(adata: Any) -> list[str]:
    """Gene names of an answer's columns as symbols: ``var['bw_gene_symbol']`` when the model's ``var_names`` were
    not symbols (ids / probes with ``gene_symbols_key`` / ``id_map`` at training), else ``var_names``."""
    from bioworld.query._anndata import GENE_SYMBOL

    if GENE_SYMBOL in adata.var.columns:
        return [str(g) for g in adata.var[GENE_SYMBOL]]
    return [str(g) for g in adata.var_names]


def layer_values(adata: Any, layer: str) -> np.ndarray:
    """``adata.layers[layer]`` as a dense float64 array (a sparse layer, e.g. one a user stored as ``csr_matrix``,
    too); refuses a missing layer with what the AnnData has."""
    if layer not in adata.layers:
        raise BioworldError(f"adata has no layers[{layer!r}] (found {list(adata.layers)}); expected the AnnData of "
                            "WorldModel.predict or .counterfactual. Fix: pass layer= one of its layers")
    M = adata.layers[layer]
    return np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=np.float64)


def _check_gsea_options(permutations: Any, min_size: Any, max_size: Any) -> None:
    for name, v, lo in (("permutations", permutations, 1), ("min_size", min_size, 1), ("max_size", max_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise BioworldError(f"{name}={v!r}; expected a whole number >= {lo}. Fix: pass e.g. {name}="
                                + {"permutations": "1000", "min_size": "5", "max_size": "500"}[name])
    if min_size > max_size:
        raise BioworldError(f"min_size={min_size} is above max_size={max_size}; expected min_size <= max_size (the "
                            "range of set sizes tested). Fix: swap them or widen the range")


def enrichment(
    adata: Any,
    label: str,
    *,
    gene_sets: Any = "hallmark",
    layer: str = "delta",
    permutations: int = 1000,
    min_size: int = 5,
    max_size: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Pathways a predicted change enriches: preranked GSEA (gseapy ``prerank``, offline) of one delta.

    Parameters
    ----------
    adata
        The AnnData of ``WorldModel.predict`` (row ``label``) or ``counterfactual`` (mean of the rows
        with ``obs['bw_intervention'] == label``).
    label
        The perturbation / intervention.
    gene_sets
        ``"hallmark"`` (default), ``"reactome"``, ``"go_bp"``, ``"progeny"``, ``"dorothea"`` (bundled,
        no download), a GMT / weight-table path, a dict ``{set: genes}`` or an EntitySet.
    layer
        Layer with the deltas.
    permutations, seed
        Gene-set permutations of the null distribution and their seed (same seed, same answer).
    min_size, max_size
        Sets with fewer / more genes on the panel are not tested.

    Returns
    -------
    DataFrame ``term, nes, pval, fdr, n_genes, lead_genes`` (one row per tested set), most
    significant first (FDR, then |NES|); ``attrs['gene_sets']`` names the collection. Empty when no
    set has ``min_size`` genes on the panel.
    """
    import gseapy

    _check_gsea_options(permutations, min_size, max_size)
    D = layer_values(adata, layer)
    if "bw_intervention" in adata.obs.columns:
        rows = (adata.obs["bw_intervention"].astype(str) == str(label)).to_numpy()
        if not rows.any():
            raise BioworldError(f"no rows with obs['bw_intervention'] == {label!r}; found "
                                f"{list(pd.unique(adata.obs['bw_intervention'].astype(str)))[:6]}; expected one of "
                                "those interventions. Fix: pass one of them, or run counterfactual with it first")
        delta = D[rows].mean(0)
    else:
        names = [str(x) for x in adata.obs_names]
        if str(label) not in names:
            raise BioworldError(f"{label!r} is not a row of adata; found {names[:6]}; expected one of its "
                                "rows (obs_names). Fix: pass one of those, or predict that label first")
        delta = D[names.index(str(label))]
    sets, what = _gene_sets(gene_sets)
    genes = answer_genes(adata)
    panel = set(genes)
    sizes = {k: len(set(v) & panel) for k, v in sets.items()}
    tested = {k: v for k, v in sets.items() if min_size <= sizes[k] <= max_size}
    cols = ["term", "nes", "pval", "fdr", "n_genes", "lead_genes"]
    if not tested:
        from bioworld.errors import user_stacklevel

        why = (f"no set of {what} has {min_size} to {max_size} of the answer's {len(genes)} genes (they are named e.g. "
               f"{genes[:3]}; the most any set has is {max(sizes.values(), default=0)})")
        warnings.warn(f"{why}: nothing was tested and the table is empty. Fix: gene sets named like the panel (e.g. "
                      "symbols), or a smaller min_size", UserWarning, stacklevel=user_stacklevel())
        out = pd.DataFrame(columns=cols)
        out.attrs["gene_sets"] = what
        out.attrs["not_tested"] = why
        return out
    rnk = pd.Series(delta, index=genes)
    rnk = rnk[~rnk.index.duplicated()].sort_values(ascending=False)
    # gseapy logs each run's warnings (e.g. tied values: genes a prediction leaves unchanged) on its own console
    # handler; the share of tied genes is kept in the answer's attrs instead of printed to the user's terminal
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = gseapy.prerank(rnk=rnk, gene_sets=tested, permutation_num=int(permutations), min_size=min_size,
                                 max_size=max_size, outdir=None, seed=int(seed), threads=1, verbose=False).res2d
    finally:
        logging.disable(before)
    out = pd.DataFrame({
        "term": res["Term"].astype(str),
        "nes": pd.to_numeric(res["NES"], errors="coerce"),
        "pval": pd.to_numeric(res["NOM p-val"], errors="coerce"),
        "fdr": pd.to_numeric(res["FDR q-val"], errors="coerce"),
        "lead_genes": res["Lead_genes"].astype(str),
    })
    out["n_genes"] = out["term"].map(sizes).astype(int)
    out = out.assign(_abs=out["nes"].abs()).sort_values(["fdr", "_abs"], ascending=[True, False])
    out = out.drop(columns="_abs")[cols].reset_index(drop=True)
    out.attrs["gene_sets"] = what
    out.attrs["tied_share"] = float(rnk.duplicated(keep=False).mean())  # genes sharing their value with another
    return out
