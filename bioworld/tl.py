"""``bw.tl``: AnnData tools in scanpy's style (``adata`` first, keyword-only options, ``copy=``).

- :func:`latents`: entity latents of a trained model as ``obsm['X_bw']`` (``key_added=``), ready
  for ``sc.pp.neighbors(adata, use_rep='X_bw')`` / ``sc.tl.umap``.
- :func:`to_cell_eval`: cell-level predicted / real AnnData pairs in the layout Arc's
  ``cell-eval`` reads (``MetricsEvaluator(adata_pred, adata_real, pert_col=..., control_pert=...)``).
- :func:`enrichment`: which pathways a predicted change enriches (gseapy's preranked GSEA, offline,
  on the bundled gene sets or your own).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError, DataValidationError
from bioworld.errors import user_stacklevel
from bioworld.report._enrichment import enrichment

__all__ = ["enrichment", "latents", "to_cell_eval"]


def _base(model: Any) -> Any:
    from bioworld.eval._evaluate import _base_model

    return _base_model(model)  # an ensemble's first member; anything but a model is refused


def latents(adata: Any, *, model: Any, key_added: str = "X_bw", copy: bool = False) -> Any:
    """Entity latents of ``model``'s context encoder for every cell of ``adata``.

    Parameters
    ----------
    adata
        Cells on the model's gene panel (any order; counts or log as trained).
    model
        A trained :class:`bioworld.WorldModel` (an ensemble: its first member).
    key_added
        ``obsm`` key to write.
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy with ``copy=True``). Writes ``adata.obsm[key_added]`` ``[cells, E * D]``
    float32 (slot-major: entity ``e``'s ``D`` dimensions are columns ``e*D .. e*D+D-1``) and
    ``adata.uns['bioworld'][key_added]`` = ``{'entity_names': [...], 'dim': D}``.
    """
    wm = _base(model)
    if not isinstance(key_added, str) or not key_added:
        raise BioworldError(f"key_added={key_added!r}; expected a non-empty obsm key such as 'X_bw'. Fix: pass "
                            "key_added='X_bw'")
    backed = bool(getattr(adata, "isbacked", False))
    if backed and not copy and getattr(adata, "is_view", False):
        raise DataValidationError(
            f"adata is a subset (view) of a backed file ({adata.n_obs} cells of {adata.filename}); anndata cannot "
            "write obsm into it. Expected an AnnData that can hold the latents. Fix: pass copy=True (returns the "
            "annotated cells in memory) or load the subset first: adata[...].to_memory()")
    z = np.asarray(wm.get_entity_latents(adata), dtype=np.float32)  # [cells, E, D]
    target = (adata.to_memory() if backed else adata.copy()) if copy else adata
    target.obsm[key_added] = z.reshape(len(z), -1)
    bw = target.uns.get("bioworld")
    if not isinstance(bw, dict):
        bw = {}
        target.uns["bioworld"] = bw
    bw[key_added] = {"entity_names": list(wm.entity_names), "dim": int(z.shape[2])}
    return target if copy else None


def _predicted_groups(model: Any, panel: Any, labels: np.ndarray, X: np.ndarray, control: str, ctrl_idx: np.ndarray,
                      *, max_cells: int | None, rng: np.random.Generator, model_control: str
                      ) -> tuple[list[np.ndarray], list[np.ndarray], list[str], dict[str, str]]:
    """Per perturbation of ``labels``: the real cells kept and the model's counterfactual of as many drawn
    control cells. Returns (real cell indices, predicted X blocks, predicted labels, skipped label -> reason);
    the control group (first) is the observed control cells in both files."""
    import anndata as ad

    real_idx, pred_labels, skipped = [ctrl_idx], [control] * len(ctrl_idx), {}
    pred_X = [X[ctrl_idx]]
    for lab in sorted(set(labels) - {control}):
        idx = np.flatnonzero(labels == lab)
        if max_cells is not None and len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, max_cells, replace=False))
        draw = rng.choice(ctrl_idx, len(idx), replace=len(idx) > len(ctrl_idx))
        try:
            # drawn with replacement when the group outnumbers the controls: rows named by draw, not by cell
            cells = ad.AnnData(X=panel.X[draw], obs=pd.DataFrame(index=pd.Index([f"draw{i}" for i in range(len(draw))])),
                               var=pd.DataFrame(index=panel.var_names.copy()))
            cf = model.counterfactual(cells, [lab if lab != control else model_control])
        except BioworldError as e:
            skipped[lab] = str(e).splitlines()[0]
            continue
        pred_X.append(np.asarray(cf.X, dtype=np.float32))
        real_idx.append(idx)
        pred_labels += [lab] * len(idx)
    return real_idx, pred_X, pred_labels, skipped


def _checked_real(model: Any, real: Any, max_cells: Any) -> Any:
    """to_cell_eval's arguments checked before the data are read; an in-memory copy of ``real`` (also of a backed
    file, which anndata cannot ``.copy()``)."""
    if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer))
                                  or max_cells < 1):
        raise BioworldError(f"max_cells={max_cells!r}; expected None (every cell) or a whole number >= 1 of cells per "
                            "perturbation and control. Fix: pass such a value.")
    _base(model)  # a model, before the data are read
    if not hasattr(real, "obs") or not hasattr(real, "var_names"):
        raise DataValidationError(
            f"real is a {type(real).__name__}; expected an AnnData of observed cells (controls and perturbed cells). "
            "Fix: read the file first: bw.data.read_h5ad(path)")
    return real.to_memory() if getattr(real, "isbacked", False) else real.copy()


def to_cell_eval(
    model: Any,
    real: Any,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    input: str | None = None,
    pert_col: str = "target_gene",
    control_pert: str = "non-targeting",
    max_cells: int | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Cell-level predicted and real AnnData for Arc's ``cell-eval``.

    The real cells are put on the model's scale (log1p CP10k for counts, the input scale for log
    input) and panel. For each perturbation of ``real`` the model can answer, the predicted cells are
    the model's counterfactual of that many control cells of ``real`` (drawn with ``seed``, with
    replacement when there are fewer controls) under the perturbation; the control cells themselves
    are the control group of both files. For counts input, predicted log1p CP10k values below 0 (not
    a possible expression; cell-eval refuses them) are set to 0 and counted in
    ``uns['bioworld']['cell_eval']['n_negative_predictions_set_to_0']``.

    Parameters
    ----------
    model
        A trained :class:`bioworld.WorldModel` (or :class:`bioworld.Ensemble`: its members' mean).
    real
        Observed cells: controls and perturbed cells (e.g. the held-out test file).
    perturbation_key, control, input
        As in :func:`bioworld.data.register`; default: the model's registration.
    pert_col, control_pert
        Column and control label cell-eval reads (its ``pert_col`` / ``control_pert`` arguments).
    max_cells
        At most this many cells per perturbation (and control) in both files (default: all).
    seed
        Seed of the control cells drawn for the predictions and of the subsampling.
    out_dir
        When given, write ``pred.h5ad`` and ``real.h5ad`` there.

    Returns
    -------
    ``(adata_pred, adata_real)``: same ``var_names`` (the model's genes, same order), dense float32
    ``X``, ``obs[pert_col]`` with ``control_pert`` for controls, the same perturbations with the same
    numbers of cells in both; ``uns['bioworld']['cell_eval']`` records the scale, the original
    labels and the perturbations skipped (with the reason, also warned about).
    """
    import anndata as ad

    from bioworld.data import normalize
    from bioworld.eval._evaluate import _on_panel, _test_registration

    real = _checked_real(model, real, max_cells)
    reg, key = _test_registration(real, model, {"perturbation_key": perturbation_key, "control": control,
                                                "input": input})
    keep = real[reg.keep_mask(real)].copy()
    panel = _on_panel(keep, model, reg)
    from dataclasses import replace

    X = normalize(panel, replace(reg, n_genes=panel.n_vars, n_cells=panel.n_obs)).astype(np.float32)
    labels = panel.obs[key].astype(str).to_numpy()
    if control_pert in set(labels) and control_pert != reg.control:
        raise DataValidationError(
            f"control_pert={control_pert!r} is also a perturbation label of the data; expected a free label for "
            "the control group. Fix: pass another control_pert."
        )
    rng = np.random.default_rng(seed)
    ctrl_idx = np.flatnonzero(labels == reg.control)
    if max_cells is not None and len(ctrl_idx) > max_cells:
        ctrl_idx = np.sort(rng.choice(ctrl_idx, max_cells, replace=False))
    base = _base(model)
    real_idx, pred_X, pred_labels, skipped = _predicted_groups(model, panel, labels, X, reg.control, ctrl_idx,
                                                               max_cells=max_cells, rng=rng, model_control=base.control)
    if skipped:
        warnings.warn(f"{len(skipped)} perturbation(s) left out of the cell-eval files (the model cannot predict "
                      "them): " + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]), stacklevel=user_stacklevel())
    if len(real_idx) == 1:
        raise BioworldError(f"the model can predict none of the perturbations in the data (e.g. "
                            f"{list(skipped.items())[:2]}); expected labels of genes / compounds / entities the model "
                            "knows. Fix: check perturbation_key and the labels' spelling")
    ridx = np.concatenate(real_idx)
    P = np.concatenate(pred_X)
    n_clipped = 0
    if reg.input == "counts":  # log1p CP10k cannot be negative; cell-eval refuses such values
        n_clipped = int((P < 0).sum())
        P = np.maximum(P, 0.0)
    var = pd.DataFrame(index=pd.Index([str(g) for g in panel.var_names], dtype=str))

    def frame(labs: list[str], prefix: str, names: list[str]) -> pd.DataFrame:
        shown = [control_pert if lab == reg.control else lab for lab in labs]
        return pd.DataFrame({pert_col: pd.Categorical(shown), "bw_label": labs},
                            index=pd.Index([f"{prefix}{n}" for n in names], dtype=str))

    real_names = [str(panel.obs_names[i]) for i in ridx]
    real_out = ad.AnnData(X=X[ridx], obs=frame([str(labels[i]) for i in ridx], "", real_names), var=var.copy())
    pred_out = ad.AnnData(X=P, obs=frame(pred_labels, "pred_", [f"{i}" for i in range(len(pred_labels))]),
                          var=var.copy())
    info = {"scale": str(getattr(base, "scale_name", reg.input)), "pert_col": pert_col, "control_pert": control_pert,
            "control_label": reg.control, "skipped": list(skipped), "skipped_reasons": list(skipped.values()),
            "seed": int(seed), "n_negative_predictions_set_to_0": n_clipped}
    for a, kind in ((pred_out, "pred"), (real_out, "real")):
        a.uns["bioworld"] = {"cell_eval": {**info, "kind": kind}}
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        from bioworld.report._h5ad import write_h5ad_atomic

        write_h5ad_atomic(pred_out, d / "pred.h5ad")
        write_h5ad_atomic(real_out, d / "real.h5ad")
    return pred_out, real_out
