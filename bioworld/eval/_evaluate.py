"""Score one trained model on held-out data with the benchmark's metrics, baselines and noise ceiling.

``bioworld evaluate MODEL --data TEST.h5ad`` and :func:`evaluate` answer "how good is *this* model on
*these* cells", where :mod:`bioworld.eval.benchmark` answers "how good is the method" by
cross-validation on the bundled screens. The same pieces are used: observed deltas = each
perturbation's mean minus the control mean on the model's scale (:func:`bioworld.data.normalize`),
:func:`~bioworld.eval.metrics.score_deltas` for the metrics, ``NoChange`` / ``MeanOfTrain`` baselines
and the split-half ceiling (:func:`~bioworld.eval.baselines.split_half_ceiling`).

The table is written into the model folder (``evaluation.csv``, ``evaluation_scores.csv``), where
the report and the model card read it as the model's own held-out accuracy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioworld.report._evaluation import EVALUATION, load_evaluation  # noqa: F401 (re-exported)
from bioworld.data._io import COMPOUND_LABELS_KEY
from bioworld.data._register import ID_SYMBOLS_KEY
from bioworld.errors import BioworldError, DataValidationError
from bioworld.errors import user_stacklevel
from bioworld.eval.baselines import FitContext, MeanOfTrain, NoChange, split_half_ceiling
from bioworld.eval.benchmark import CEILING, mean_deltas
from bioworld.eval.metrics import score_deltas

__all__ = ["EVALUATION", "EVALUATION_SCORES", "MODEL_METHOD", "evaluate", "format_evaluation", "load_evaluation"]

#: Summary table written into the model folder (split, method, metric, mean, sd, n).
#: Per-perturbation scores written next to it (split, method, perturbation, metric, value).
EVALUATION_SCORES = "evaluation_scores.csv"
#: Method name of the evaluated model (as in the benchmark tables).
MODEL_METHOD = "WorldModel"
SPLITS = {"unseen": "perturbations the model never trained on",
          "seen": "perturbations the model trained on (new cells of the same perturbation)"}


def _base_model(model: Any) -> Any:
    """The WorldModel whose registration / panel an ensemble's members share; refuses what is not a model."""
    base = model.members[0] if hasattr(model, "members") else model
    if not all(hasattr(base, name) for name in ("registration", "var_names", "counterfactual")):
        raise BioworldError(
            f"model is {model!r:.60} ({type(model).__name__}); expected a trained bioworld.WorldModel or "
            "bioworld.Ensemble. Fix: load a model folder first (bw.WorldModel.load(path) / bw.Ensemble.load(path)).")
    return base


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    from bioworld._atomic import write_text

    write_text(path, df.to_csv(index=False), what="evaluation table")


def _test_registration(adata: Any, model: Any, given: Mapping[str, Any]) -> tuple[Any, str]:
    """Register the test data with the model's keys (overridden by ``given``); join name + dose."""
    from bioworld.data import compound_labels, has_bare_names, register

    reg = _base_model(model).registration
    kw: dict[str, Any] = {
        "perturbation_key": reg.perturbation_key, "control": reg.control, "input": reg.input,
        "dose_key": reg.dose_key, "compound_id_key": reg.compound_id_key,
        "gene_symbols_key": reg.gene_symbols_key,
    }
    for key in ("dose_key", "compound_id_key"):  # stored obs keys the test file lacks are not used
        if kw[key] is not None and kw[key] not in adata.obs.columns:
            kw[key] = None
    kw.update({k: v for k, v in given.items() if v is not None})
    if kw["perturbation_key"] not in adata.obs.columns and given.get("perturbation_key") is None:
        if "perturbation" in adata.obs.columns:
            kw["perturbation_key"] = "perturbation"
        elif kw["perturbation_key"] == COMPOUND_LABELS_KEY and kw.get("dose_key"):
            raise DataValidationError(
                f"the model learned NAME@DOSE labels built from a compound-name column and obs[{kw['dose_key']!r}] "
                f"(in obs[{COMPOUND_LABELS_KEY!r}] of the training data), and the test data have no column "
                f"{COMPOUND_LABELS_KEY!r}; expected the column with the compound names. Fix: pass "
                "perturbation_key=COLUMN (CLI: --perturbation-key COLUMN) naming the column with the compound names, e.g. one of "
                f"{list(map(str, adata.obs.columns))[:8]}."
            )
    kw.setdefault("min_cells_per_group", 1)
    if kw.get("dose_key") and kw["perturbation_key"] in adata.obs.columns \
            and has_bare_names(adata, kw["perturbation_key"], kw["control"]):
        kw["perturbation_key"] = compound_labels(adata, name_key=kw["perturbation_key"], dose_key=kw["dose_key"],
                                                 control=kw["control"])
    if kw.get("gene_symbols_key") and kw["gene_symbols_key"] not in adata.var.columns:
        kw["gene_symbols_key"] = None
        if reg.gene_symbols_key == ID_SYMBOLS_KEY:  # trained with id_map: the test file's ids are mapped the same way
            kw["id_map"] = _model_id_map(_base_model(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            registration = register(adata, **kw)
        except DataValidationError as e:
            raise _counts_model_error(e, given, reg) from None
    return registration, kw["perturbation_key"]


def _counts_model_error(e: DataValidationError, given: Mapping[str, Any], reg: Any) -> DataValidationError:
    """Log-normalised test data for a model trained on counts: register's fix 'pass input='log'' would only be
    refused next (another scale than the model's); the fix is the raw counts."""
    msg = str(e)
    if given.get("input") is not None or reg.input != "counts" or "non-integer values" not in msg \
            or ": this looks" not in msg:
        return e
    hint = msg.split("register the raw counts", 1)[1] if "register the raw counts" in msg else "."
    return DataValidationError(
        msg.split(": this looks", 1)[0] + ": the test data look log-normalised, but this model was trained on raw "
        "counts (input='counts') and normalises the test cells itself (input='log' would be refused as another "
        "scale). Fix: give the test cells' raw counts" + hint)


def _model_id_map(model: Any) -> dict[str, str]:
    """Ensembl id -> symbol as the model mapped its training file (over the bundled human table, for other ids)."""
    from bioworld.data._register import _ensembl_map

    own = {str(i).split(".")[0]: str(g) for i, g in zip(model.var_names, model.genes)}
    return {**_ensembl_map("auto"), **own}


def _on_panel(adata: Any, model: Any, registration: Any) -> Any:
    """``adata`` restricted to (and ordered as) the model's genes; refuses missing genes.

    Genes are matched by ``var_names`` (as the query verbs match cells), or else by symbol: the test
    data's symbols (``registration.genes``: ``var_names`` or its gene-symbols column) against the
    model's (a model trained with ``gene_symbols_key`` keeps the file's ids as ``var_names``)."""
    base = _base_model(model)
    var_names = [str(v) for v in base.var_names]
    names = [str(v) for v in adata.var_names]
    have = set(names)
    if not have.issuperset(var_names):
        where = {str(g): i for i, g in enumerate(registration.genes)}
        symbols = [str(g) for g in base.genes]
        if all(g in where for g in symbols):
            adata = adata[:, [where[g] for g in symbols]].copy()
            adata.var_names = pd.Index(var_names, dtype=str)
            return adata
    missing = [g for g in var_names if g not in have]
    if missing:
        raise DataValidationError(
            f"the test data lack {len(missing)} of the model's {len(var_names)} genes (e.g. {missing[:5]}); expected "
            "every gene of the training panel. Fix: evaluate on data measured on the same genes (extra genes are fine)."
        )
    return adata if names == var_names else adata[:, var_names].copy()


def _check_out(out: Any) -> None:
    if out is not None and not Path(out).is_dir():
        raise BioworldError(f"out={str(out)!r} is not a folder; expected the model folder to write {EVALUATION} into. "
                            "Fix: pass out= an existing folder (the model's), or leave it out")


def evaluate(
    model: Any,
    adata: Any,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    dose_key: str | None = None,
    compound_id_key: str | None = None,
    gene_symbols_key: str | None = None,
    input: str | None = None,
    min_cells_per_group: int | None = None,
    train_data: Any = None,
    k: int = 20,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Score a trained model on held-out data against baselines and the split-half noise ceiling.

    Parameters
    ----------
    model
        A trained :class:`bioworld.WorldModel` (or :class:`bioworld.Ensemble`: its mean is scored).
    adata
        Test cells: control cells and perturbed cells, on the model's genes (extra genes are
        dropped), counts or log as the model was trained. Not modified, except that a name + dose
        pair of columns gets its ``NAME@DOSE`` labels in ``obs['bw_perturbation']``.
    perturbation_key, control, dose_key, compound_id_key, gene_symbols_key, input
        As in :func:`bioworld.data.register`; default: the model's own registration.
    min_cells_per_group
        Perturbations with fewer test cells are not scored (default 1; the ceiling needs 2).
    train_data
        The training AnnData (optional): the ``MeanOfTrain`` baseline is then the mean of its observed
        deltas; without it, the mean of the test data's deltas of the perturbations the model trained
        on (if there are any).
    k
        Top-``k`` DE genes for ``mse_top{k}``, ``pearson_top{k}``, ``direction_top{k}``.
    seed
        Seed of the split halves of the noise ceiling.
    out
        A folder (the model folder) to write ``evaluation.csv`` and ``evaluation_scores.csv`` to; in a single
        model's folder its model card (``README.md``) is rewritten with the table.

    Returns
    -------
    Summary DataFrame with columns ``split, method, metric, mean, sd, n`` (``split`` = ``unseen`` or
    ``seen``; methods: ``WorldModel``, ``NoChange``, ``MeanOfTrain``, ``Ceiling (split-half)``).
    ``attrs['scores']`` holds the per-perturbation table (``split, method, perturbation, metric,
    value``), ``attrs['skipped']`` ``{label: reason}`` for test labels that were not scored and
    ``attrs['notes']`` how the baselines were fitted.
    """
    given = {"perturbation_key": perturbation_key, "control": control, "dose_key": dose_key,
             "compound_id_key": compound_id_key, "gene_symbols_key": gene_symbols_key, "input": input,
             "min_cells_per_group": min_cells_per_group}
    _check_out(out)  # before the scoring, not after it
    test, reg, X, labels, base = _test_cells(adata, model, given)
    if k > X.shape[1]:
        warnings.warn(f"k={k} is more than the {X.shape[1]} genes scored: the top-{k} metrics use every gene (their "
                      f"columns keep the name *_top{k}). Fix: pass a smaller k (CLI: --k)", UserWarning,
                      stacklevel=user_stacklevel())
    control_label = reg.control
    obs, _ = mean_deltas(X, labels, control_label)
    if not obs:
        raise DataValidationError(
            f"the test data hold only control cells ({control_label!r}); expected perturbed cells to score. "
            "Fix: pass data with perturbations (and controls)."
        )
    trained = set(base.train_labels)
    pred, skipped = _model_deltas(model, obs, control_label, base.control)
    if not pred:
        raise BioworldError(
            f"the model can predict none of the {len(obs)} test perturbations (e.g. {list(skipped.items())[:2]}); "
            "expected labels of genes / compounds / entities the model knows. Fix: check perturbation_key and the "
            "labels' spelling (CLI: --perturbation-key), or evaluate a model trained on these perturbations' kind"
        )
    split_of = {lab: ("seen" if lab in trained else "unseen") for lab in pred}
    reference = np.mean(list(obs.values()), axis=0)
    notes: list[str] = []
    if "unseen" not in split_of.values():
        msg = (f"all {len(pred)} scored perturbation(s) were in the model's training data, so these scores measure how "
               "well it fits perturbations it saw (on its own training cells, if this is the training file), not how "
               "it predicts unseen ones. Fix: evaluate on perturbations held out from training (e.g. 'bioworld train "
               "--holdout LABELS', then --data with their cells)")
        notes.append(msg)
        warnings.warn(msg, stacklevel=user_stacklevel())

    train_deltas = _train_deltas(train_data, model, given, obs, trained, notes)
    ctx = FitContext(control=control_label)
    methods: dict[str, dict[str, np.ndarray]] = {MODEL_METHOD: pred}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        methods["NoChange"] = NoChange().fit(obs, ctx).predict(list(pred))
        if train_deltas:
            methods["MeanOfTrain"] = MeanOfTrain().fit(train_deltas, ctx).predict(list(pred))

    frames = _method_scores(methods, split_of, obs, k=k, reference=reference, train_given=train_data is not None)
    ceiling = split_half_ceiling(X, labels, control_label, seed, k=k, reference=reference, restrict=list(pred))
    if len(ceiling):
        frames.append(ceiling.assign(method=CEILING, split=ceiling["perturbation"].map(split_of)))
    few = sorted(set(pred) - set(ceiling["perturbation"]))
    if few:
        notes.append(f"ceiling: {len(few)} perturbation(s) with fewer than 2 test cells have no split-half ceiling")
    scores = pd.concat(frames, ignore_index=True)[["split", "method", "perturbation", "metric", "value"]]
    summary = _summarize(scores)
    summary.attrs.update(scores=scores, skipped=skipped, notes=notes,
                         n_test_cells=int(test.n_obs), n_perturbations=len(pred))
    if skipped:
        warnings.warn(f"{len(skipped)} test perturbation(s) not scored (the model cannot predict them): "
                      + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]), stacklevel=user_stacklevel())
    if out is not None:
        _write_outputs(Path(out), summary, scores, model)
    return summary


def _write_outputs(d: Path, summary: pd.DataFrame, scores: pd.DataFrame, model: Any) -> None:
    """``evaluation.csv`` / ``evaluation_scores.csv`` into ``d``; in a single model's folder (``bioworld.json``) its
    model card (``README.md``) is rewritten with the table too, as ``bioworld evaluate`` does."""
    _atomic_csv(summary, d / EVALUATION)
    _atomic_csv(scores, d / EVALUATION_SCORES)
    if not hasattr(model, "members") and (d / "bioworld.json").is_file():
        from bioworld.report.card import write_model_card

        write_model_card(model, d, evaluation=summary)


def _test_cells(adata: Any, model: Any, given: dict[str, Any]) -> tuple[Any, Any, np.ndarray, np.ndarray, Any]:
    """The test cells registered, on the model's panel and scale: ``(cells, registration, X [cells, G], labels,
    the model itself or an ensemble's first member)``."""
    from dataclasses import replace

    from bioworld.data import normalize

    if adata is None or not hasattr(adata, "obs"):
        raise DataValidationError(f"evaluate() got {type(adata).__name__} as test data; expected an AnnData of test "
                                  "cells (controls and perturbed cells). Fix: read the file first: "
                                  "bw.data.read_h5ad(path)")
    adata = adata.copy() if not getattr(adata, "isbacked", False) else adata.to_memory()
    reg, key = _test_registration(adata, model, given)
    base = _base_model(model)
    if reg.input != base.registration.input:
        raise DataValidationError(
            f"the test data are registered as input={reg.input!r} but the model was trained on "
            f"input={base.registration.input!r}; expected the same scale. Fix: pass input={base.registration.input!r}."
        )
    test = _on_panel(adata[reg.keep_mask(adata)].copy(), model, reg)
    X = normalize(test, replace(reg, n_genes=test.n_vars, n_cells=test.n_obs)).astype(np.float64)
    return test, reg, X, test.obs[key].astype(str).to_numpy(), base


def _model_deltas(model: Any, obs: dict[str, np.ndarray], control_label: str, model_control: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The model's predicted delta of every observed label; labels it cannot answer are listed, never
    silently dropped (label -> the first line of the reason)."""
    pred: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for lab in obs:
        try:
            p = model.predict([model_control if lab == control_label else lab])
        except BioworldError as e:
            skipped[lab] = str(e).splitlines()[0]
            continue
        pred[lab] = np.asarray(p.layers["delta"], dtype=np.float64)[0]
    return pred, skipped


def _train_deltas(train_data: Any, model: Any, given: dict[str, Any], obs: dict[str, np.ndarray], trained: set[str],
                  notes: list[str]) -> dict[str, np.ndarray]:
    """The observed deltas the MeanOfTrain baseline averages (from ``train_data`` when given, else the test
    data's deltas of trained perturbations); how they were chosen goes into ``notes``."""
    from dataclasses import replace

    from bioworld.data import normalize

    if train_data is not None:
        train_data = train_data.copy()  # name + dose columns may get their NAME@DOSE column
        treg, tkey = _test_registration(train_data, model, {**given, "min_cells_per_group": 1})
        tdata = _on_panel(train_data[treg.keep_mask(train_data)].copy(), model, treg)
        TX = normalize(tdata, replace(treg, n_genes=tdata.n_vars, n_cells=tdata.n_obs)).astype(np.float64)
        train_deltas, _ = mean_deltas(TX, tdata.obs[tkey].astype(str).to_numpy(), treg.control)
        train_deltas = {lab: d for lab, d in train_deltas.items() if lab in trained}
        notes.append(f"MeanOfTrain: mean of the observed deltas of {len(train_deltas)} training perturbations "
                     "in the given training data")
        return train_deltas
    train_deltas = {lab: d for lab, d in obs.items() if lab in trained}
    if train_deltas:
        notes.append(f"MeanOfTrain: mean of the test data's observed deltas of the {len(train_deltas)} "
                     "perturbations the model trained on (pass the training data for the benchmark's baseline)")
    else:
        notes.append("MeanOfTrain: not scored (no training data given and no training perturbation in the test data)")
    return train_deltas


def _method_scores(methods: dict[str, dict[str, np.ndarray]], split_of: dict[str, str], obs: dict[str, np.ndarray],
                   *, k: int, reference: np.ndarray, train_given: bool) -> list[pd.DataFrame]:
    """Per method and split, the per-perturbation scores (MeanOfTrain is not scored on the seen
    perturbations when it was fitted on their very deltas)."""
    frames = []
    for method, p in methods.items():
        for split in SPLITS:
            labs = [lab for lab in p if split_of[lab] == split]
            if not labs:
                continue
            if method == "MeanOfTrain" and split == "seen" and not train_given:
                continue  # fitted on these very deltas
            s = score_deltas({lab: np.asarray(p[lab], np.float64) for lab in labs}, obs, k=k, reference=reference,
                             candidates=obs)
            frames.append(s.assign(method=method, split=split))
    return frames


def _summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count per split x method x metric, the model first and the ceiling last."""
    summary = (scores.groupby(["split", "method", "metric"], sort=False)["value"]
               .agg(mean="mean", sd="std", n="count").reset_index())
    order = {m: i for i, m in enumerate([MODEL_METHOD, "MeanOfTrain", "NoChange", CEILING])}
    return summary.sort_values(["split", "method"], key=lambda c: c.map(order) if c.name == "method" else
                               c.map({"unseen": 0, "seen": 1}), kind="stable").reset_index(drop=True)


def format_evaluation(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """The summary as a plain-text table: one row per split x method, ``mean ± sd`` per metric."""
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(summary["metric"]))
    rows = []
    for (split, method), part in summary.groupby(["split", "method"], sort=False):
        cells = part.set_index("metric")
        n = int(cells["n"].max())
        row = {"split": split, "method": method, "n": n}
        for m in metrics:
            if m in cells.index:
                mu, sd = float(cells.loc[m, "mean"]), float(cells.loc[m, "sd"])
                row[m] = f"{mu:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "")
            else:
                row[m] = ""
        rows.append(row)
    return pd.DataFrame(rows).to_string(index=False)
