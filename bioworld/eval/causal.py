"""Causal checks of ``silence:ENTITY``: does silencing a slot reproduce what silencing the biology does?

Three measurements, each returning a tidy :class:`pandas.DataFrame` (one row per target x method
x seed; metric columns are NaN where a metric does not apply):

- :func:`run_simulator_causal`: the simulator's exact truth. ``silence:SIM_Pk`` labels are held out
  of training (``variant='partial'``: some silences trained, the rest held out; ``variant='none'``:
  no silence in training, so every answer is the do-operation: a response head or the latent path)
  and the model's answers are scored against ``truth_delta``: Pearson over all genes, over the descendants' genes, and the
  *leak ratio* (:func:`leak_ratio`).
- :func:`run_papalexi_causal`: THP-1 (Papalexi 2021) with IFNGR1 and STAT1 held out;
  ``silence:JAK-STAT`` and ``silence:HALLMARK_INTERFERON_GAMMA_RESPONSE`` against the observed
  IFNGR1 / STAT1 knockout deltas.
- :func:`run_l1000_causal`: A375 L1000 with the MAPK-pathway inhibitors held out (all doses);
  ``silence:MAPK`` against their observed effect at the top dose(s).

Each is set beside baselines that use the same prior knowledge without a model:
:func:`members_only_delta` (the silenced entity's own member genes drop to a low quantile of
control, nothing propagates), :func:`footprint_delta` (minus the entity's footprint weights, no
propagation) and ``MeanOfTrain`` (the mean delta of the training perturbations).

>>> from bioworld.eval.causal import leak_ratio, footprint_delta          # doctest: +SKIP
>>> df = run_simulator_causal(seeds=[0], steps=500)                     # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError
from bioworld.eval.baselines import FitContext, MeanOfTrain
from bioworld.eval.metrics import direction_accuracy, pearson_delta

__all__ = [
    "CAUSAL_METRICS",
    "MAPK_INHIBITORS",
    "SIM_SHAPES",
    "footprint_delta",
    "intervention_template_delta",
    "leak_ratio",
    "members_only_delta",
    "run_l1000_causal",
    "run_papalexi_causal",
    "run_simulator_causal",
    "score_silence",
]

#: Metric column -> definition (also written into the report).
CAUSAL_METRICS: dict[str, str] = {
    "pearson_all": "Pearson correlation of predicted and target delta over all genes of the panel.",
    "pearson_top50": "Pearson over the 50 genes with the largest |target delta| (top-50 DE of the target; "
                     "only genes with a nonzero target delta, so fewer when fewer change).",
    "direction_top50": "Share of the top-50 DE genes whose predicted delta has the target's sign.",
    "pearson_desc": "Simulator: Pearson over the genes of the silenced pathway's DAG descendants only "
                    "(not the pathway itself; NaN when it has no descendants).",
    "leak_ratio": "Simulator: mean |predicted delta| on genes of pathways that are neither the silenced "
                  "pathway nor its descendants, divided by mean |predicted delta| on the genes of the "
                  "silenced pathway and its descendants (OTHER genes excluded). 0 = no leak.",
    "leak_ratio_other": "Simulator: the same numerator taken over OTHER genes (in no pathway) instead.",
    "truth_leak_ratio": "Simulator: leak_ratio of the true delta itself (the target's own value, ~0).",
}

#: BRAF / MEK / ERK inhibitors looked for in L1000 ``obs['pert_iname']`` (those present are held out).
MAPK_INHIBITORS = (
    "PLX-4720", "vemurafenib", "dabrafenib", "PLX-4032", "GDC-0879", "SB-590885", "RAF-265",
    "selumetinib", "AZD-6244", "trametinib", "PD-0325901", "PD-98059", "U-0126", "cobimetinib",
    "binimetinib", "refametinib", "pimasertib", "SCH-772984", "ulixertinib", "VX-11e",
)

#: Simulator shapes of the causal check: name -> (``simulate`` keywords, knocked-out driver genes left out of
#: every gene set the model is given). ``default`` (8 pathways, longest DAG path 2-3 on seeds 0-2), ``wide``
#: (16 pathways: longest path 5-7, 4-5 descendants per pathway), ``deep`` (10 pathways, edge probability 0.6:
#: longest path 4-5), ``outside`` (60 genes in no pathway instead of 20, and 3 of the 24 knocked-out drivers
#: in no gene set: training targets outside every entity).
SIM_SHAPES: dict[str, tuple[dict[str, Any], int]] = {
    "default": ({}, 0),
    "wide": ({"n_pathways": 16}, 0),
    "deep": ({"n_pathways": 10, "edge_prob": 0.6}, 0),
    "outside": ({"n_other_genes": 60}, 3),
}

_METRIC_COLS = ["pearson_all", "pearson_top50", "direction_top50", "pearson_desc", "leak_ratio",
                "leak_ratio_other", "truth_leak_ratio"]
COLUMNS = ["benchmark", "variant", "shape", "seed", "target", "query", "method", *_METRIC_COLS, "n_genes", "steps", "wall_s"]


# ---------------------------------------------------------------------------------- primitives
def _as_vector(delta: Any, genes: Sequence[str]) -> np.ndarray:
    if isinstance(delta, pd.Series):
        missing = [g for g in genes if g not in delta.index]
        if missing:
            raise BioworldError(f"delta lacks {len(missing)} genes (e.g. {missing[:3]}); expected one value per gene")
        return delta.loc[list(genes)].to_numpy(np.float64)
    v = np.asarray(delta, dtype=np.float64)
    if v.ndim != 1 or len(v) != len(genes):
        raise BioworldError(f"delta has shape {v.shape}; expected [{len(genes)}] (one value per gene)")
    return v


def _gene_groups(genes: Sequence[str], gmt: Mapping[str, Sequence[str]], silenced: str,
                 descendants: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks over ``genes``: affected (silenced + descendants), descendants only,
    non-descendant pathway genes, other genes (in no pathway)."""
    if silenced not in gmt:
        raise BioworldError(f"silenced pathway {silenced!r} is not in the gene sets ({list(gmt)[:5]}…)")
    desc = set(descendants) - {silenced}
    unknown = sorted(desc - set(gmt))
    if unknown:
        raise BioworldError(f"descendants {unknown} are not in the gene sets; expected pathway names of gmt")
    pos = {g: i for i, g in enumerate(genes)}
    n = len(genes)
    own, des, non, any_pw = (np.zeros(n, bool) for _ in range(4))
    for name, members in gmt.items():
        idx = [pos[g] for g in members if g in pos]
        any_pw[idx] = True
        if name == silenced:
            own[idx] = True
        elif name in desc:
            des[idx] = True
        else:
            non[idx] = True
    affected = own | des
    non &= ~affected  # a gene in two sets counts as affected if either is
    return affected, des & ~own, non, ~any_pw


def leak_ratio(delta: Any, genes: Sequence[str], gmt: Mapping[str, Sequence[str]], silenced: str,
               descendants: Sequence[str]) -> dict[str, float]:
    """How much of a predicted ``silence:`` effect lands where the causal graph says it cannot.

    Parameters
    ----------
    delta
        ``[G]`` predicted change (array in ``genes`` order, or a Series indexed by gene).
    genes
        Gene names of the panel.
    gmt
        Pathway -> member genes.
    silenced, descendants
        The silenced pathway and its DAG descendants (the only pathways it can change).

    Returns
    -------
    ``{"leak_ratio": mean|d| on non-descendant pathway genes / mean|d| on the silenced pathway's and
    its descendants' genes, "leak_ratio_other": mean|d| on genes in no pathway / the same
    denominator}``; NaN where a gene group is empty or the denominator is 0.
    """
    d = np.abs(_as_vector(delta, genes))
    affected, _, non, other = _gene_groups(genes, gmt, silenced, descendants)
    den = d[affected].mean() if affected.any() else np.nan
    if not np.isfinite(den) or den <= 0:
        return {"leak_ratio": float("nan"), "leak_ratio_other": float("nan")}
    return {
        "leak_ratio": float(d[non].mean() / den) if non.any() else float("nan"),
        "leak_ratio_other": float(d[other].mean() / den) if other.any() else float("nan"),
    }


def members_only_delta(control_X: np.ndarray, genes: Sequence[str], members: Sequence[str], *,
                       quantile: float = 0.05) -> np.ndarray:
    """The "members only" baseline of a silencing: no propagation.

    Member genes of the silenced entity move to the ``quantile`` of their control distribution
    (delta = quantile - control mean: every member is pushed down, the naive reading of "off");
    every other gene gets 0.
    """
    X = np.asarray(control_X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(genes) or len(X) == 0:
        raise BioworldError(f"control_X has shape {X.shape}; expected [cells >= 1, {len(genes)}]")
    if not 0.0 <= quantile <= 1.0:
        raise BioworldError(f"quantile={quantile!r}; expected a value in [0, 1]")
    out = np.zeros(len(genes))
    member_set = set(members)
    idx = np.array([i for i, g in enumerate(genes) if g in member_set], dtype=int)
    if len(idx):
        out[idx] = np.quantile(X[:, idx], quantile, axis=0) - X[:, idx].mean(0)
    return out


def footprint_delta(entity: Any, genes: Sequence[str], *, scale: float = 1.0) -> np.ndarray:
    """The "footprint only" baseline: ``delta_g = -scale * w_g`` for the entity's member genes on
    the panel (weights as in the entity, e.g. PROGENy footprint weights), 0 elsewhere. Pearson is
    scale-free, so ``scale=1`` is enough for correlations. ``entity`` is a
    :class:`bioworld.entities.Entity` or a mapping gene -> weight."""
    if hasattr(entity, "genes") and hasattr(entity, "weights"):
        weights = dict(zip(entity.genes, entity.weights))
    elif isinstance(entity, Mapping):
        weights = {str(k): float(v) for k, v in entity.items()}
    else:
        raise BioworldError(f"entity is a {type(entity).__name__}; expected an Entity or a dict gene -> weight")
    return np.array([-scale * float(weights.get(g, 0.0)) for g in genes], dtype=np.float64)


def intervention_template_delta(wm: Any, entity: str) -> np.ndarray:
    """The "intervention template" baseline of ``silence:entity`` (log scale ``[G]``), no trained network.

    From a :class:`~bioworld.WorldModel` (trained or not: its reference cells, slots, action space and
    training data): the entity's member genes make the do()'s move along its activity axis
    (:class:`~bioworld.query.ActivityAxes`, as the query engine does); every other gene responds by its
    noise-shrunk slope on the entity's activity over the observed effects of the training perturbations
    that act on the entity (touch its slot, e.g. knockouts of its members;
    :func:`bioworld.query._counterfactual.intervention_template`). With no such perturbation, only the
    members move.
    """
    from bioworld._world_model import INACTIVE_QUANTILE
    from bioworld.query._counterfactual import ActivityAxes, intervention_template

    if wm._X is None:
        raise BioworldError("intervention_template_delta needs the model's training data in memory (not a loaded model)")
    e = list(wm.entity_names).index(entity)
    ref = np.asarray(wm.reference, dtype=np.float64)
    axes = ActivityAxes.fit(ref.astype(np.float32), np.asarray(wm.membership), quantile=INACTIVE_QUANTILE)
    move = (axes.inactive(ref.astype(np.float32), e) - ref).mean(0)
    X, labels = wm._X, np.asarray(wm._labels).astype(str)
    ctrl = X[labels == wm.control]
    acting = [lab for lab in wm.train_labels if lab != wm.control and len(wm.actions[lab].components) == 1
              and float(np.asarray(wm.space.encode([wm.actions[lab]]).touch)[0, :, e].sum()) > 0]
    effects, noise = [], []
    for lab in acting:
        cells = X[labels == lab]
        if len(cells) >= 2:
            effects.append(cells.mean(0) - ctrl.mean(0))
            noise.append(cells.var(0) / len(cells) + ctrl.var(0) / len(ctrl))
    G = ref.shape[1]
    resp = intervention_template(axes.axis[e], move, np.reshape(effects, (-1, G)), np.reshape(noise, (-1, G)))
    return np.where(move != 0, move, resp) * np.asarray(wm.sd, dtype=np.float64)


def _safe_pearson(pred: np.ndarray, obs: np.ndarray, genes: Any = None) -> float:
    try:
        return pearson_delta(pred, obs, genes)
    except BioworldError:
        return float("nan")


def score_silence(pred: Any, target: Any, *, k: int = 50) -> dict[str, float]:
    """Pearson over all genes, over the top-``k`` DE genes of ``target`` and direction accuracy there.

    The top-``k`` genes are taken among genes whose target delta is nonzero (the simulator's truth is
    exactly 0 on genes a silencing cannot reach), so fewer than ``k`` where fewer change.
    """
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    k_eff = int(min(k, max(1, int((np.abs(t) > 1e-9).sum()))))  # never rank genes the target leaves at 0
    return {
        "pearson_all": _safe_pearson(p, t),
        "pearson_top50": _safe_pearson(p, t, k_eff),
        "direction_top50": float(direction_accuracy(p, t, k_eff)),
        "n_genes": int(len(t)),
    }


def _row(**kw: Any) -> dict[str, Any]:
    row = {c: np.nan for c in COLUMNS}
    row.update(kw)
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _wm_config(steps: int, seed: int, threads: int) -> dict[str, Any]:
    return {"seed": int(seed), "max_steps": int(steps), "warmup_steps": min(100, max(1, int(steps) // 10)),
            "checkpoint_every": 0, "num_threads": int(threads)}


def _cf_mean(wm: Any, cells: Any, specs: Sequence[str]) -> dict[str, np.ndarray]:
    """Counterfactual on ``cells``, delta averaged over cells, per spec."""
    cf = wm.counterfactual(cells, list(specs))
    d = np.asarray(cf.layers["delta"], np.float64)
    lab = cf.obs["bw_intervention"].astype(str).to_numpy()
    return {s: d[lab == s].mean(0) for s in specs}


def _predict(wm: Any, labels: Sequence[str]) -> dict[str, np.ndarray]:
    pred = wm.predict(list(labels))
    d = np.asarray(pred.layers["delta"], np.float64)
    return {lab: d[i] for i, lab in enumerate(labels)}


def _predict_latent(wm: Any, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`_predict` with the model's silence response heads set aside: every untrained silence answered by
    the latent path (the do-operation before heads), for the comparison row ``WorldModel predict (latent path)``."""
    heads = wm.silence_heads
    wm.silence_heads, wm._engine = {}, None
    try:
        return _predict(wm, labels)
    finally:
        wm.silence_heads, wm._engine = heads, None


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


# ---------------------------------------------------------------------------------- simulator
def model_gene_sets(sim: Any, hidden_targets: int, seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """The gene sets a simulator model is given: ``sim.gmt`` without ``hidden_targets`` knocked-out
    driver genes (drawn with ``seed``), so those training targets lie outside every entity. Returns the
    sets and the hidden genes (sorted). The truth and the leak ratio keep ``sim.gmt``."""
    labels = set(sim.adata.obs["perturbation"].astype(str))
    roles = sim.adata.var["role"].astype(str).to_numpy()
    targets = [str(g) for g, r in zip(sim.adata.var_names, roles) if r == "driver" and str(g) in labels]
    if not 0 <= hidden_targets <= len(targets):
        raise BioworldError(f"hidden_targets={hidden_targets!r}; expected 0..{len(targets)} (the knocked-out drivers "
                            "of this simulation)")
    hidden = set(np.random.default_rng(int(seed) + 1000).choice(targets, hidden_targets, replace=False).tolist()) \
        if hidden_targets else set()
    return {p: [g for g in genes if g not in hidden] for p, genes in sim.gmt.items()}, sorted(hidden)


def run_simulator_causal(
    *,
    seeds: Sequence[int] = (0,),
    steps: int = 500,
    variants: Sequence[str] = ("partial", "none"),
    n_holdout: int | None = 4,
    n_cf_cells: int = 256,
    threads: int = 1,
    k: int = 50,
    sim_kwargs: Mapping[str, Any] | None = None,
    hidden_targets: int = 0,
    shape: str = "default",
    train: bool = True,
    config: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Held-out ``silence:SIM_Pk`` against the simulator's exact truth.

    ``config``: training-config fields laid over the benchmark's (e.g. ``{"mask_mode": "none"}``);
    ``model_config``: :class:`~bioworld.model.JEPAConfig` fields (e.g. ``{"slot_block": 2, "dense_max_slots": 0}``).
    ``hidden_targets``: that many knocked-out drivers are left out of the model's gene sets
    (:func:`model_gene_sets`); ``shape`` names the simulation in the rows (see :data:`SIM_SHAPES`);
    ``n_holdout=None`` holds out half the silences (at least one). ``train=False``: no training, only the
    rows that need no trained network (the baselines and ``InterventionTemplate``).

    Per seed, one simulation (``simulate(seed=seed, **sim_kwargs)``, all silences sampled) and per
    variant one world model (entities = the simulator's GMT, ``nmf_programs=0``):
    ``partial`` holds out ``n_holdout`` silences drawn with the seed (the others are trained as
    actions); ``none`` holds out every silence. Held-out silences are answered by the
    do-operation (an untrained ``silence:`` label, see :mod:`bioworld.query.engine`: the entity's response
    head where it validated better on held-in data, else the latent path) two ways:
    ``WorldModel predict`` (``wm.predict``, mean over the model's reference control cells) and
    ``WorldModel counterfactual`` (``wm.counterfactual`` on ``n_cf_cells`` control cells,
    averaged). Beside them:
    ``MembersOnly`` (:func:`members_only_delta`), ``InterventionTemplate``
    (:func:`intervention_template_delta`), ``MeanOfTrain`` (mean observed delta of the
    training labels), ``Observed cells (ceiling)`` (the held-out label's own sampled cells) and
    ``Truth`` (the truth itself: its leak ratio is the reference).
    """
    from bioworld._world_model import WorldModel
    from bioworld.data import normalize, register, simulate
    from bioworld.eval.benchmark import _sim_entities, mean_deltas

    unknown = sorted(set(variants) - {"partial", "none"})
    if unknown:
        raise BioworldError(f"unknown variants {unknown}; expected 'partial' and/or 'none'")
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        sim = simulate(seed=int(seed), **dict(sim_kwargs or {}))
        adata = sim.adata
        genes = [str(g) for g in adata.var_names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg = register(adata, perturbation_key="perturbation", control="control", input="counts",
                           replicate_key="replicate")
        X = normalize(adata, reg)
        labels = adata.obs["perturbation"].astype(str).to_numpy()
        observed, _ = mean_deltas(X, labels, "control")
        ctrl_idx = np.flatnonzero(labels == "control")
        cf_cells = adata[ctrl_idx[_subsample(len(ctrl_idx), n_cf_cells, seed)]].copy()
        entities = _sim_entities(model_gene_sets(sim, hidden_targets, int(seed))[0])
        silences = [f"silence:{p}" for p in sim.pathways if f"silence:{p}" in set(labels)]
        n_held = max(1, len(silences) // 2) if n_holdout is None else n_holdout
        for variant in variants:
            if variant == "partial":
                pick = np.random.default_rng(seed).choice(len(silences), min(n_held, len(silences)), replace=False)
                held = sorted(silences[i] for i in pick)
            else:
                held = list(silences)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wm = WorldModel(adata, entities=entities, replicate_key="replicate", nmf_programs=0,
                                   holdout=held, config={**_wm_config(steps, seed, threads), **dict(config or {})},
                                   model_config=dict(model_config) if model_config else None)
                preds = {"InterventionTemplate": {lab: intervention_template_delta(wm, lab[len("silence:"):])
                                                  for lab in held}}
                if train:
                    wm.train(progress=progress)
                    preds.update({"WorldModel predict": _predict(wm, held),
                                  "WorldModel predict (latent path)": _predict_latent(wm, held),
                                  "WorldModel counterfactual": _cf_mean(wm, cf_cells, held)})
            wall = time.perf_counter() - t0
            if list(wm.genes) != genes:
                raise BioworldError("the world model's gene order differs from the simulation's; cannot score")
            train = {lab: observed[lab] for lab in observed if lab not in set(held)}
            mot = MeanOfTrain().fit(train, FitContext(control="control")).predict(held)
            for lab in held:
                cands = {m: p[lab] for m, p in preds.items()}
                pw = lab[len("silence:"):]
                cands["MembersOnly"] = members_only_delta(X[ctrl_idx], genes, sim.gmt[pw])
                cands["MeanOfTrain"] = mot[lab]
                cands["Observed cells (ceiling)"] = observed[lab]
                rows += _silence_rows(sim, genes, lab, cands, k=k, variant=variant, seed=int(seed), steps=steps, wall=wall,
                                      shape=shape)
    df = _frame(rows)
    df.attrs["note"] = ("Targets: simulate(seed).truth_delta (exact expected log1p-CP10k change). 'partial': "
                        f"{'half the' if n_holdout is None else n_holdout} silences held out per seed, the rest trained; "
                        "'none': no silence in training.")
    return df


# ---------------------------------------------------------------------------------- Papalexi
def _silence_rows(sim: Any, genes: list[str], lab: str, cands: dict[str, np.ndarray], *, k: int, variant: str,
                  seed: int, steps: int, wall: float, shape: str = "default") -> list[dict[str, Any]]:
    """Rows scoring every candidate answer to the held-out ``lab`` (plus the truth itself) against the truth."""
    pw = lab[len("silence:"):]
    desc = sorted(sim.descendants(pw))
    truth = sim.truth_delta.loc[lab, genes].to_numpy(np.float64)
    _, des_mask, _, _ = _gene_groups(genes, sim.gmt, pw, desc)
    truth_leak = leak_ratio(truth, genes, sim.gmt, pw, desc)["leak_ratio"]
    rows = []
    for method, pred in {**cands, "Truth": truth}.items():
        wm = method.startswith("WorldModel") and np.isfinite(wall)
        rows.append(_row(
            benchmark="simulator", variant=variant, shape=shape, seed=seed, target=lab, query=lab, method=method,
            **score_silence(pred, truth, k=k),
            pearson_desc=_safe_pearson(pred, truth, des_mask) if des_mask.sum() >= 2 else np.nan,
            **leak_ratio(pred, genes, sim.gmt, pw, desc), truth_leak_ratio=truth_leak,
            steps=steps if wm else np.nan, wall_s=wall if wm else np.nan,
        ))
    return rows


def _entity(wm: Any, name: str):
    for e in wm.entity_set:
        if e.name == name:
            return e
    raise BioworldError(f"entity {name!r} is not a slot of the model; slots include {wm.entity_names[:5]}")


def run_papalexi_causal(
    *,
    seed: int = 0,
    steps: int = 500,
    holdout: Sequence[str] = ("IFNGR1", "STAT1"),
    silences: Sequence[str] = ("JAK-STAT", "HALLMARK_INTERFERON_GAMMA_RESPONSE"),
    n_cf_cells: int = 512,
    threads: int = 1,
    k: int = 50,
    progress: bool = False,
) -> pd.DataFrame:
    """THP-1: held-out IFNGR1 / STAT1 knockouts against ``silence:`` of the IFN-gamma entities.

    Targets: observed mean delta (log1p CP10k, ``normalize`` after ``register``) of each held-out
    knockout vs control. Queries: ``silence:E`` for each entity in ``silences`` through
    ``wm.predict`` (mean over the model's reference control cells) and ``wm.counterfactual`` (on
    ``n_cf_cells`` control cells, the do-operation, since no silence is trained). Baselines:
    ``Footprint <E>`` (:func:`footprint_delta`: minus the entity's own weights), ``MeanOfTrain``,
    ``InterventionTemplate <E>`` (:func:`intervention_template_delta`) and for reference the world
    model's own prediction of the held-out knockout label.
    """
    from bioworld._world_model import WorldModel
    from bioworld.data import load_papalexi, normalize, register
    from bioworld.eval.benchmark import mean_deltas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_papalexi()
        reg = register(adata, perturbation_key="perturbation", control="control")
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    observed, _ = mean_deltas(X, labels, "control")
    held = list(holdout)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = WorldModel(adata, perturbation_key="perturbation", control="control", holdout=held,
                           config=_wm_config(steps, seed, threads))
        template = {e: intervention_template_delta(wm, e) for e in silences}
        wm.train(progress=progress)
        specs = [f"silence:{e}" for e in silences]
        pred = _predict(wm, specs + held)
        latent = _predict_latent(wm, specs)
        ctrl_idx = np.flatnonzero(labels == "control")
        cf = _cf_mean(wm, adata[ctrl_idx[_subsample(len(ctrl_idx), n_cf_cells, seed)]].copy(), specs)
    wall = time.perf_counter() - t0
    genes = list(wm.genes)
    train = {lab: observed[lab] for lab in observed if lab not in set(held)}
    mot = MeanOfTrain().fit(train, FitContext(control="control")).predict(held)
    rows = []
    for target in held:
        obs = observed[target]
        cands: list[tuple[str, str, np.ndarray]] = []
        for e, s in zip(silences, specs):
            cands.append(("WorldModel predict", s, pred[s]))
            cands.append(("WorldModel predict (latent path)", s, latent[s]))
            cands.append(("WorldModel counterfactual", s, cf[s]))
            cands.append((f"Footprint {e}", s, footprint_delta(_entity(wm, e), genes)))
            cands.append((f"InterventionTemplate {e}", s, template[e]))
        cands.append(("MeanOfTrain", target, mot[target]))
        cands.append(("WorldModel predict (held-out KO label)", target, pred[target]))
        for method, query, p in cands:
            wm_row = method.startswith("WorldModel")
            rows.append(_row(benchmark="papalexi", variant="holdout IFNGR1,STAT1", seed=int(seed), target=target,
                             query=query, method=method, **score_silence(p, obs, k=k),
                             steps=steps if wm_row else np.nan, wall_s=wall if wm_row else np.nan))
    return _frame(rows)


# ---------------------------------------------------------------------------------- L1000
def run_l1000_causal(
    *,
    seed: int = 0,
    steps: int = 500,
    inhibitors: Sequence[str] | None = None,
    top_doses: int = 2,
    threads: int = 1,
    k: int = 50,
    progress: bool = False,
) -> pd.DataFrame:
    """A375 L1000: ``silence:MAPK`` on the DMSO wells against held-out MAPK-pathway inhibitors.

    The inhibitors (default: the names of :data:`MAPK_INHIBITORS` present in
    ``obs['pert_iname']``) are held out with all their doses. Targets per inhibitor: the observed
    delta (well minus mean of the DMSO wells, log input scale) at the top dose and the mean over
    the ``top_doses`` highest doses. Queries: ``silence:MAPK`` via ``wm.predict`` (reference
    control wells) and ``wm.counterfactual`` on all DMSO wells (do-operation). Baselines:
    ``Footprint MAPK`` (minus the PROGENy MAPK weights), ``MeanOfTrain`` (per-dose mean of the
    training compounds) and, for reference, the world model's prediction of the held-out
    compound labels themselves (from their structure).
    """
    from bioworld._world_model import WorldModel
    from bioworld.actions import parse_action
    from bioworld.data import bundled_path, load_l1000, normalize, register
    from bioworld.eval.benchmark import mean_deltas

    kw = dict(perturbation_key="perturbation", control="control", input="log", dose_key="pert_dose",
              compound_id_key="pert_id", min_cells_per_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_l1000()
        reg = register(adata, **kw)
    names = adata.obs["pert_iname"].astype(str).to_numpy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    present = set(names)
    inhibitors = [n for n in (MAPK_INHIBITORS if inhibitors is None else inhibitors) if n in present]
    if not inhibitors:
        raise BioworldError("none of the MAPK inhibitors is in obs['pert_iname']; pass inhibitors= names present")
    X = normalize(adata, reg)
    observed, _ = mean_deltas(X, labels, "control")
    held = sorted({lab for lab, n in zip(labels, names) if n in set(inhibitors) and lab != "control"})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = WorldModel(adata, holdout=held, smiles=bundled_path("compounds/lincs_drugs_smiles.csv"),
                           config=_wm_config(steps, seed, threads), **kw)
        template = intervention_template_delta(wm, "MAPK")
        wm.train(progress=progress)
        pred = _predict(wm, ["silence:MAPK"] + held)
        latent = _predict_latent(wm, ["silence:MAPK"])
        cf = _cf_mean(wm, adata[labels == "control"].copy(), ["silence:MAPK"])
    wall = time.perf_counter() - t0
    genes = list(wm.genes)
    train = {lab: observed[lab] for lab in observed if lab not in set(held)}
    mot = MeanOfTrain().fit(train, FitContext(control="control")).predict(held)
    foot = footprint_delta(_entity(wm, "MAPK"), genes)
    rows = []
    for inh in inhibitors:
        mine = [lab for lab in held if parse_action(lab).components[0].target == inh]
        mine = sorted(mine, key=lambda lab: parse_action(lab).components[0].dose or 0.0)
        top = mine[-top_doses:]
        targets = {mine[-1]: [mine[-1]], f"{inh} top-{len(top)} doses mean": top}
        for tname, labs in targets.items():
            obs = np.mean([observed[lab] for lab in labs], axis=0)
            cands = [
                ("WorldModel predict", "silence:MAPK", pred["silence:MAPK"]),
                ("WorldModel predict (latent path)", "silence:MAPK", latent["silence:MAPK"]),
                ("WorldModel counterfactual", "silence:MAPK", cf["silence:MAPK"]),
                ("Footprint MAPK", "silence:MAPK", foot),
                ("InterventionTemplate MAPK", "silence:MAPK", template),
                ("MeanOfTrain", ",".join(labs), np.mean([mot[lab] for lab in labs], axis=0)),
                ("WorldModel predict (held-out compound label)", ",".join(labs),
                 np.mean([pred[lab] for lab in labs], axis=0)),
            ]
            for method, query, p in cands:
                wm_row = method.startswith("WorldModel")
                rows.append(_row(benchmark="l1000", variant="holdout " + ",".join(inhibitors), seed=int(seed),
                                 target=tname, query=query, method=method, **score_silence(p, obs, k=k),
                                 steps=steps if wm_row else np.nan, wall_s=wall if wm_row else np.nan))
    df = _frame(rows)
    df.attrs["inhibitors"] = list(inhibitors)
    df.attrs["held_out_labels"] = held
    return df
