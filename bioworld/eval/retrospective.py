"""Retrospective validation of target prioritisation: would the ranking have found what was measured?

Perturbations are held out, a :class:`~bioworld.WorldModel` is trained on the rest, every candidate
is ranked for a goal (:meth:`~bioworld.WorldModel.prioritize`), and the held-out perturbations whose
*observed* effect reaches the goal ("hits") should rank high.

Hits (from the held-out data, never from the model)
    The observed goal score of a perturbation is the goal entity's score (weighted mean of its
    member genes' z-scores, z against the control cells; :func:`observed_goal_change`) averaged over
    its cells, minus that of the controls. The perturbed gene's own transcript is left out of the
    score (a knockout that lowers its own mRNA is not a pathway hit). Control noise
    (:func:`control_noise`) = the standard deviation of the control group's score between
    replicates at the resolution a perturbation is measured: between the biological replicates'
    control means (Papalexi, ``bio_rep``), between control wells (L1000, one well per compound and
    dose). A perturbation is a hit when its change is beyond ``z`` (default 2) noise sds in the
    goal's direction (the ``observed`` column is signed so that negative = towards the goal).

Metrics (per seed, pooled over the folds of that seed; mean ± sd over seeds)
    Each method scores every candidate of the held-out kind (genes for Papalexi, compounds at one
    dose for L1000); an item's *rank percentile* is its position among all those candidates
    (1 = top, 0 = bottom, ties averaged), so folds pool on one scale. ``auroc``: hits vs non-hits
    among the held-out items, by percentile (Mann-Whitney, ties 1/2). ``precision_at_k``: share of
    hits among the ``k`` held-out items with the highest percentile. ``hit_percentile``: mean rank
    percentile of the hits among all candidates.

Methods
    ``WorldModel``: the model's default ranking, the ``priority`` column of
    :meth:`~bioworld.WorldModel.prioritize` (:mod:`bioworld.query._priority`: the predicted goal
    change without the knocked-out gene's own transcript, as a mid-rank percentile within comparable
    candidates, joined with the network proximity of the gene / the compound's targets to the goal's
    readout genes, as a percentile, by equal-weight log-odds; nothing is fitted to these runs; the
    tautology guard's ordering is ignored). Its parts: ``WorldModel (predicted change
    only)`` (the ``score`` column) and ``WorldModel (no knowledge prior)`` (``model_pct``: the
    calibrated model evidence alone). ``WorldModel (as ranked)``: the table's rank, flagged rows
    last. ``Network proximity``: random walk with restart (:func:`network_proximity`) from the goal
    entity's full gene set over STRING v12 (>= 700) joined with OmniPath (undirected), a compound =
    its best target (the same walk is the prior inside ``priority``).
    ``Pathway membership``: the gene is in the goal entity's gene set (a compound: the share of its
    known targets that are). ``Random``: the expected value (AUROC 0.5, precision = the hit rate,
    percentile 0.5), sd over 1,000 random orderings.

``python benchmarks/run_retrospective.py`` runs both datasets and writes
``benchmarks/results/retrospective/RETROSPECTIVE.md`` (+ CSVs and a plot); ``bioworld benchmark
--only retrospective`` runs the same with the benchmark's settings.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError

__all__ = [
    "GOALS",
    "RetroSettings",
    "auroc",
    "control_noise",
    "hit_threshold",
    "metrics_of",
    "network_proximity",
    "observed_goal_change",
    "pathway_membership",
    "precision_at_k",
    "random_expectation",
    "rank_percentile",
    "run_l1000_retro",
    "run_papalexi_retro",
    "run_retrospective",
    "summarize_retro",
    "write_retro",
]

GOALS = {"papalexi": "down:HALLMARK_INTERFERON_GAMMA_RESPONSE", "l1000": "down:MAPK"}
ITEM_COLUMNS = ["dataset", "seed", "fold", "method", "item", "hit", "observed", "score", "percentile", "n_candidates"]
MODEL, MODEL_RANKED, NETWORK, PATHWAY, RANDOM = (
    "WorldModel", "WorldModel (as ranked)", "Network proximity", "Pathway membership", "Random")
#: Parts of the model's default ranking (``priority``), reported beside it: the predicted goal change
#: alone (``score``), and the model's calibrated evidence without the knowledge prior (``model_pct``).
PREDICTED = "WorldModel (predicted change only)"
NO_PRIOR = "WorldModel (no knowledge prior)"
METRICS = ("auroc", "precision_at_k", "hit_percentile")


@dataclass(frozen=True)
class RetroSettings:
    """Sizes of one retrospective run."""

    seeds: tuple[int, ...] = (0, 1, 2)
    folds: int = 4  # held-out groups per seed (targets for Papalexi, compounds for L1000)
    steps: int = 150  # WorldModel max_steps
    max_genes: int = 1000  # gene candidates (the data's targets + the knowledge genes nearest the goal)
    n_cells: int = 300  # starting control cells of the prioritisation
    dose: float = 10.0  # L1000: the dose every compound is ranked and judged at
    z: float = 2.0  # hit threshold in control-noise sds
    k: int = 5  # precision@k
    candidates_dir: str | None = None  # where each fold's candidate table is written (None: not written)
    model_seed_offset: int = 0  # the WorldModel's training seed = split seed + this (another member, same splits)


# ------------------------------------------------------------------------------ metrics
def rank_percentile(scores: Sequence[float]) -> np.ndarray:
    """Each item's rank percentile among ``scores`` (higher score = better): 1 = top, 0 = bottom.

    Ties share their average rank; NaN scores rank last (tied). One item gets 1.0."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.ones(1)
    s = np.where(np.isfinite(s), s, -np.inf)
    r = rankdata(s, method="average")  # 1 = lowest
    return (r - 1.0) / (n - 1.0)


def auroc(scores: Sequence[float], hits: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` separating ``hits`` (True) from the rest (Mann-Whitney;
    ties count 1/2). NaN when there are no hits or no non-hits."""
    s = np.asarray(scores, dtype=np.float64)
    h = np.asarray(hits, dtype=bool)
    pos, neg = s[h], s[~h]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def precision_at_k(scores: Sequence[float], hits: Sequence[bool], k: int) -> float:
    """Share of hits among the ``k`` highest-scoring items (ties at the cut-off count fractionally)."""
    s = np.asarray(scores, dtype=np.float64)
    h = np.asarray(hits, dtype=bool)
    if k < 1:
        raise BioworldError(f"k={k}; expected k >= 1")
    k = min(k, len(s))
    if k == 0:
        return float("nan")
    cut = np.sort(s)[::-1][k - 1]
    above = s > cut
    tied = s == cut
    n_tied_taken = k - above.sum()
    return float((h[above].sum() + h[tied].mean() * n_tied_taken) / k)


def random_expectation(n_items: int, n_hits: int, k: int, *, draws: int = 1000, seed: int = 0
                       ) -> dict[str, tuple[float, float]]:
    """Expected value and sd (over ``draws`` random orderings) of each metric for a random ranking.

    ``hit_percentile`` is taken among the items themselves (a random ranking of all candidates puts
    any item at percentile 0.5 in expectation)."""
    exp = {"auroc": 0.5 if 0 < n_hits < n_items else float("nan"),
           "precision_at_k": n_hits / n_items if n_items else float("nan"),
           "hit_percentile": 0.5 if n_hits else float("nan")}
    rng = np.random.default_rng(seed)
    hits = np.zeros(n_items, bool)
    hits[:n_hits] = True
    vals: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(draws):
        s = rng.random(n_items)
        p = rank_percentile(s)
        vals["auroc"].append(auroc(s, hits))
        vals["precision_at_k"].append(precision_at_k(s, hits, k))
        vals["hit_percentile"].append(float(p[hits].mean()) if n_hits else float("nan"))
    return {m: (exp[m], float(np.nanstd(vals[m]))) for m in METRICS}


def metrics_of(percentile: Sequence[float], hits: Sequence[bool], k: int) -> dict[str, float]:
    """``auroc``, ``precision_at_k`` and ``hit_percentile`` of held-out items' rank percentiles."""
    p = np.asarray(percentile, dtype=np.float64)
    h = np.asarray(hits, dtype=bool)
    return {"auroc": auroc(p, h), "precision_at_k": precision_at_k(p, h, k),
            "hit_percentile": float(p[h].mean()) if h.any() else float("nan")}


# ------------------------------------------------------------------------------ observed hits
def observed_goal_change(X: np.ndarray, labels: Sequence[str], control: str, weights: np.ndarray,
                         var_names: Sequence[str], *, exclude: Mapping[str, Sequence[str]] | None = None
                         ) -> tuple[dict[str, float], np.ndarray]:
    """Observed change of the goal entity's score per label, and each control cell's score.

    ``X`` ``[cells, G]`` log expression; ``weights`` ``[G]`` the goal entity's membership weights on
    ``var_names``. Genes are z-scored against the control cells; a cell's score is
    ``sum_g w_g z_g / sum_g |w_g|``; a label's change = mean score of its cells minus the controls'
    mean, with the genes in ``exclude[label]`` (e.g. the knocked-out gene's own transcript) left out
    of its weights.
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (X.shape[1],) or not np.any(w):
        raise BioworldError(f"goal weights of shape {w.shape} with {int(np.count_nonzero(w))} non-zero; expected "
                            f"[{X.shape[1]}] with at least one member gene of the panel")
    ctrl = labels == control
    if ctrl.sum() < 2:
        raise BioworldError(f"found {int(ctrl.sum())} control cells labelled {control!r}; expected at least 2")
    mu, sd = X[ctrl].mean(0), X[ctrl].std(0)
    Z = (X - mu) / np.where(sd > 0, sd, 1.0)
    Z[:, sd <= 0] = 0.0
    pos = {g: i for i, g in enumerate(var_names)}
    ctrl_mean_z = Z[ctrl].mean(0)
    out: dict[str, float] = {}
    for lab in sorted(set(labels) - {control}):
        wl = w.copy()
        for g in (exclude or {}).get(lab, ()):
            if g in pos:
                wl[pos[g]] = 0.0
        if not np.any(wl):
            continue
        out[lab] = float((Z[labels == lab].mean(0) - ctrl_mean_z) @ wl / np.abs(wl).sum())
    return out, Z[ctrl] @ w / np.abs(w).sum()


def control_noise(control_scores: np.ndarray, groups: Sequence[Any] | None = None) -> float:
    """Sd of the control group's score between replicates: between the ``groups``' means (e.g.
    biological replicates), or between single controls (wells) when ``groups`` is None."""
    s = np.asarray(control_scores, dtype=np.float64)
    if groups is None:
        vals = s
    else:
        g = np.asarray(groups).astype(str)
        vals = np.array([s[g == k].mean() for k in sorted(set(g))])
    if len(vals) < 2:
        raise BioworldError(f"control noise needs at least 2 replicates; found {len(vals)}")
    return float(np.std(vals, ddof=1))


def hit_threshold(noise: float, z: float) -> float:
    """Minimal observed change (in the goal's direction) that counts as a hit: ``z`` x noise."""
    if not np.isfinite(noise) or noise <= 0:
        raise BioworldError(f"control noise {noise!r}; expected a positive finite sd")
    return float(z * noise)


# ------------------------------------------------------------------------------ baselines
def _network() -> tuple[list[str], Any]:
    """STRING (weights) joined with OmniPath (|sign| = 1), symmetric: ``(genes, [n, n] csr)``
    (:func:`bioworld.knowledge.network.joint_network`)."""
    from bioworld.knowledge.network import joint_network

    return joint_network()


def network_proximity(seeds: Sequence[str], *, restart: float = 0.5, n_iter: int = 50,
                      network: tuple[list[str], Any] | None = None) -> dict[str, float]:
    """Random walk with restart from ``seeds`` over the network
    (:func:`bioworld.knowledge.network.network_proximity`, the prior the planner's priority uses)."""
    from bioworld.knowledge.network import network_proximity as rwr

    return rwr(list(seeds), restart=restart, n_iter=n_iter, network=network)


def pathway_membership(genes: Sequence[str], goal_genes: Sequence[str]) -> np.ndarray:
    """1.0 for each gene in the goal entity's gene set, else 0.0."""
    gs = set(goal_genes)
    return np.array([1.0 if g in gs else 0.0 for g in genes])


def _compound_scores(names: Sequence[str], gene_score: Callable[[str], float], targets: Callable[[str], list[str]],
                     how: str) -> np.ndarray:
    """A compound's score from its targets' scores (``max`` or ``mean``); no known target = 0."""
    out = []
    for n in names:
        t = targets(n)
        v = [gene_score(g) for g in t]
        out.append(0.0 if not v else (max(v) if how == "max" else float(np.mean(v))))
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------ runners
def _goal_genes(goal: str) -> tuple[str, dict[str, float]]:
    """The goal entity's name and its full gene set with weights (bundled default entities)."""
    from bioworld.entities import default_entities

    name = goal.split(":", 1)[1]
    ents = {e.name: e for e in default_entities().entities}
    if name not in ents:
        raise BioworldError(f"goal entity {name!r} is not a default entity (Hallmark / PROGENy)")
    e = ents[name]
    return name, dict(zip(e.genes, e.weights))


def _panel_weights(goal_w: Mapping[str, float], var_names: Sequence[str]) -> np.ndarray:
    return np.array([float(goal_w.get(str(g), 0.0)) for g in var_names])


def _train(adata: Any, holdout: Sequence[str], seed: int, steps: int, **kw: Any) -> Any:
    from bioworld._world_model import WorldModel

    cfg = {"seed": int(seed), "max_steps": int(steps), "warmup_steps": min(100, max(1, int(steps) // 10)),
           "checkpoint_every": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = WorldModel(adata, holdout=list(holdout), config=cfg, **kw)
        wm.train(progress=False)
    return wm


def _model_rows(table: pd.DataFrame, kind: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Unseen candidates of ``kind`` in a prioritisation table (the trained ones are measured, not
    predicted, so they are no part of the ranking judged): labels and each model method's scores:
    the default ranking (``priority``), the table's rank (flagged rows last), the predicted goal
    change and the model's calibrated evidence without the prior (``model_pct``)."""
    t = table[(table["kind"] == kind) & ~table["seen"].astype(bool)]
    return list(t["intervention"]), {
        MODEL: t["priority"].to_numpy(np.float64), MODEL_RANKED: -t["rank"].to_numpy(np.float64),
        PREDICTED: t["score"].to_numpy(np.float64), NO_PRIOR: t["model_pct"].to_numpy(np.float64)}


#: Columns of the per-fold candidate tables (``RetroSettings.candidates_dir``).
CANDIDATE_COLUMNS = ["rank", "intervention", "kind", "score", "priority", "model_pct", "prior_pct", "directed_pct", "own_share",
                     "flag", "seen", "n_cells"]


def _save_candidates(folder: str | None, table: pd.DataFrame, dataset: str, seed: int, fold: int) -> None:
    """Write one fold's ranked candidates (``CANDIDATE_COLUMNS``) as ``<dataset>_s<seed>_f<fold>.csv``."""
    if folder is None:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    from bioworld._atomic import write_text

    text = table[[c for c in CANDIDATE_COLUMNS if c in table.columns]].to_csv(index=False)
    write_text(out / f"{dataset}_s{seed}_f{fold}.csv", text, what="retrospective candidates")


def _add_items(rows: list[dict[str, Any]], *, dataset: str, seed: int, fold: int, method: str,
               labels: Sequence[str], scores: np.ndarray, test: Mapping[str, str], observed: Mapping[str, float],
               threshold: float) -> None:
    """Rank percentiles of the held-out items (``test``: candidate label -> data label) among ``labels``."""
    pct = rank_percentile(scores)
    at = {lab: i for i, lab in enumerate(labels)}
    for cand, data_lab in test.items():
        if cand not in at or data_lab not in observed:
            continue
        i = at[cand]
        rows.append({"dataset": dataset, "seed": seed, "fold": fold, "method": method, "item": data_lab,
                     "hit": bool(observed[data_lab] <= -threshold), "observed": observed[data_lab],
                     "score": float(scores[i]), "percentile": float(pct[i]), "n_candidates": len(labels)})


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def run_papalexi_retro(settings: RetroSettings = RetroSettings(), *, progress: bool = True) -> pd.DataFrame:
    """Papalexi leave-targets-out, goal ``down:HALLMARK_INTERFERON_GAMMA_RESPONSE`` (see
    :func:`run_genetic_retro`)."""
    from bioworld.data import load_papalexi

    goal = GOALS["papalexi"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_papalexi()
    _, goal_w = _goal_genes(goal)
    df = run_genetic_retro(adata, goal, goal_weights=goal_w, settings=settings, dataset="papalexi",
                           replicate_key="bio_rep", progress=progress)
    df.attrs["candidates"] = (f"gene knockouts: the screen's 20 targets + the knowledge genes nearest the goal, "
                              f"{settings.max_genes} in all (the unseen ones ranked)")
    return df


def run_genetic_retro(adata: Any, goal: str, *, goal_weights: Mapping[str, float], settings: RetroSettings,
                      dataset: str, replicate_key: str, network: tuple[list[str], Any] | None = None,
                      progress: bool = True, **wm_kwargs: Any) -> pd.DataFrame:
    """Leave-targets-out retrospective validation of a genetic screen (counts, ``perturbation`` /
    ``control`` labels, replicates in ``obs[replicate_key]``).

    Per seed, the screen's targets are dealt into ``settings.folds`` groups
    (:func:`bioworld.data.leave_targets_out`, split seed = model seed); for each, a WorldModel
    trained without them (``wm_kwargs`` go to it, e.g. ``entities``) ranks ``settings.max_genes``
    gene knockouts on ``settings.n_cells`` control cells; each held-out single knockout gets its rank
    percentile among the unseen gene candidates, for the model and the baselines (``network``:
    ``(genes, adjacency)``, default STRING + OmniPath). ``goal_weights``: the goal entity's genes
    and weights (the observed score and the pathway-membership baseline).

    Returns
    -------
    One row per (seed, fold, method, held-out item) (`ITEM_COLUMNS`); ``attrs``: ``goal``,
    ``threshold``, ``noise``, ``noise_def``, ``observed`` (label -> change), ``n_items``, ``n_hits``,
    ``wall_s``.
    """
    from bioworld.data import leave_targets_out, normalize, register

    direction = goal.split(":", 1)[0]
    if direction not in ("down", "up"):
        raise BioworldError(f"goal {goal!r}; expected 'down:ENTITY' or 'up:ENTITY' (a retrospective needs one readout)")
    sign = -1.0 if direction == "down" else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(adata, perturbation_key="perturbation", control="control", input="counts",
                       replicate_key=replicate_key)
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    var = [str(v) for v in adata.var_names]
    acts = {lab: _parse(lab) for lab in set(labels) - {"control"}}
    singles = {lab: a.components[0].target for lab, a in acts.items()
               if len(a.components) == 1 and a.components[0].kind == "ko"}
    targets = {lab: [p.target for p in a.components] for lab, a in acts.items()}
    observed, ctrl_scores = observed_goal_change(X, labels, "control", _panel_weights(goal_weights, var), var,
                                                 exclude=targets)
    observed = {lab: sign * -v for lab, v in observed.items() if lab in singles}  # <0 = towards the goal
    ctrl = labels == "control"
    noise = control_noise(ctrl_scores, adata.obs[replicate_key].astype(str).to_numpy()[ctrl])
    thr = hit_threshold(noise, settings.z)
    prox = network_proximity(list(goal_weights), network=network)
    rows: list[dict[str, Any]] = []
    walls: dict[str, float] = {}
    bar = _progress(len(settings.seeds) * settings.folds, f"retrospective {dataset}", progress)
    ctrl_cells = np.flatnonzero(ctrl)
    for seed in settings.seeds:
        for sp in leave_targets_out(labels, n_folds=settings.folds, seed=seed):
            t0 = time.perf_counter()
            wm = _train(adata, sp.test, seed + settings.model_seed_offset, settings.steps,
                        perturbation_key="perturbation", control="control", replicate_key=replicate_key, **wm_kwargs)
            pick = np.random.default_rng(seed).choice(ctrl_cells, min(settings.n_cells, len(ctrl_cells)), replace=False)
            res = wm.prioritize(adata[np.sort(pick)].copy(), goal, entities=[], compounds=[],  # genes are judged
                                max_genes=settings.max_genes, pairs=False, n_boot=20, max_cells=settings.n_cells)
            walls[MODEL] = walls.get(MODEL, 0.0) + time.perf_counter() - t0
            labs, model = _model_rows(res.table, "gene")
            test = {wm.engine.space.parse(f"ko:{singles[lab]}").label: lab for lab in sp.test if lab in observed}
            genes = [wm.engine.space.parse(lab).components[0].target for lab in labs]
            common = dict(dataset=dataset, seed=seed, fold=sp.fold, labels=labs, test=test, observed=observed,
                          threshold=thr)
            for method, scores in model.items():
                _add_items(rows, method=method, scores=scores, **common)
            _add_items(rows, method=NETWORK, scores=np.array([prox.get(g, 0.0) for g in genes]), **common)
            _add_items(rows, method=PATHWAY, scores=pathway_membership(genes, list(goal_weights)), **common)
            _save_candidates(settings.candidates_dir, res.table, dataset, seed, sp.fold)
            bar.update(1)
    bar.close()
    df = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    n_rep = len(set(adata.obs[replicate_key].astype(str)[ctrl]))
    df.attrs.update(threshold=thr, noise=noise, observed=observed, wall_s=walls, goal=goal,
                    n_hits=int(sum(v <= -thr for v in observed.values())), n_items=len(observed),
                    noise_def=f"sd of the {n_rep} replicates' control means ({replicate_key})",
                    candidates=f"gene knockouts, {settings.max_genes} in all (the unseen ones ranked)")
    return df


def _parse(label: str) -> Any:
    from bioworld.actions import parse_action

    return parse_action(label)


def _l1000_data(goal: str, smiles: bool) -> tuple[Any, np.ndarray, dict[str, Any], dict[str, float],
                                                 dict[str, float], np.ndarray, list[str]]:
    """The L1000 plate as the retrospective reads it: ``(adata, labels, register kwargs, goal weights,
    observed change per label, control wells' scores, compounds left out)``. Without structures
    (``smiles=False``) a plate compound the knowledge layer does not know cannot be described: its
    wells are left out."""
    from bioworld.data import load_l1000, normalize, register
    from bioworld.data._io import L1000_REGISTER_KWARGS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_l1000()
    kw = dict(perturbation_key="perturbation", control="control", **L1000_REGISTER_KWARGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(adata, **kw)
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    var = [str(v) for v in adata.var_names]
    _, goal_w = _goal_genes(goal)
    observed, ctrl_scores = observed_goal_change(X, labels, "control", _panel_weights(goal_w, var), var)
    dropped: list[str] = []
    if not smiles:
        from bioworld.eval.benchmark import _knowledge_base

        kb = _knowledge_base()
        names = {lab: _parse(lab).components[0].target for lab in set(labels) - {"control"}}
        dropped = sorted({n for n in names.values() if not kb.knows_compound(n)})
        keep = np.array([lab == "control" or names[lab] not in set(dropped) for lab in labels])
        adata, labels = adata[keep].copy(), labels[keep]
    return adata, labels, kw, goal_w, observed, ctrl_scores, dropped


def run_l1000_retro(settings: RetroSettings = RetroSettings(), *, progress: bool = True, smiles: bool = True,
                    dataset: str = "l1000") -> pd.DataFrame:
    """L1000 A375 held-out compounds, goal ``down:MAPK`` (PROGENy): per held-out compound, its rank
    percentile among every compound the model resolves at ``settings.dose`` and whether its
    observed well at that dose is a hit. ``smiles=False``: the model reads no structures, so every
    candidate (plate or knowledge-only compound) is described the same way, by its knowledge (held-out
    compounds without knowledge cannot be ranked and are left out). ``attrs`` as
    :func:`run_genetic_retro`."""
    from bioworld.data import bundled_path
    from bioworld.knowledge import CompoundKnowledge

    goal = GOALS["l1000"]
    adata, labels, kw, goal_w, observed, ctrl_scores, dropped = _l1000_data(goal, smiles)
    noise = control_noise(ctrl_scores)
    thr = hit_threshold(noise, settings.z)
    acts = {lab: _parse(lab) for lab in set(labels) - {"control"}}
    compounds = sorted({a.components[0].target for a in acts.values()})
    at_dose = {a.components[0].target: lab for lab, a in acts.items()
               if np.isclose(a.components[0].dose, settings.dose)}
    ck = CompoundKnowledge.bundled()

    def targets(n: str) -> list[str]:
        return ck.targets(n) if ck.resolve(n, strict=False) else []

    prox = network_proximity(list(goal_w))
    smiles_path = bundled_path("compounds/lincs_drugs_smiles.csv")
    rows: list[dict[str, Any]] = []
    walls: dict[str, float] = {}
    ctrl_idx = np.flatnonzero(labels == "control")
    bar = _progress(len(settings.seeds) * settings.folds, f"retrospective {dataset}", progress)
    for seed in settings.seeds:
        order = np.random.default_rng(seed).permutation(len(compounds))
        for fold, chunk in enumerate(np.array_split(order, settings.folds)):
            held = {compounds[i] for i in chunk}
            holdout = [lab for lab, a in acts.items() if a.components[0].target in held]
            t0 = time.perf_counter()
            wm = _train(adata, holdout, seed + settings.model_seed_offset, settings.steps,
                        smiles=smiles_path if smiles else None, **kw)
            res = wm.prioritize(adata[ctrl_idx].copy(), goal, genes=[], entities=[], dose=settings.dose, pairs=False,
                                n_boot=20, max_cells=settings.n_cells)
            walls[MODEL] = walls.get(MODEL, 0.0) + time.perf_counter() - t0
            labs, model = _model_rows(res.table, "compound")
            names = [wm.engine.space.parse(lab).components[0].target for lab in labs]
            test = {}
            for c in sorted(held):
                if c in at_dose:
                    test[wm.engine.space.parse(f"{c}@{settings.dose:g}").label] = at_dose[c]
            common = dict(dataset=dataset, seed=seed, fold=fold, labels=labs, test=test, observed=observed,
                          threshold=thr)
            for method, scores in model.items():
                _add_items(rows, method=method, scores=scores, **common)
            net = _compound_scores(names, lambda g: prox.get(g, 0.0), targets, "max")
            _add_items(rows, method=NETWORK, scores=net, **common)
            gs = set(goal_w)
            _add_items(rows, method=PATHWAY, scores=_compound_scores(names, lambda g: float(g in gs), targets, "mean"),
                       **common)
            _save_candidates(settings.candidates_dir, res.table, dataset, seed, fold)
            bar.update(1)
    bar.close()
    df = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    gone = set(dropped)
    judged = {lab: v for lab, v in observed.items() if lab in set(at_dose.values()) and
              _parse(lab).components[0].target not in gone}
    df.attrs.update(threshold=thr, noise=noise, observed=judged, wall_s=walls, goal=goal,
                    n_hits=int(sum(v <= -thr for v in judged.values())), n_items=len(judged),
                    noise_def=f"sd of the {len(ctrl_idx)} control wells' scores",
                    candidates=f"every compound the model resolves, at {settings.dose:g} (the plate's top dose)"
                               + ("" if smiles else f"; no structures read (knowledge features only; {len(dropped)} "
                                  f"plate compounds without knowledge left out: {', '.join(dropped)})"))
    return df


def summarize_retro(items: pd.DataFrame, *, k: int = 5, draws: int = 1000) -> pd.DataFrame:
    """Metrics per (dataset, method, seed) pooled over folds, then mean ± sd over seeds.

    Returns rows ``dataset, method, metric, mean, sd, n_seeds, n_items, n_hits``; method ``Random``
    = the expected value with the sd over ``draws`` random orderings of the same items."""
    out = []
    for (ds, method), part in items.groupby(["dataset", "method"], sort=False):
        per_seed = {m: [] for m in METRICS}
        for _, s in part.groupby("seed"):
            for m, v in metrics_of(s["percentile"], s["hit"], k).items():
                per_seed[m].append(v)
        n_items = int(part.groupby("seed").size().mean())
        n_hits = int(round(part.groupby("seed")["hit"].sum().mean()))
        for m in METRICS:
            v = np.asarray(per_seed[m], dtype=np.float64)
            out.append({"dataset": ds, "method": method, "metric": m, "mean": float(np.nanmean(v)),
                        "sd": float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else float("nan"),
                        "n_seeds": int(np.isfinite(v).sum()), "n_items": n_items, "n_hits": n_hits})
    for ds, part in items.groupby("dataset", sort=False):
        first = part[part["method"] == part["method"].iloc[0]]
        seeds = first.groupby("seed")
        n_items = int(seeds.size().mean())
        n_hits = int(round(seeds["hit"].sum().mean()))
        exp = random_expectation(n_items, n_hits, k, draws=draws)
        for m in METRICS:
            out.append({"dataset": ds, "method": RANDOM, "metric": m, "mean": exp[m][0], "sd": exp[m][1],
                        "n_seeds": seeds.ngroups, "n_items": n_items, "n_hits": n_hits})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------ report
def _fmt(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def markdown_table(summ: pd.DataFrame, dataset: str) -> str:
    """One dataset's table: methods x metrics, mean ± sd over seeds."""
    part = summ[summ["dataset"] == dataset]
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for method in dict.fromkeys(part["method"]):
        p = part[part["method"] == method].set_index("metric")
        lines.append(f"| {method} | " + " | ".join(_fmt(p.loc[m, "mean"], p.loc[m, "sd"]) for m in METRICS) + " |")
    return "\n".join(lines)


def verdict(summ: pd.DataFrame, dataset: str, method: str = MODEL) -> str:
    """Which baselines ``method`` beats on every metric (mean over seeds), in words."""
    part = summ[summ["dataset"] == dataset]
    mine = part[part["method"] == method].set_index("metric")["mean"]
    if mine.empty:
        return f"{method}: no results"
    lines = []
    for base in (RANDOM, NETWORK, PATHWAY):
        b = part[part["method"] == base].set_index("metric")["mean"]
        if b.empty:
            continue
        worse = [m for m in METRICS if not (mine.get(m, np.nan) > b.get(m, np.nan))]
        lines.append(f"beats {base} on every metric" if not worse else
                     f"does not beat {base} on {', '.join(worse)}")
    return f"{method}: " + "; ".join(lines)


def _plot(summ: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(summ["dataset"]))
    fig, axes = plt.subplots(len(datasets), len(METRICS), figsize=(3.2 * len(METRICS), 3.2 * len(datasets)),
                             squeeze=False)
    for r, ds in enumerate(datasets):
        part = summ[summ["dataset"] == ds]
        methods = list(dict.fromkeys(part["method"]))
        for c, m in enumerate(METRICS):
            ax = axes[r][c]
            p = part[part["metric"] == m].set_index("method")
            vals = [p.loc[x, "mean"] for x in methods]
            errs = [p.loc[x, "sd"] if np.isfinite(p.loc[x, "sd"]) else 0.0 for x in methods]
            ax.bar(range(len(methods)), vals, yerr=errs, capsize=2,
                   color=[plt.get_cmap("tab10")(i % 10) for i in range(len(methods))])
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels(methods, rotation=55, ha="right", fontsize=7)
            ax.set_title(f"{ds}: {m}", fontsize=9)
            ax.set_ylim(0, 1)
    fig.tight_layout()
    from bioworld._atomic import write_files

    try:
        write_files([(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))], what="retrospective plot")
    finally:
        plt.close(fig)


def write_retro(frames: Mapping[str, pd.DataFrame], out: str | os.PathLike, *, command: str,
                settings: RetroSettings, notes: Sequence[str] = (), load: str = "") -> tuple[Path, pd.DataFrame]:
    """Write ``items.csv`` (per held-out item and method), ``summary.csv``, ``retrospective.png`` and
    ``RETROSPECTIVE.md`` into ``out``. Returns the report path and the summary."""
    import datetime as _dt
    import platform

    from bioworld._atomic import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = pd.concat(list(frames.values()), ignore_index=True)
    summ = summarize_retro(items, k=settings.k)
    write_text(out / "items.csv", items.to_csv(index=False), what="retrospective items")
    write_text(out / "summary.csv", summ.to_csv(index=False), what="retrospective summary")
    _plot(summ, out / "retrospective.png")
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = ["# Retrospective validation of target prioritisation", "",
             "Generated by `bioworld.eval.retrospective` — do not edit by hand; rerun the command below.", "",
             f"- command: `{command}`", f"- date: {now}",
             f"- machine: {platform.platform()}, {os.cpu_count()} CPUs; load {load}",
             f"- settings: seeds {list(settings.seeds)}, {settings.folds} folds per seed, WorldModel max_steps "
             f"{settings.steps}, {settings.n_cells} starting control cells, hit threshold {settings.z:g} x control "
             f"noise, precision@{settings.k}", ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    lines += [(__doc__ or "").split("\n\n", 1)[1].split("``python benchmarks")[0].strip(), ""]
    for ds, df in frames.items():
        a = df.attrs
        walls = a.get("wall_s", {})
        lines += [f"## {ds}: `{a.get('goal')}`", "",
                  f"- candidates: {a.get('candidates')}; held-out items judged: {a.get('n_items')} "
                  f"({a.get('n_hits')} observed hits)",
                  f"- control noise: {a.get('noise_def')} = {a.get('noise', float('nan')):.4f}; hit = observed change "
                  f"<= -{a.get('threshold', float('nan')):.4f}",
                  "- observed hits: " + ", ".join(f"{k} ({v:+.3f})" for k, v in sorted(a.get("observed", {}).items(),
                                                                               key=lambda kv: kv[1])
                                                   if v <= -a.get("threshold", np.inf)),
                  "- wall time (train + prioritise, all folds and seeds): "
                  + (", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) or "not recorded here"), "",
                  markdown_table(summ, ds), "", f"**{verdict(summ, ds)}**", ""]
        for extra in [m for m in (NO_PRIOR,) if m in set(summ[summ["dataset"] == ds]["method"])]:
            lines += [f"**{verdict(summ, ds, extra)}**", ""]
    lines += ["![retrospective](retrospective.png)", "",
              "Per held-out item and method: `items.csv` (rank percentile, observed change, hit); "
              "metrics per method: `summary.csv`.", ""]
    report = out / "RETROSPECTIVE.md"
    write_text(report, "\n".join(lines), what="retrospective report")
    return report, summ


def run_retrospective(settings: RetroSettings, *, datasets: Sequence[str] = ("papalexi", "l1000"),
                      progress: bool = True, dry: bool = False) -> dict[str, pd.DataFrame]:
    """Run the named datasets' retrospective validations; ``{dataset: items}`` (``dry``: only check
    the names; ``{}``)."""
    runners = {"papalexi": run_papalexi_retro, "l1000": run_l1000_retro,
               "l1000_knowledge_only": lambda st, progress: run_l1000_retro(st, progress=progress, smiles=False,
                                                                            dataset="l1000_knowledge_only")}
    bad = [d for d in datasets if d not in runners]
    if bad:
        raise BioworldError(f"unknown retrospective dataset(s) {bad}; expected a subset of {', '.join(runners)}")
    if dry:
        return {}
    return {d: runners[d](settings, progress=progress) for d in datasets}


#: Markers of the retrospective section inside BENCHMARKS.md (replaced on every run).
SECTION_BEGIN, SECTION_END = "<!-- retrospective:begin -->", "<!-- retrospective:end -->"


def benchmarks_section(summ: pd.DataFrame, frames: Mapping[str, pd.DataFrame], report: Path, md: Path,
                       command: str) -> str:
    """The markdown section for BENCHMARKS.md: one table per dataset, the verdict, a link to ``report``."""
    rel = os.path.relpath(report, md.parent)
    lines = [SECTION_BEGIN, "## retrospective target prioritisation", "",
             f"Held-out perturbations ranked among every unseen candidate for a goal; hits = held-out perturbations "
             f"whose observed goal change is beyond the control noise. Mean ± sd over seeds. Details, definitions "
             f"and per-item results: [{rel}]({rel}). Command: `{command}`.", ""]
    for ds, df in frames.items():
        a = df.attrs
        lines += [f"### retrospective — {ds} (`{a.get('goal')}`, {a.get('n_items')} held-out items, "
                  f"{a.get('n_hits')} hits)", "", markdown_table(summ, ds), "", f"**{verdict(summ, ds)}**", ""]
        for extra in (NO_PRIOR,):
            if extra in set(summ[summ["dataset"] == ds]["method"]):
                lines += [f"**{verdict(summ, ds, extra)}**", ""]
    lines.append(SECTION_END)
    return "\n".join(lines)


def update_benchmarks_md(md: str | os.PathLike, section: str) -> Path:
    """Replace the retrospective section of ``md`` (between the markers), or append it."""
    md = Path(md)
    text = md.read_text(encoding="utf-8") if md.exists() else "# bioworld benchmarks\n"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    from bioworld._atomic import write_text

    write_text(md, text, what="benchmark report")
    return md


def assemble(folders: Sequence[str | os.PathLike], settings: RetroSettings) -> dict[str, pd.DataFrame]:
    """Frames from saved ``items.csv`` files (a later folder's dataset replaces an earlier one's), with
    their ``attrs`` (hits, noise, candidates) recomputed from the data without training anything."""
    frames: dict[str, pd.DataFrame] = {}
    for folder in folders:
        items = pd.read_csv(Path(folder) / "items.csv")
        for ds, part in items.groupby("dataset", sort=False):
            frames[str(ds)] = part.reset_index(drop=True)
    no_training = RetroSettings(**{**settings.__dict__, "seeds": ()})
    for ds, df in frames.items():
        attrs = run_retrospective(no_training, datasets=[ds], progress=False)[ds].attrs
        df.attrs.update({k: v for k, v in attrs.items() if k != "wall_s"}, wall_s={})
    return frames


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/run_retrospective.py``: run, write RETROSPECTIVE.md (+ CSVs, plot) and the
    BENCHMARKS.md section. Returns 0."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    d = RetroSettings()
    p = argparse.ArgumentParser(prog="run_retrospective", description="retrospective validation of prioritize")
    p.add_argument("--only", default="papalexi,l1000",
                   help="comma-separated subset of papalexi,l1000,l1000_knowledge_only")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)))
    p.add_argument("--folds", type=int, default=d.folds)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--max-genes", type=int, default=d.max_genes)
    p.add_argument("--cells", type=int, default=d.n_cells)
    p.add_argument("--z", type=float, default=d.z, help="hit threshold in control-noise sds")
    p.add_argument("--k", type=int, default=d.k, help="precision@k")
    p.add_argument("--out", default="benchmarks/results/retrospective")
    p.add_argument("--benchmarks-md", default=None, help="also write the section into this BENCHMARKS.md")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--assemble", default=None, metavar="DIR[,DIR]",
                   help="train nothing: rebuild the report from these folders' items.csv (later folders win)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    p.add_argument("--model-seed-offset", type=int, default=d.model_seed_offset,
                   help="train each fold's model with seed + this (same splits and cells): another ensemble member")
    p.add_argument("--save-candidates", default=None, metavar="DIR",
                   help="also write each fold's ranked candidates (score, priority, model_pct, prior_pct, ...) here")
    a = p.parse_args(argv)
    if a.folds < 2 or a.steps < 1 or a.k < 1 or a.cells < 1 or a.max_genes < 1:
        raise BioworldError("--folds >= 2, --steps, --k, --cells and --max-genes >= 1 expected")
    st = RetroSettings(seeds=tuple(int(s) for s in a.seeds.split(",") if s.strip()), folds=a.folds, steps=a.steps,
                       max_genes=a.max_genes, n_cells=a.cells, z=a.z, k=a.k, candidates_dir=a.save_candidates,
                       model_seed_offset=a.model_seed_offset)
    load = loadavg()
    t = time.perf_counter()
    import shlex

    command = "python benchmarks/run_retrospective.py " + shlex.join(argv)
    if a.assemble:
        frames = assemble([x for x in a.assemble.split(",") if x.strip()], st)
        # the report's settings name the seeds of the assembled runs (not --seeds, which trains nothing here)
        st = replace(st, seeds=tuple(sorted({int(s) for df in frames.values() for s in df["seed"]})))
        report, summ = write_retro(frames, a.out, command=command.strip(), settings=st, load=load,
                                   notes=["assembled from saved per-item results (items.csv) of the runs named in "
                                          "--assemble (no training here)", *a.note])
        if a.benchmarks_md:
            update_benchmarks_md(a.benchmarks_md, benchmarks_section(summ, frames, report, Path(a.benchmarks_md),
                                                                     command.strip()))
        print(f"wrote {report}", file=sys.stderr)
        return 0
    frames: dict[str, pd.DataFrame] = {}
    datasets = [x.strip() for x in a.only.split(",") if x.strip()]
    run_retrospective(st, datasets=datasets, progress=False, dry=True)  # unknown names fail before any training
    for d in datasets:  # the report is rewritten after each dataset, so finished ones survive an interruption
        frames.update(run_retrospective(st, datasets=[d], progress=not a.no_progress))
        done = "" if len(frames) == len(datasets) else f" (partial: {len(frames)} of {len(datasets)} datasets)"
        notes = [f"wall time so far {time.perf_counter() - t:.0f} s{done}", *a.note]
        report, summ = write_retro(frames, a.out, command=command.strip(), settings=st, notes=notes,
                                   load=f"{load} (start), {loadavg()} (end)")
        print(f"wrote {report}{done}", file=sys.stderr)
        if a.benchmarks_md:
            md = update_benchmarks_md(a.benchmarks_md, benchmarks_section(summ, frames, report, Path(a.benchmarks_md),
                                                                          command.strip()))
            print(f"updated {md}", file=sys.stderr)
    return 0


def loadavg() -> str:
    """The machine load (/proc/loadavg: 1, 5, 15 min), "n/a" where unreadable."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
