"""``bw.pl``: plots of predictions, latents and effects; each draws on ``ax=`` (a new figure when None)
and returns the Axes, as scanpy's ``show=False`` plots do.

- :func:`predicted_vs_observed`: predicted against observed deltas, per perturbation, with Pearson r.
- :func:`latent_umap`: UMAP of the model's entity latents (scanpy neighbours + UMAP on ``obsm['X_bw']``).
- :func:`effect_bars`: the genes a perturbation moves most, with intervals / spread when known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError
from bioworld.report._enrichment import answer_genes, layer_values

__all__ = ["effect_bars", "latent_umap", "predicted_vs_observed"]


def _check_count(name: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BioworldError(f"{name}={value!r}; expected a whole number >= 1 of genes"
                            + (" or None (every gene)" if allow_none else "") + f". Fix: pass e.g. {name}=20")


def _axes(ax: Any, size: tuple[float, float] = (4.5, 4.0)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=size)
    return ax


def _rows(x: Any, layer: str, what: str) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """``{label: [G]}`` from a dict, a DataFrame (rows = labels) or an AnnData (obs_names, ``layers[layer]``),
    and the gene names of the columns (None for a dict: no names)."""
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], Mapping):
        x = x[0]  # mean_deltas(X, labels, control) returns (deltas, control mean)
    if isinstance(x, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in x.items()}, None
    if isinstance(x, pd.DataFrame):
        return {str(k): x.loc[k].to_numpy(dtype=np.float64) for k in x.index}, [str(c) for c in x.columns]
    if hasattr(x, "obs_names") and hasattr(x, "layers"):
        M = x.layers[layer] if layer in x.layers else None
        if M is None:
            raise BioworldError(f"{what} has no layers[{layer!r}] (found {list(x.layers)}); expected the AnnData of "
                                "WorldModel.predict (layers['delta']). Fix: pass layer= one of its layers")
        M = np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=np.float64)
        return {str(k): M[i] for i, k in enumerate(x.obs_names)}, [str(g) for g in x.var_names]
    raise BioworldError(f"{what} is a {type(x).__name__}; expected an AnnData (rows = perturbations), a DataFrame "
                        "or a dict label -> [genes] delta. Fix: pass WorldModel.predict's AnnData, or observed deltas "
                        "as a DataFrame (rows = labels, columns = genes)")


def _common_genes(pred: dict[str, np.ndarray], pred_genes: list[str] | None, obs: dict[str, np.ndarray],
                  obs_genes: list[str] | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predicted and observed rows on the same genes, matched by name where both name their genes (an AnnData
    or a DataFrame): the predicted genes the observed also have, in the predicted order."""
    if pred_genes is None or obs_genes is None or pred_genes == obs_genes:
        return pred, obs
    where = {g: i for i, g in enumerate(obs_genes)}
    keep = [i for i, g in enumerate(pred_genes) if g in where]
    if not keep:
        raise BioworldError(f"predicted and observed share no gene name (predicted e.g. {pred_genes[:3]}, observed "
                            f"e.g. {obs_genes[:3]}); expected deltas over the same genes. Fix: name the observed "
                            "columns by the model's var_names")
    take = [where[pred_genes[i]] for i in keep]
    return {k: v[keep] for k, v in pred.items()}, {k: v[take] for k, v in obs.items()}


def predicted_vs_observed(
    predicted: Any,
    observed: Any,
    *,
    labels: Sequence[str] | None = None,
    layer: str = "delta",
    top_k: int | None = None,
    ax: Any = None,
) -> Any:
    """Scatter of predicted against observed deltas, one colour per perturbation.

    Parameters
    ----------
    predicted
        The AnnData of ``WorldModel.predict`` (``layers['delta']``, rows = labels), a DataFrame or a dict
        ``{label: [genes] delta}``.
    observed
        Observed deltas in the same form, e.g. each perturbation's mean minus the control mean
        (:func:`bioworld.eval.benchmark.mean_deltas`: its ``(deltas, control mean)`` result is taken as it
        is), on the model's scale (for counts: ``bw.data.normalize(cells, registration)``, log1p CP10k) and
        in the predicted gene order (``wm.var_names``). Genes are matched by name when both name them
        (AnnData ``var_names``, DataFrame columns; the predicted genes the observed also have, any
        order); a dict's arrays must be in the predicted gene order.
    labels
        Perturbations to show (default: every label in both).
    layer
        Layer holding the deltas of AnnData inputs.
    top_k
        Only each perturbation's ``top_k`` genes with the largest observed change (default: all genes).
    ax
        Matplotlib Axes to draw on.

    Returns
    -------
    The Axes; the legend gives each perturbation's Pearson r over the plotted genes.
    """
    _check_count("top_k", top_k, allow_none=True)  # top_k=0 plotted every gene, a negative one all but the last
    pred, obs = _common_genes(*_rows(predicted, layer, "predicted"), *_rows(observed, layer, "observed"))
    shown = [str(x) for x in labels] if labels is not None else [k for k in pred if k in obs]
    missing = [k for k in shown if k not in pred or k not in obs]
    if missing or not shown:
        both = [k for k in pred if k in obs]
        raise BioworldError(
            (f"labels {missing} are not in both predicted and observed" if missing else
             "predicted and observed have no label in common")
            + f"; predicted has {list(pred)[:5]}, observed has {list(obs)[:5]}"
            + (f", both have {both[:5]}" if both else "")
            + ". Expected the same perturbation labels (rows) in both. Fix: name the observed rows as predicted "
            "(WorldModel.predict's obs_names), or pass labels= present in both")
    ax = _axes(ax)
    lo, hi = np.inf, -np.inf
    for lab in shown:
        p, o = pred[lab], obs[lab]
        if p.shape != o.shape:
            raise BioworldError(f"{lab!r}: predicted has {p.size} genes and observed {o.size}; expected the same genes. Fix: give both "
                                "as AnnData / DataFrames with gene names (matched by name), or a dict in the predicted "
                                "gene order")
        idx = np.argsort(-np.abs(o))[:top_k] if top_k else np.arange(o.size)
        r = float(np.corrcoef(p[idx], o[idx])[0, 1]) if p[idx].std() > 0 and o[idx].std() > 0 else float("nan")
        ax.scatter(o[idx], p[idx], s=8, alpha=0.6, label=f"{lab} (r = {r:.2f})")
        lo, hi = min(lo, o[idx].min(), p[idx].min()), max(hi, o[idx].max(), p[idx].max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", zorder=0)
    ax.axhline(0, color="lightgrey", lw=0.5, zorder=0)
    ax.axvline(0, color="lightgrey", lw=0.5, zorder=0)
    ax.set_xlabel("observed delta")
    ax.set_ylabel("predicted delta")
    ax.set_title("predicted vs observed" + (f" (top {top_k} genes)" if top_k else ""))
    ax.legend(fontsize=7, frameon=False, loc="best")
    return ax


def latent_umap(
    adata: Any,
    *,
    model: Any = None,
    use_rep: str = "X_bw",
    color: str | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    ax: Any = None,
) -> Any:
    """UMAP of the cells' entity latents (scanpy ``pp.neighbors`` + ``tl.umap`` on ``obsm[use_rep]``).

    Parameters
    ----------
    adata
        Cells; with ``obsm[use_rep]`` already (:func:`bioworld.tl.latents`) or a ``model`` to compute it.
    model
        A trained WorldModel, used when ``obsm[use_rep]`` is missing (it is written then).
    use_rep
        ``obsm`` key of the latents.
    color
        ``obs`` column to colour by (categorical: legend; numeric: colour bar).
    n_neighbors, random_state
        Passed to scanpy.
    ax
        Matplotlib Axes to draw on.

    Returns
    -------
    The Axes. Writes ``adata.obsm[use_rep + '_umap']`` (and ``obsm[use_rep]`` when computed); the
    neighbour graph is computed on a copy and not kept.
    """
    import anndata as ad
    import scanpy as sc

    if getattr(adata, "isbacked", False) and getattr(adata, "is_view", False):
        raise BioworldError(
            f"adata is a subset (view) of a backed file ({adata.n_obs} cells of {adata.filename}); anndata cannot "
            f"write obsm[{use_rep + '_umap'!r}] into it. Expected an AnnData that can hold the UMAP. Fix: load the "
            "subset first: adata[...].to_memory()")
    if use_rep not in adata.obsm:
        if model is None:
            raise BioworldError(f"adata has no obsm[{use_rep!r}]; expected entity latents. Fix: run "
                                f"bw.tl.latents(adata, model=wm, key_added={use_rep!r}) first, or pass model=")
        from bioworld.tl import latents

        latents(adata, model=model, key_added=use_rep)
    if color is not None and color not in adata.obs.columns:
        raise BioworldError(f"color={color!r} is not an obs column; found {list(adata.obs.columns)[:10]}; expected an obs "
                            "column to colour by. Fix: pass color= one of them, or None")
    if adata.n_obs < 4:
        raise BioworldError(f"{adata.n_obs} cells; expected at least 4 for a neighbour graph and a UMAP. Fix: pass "
                            "more cells")
    tmp = ad.AnnData(obs=adata.obs[[color]].copy() if color else pd.DataFrame(index=adata.obs_names.copy()),
                     obsm={use_rep: np.asarray(adata.obsm[use_rep], dtype=np.float32)})
    sc.pp.neighbors(tmp, use_rep=use_rep, n_neighbors=min(n_neighbors, tmp.n_obs - 1), random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    xy = np.asarray(tmp.obsm["X_umap"])
    adata.obsm[f"{use_rep}_umap"] = xy
    ax = _axes(ax)
    if color is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    else:
        values = adata.obs[color]
        if pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
            pts = ax.scatter(xy[:, 0], xy[:, 1], c=values.to_numpy(dtype=float), s=6, cmap="viridis")
            ax.figure.colorbar(pts, ax=ax, label=color)
        else:
            for cat in pd.unique(values.astype(str)):
                m = (values.astype(str) == cat).to_numpy()
                ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, label=cat)
            ax.legend(fontsize=7, frameon=False, markerscale=2, loc="best", title=color)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"entity latents ({use_rep})")
    return ax


def effect_bars(
    adata: Any,
    label: str,
    *,
    n_genes: int = 20,
    layer: str = "delta",
    ax: Any = None,
) -> Any:
    """The genes one perturbation moves most (predicted delta), as horizontal bars.

    Parameters
    ----------
    adata
        The AnnData of ``WorldModel.predict`` / ``Ensemble.predict`` (row ``label``; whiskers from
        ``layers['delta_lo']`` / ``['delta_hi']`` when present) or of ``counterfactual`` (the rows with
        ``obs['bw_intervention'] == label`` are averaged; whiskers = sd over those cells).
    label
        The perturbation / intervention.
    n_genes
        Genes shown (largest absolute delta first).
    layer
        Layer with the deltas.
    ax
        Matplotlib Axes to draw on.

    Returns
    -------
    The Axes.
    """
    _check_count("n_genes", n_genes, allow_none=False)  # n_genes=0 drew an empty plot, a negative one all but a few
    D = layer_values(adata, layer)
    err = None
    if "bw_intervention" in adata.obs.columns:
        rows = (adata.obs["bw_intervention"].astype(str) == str(label)).to_numpy()
        if not rows.any():
            raise BioworldError(f"no rows with obs['bw_intervention'] == {label!r}; found "
                                f"{list(pd.unique(adata.obs['bw_intervention'].astype(str)))[:6]}; expected one of those "
                                "interventions. Fix: pass one of them, or run counterfactual with it first")
        mean = D[rows].mean(0)
        err = D[rows].std(0) if rows.sum() > 1 else None
        what = f"{label}: mean over {int(rows.sum())} cells (whiskers: sd over cells)"
    else:
        names = [str(x) for x in adata.obs_names]
        if str(label) not in names:
            raise BioworldError(f"{label!r} is not a row of adata; found {names[:6]}; expected one of its "
                                "rows (obs_names). Fix: pass one of those, or predict that label first")
        i = names.index(str(label))
        mean = D[i]
        what = f"{label}: predicted delta"
        if "delta_lo" in adata.layers and "delta_hi" in adata.layers:
            lo = layer_values(adata, "delta_lo")[i]
            hi = layer_values(adata, "delta_hi")[i]
            err = np.vstack([mean - lo, hi - mean]).clip(0)
            what += " (whiskers: interval)"
    order = np.argsort(-np.abs(mean))[:n_genes][::-1]
    genes = np.asarray(answer_genes(adata))[order]  # symbols when the model's var_names are ids
    ax = _axes(ax, (4.5, max(2.0, 0.22 * len(order) + 0.8)))
    xerr = None if err is None else (err[:, order] if np.ndim(err) == 2 else err[order])
    colors = ["#c0392b" if v > 0 else "#2c7fb8" for v in mean[order]]
    ax.barh(np.arange(len(order)), mean[order], xerr=xerr, color=colors, ecolor="grey", capsize=2)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels(genes, fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    bw_uns = adata.uns.get("bioworld", {}) if hasattr(adata, "uns") else {}
    scale = bw_uns.get("scale") if hasattr(bw_uns, "get") else None
    ax.set_xlabel(f"predicted delta ({scale})" if isinstance(scale, str) and scale else "predicted delta (model scale)")
    ax.set_title(what, fontsize=9)
    return ax
