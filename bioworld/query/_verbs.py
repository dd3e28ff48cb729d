"""The query verbs behind :class:`bioworld.WorldModel`: predict, counterfactual and prioritize on an engine.

Each takes the model's :class:`~bioworld.query.engine.Engine` and a :class:`ModelView` (what the
answers are labelled and scaled with) and returns the answer the facade returns.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError
from bioworld.query.engine import Engine

__all__ = ["ModelView", "query_labels", "predict_means", "counterfactual_cells", "prioritize_cells", "check_prioritize_options",
           "entity_latents",
           "set_aside_hint"]


#: the CLI option that gives a query's labels
_FLAGS = {"perturbations": "--perturbations", "interventions": "--intervention"}


def query_labels(value: Any, what: str, example: str) -> list[str]:
    """The labels a query was asked for (one string, or a list / array / Series of them) as strings, in order.

    Refuses nothing given, a value that is not a label or a collection of labels, and a label given twice (it
    would give two answer rows with the same ``obs_name``)."""
    if isinstance(value, str):
        return [value]
    if value is None or isinstance(value, (bytes, dict)) or not hasattr(value, "__iter__"):
        raise BioworldError(f"{what}={value!r} ({type(value).__name__}); expected a label or a list of labels such as "
                            f"[{example!r}]. Fix: pass the {what} as a list of strings.")
    labels = [str(v) for v in value]
    if not labels:
        raise BioworldError(f"no {what} given; expected at least one label such as {example!r}")
    index = pd.Index(labels)
    if index.has_duplicates:
        dup = index[index.duplicated()].unique().tolist()
        raise BioworldError(
            f"{what} {dup[:5]} given more than once ({len(labels)} labels, {len(set(labels))} distinct); expected each "
            f"label once (answers are rows named by their label). Fix: pass each once: {what}=list(dict.fromkeys("
            f"{what})) (CLI: {_FLAGS.get(what, what)} with each label once).")
    return labels


@dataclass(frozen=True)
class ModelView:
    """How answers are labelled and scaled: genes, slots, the model scale and provenance."""

    var_names: list[str]
    entity_names: list[str]
    genes: list[str]  # symbols (the planner's panel)
    to_scale: Callable[[np.ndarray], np.ndarray]  # standardised -> model scale
    scale_name: str
    describe: dict[str, Any]
    seed: int
    dropped: dict[str, str] = field(default_factory=dict)  # perturbations set aside at training -> why


def _candidates(eng: Engine, actions: Sequence[Any], labels: Sequence[str],
                targets: dict[str, Sequence[str]] | None) -> tuple[Any, dict[str, str]]:
    """The engine's candidates of ``actions`` named ``labels``; on a model without compound features a compound
    is the loss of its targets (:func:`~bioworld.query._candidates.as_target_losses`: given ``targets``, else the
    bundled knowledge's), with what each such label was answered as."""
    from bioworld.query._candidates import as_target_losses, encode_candidates

    notes: dict[str, str] = {}
    if eng.space.compounds is None and any(a.compounds for a in actions):
        actions, at = as_target_losses(eng.space, sorted(eng.trained), actions, targets)
        notes = {str(labels[i]): text for i, text in at.items()}
    return encode_candidates(eng, list(actions), list(labels)), notes


@contextlib.contextmanager
def set_aside_hint(dropped: dict[str, str], space: Any) -> Iterator[None]:
    """An unknown gene that is a perturbation of the training data, set aside there for its size
    (``dropped``: label -> reason), is refused with that reason and the ``min_cells_per_group`` fix."""
    from bioworld.errors import UnknownPerturbationError

    try:
        yield
    except UnknownPerturbationError as exc:
        for label, reason in dropped.items():
            targets = [p.target for p in space.parse(label).components] if "@" not in label else [label]
            if any(f"{t!r} was not a training target" in str(exc) for t in targets):
                raise UnknownPerturbationError(
                    f"{exc} {label!r} is a perturbation of the training data, set aside at training ({reason}). "
                    "Fix: train with a lower min_cells_per_group to learn it.") from None
        raise


def predict_means(eng: Engine, view: ModelView, labels: Sequence[str], actions: Sequence[Any],
                  cells_std: Callable[[], np.ndarray], targets: dict[str, Sequence[str]] | None = None) -> Any:
    """Mean predicted expression of each label (parsed: ``actions``) over the cells ``cells_std()``
    (standardised; read after the labels are checked); see ``WorldModel.predict``. ``targets``: compound ->
    target genes given at query time, for a model without compound features (:func:`_candidates`)."""
    import anndata as ad

    from bioworld.query._anndata import gene_var

    with set_aside_hint(view.dropped, eng.space):
        cands, notes = _candidates(eng, actions, labels, targets)
    x0 = cells_std()
    cache = eng.encode(x0)
    r = eng.run(cache, cands)
    pred = np.stack([r.x_pred[i].mean(0) for i in range(len(labels))] + [cache.x_base.cpu().numpy().mean(0)])  # [n + 1 (control), G]
    X = view.to_scale(pred)
    out = ad.AnnData(
        X=X[:-1].astype(np.float32),
        obs=pd.DataFrame({"perturbation": list(labels), "n_cells": len(x0)}, index=pd.Index(list(labels), dtype=str)),
        var=gene_var(view.var_names, view.genes),
    )
    out.layers["delta"] = (X[:-1] - X[-1]).astype(np.float32)
    out.uns["bioworld"] = {"model": view.describe, "scale": view.scale_name}
    if notes:
        out.uns["bioworld"]["compounds_as_targets"] = notes
    return out


def counterfactual_cells(eng: Engine, view: ModelView, cells: Any, cells_std: Callable[[], np.ndarray],
                         specs: Sequence[str], actions: Sequence[Any]) -> Any:
    """Per-cell answers of every intervention (``specs``, parsed: ``actions``) on ``cells`` (standardised:
    ``cells_std()``, read after the interventions are checked); see ``WorldModel.counterfactual``."""
    from bioworld.query._anndata import counterfactual_adata
    from bioworld.query._counterfactual import shift_effects

    with set_aside_hint(view.dropped, eng.space):
        cands, notes = _candidates(eng, actions, specs, None)
    cache = eng.encode(cells_std())
    r = eng.run(cache, cands)
    base = view.to_scale(cache.x_base.cpu().numpy())
    # [C, n, G] arrays handed on whole (no per-intervention copies), filled per intervention on the workers
    X, D = np.empty(r.x_pred.shape, np.float32), np.empty(r.x_pred.shape, np.float32)

    def finish(i: int) -> None:
        pred = view.to_scale(r.x_pred[i])
        X[i], D[i] = pred, pred - base

    eng.map(finish, range(len(specs)))
    effects = {spec: shift_effects(r.shift[i], view.entity_names) for i, spec in enumerate(specs)}
    return counterfactual_adata(cells, list(specs), X, D, r.shift, var_names=view.var_names, genes=view.genes,
                                entity_names=view.entity_names, effects=effects,
                                uns={"scale": view.scale_name, "model": view.describe,
                                     **({"compounds_as_targets": notes} if notes else {})})


def _target_compounds(eng: Any, view: Any, compounds: Sequence[str] | None) -> tuple[list, dict[str, list[str]]]:
    """The bundled compounds as their targets' loss (:func:`~bioworld.query._candidates.target_compounds`); by
    default none on a panel of another species' symbols (:func:`~bioworld.query._candidates.another_species`), where
    their human targets would be answered from features unrelated to the screen (all counted as not scored, with
    the reason)."""
    from bioworld.query._candidates import OUT_OF_NAMESPACE, _compound_knowledge, another_species, target_compounds

    if compounds is None and another_species(view.genes):
        return [], {OUT_OF_NAMESPACE: list(_compound_knowledge().keys)}
    return target_compounds(eng.space, sorted(eng.trained), compounds)


#: prioritize's numeric options: name -> (smallest allowed, largest allowed or None, whole number)
_PRIORITIZE_RANGES = {"n_boot": (1, None, True), "max_cells": (1, None, True), "screen_cells": (1, None, True),
                      "refine_top": (0, None, True), "gene_pairs_top": (0, None, True),
                      "entity_pairs_top": (0, None, True), "max_genes": (0, None, True),
                      "overlap": (0.0, 1.0, False), "readout_share": (0.0, 1.0, False)}


def _check_prioritize_options(values: dict[str, Any]) -> None:
    """Refuse a numeric option of prioritize outside its range (they crashed deep in numpy / torch or were
    read as Python slices: ``gene_pairs_top=-1`` dropped the last single)."""
    for name, value in values.items():
        low, high, whole = _PRIORITIZE_RANGES[name]
        if value is None and name == "max_genes":
            continue
        number = isinstance(value, (int, np.integer)) if whole else isinstance(value, (int, float, np.integer, np.floating))
        if isinstance(value, bool) or not number or not (low <= value <= (np.inf if high is None else high)):
            kind = "a whole number" if whole else "a number"
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise BioworldError(f"{name}={value!r}; expected {kind} {span}. Fix: pass such a value "
                                f"(the default is {_PRIORITIZE_DEFAULTS[name]!r}).")


def prioritize_cells(
    eng: Engine,
    view: ModelView,
    cells_std: Callable[[], np.ndarray],
    goal: str,
    *,
    genes: Sequence[str] | None = None,
    entities: Sequence[str] | None = None,
    compounds: Sequence[str] | None = None,
    dose: float = 1.0,
    max_genes: int | None = 1000,
    pairs: bool = True,
    gene_pairs_top: int = 8,
    entity_pairs_top: int = 50,
    n_boot: int = 200,
    max_cells: int = 1000,
    screen_cells: int = 16,
    refine_top: int = 20,
    overlap: float = 0.5,
    readout_share: float = 0.1,
):
    """Rank single and paired interventions by how well they move ``cells`` towards ``goal``
    (the body of :meth:`bioworld.WorldModel.prioritize`; ``cells_std()`` gives the starting cells, standardised).

    Parameters
    ----------
    cells
        Starting cells (``None`` = the model's reference control cells). At most ``max_cells``
        are used (a seeded subsample, reported in the provenance).
    goal
        ``down:ENTITY``, ``up:ENTITY`` or ``toward:control`` (see :mod:`bioworld.query`).
    genes
        Candidate gene knockouts. Default: the genetic targets of the data (trained or held
        out), then the genes of the model's knowledge gene table closest to the goal entity's
        genes (:func:`bioworld.query._candidates.gene_candidates`), ``max_genes`` in all
        (``None``: every gene the model can represent). ``entities``: entities to silence
        (default: all slots; ranked as ``kind`` ``entity``, a mechanism).
    compounds
        Candidate compounds (names, or ``NAME@DOSE`` labels). Default: every compound the
        model's compound features resolve, at ``dose``. A model without compound features (a
        genetic screen) scores every compound of the bundled knowledge (or the ones given) as the
        loss of its known targets that the model can represent
        (:func:`bioworld.query._candidates.target_compounds`: row label the compound's name, kind
        ``compound``, ``action`` the knockouts run, evidence "as the inhibition of its targets …");
        compounds with the same representable targets are the same action, so one row named by one of
        them, the others in ``same_action`` / ``n_same_action``, the evidence and
        ``provenance['compounds_same_action']``; compounds it cannot score are counted by reason in
        ``provenance['compounds_not_scored']``.
    dose
        Dose of the default compound candidates and of names given without ``@DOSE``.
    max_genes
        Cap on the default gene candidates (see ``genes``; the data's own genetic targets are
        always kept).
    overlap, readout_share
        The tautology guard (:mod:`bioworld.query._candidates`): a silence of the goal entity
        or of an entity whose panel genes overlap it by ``overlap`` (Jaccard, or that share of
        either gene set), and a knockout of genes carrying ``readout_share`` of the goal
        readout's weight, get ``flag`` = ``readout`` with the reason in ``flag_reason`` and
        are ranked after every unflagged row.
    pairs
        Also score pairs among the ``entity_pairs_top`` best silenced entities and among the
        ``gene_pairs_top`` best gene knockouts / compounds (best by screened priority, unflagged
        first); ``synergy`` = pair score minus the sum of its singles.
    n_boot
        Bootstrap resamples for the 95% intervals.
    screen_cells, refine_top
        Two-stage search in latent space. The cells are encoded once. **Screen** (approximate):
        k-means over the cells' latents picks ``screen_cells`` prototype cells (the cell
        nearest each centre), and every candidate is scored on them, weighted by the share of
        cells in each prototype's cluster. **Refine** (exact): the ``refine_top`` best
        screened candidates, plus the singles that make up refined pairs, are re-scored on all
        cells. With at most ``screen_cells`` cells there are no prototypes: every row is exact.

    Notes
    -----
    Untrained silences are scored as do-operations, as predict and counterfactual answer them (the
    entity's response head where the model has one, else the slot clamped to its inactive latent
    under the control action; :mod:`bioworld.query.engine`). What is exact: the score, interval, per-cell scores and entity shifts of
    every row whose ``table['n_cells']`` equals the number of cells used: the same numbers an
    exhaustive search over all cells gives for that row (up to float rounding). What is
    approximate: rows with ``n_cells`` = ``provenance['n_screen_cells']`` were only screened;
    their score is the cluster-weighted mean over the prototype cells, their interval a
    bootstrap over the prototypes (drawn with the cluster weights), their entity shift the
    weighted mean and their per-cell scores those of the prototype cells. Synergy always
    compares a pair with its singles on the same cells (refined pairs with refined singles,
    screened pairs with screened singles). Ranking: unflagged rows first, each group by
    ``priority`` (:mod:`bioworld.query._priority`): the model's evidence (the predicted change
    without the knocked-out genes' own transcripts, as a percentile within comparable candidates:
    measured vs unseen, and unseen compounds by how they are described; 0.5 for a kind the model
    was never trained on) joined by equal-weight log-odds with two knowledge priors, each a percentile:
    network proximity of the gene / the compound's targets to the goal's readout genes, and the signed
    directed influence of the gene (a compound: its best target) on them; the table also holds
    ``model_pct``, ``prior_pct`` and ``directed_pct``. The ``refine_top``
    rows sent to refinement are the unflagged ones with the largest screened score (exactness
    where the predicted change is largest), the ``gene_pairs_top`` singles paired the best by
    screened priority. A candidate whose
    prototype score underestimates it enough to leave the screen's top ``refine_top`` can be
    missed, and the ``gene_pairs_top`` singles are chosen on screened scores;
    ``benchmarks/run_planner_check.py`` measures both against scoring every candidate on every
    cell. Cost: about candidates x ``screen_cells`` + refined rows x cells predictor rows.

    Returns
    -------
    :class:`bioworld.query.PrioritizationResult` (ranked table with bootstrap 95% intervals of
    the mean score over cells, entity shifts, per-cell scores, pair synergy matrix).
    """
    from bioworld.query._candidates import (
        default_candidates, not_scored_text, same_action_text, unlabelled_genes,
    )
    from bioworld.query._planner import prioritize

    genes, entities, compounds = ([given] if isinstance(given, str) else given for given in (genes, entities, compounds))
    _check_prioritize_options({"n_boot": n_boot, "max_cells": max_cells, "screen_cells": screen_cells,
                               "refine_top": refine_top, "gene_pairs_top": gene_pairs_top,
                               "entity_pairs_top": entity_pairs_top, "max_genes": max_genes, "overlap": overlap,
                               "readout_share": readout_share})
    for what, given in (("genes", genes), ("entities", entities)):
        listed = [] if given is None else [str(v) for v in given]
        dups = sorted({v for v in listed if listed.count(v) > 1})
        if dups:
            raise BioworldError(f"{what} lists {dups[:5]} more than once; expected each candidate once (a repeat "
                                f"would be ranked twice). Fix: remove the repeats" + (" (CLI: --genes)." if what == "genes" else "."))
    x = cells_std()
    n_total = len(x)
    if len(x) > max_cells:
        x = x[np.sort(np.random.default_rng(view.seed).choice(len(x), max_cells, replace=False))]
    as_targets = getattr(eng.space, "compounds", None) is None  # no compound features: compounds as their targets
    gene_list, compound_list = default_candidates(eng, goal, panel=view.genes, genes=genes,
                                                  compounds=[] if as_targets else compounds, dose=dose,
                                                  max_genes=max_genes)
    by_targets, skipped = _target_compounds(eng, view, compounds) if as_targets else ([], {})
    extra = {"compounds": "this model has no compound features, so each compound of the bundled compound table is "
                          "scored as the loss (knockout, or knockdown for a model trained on knockdowns) of all its known "
                          "targets at once, no dose; its row names them and the knockouts run (column action); "
                          "compounds with the same representable targets are the same action, so one row, named by one "
                          "of them and naming the others (column same_action)",
             "compounds_not_scored": {why: list(names) for why, names in skipped.items()},
             "compounds_not_scored_text": not_scored_text(skipped),
             "compounds_same_action": {tc.name: [o.name for o in tc.same_action] for tc in by_targets
                                       if tc.same_action},
             "compounds_same_action_text": same_action_text(by_targets)} if as_targets else {}
    return prioritize(
        eng, x, goal, genes=gene_list, compounds=compound_list, panel=view.genes,
        entities=list(view.entity_names) if entities is None else list(entities), pairs=pairs,
        gene_pairs_top=gene_pairs_top, entity_pairs_top=entity_pairs_top, n_boot=n_boot, screen_cells=screen_cells, refine_top=refine_top,
        seed=view.seed, overlap=overlap, readout_share=readout_share,
        provenance={"model": view.describe, "n_cells_given": int(n_total), "scale": view.scale_name,
                    **({"gene_table_names_not_labels": unlabelled_genes(eng.space)} if genes is None else {}), **extra},
        target_compounds=by_targets,
    )


def entity_latents(module: Any, x: np.ndarray, rows: int = 2048) -> np.ndarray:
    """Context-encoder latents ``[cells, E, D]`` of standardised cells ``x`` (on the module's device)."""
    import torch

    dev = next(module.parameters()).device
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return np.concatenate([module.encode(xt[s:s + rows].to(dev)).cpu().numpy() for s in range(0, len(xt), rows)])


#: prioritize's defaults of those options (named in the error that refuses a value)
_PRIORITIZE_DEFAULTS = {name: param.default for name, param in inspect.signature(prioritize_cells).parameters.items()
                        if name in _PRIORITIZE_RANGES}


def check_prioritize_options(options: dict[str, Any], where: str = "WorldModel.prioritize") -> None:
    """Refuse an option :func:`prioritize_cells` does not take, naming the closest valid one and the full list
    (a misspelt ``max_gene=`` would otherwise surface as a TypeError about an internal function)."""
    import difflib

    valid = [n for n, p in inspect.signature(prioritize_cells).parameters.items() if p.kind == p.KEYWORD_ONLY]
    for name in options:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"{where} got an unknown option {name!r}; {hint}it takes: {', '.join(valid)}.")
