"""Benchmark runners: the world model against baselines on held-out perturbations.

Three benchmarks, each returning a tidy DataFrame with columns
``benchmark, method, split, fold, seed, perturbation, metric, value`` (one row per held-out
perturbation and metric; see :data:`bioworld.eval.metrics.METRIC_DEFINITIONS`):

- `run_papalexi_lto`: leave-targets-out cross-validation over the 20 Papalexi THP-1 CRISPR-KO
  targets (each target predicted by a model that never saw it), WorldModel (+ masking ablations)
  vs `NoChange`, `MeanOfTrain`, `LinearEmbedding` and the split-half noise ceiling.
- `run_l1000`: LINCS L1000 A375 compounds, unseen compounds (all doses held out) and unseen
  doses, vs per-dose `MeanOfTrain` and `NearestCompound`.
- `run_simulator`: the bundled simulator with exact ground truth, unseen single knockouts and
  unseen double knockouts (vs `Additive` too), scored against the truth.

`main` (``python benchmarks/run_benchmarks.py --quick``) runs them and writes ``BENCHMARKS.md``,
CSVs, PNG plots and per-perturbation pred/real AnnData pairs. Nothing here asserts or hard-codes
a result: whatever the numbers are, they are written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioworld.data._deltas import mean_deltas
from bioworld.errors import BioworldError
from bioworld.eval.baselines import (
    Additive,
    Baseline,
    FitContext,
    LinearEmbedding,
    MeanOfTrain,
    KnowledgeNeighbours,
    NearestCompound,
    NoChange,
    TargetEmbedding,
    knowledge_embedding,
    split_half_ceiling,
)
from bioworld.eval.metrics import METRIC_DEFINITIONS, score_deltas

__all__ = [
    "BenchmarkSettings",
    "SETTINGS",
    "main",
    "load_earlier",
    "mean_deltas",
    "run_l1000",
    "run_papalexi_lto",
    "run_simulator",
    "summarize",
    "write_outputs",
]

COLUMNS = ["benchmark", "method", "split", "fold", "seed", "perturbation", "metric", "value"]
#: Knowledge used for the LinearEmbedding baseline's target embedding (same sources as the model).
KNOWLEDGE = ("hallmark", "progeny", "dorothea", "go_bp")
#: Ablations of the world model: name -> TrainConfig overrides.
ABLATIONS = {"WorldModel[mask=none]": {"mask_mode": "none"}, "WorldModel[mask=gene]": {"mask_mode": "gene"}}
#: Knowledge ablations (the "knowledge" entry is a WorldModel argument, not a TrainConfig field).
KNOWLEDGE_ABLATIONS = {
    "WorldModel[no knowledge]": {"knowledge": False},
    "WorldModel[shuffled targets]": {"knowledge": {"shuffle": ["targets"]}},
    "WorldModel[shuffled network]": {"knowledge": {"shuffle": ["network"]}},
    "WorldModel[shuffled signatures]": {"knowledge": {"shuffle": ["signatures"]}},
}


def _split_extra(extra: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """(TrainConfig overrides, the WorldModel ``knowledge`` argument) of a variant."""
    extra = dict(extra)
    return extra, extra.pop("knowledge", True)
CEILING = "Ceiling (split-half)"
#: Training cells used for LinearEmbedding's gene PCA (a random subsample keeps the SVD cheap).
MAX_PCA_CELLS = 5000


@dataclass(frozen=True)
class BenchmarkSettings:
    """Sizes of one benchmark mode (``quick`` / ``full``)."""

    papalexi_folds: int  # leave-targets-out folds over the 20 targets
    seeds: tuple[int, ...]  # model seeds (and split seeds)
    steps: int | None  # WorldModel max_steps (None = TrainConfig default)
    ablations: bool  # also train the mask_mode ablations on Papalexi
    sim_cells: int  # simulator cells per condition
    sim_control_cells: int
    sim_folds: int  # folds over driver genes for unseen singles
    sim_truth_draws: int
    sim_unsampled_doubles: int | None  # unsampled truth doubles scored in unseen_doubles (None = all)


SETTINGS = {
    "quick": BenchmarkSettings(papalexi_folds=2, seeds=(0,), steps=150, ablations=False, sim_cells=60,
                               sim_control_cells=300, sim_folds=2, sim_truth_draws=5000, sim_unsampled_doubles=40),
    "full": BenchmarkSettings(papalexi_folds=5, seeds=(0, 1, 2), steps=None, ablations=True, sim_cells=200,
                              sim_control_cells=800, sim_folds=4, sim_truth_draws=20000, sim_unsampled_doubles=None),
}


# ------------------------------------------------------------------------------------ helpers
@lru_cache(maxsize=1)
def _knowledge_embedding() -> TargetEmbedding:
    from bioworld.entities import load_bundled

    return knowledge_embedding([load_bundled(n) for n in KNOWLEDGE], dim=32, seed=0)


@lru_cache(maxsize=1)
def _knowledge_base() -> Any:
    from bioworld.knowledge import KnowledgeBase

    return KnowledgeBase()


def _train_expression(X: np.ndarray, labels: np.ndarray, train: Sequence[str], seed: int) -> np.ndarray:
    idx = np.flatnonzero(np.isin(labels, list(train)))
    if len(idx) > MAX_PCA_CELLS:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_PCA_CELLS, replace=False))
    return X[idx]


def _tidy(scores: pd.DataFrame, **cols: Any) -> pd.DataFrame:
    df = scores.copy()
    for k, v in cols.items():
        df[k] = v
    return df[COLUMNS]


@dataclass
class _Collector:
    """Scores, predictions (for the AnnData pairs) and wall times of one benchmark."""

    benchmark: str
    control_mean: np.ndarray
    var_names: list[str]
    frames: list[pd.DataFrame] = field(default_factory=list)
    preds: list[tuple[str, str, int, int, str, np.ndarray, np.ndarray]] = field(default_factory=list)
    walls: dict[str, float] = field(default_factory=dict)

    def add(self, method: str, split: str, fold: int, seed: int, pred: Mapping[str, np.ndarray],
            obs: Mapping[str, np.ndarray], *, k: int, reference: np.ndarray,
            candidates: Mapping[str, np.ndarray], wall_s: float | None = None) -> None:
        scores = score_deltas(pred, obs, k=k, reference=reference, candidates=candidates)
        self.frames.append(_tidy(scores, benchmark=self.benchmark, method=method, split=split, fold=fold, seed=seed))
        for lab, p in pred.items():
            self.preds.append((method, split, fold, seed, lab, np.asarray(p, np.float32), np.asarray(obs[lab], np.float32)))
        if wall_s is not None:
            self.walls[method] = self.walls.get(method, 0.0) + float(wall_s)

    def frame(self) -> pd.DataFrame:
        df = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame(columns=COLUMNS)
        df.attrs["wall_s"] = {k: round(v, 1) for k, v in self.walls.items()}
        return df

    def write_predictions(self, out: Path) -> list[Path]:
        """Per method: ``<benchmark>__<method>__pred.h5ad`` / ``__real.h5ad`` (matching rows).

        ``X`` = control mean + delta (predicted / observed or true mean expression on the
        benchmark's scale), one row per (perturbation, split, fold, seed) plus one ``control`` row;
        ``obs['target_gene']`` = ``obs['perturbation']`` (Arc cell-eval's default column),
        ``layers['delta']`` = the delta.
        """
        import anndata as ad

        from bioworld.report._h5ad import write_h5ad_atomic

        d = out / "predictions"
        d.mkdir(parents=True, exist_ok=True)
        written = []
        methods = sorted({p[0] for p in self.preds})
        var = pd.DataFrame(index=pd.Index(self.var_names, dtype=str))
        for m in methods:
            rows = [p for p in self.preds if p[0] == m]
            obs = pd.DataFrame(
                {"perturbation": [r[4] for r in rows] + ["control"], "split": [r[1] for r in rows] + [""],
                 "fold": [r[2] for r in rows] + [-1], "seed": [r[3] for r in rows] + [-1]},
                index=pd.Index([f"{r[4]}|{r[1]}|f{r[2]}|s{r[3]}" for r in rows] + ["control"], dtype=str),
            )
            obs["target_gene"] = obs["perturbation"]
            zero = np.zeros((1, len(self.var_names)), np.float32)
            for kind, j in (("pred", 5), ("real", 6)):
                delta = np.vstack([np.stack([r[j] for r in rows]), zero])
                a = ad.AnnData(X=(delta + self.control_mean[None, :]).astype(np.float32), obs=obs.copy(), var=var.copy())
                a.layers["delta"] = delta
                a.uns["bioworld_benchmark"] = {"benchmark": self.benchmark, "method": m, "kind": kind}
                path = d / f"{self.benchmark}__{_slug(m)}__{kind}.h5ad"
                write_h5ad_atomic(a, path)  # a run stopped mid-write leaves the earlier file, not a torn one
                written.append(path)
        return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def _fit_predict(baseline: Baseline, train: Mapping[str, np.ndarray], ctx: FitContext,
                 test: Sequence[str]) -> tuple[dict[str, np.ndarray], float]:
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = baseline.fit(train, ctx).predict(list(test))
    return {k: v.astype(np.float64) for k, v in pred.items()}, time.perf_counter() - t


def _world_model(adata: Any, *, holdout: Sequence[str], predict: Sequence[str], config: Mapping[str, Any],
                 **kwargs: Any) -> tuple[dict[str, np.ndarray], float]:
    from bioworld._world_model import WorldModel

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = WorldModel(adata, holdout=list(holdout), config=dict(config), **kwargs)
        wm.train(progress=False)
        pred = wm.predict(list(predict))
    delta = np.asarray(pred.layers["delta"], dtype=np.float64)
    return {lab: delta[i] for i, lab in enumerate(pred.obs_names)}, time.perf_counter() - t


def _wm_config(steps: int | None, seed: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"seed": int(seed)}
    if steps is not None:
        cfg["max_steps"] = int(steps)
        cfg["warmup_steps"] = min(100, max(1, int(steps) // 10))
        cfg["checkpoint_every"] = 0
    cfg.update(extra or {})
    return cfg


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# ------------------------------------------------------------------------------------ Papalexi
def papalexi_deltas() -> tuple[Any, np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The bundled Papalexi screen as the benchmark scores it: ``(adata, X, labels, deltas, control mean)``.

    ``X`` = log1p-CP10k expression (:func:`bioworld.data.normalize` after ``register``), ``deltas`` =
    each target's mean minus the control mean (:func:`mean_deltas`).
    """
    from bioworld.data import load_papalexi, normalize, register

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_papalexi()
        reg = register(adata, perturbation_key="perturbation", control="control", input="counts",
                       replicate_key="bio_rep")
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    obs, mu = mean_deltas(X, labels, "control")
    return adata, X, labels, obs, mu


def run_papalexi_lto(
    *,
    n_folds: int = 5,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    quick: bool = False,
    ablations: bool | None = None,
    world_model: bool = True,
    wm_config: Mapping[str, Any] | None = None,
    knowledge_ablations: bool = False,
    k: int = 20,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Leave-targets-out CV over the 20 Papalexi targets.

    Parameters
    ----------
    n_folds
        Targets are dealt into ``n_folds`` groups (:func:`bioworld.data.leave_targets_out`, split
        seed = model seed); each group is predicted by models fitted without it.
    seeds
        Model / split seeds.
    steps
        WorldModel ``max_steps`` (None: TrainConfig default).
    quick
        Shorthand for the quick settings (2 folds, 150 steps, no ablations) where arguments are left
        at their defaults.
    ablations
        Also train ``mask_mode='none'`` and ``'gene'`` world models (default: not in quick mode).
    world_model
        False: baselines and ceiling only.
    wm_config
        Extra :class:`~bioworld.train.TrainConfig` overrides for every world model (e.g. a smaller
        batch for smoke runs).
    out
        Folder for the pred/real AnnData pairs (none written if None).

    Returns
    -------
    Tidy DataFrame (`COLUMNS`); ``attrs['wall_s']`` = seconds per method (summed over folds).
    Deltas are log1p-CP10k means of each target's cells minus the control mean
    (:func:`bioworld.data.normalize`). The ceiling uses the same folds' targets.
    """
    from bioworld.data import leave_targets_out

    if quick:
        n_folds = 2 if n_folds == 5 else n_folds
        steps = 150 if steps is None else steps
    ablations = (not quick) if ablations is None else ablations
    adata, X, labels, obs, mu = papalexi_deltas()
    reference = np.mean(list(obs.values()), axis=0)
    col = _Collector("papalexi", mu, [str(v) for v in adata.var_names])
    emb = _knowledge_embedding()
    variants = {"WorldModel": {}} if world_model else {}
    if world_model and ablations:
        variants.update(ABLATIONS)
    if world_model and knowledge_ablations:
        variants.update(KNOWLEDGE_ABLATIONS)
    splits_by_seed = {s: leave_targets_out(labels, n_folds=n_folds, seed=s) for s in seeds}
    total = sum(len(v) for v in splits_by_seed.values()) * (4 + len(variants))
    bar = _progress(total, "papalexi LTO", progress)
    for seed, splits in splits_by_seed.items():
        t = time.perf_counter()
        ceiling = split_half_ceiling(X, labels, "control", seed, k=k, reference=reference)
        ceiling_wall = time.perf_counter() - t
        for sp in splits:
            test = [lab for lab in sp.test if lab in obs]
            train = {lab: obs[lab] for lab in sp.train if lab in obs}
            c = ceiling[ceiling["perturbation"].isin(test)]
            col.frames.append(_tidy(c, benchmark="papalexi", method=CEILING, split="leave_targets_out",
                                    fold=sp.fold, seed=seed))
            col.walls[CEILING] = col.walls.get(CEILING, 0.0) + ceiling_wall / len(splits)
            ctx = FitContext(control="control", target_embedding=emb,
                             expression=_train_expression(X, labels, sp.train, seed), knowledge=_knowledge_base())
            for base in (NoChange(), MeanOfTrain(), LinearEmbedding(), KnowledgeNeighbours()):
                pred, wall = _fit_predict(base, train, ctx, test)
                col.add(base.name, "leave_targets_out", sp.fold, seed, pred, obs, k=k, reference=reference,
                        candidates=obs, wall_s=wall)
                bar.update(1)
            for name, extra in variants.items():
                bar.set_postfix_str(f"{name} fold {sp.fold} seed {seed}")
                over, knowledge = _split_extra(extra)
                cfg = _wm_config(steps, seed, {**(wm_config or {}), **over})
                pred, wall = _world_model(adata, holdout=sp.test, predict=test, config=cfg, knowledge=knowledge,
                                          perturbation_key="perturbation", control="control", replicate_key="bio_rep")
                col.add(name, "leave_targets_out", sp.fold, seed, pred, obs, k=k, reference=reference,
                        candidates=obs, wall_s=wall)
                bar.update(1)
    bar.close()
    if out is not None:
        col.write_predictions(Path(out))
    df = col.frame()
    df.attrs["note"] = (f"Leave-targets-out over the Papalexi targets, {n_folds} folds; deltas = log1p-CP10k mean "
                        "minus control mean; discrimination ranks among all 20 observed deltas.")
    return df


# ------------------------------------------------------------------------------------ L1000
def _l1000_smiles(adata: Any) -> dict[str, str]:
    from bioworld.actions import compound_key, load_smiles_table
    from bioworld.data import bundled_path

    table = load_smiles_table(bundled_path("compounds/lincs_drugs_smiles.csv"))
    out = {}
    for name, pid in zip(adata.obs["pert_iname"].astype(str), adata.obs["pert_id"].astype(str)):
        key = compound_key(pid)
        if key in table:
            out[name] = table[key]
    return out


def run_l1000(
    *,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    quick: bool = False,
    frac_compounds: float = 0.2,
    world_model: bool = True,
    wm_config: Mapping[str, Any] | None = None,
    knowledge_ablations: bool = False,
    k: int = 50,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """LINCS L1000 A375: unseen compounds and unseen doses.

    Only compounds with a SMILES in the bundled LINCS table are used (the others cannot be
    featurised by the world model or `NearestCompound`; their wells are dropped before
    splitting, and ``attrs['dropped_compounds']`` lists them). Splits per seed:
    ``unseen_compounds`` (:func:`bioworld.data.unseen_compounds`, ``frac_compounds`` of the
    compounds with all their doses) and ``unseen_doses`` (:func:`bioworld.data.unseen_doses`, one
    random dose per compound). Deltas: each well's log expression minus the mean of the control
    wells (one well per compound and dose). Methods: WorldModel, NoChange, per-dose MeanOfTrain,
    NearestCompound (the most similar training compound, at its nearest dose).
    """
    from bioworld.data import load_l1000, normalize, register, unseen_compounds, unseen_doses

    if quick:
        steps = 150 if steps is None else steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_l1000()
    smiles = _l1000_smiles(adata)
    labels_all = adata.obs["perturbation"].astype(str)
    names = adata.obs["pert_iname"].astype(str)
    keep = (labels_all == "control") | names.isin(list(smiles))
    dropped = sorted(set(names[~keep.to_numpy()]))
    adata = adata[keep.to_numpy()].copy()
    kw = dict(perturbation_key="perturbation", control="control", input="log", dose_key="pert_dose",
              compound_id_key="pert_id", min_cells_per_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(adata, **kw)
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    obs, mu = mean_deltas(X, labels, "control")
    reference = np.mean(list(obs.values()), axis=0)
    col = _Collector("l1000", mu, [str(v) for v in adata.var_names])
    from bioworld.data import bundled_path

    smiles_path = bundled_path("compounds/lincs_drugs_smiles.csv")
    splits = []
    for s in seeds:
        splits.append(unseen_compounds(labels, frac=frac_compounds, seed=s))
        splits.append(unseen_doses(labels, doses_to_hold=1, seed=s))
    n_wm = int(world_model) * (1 + len(KNOWLEDGE_ABLATIONS) * int(knowledge_ablations))
    bar = _progress(len(splits) * (4 + n_wm), "l1000", progress)
    for sp in splits:
        test = [lab for lab in sp.test if lab in obs]
        train = {lab: obs[lab] for lab in sp.train if lab in obs}
        ctx = FitContext(control="control", smiles=smiles, knowledge=_knowledge_base())
        for base in (NoChange(), MeanOfTrain(), NearestCompound(), KnowledgeNeighbours()):
            pred, wall = _fit_predict(base, train, ctx, test)
            col.add(base.name, sp.kind, 0, sp.seed, pred, obs, k=k, reference=reference, candidates=obs, wall_s=wall)
            bar.update(1)
        variants = {"WorldModel": {}} if world_model else {}
        if world_model and knowledge_ablations:
            variants.update(KNOWLEDGE_ABLATIONS)
        for name, extra in variants.items():
            bar.set_postfix_str(f"{name} {sp.kind} seed {sp.seed}")
            over, knowledge = _split_extra(extra)
            cfg = _wm_config(steps, sp.seed, {**(wm_config or {}), **over})
            pred, wall = _world_model(adata, holdout=sp.test, predict=test, config=cfg, smiles=smiles_path,
                                      knowledge=knowledge, **kw)
            col.add(name, sp.kind, 0, sp.seed, pred, obs, k=k, reference=reference, candidates=obs, wall_s=wall)
            bar.update(1)
    bar.close()
    if out is not None:
        col.write_predictions(Path(out))
    df = col.frame()
    df.attrs["dropped_compounds"] = dropped
    df.attrs["note"] = (f"One well per compound and dose; delta = well minus mean of the control wells (log scale); "
                        f"top-{k} DE genes; unseen_compounds holds out {frac_compounds:.0%} of compounds with all doses, "
                        "unseen_doses one random dose per compound.")
    return df


# ------------------------------------------------------------------------------------ simulator
def _sim_entities(gmt: Mapping[str, Sequence[str]]):
    from bioworld.entities import Entity, EntitySet

    return EntitySet([Entity(name, tuple(genes), tuple(1.0 for _ in genes), "simulator") for name, genes in gmt.items()])


def _simulator_jobs(seeds: Sequence[int], splits: Sequence[str], labels: np.ndarray, sampled: list[str],
                    comps: Mapping[str, Any], truth: Mapping[str, np.ndarray], *, n_folds: int,
                    max_unsampled_doubles: int | None) -> list[tuple[str, int, int, list[str], list[str]]]:
    """``(split, fold, seed, holdout, test)`` of every simulator model to train (see :func:`run_simulator`)."""
    from bioworld.data import unseen_combinations

    drivers = sorted({c.target for lab in sampled for c in comps[lab].components if c.kind == "ko"})
    singles_truth = [lab for lab in truth if len(comps[lab].components) == 1 and comps[lab].components[0].kind == "ko"]
    doubles_truth = [lab for lab in truth if len(comps[lab].components) == 2]
    jobs: list[tuple[str, int, int, list[str], list[str]]] = []
    for seed in seeds:
        if "unseen_singles" in splits:
            order = np.random.default_rng(seed).permutation(len(drivers))
            for fold, chunk in enumerate(np.array_split(order, n_folds)):
                held = {drivers[i] for i in chunk}
                holdout = [lab for lab in sampled if {c.target for c in comps[lab].components} & held]
                test = [lab for lab in singles_truth if comps[lab].components[0].target in held]
                jobs.append(("unseen_singles", fold, seed, holdout, test))
        if "unseen_doubles" in splits:
            sp = unseen_combinations(labels, frac=0.5, seed=seed)
            extra = sorted(lab for lab in doubles_truth if lab not in set(sampled))
            if max_unsampled_doubles is not None and len(extra) > max_unsampled_doubles:
                pick = np.random.default_rng(seed).choice(len(extra), max_unsampled_doubles, replace=False)
                extra = [extra[i] for i in sorted(pick)]
            test = sorted(set(sp.test) | set(extra))
            jobs.append(("unseen_doubles", 0, seed, list(sp.test), test))
    return jobs


def run_simulator(
    *,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    quick: bool = False,
    n_cells: int = 200,
    n_control_cells: int = 800,
    n_folds: int = 4,
    n_doubles: int = 16,
    n_truth_draws: int = 20000,
    max_unsampled_doubles: int | None = None,
    sim_seed: int = 0,
    splits: Sequence[str] = ("unseen_singles", "unseen_doubles"),
    world_model: bool = True,
    wm_config: Mapping[str, Any] | None = None,
    k: int = 20,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Simulator with exact truth: unseen single knockouts and unseen double knockouts.

    One simulated screen (``sim_seed``; all driver singles, ``n_doubles`` sampled doubles, all
    pathway silencings). ``unseen_singles``: driver genes dealt into ``n_folds`` groups (per
    seed); a fold's drivers' singles are the test set and every label touching them is withheld
    from training. ``unseen_doubles``: half of the sampled doubles are withheld
    (:func:`bioworld.data.unseen_combinations`); the test set is those plus every unsampled
    double of the truth table (all their singles are trained; at most ``max_unsampled_doubles``,
    drawn with the seed, None = all). Predictions are scored against
    ``SimulationResult.truth_delta`` (exact expected log1p-CP10k change); training deltas for the
    baselines are observed means of the sampled cells. Method ``Observed cells (ceiling)``: the
    held-out labels' own sampled cells (where sampled) scored against the truth.
    """
    from bioworld.actions import parse_action
    from bioworld.data import normalize, register, simulate

    steps = 150 if quick and steps is None else steps
    unknown = sorted(set(splits) - {"unseen_singles", "unseen_doubles"})
    if unknown:
        raise BioworldError(f"unknown simulator splits {unknown}; expected 'unseen_singles' and/or 'unseen_doubles'")
    sim = simulate(n_cells_per_condition=n_cells, n_control_cells=n_control_cells, doubles=n_doubles,
                   n_truth_draws=n_truth_draws, seed=sim_seed)
    adata = sim.adata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(adata, perturbation_key="perturbation", control="control", input="counts",
                       replicate_key="replicate")
    X = normalize(adata, reg)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    observed, _ = mean_deltas(X, labels, "control")
    truth = {str(lab): row.to_numpy(np.float64) for lab, row in sim.truth_delta.iterrows() if lab != "control"}
    sampled = sorted(set(labels) - {"control"})
    reference = np.mean([truth[lab] for lab in sampled], axis=0)
    # The truth has no control mean; use the observed control mean as the expression baseline.
    col = _Collector("simulator", X[labels == "control"].mean(0), [str(v) for v in adata.var_names])
    entities = _sim_entities(sim.gmt)
    emb = knowledge_embedding([entities], dim=min(8, len(entities)), seed=0)
    comps = {lab: parse_action(lab) for lab in set(truth) | set(sampled)}

    jobs = _simulator_jobs(seeds, splits, labels, sampled, comps, truth, n_folds=n_folds,
                           max_unsampled_doubles=max_unsampled_doubles)
    total = sum((4 if job[0] == "unseen_singles" else 5) + int(world_model) for job in jobs)
    bar = _progress(total, "simulator", progress)
    for split, fold, seed, holdout, test in jobs:
        hold = set(holdout)
        train = {lab: observed[lab] for lab in sampled if lab not in hold}
        train_cells = [lab for lab in set(labels) if lab not in hold]
        ctx = FitContext(control="control", target_embedding=emb,
                         expression=_train_expression(X, labels, train_cells, seed))
        bases: list[Baseline] = [NoChange(), MeanOfTrain(), LinearEmbedding(n_gene_pcs=10)]
        for base in bases + ([Additive()] if split == "unseen_doubles" else []):
            pred, wall = _fit_predict(base, train, ctx, test)
            col.add(base.name, split, fold, seed, pred, truth, k=k, reference=reference, candidates=truth, wall_s=wall)
            bar.update(1)
        seen_cells = {lab: observed[lab] for lab in test if lab in observed}
        if seen_cells:
            col.add("Observed cells (ceiling)", split, fold, seed, seen_cells, truth, k=k, reference=reference,
                    candidates=truth)
        bar.update(1)
        if world_model:
            bar.set_postfix_str(f"WorldModel {split} fold {fold} seed {seed}")
            pred, wall = _world_model(adata, holdout=holdout, predict=test, config=_wm_config(steps, seed, wm_config),
                                      entities=entities, perturbation_key="perturbation", control="control",
                                      replicate_key="replicate")
            col.add("WorldModel", split, fold, seed, pred, truth, k=k, reference=reference, candidates=truth,
                    wall_s=wall)
            bar.update(1)
    bar.close()
    if out is not None:
        col.write_predictions(Path(out))
    return col.frame().pipe(_with_note, "Scored against the simulator's exact truth (truth_delta), not against "
                            "sampled cells: the 'observed delta' of the metric definitions is the true delta here.")


def _with_note(df: pd.DataFrame, note: str) -> pd.DataFrame:
    df.attrs["note"] = note
    return df


# ------------------------------------------------------------------------------------ reporting
def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and n of every metric per (benchmark, split, method), over perturbations x folds x seeds.

    Adds the metric ``mse_rel_reduction_vs_MeanOfTrain`` = ``1 - mean(mse) / mean(mse of
    MeanOfTrain)`` over the rows both methods scored (sd over seeds when there are several).
    """
    if df.empty:
        return pd.DataFrame(columns=["benchmark", "split", "method", "metric", "mean", "sd", "n"])
    g = df.groupby(["benchmark", "split", "method", "metric"], sort=False)["value"]
    summ = g.agg(mean="mean", sd="std", n="count").reset_index()
    extra = []
    for (bench, split), part in df.groupby(["benchmark", "split"], sort=False):
        mse = part[part["metric"].str.startswith("mse_top")]
        base = mse[mse["method"] == "MeanOfTrain"].set_index(["perturbation", "fold", "seed"])["value"]
        if base.empty:
            continue
        for method, rows in mse.groupby("method", sort=False):
            m = rows.set_index(["perturbation", "fold", "seed"])["value"]
            both = m.index.intersection(base.index)
            if len(both) == 0:
                continue
            per_seed = []
            for s in sorted({i[2] for i in both}):
                idx = [i for i in both if i[2] == s]
                per_seed.append(1.0 - m.loc[idx].mean() / base.loc[idx].mean())
            extra.append({"benchmark": bench, "split": split, "method": method,
                          "metric": "mse_rel_reduction_vs_MeanOfTrain", "mean": float(np.mean(per_seed)),
                          "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else np.nan, "n": len(both)})
    return pd.concat([summ, pd.DataFrame(extra)], ignore_index=True)


def _fmt(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def _markdown_table(summ: pd.DataFrame) -> str:
    metrics = list(dict.fromkeys(summ["metric"]))
    methods = list(dict.fromkeys(summ["method"]))
    lines = ["| method | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for m in methods:
        part = summ[summ["method"] == m].set_index("metric")
        n = int(part.loc[[x for x in part.index if x != "mse_rel_reduction_vs_MeanOfTrain"], "n"].max()) \
            if len(part) else 0
        cells = [_fmt(part.loc[x, "mean"], part.loc[x, "sd"]) if x in part.index else "" for x in metrics]
        lines.append(f"| {m} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(summ: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(summ["metric"]))
    methods = list(dict.fromkeys(summ["method"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1, 3.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics):
        part = summ[summ["metric"] == metric].set_index("method")
        vals = [part.loc[m, "mean"] if m in part.index else np.nan for m in methods]
        errs = [part.loc[m, "sd"] if m in part.index else np.nan for m in methods]
        errs = [e if np.isfinite(e) else 0.0 for e in errs]
        ax.bar(range(len(methods)), vals, yerr=errs, color=[colors(i % 10) for i in range(len(methods))], capsize=2)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.axhline(0, color="black", lw=0.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from bioworld._atomic import write_files

    try:
        write_files([(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))], what="benchmark plot")
    finally:
        plt.close(fig)


def write_outputs(
    frames: Mapping[str, pd.DataFrame],
    *,
    out: str | os.PathLike,
    report: str | os.PathLike,
    command: str,
    mode: str,
    wall_s: Mapping[str, float],
    notes: Sequence[str] = (),
) -> Path:
    """Write ``<out>/<benchmark>_scores.csv`` (tidy), ``<out>/<benchmark>_summary.csv``,
    ``<out>/<benchmark>_<split>.png`` and the markdown ``report`` (tables mean ± sd per method x
    metric, command, date, machine, wall times, metric definitions). Returns the report path."""
    from bioworld._atomic import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = f"{platform.node() or 'unknown host'}: {platform.platform()}, {platform.processor() or platform.machine()}, " \
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    try:
        import torch

        machine += f", torch {torch.__version__} ({'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, " \
                   f"{torch.get_num_threads()} threads)"
    except ImportError:  # torch is a hard dependency of bioworld; keep the report writable anyway
        pass
    lines = [
        "# bioworld benchmarks",
        "",
        "Generated by `bioworld.eval.benchmark` — do not edit by hand; rerun the command below.",
        "",
        f"- command: `{command}`",
        f"- mode: `{mode}`",
        f"- date: {now}",
        f"- machine: {machine}",
        "- wall time per benchmark: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall_s.items()),
        "",
        "The question every table answers: does the world model beat simple baselines on "
        "perturbations it never saw? Rows are methods, columns metrics (mean ± sd over held-out "
        "perturbations × folds × seeds; n = number of scored perturbation predictions). "
        "`mse_rel_reduction_vs_MeanOfTrain` > 0 means lower top-DE MSE than predicting the mean "
        "training perturbation.",
        "",
    ]
    for note in notes:
        lines.append(f"> {note}")
    if notes:
        lines.append("")
    for bench, df in frames.items():
        summ = summarize(df)
        earlier = df.attrs.get("earlier_run")
        if earlier is None:  # a table of this run: its files and the record that lets a later run keep it
            write_text(out / f"{bench}_scores.csv", df.to_csv(index=False), what="benchmark scores")
            write_text(out / f"{bench}_summary.csv", summ.to_csv(index=False), what="benchmark summary")
            _write_meta(out / f"{bench}_meta.json", df, command=command, date=now, wall_s=wall_s.get(bench))
        lines += [f"## {bench}", ""]
        if earlier is not None:
            lines += [f"Kept from an earlier run ({earlier['date']}; `{earlier['command']}`; "
                      f"{earlier['wall_s']:.0f} s), not rerun by this command.", ""]
        if df.attrs.get("note"):
            lines += [str(df.attrs["note"]), ""]
        walls = df.attrs.get("wall_s", {})
        if walls:
            lines += ["Wall time per method (s, summed over folds and seeds): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in walls.items()), ""]
        if df.attrs.get("dropped_compounds"):
            lines += [f"Compounds without a SMILES (not used): {', '.join(df.attrs['dropped_compounds'])}", ""]
        for split, part in summ.groupby("split", sort=False):
            png = out / f"{bench}_{_slug(split)}.png"
            _plot(part, png, f"{bench} / {split}")
            rel = os.path.relpath(png, report.parent)
            lines += [f"### {bench} — {split}", "", _markdown_table(part), "", f"![{bench} {split}]({rel})", ""]
    lines += _companion_sections(out, report)
    lines += ["## Metric definitions", "", METRIC_DEFINITIONS, "",
              "Per-perturbation predictions are written as AnnData pairs "
              "`predictions/<benchmark>__<method>__pred.h5ad` / `__real.h5ad` (rows = perturbation × split × "
              "fold × seed, `X` = control mean + delta, `obs['target_gene']`) that Arc's cell-eval can score.", ""]
    write_text(report, _with_kept_sections("\n".join(lines), report), what="benchmark report")
    return report


def _with_kept_sections(text: str, report: Path) -> str:
    """``text`` plus the section other scripts maintain in ``report`` (the retrospective one, between its
    markers), so a rewrite of the tables does not lose it."""
    if not report.is_file():
        return text
    from bioworld.eval.retrospective import SECTION_BEGIN, SECTION_END

    old = report.read_text(encoding="utf-8")
    if SECTION_BEGIN not in old or SECTION_END not in old:
        return text
    kept = SECTION_BEGIN + old.split(SECTION_BEGIN, 1)[1].split(SECTION_END, 1)[0] + SECTION_END
    return text.rstrip("\n") + "\n\n" + kept + "\n"


_META_ATTRS = ("note", "wall_s", "dropped_compounds")


def _write_meta(path: Path, df: pd.DataFrame, *, command: str, date: str, wall_s: float | None) -> None:
    """``<bench>_meta.json`` beside the scores CSV: what the report says about the table besides its numbers."""
    import json

    meta = {"date": date, "command": command, "benchmark_wall_s": wall_s,
            **{k: df.attrs[k] for k in _META_ATTRS if k in df.attrs}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    os.replace(tmp, path)


def load_earlier(out: str | os.PathLike, bench: str) -> pd.DataFrame:
    """The scores of an earlier run of ``bench`` written to ``out`` (``<bench>_scores.csv`` + ``_meta.json``),
    with the attributes the report needs, so a run of other benchmarks can keep its table."""
    import json

    out = Path(out)
    scores, meta_path = out / f"{bench}_scores.csv", out / f"{bench}_meta.json"
    missing = [p.name for p in (scores, meta_path) if not p.is_file()]
    if missing:
        raise BioworldError(f"--keep-earlier: {bench} has no earlier run in {out} ({', '.join(missing)} missing); "
                            f"expected the files a run of `--only {bench} --out {out}` writes. Fix: run {bench} "
                            f"too, or leave out --keep-earlier.")
    df = pd.read_csv(scores)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for k in _META_ATTRS:
        if k in meta:
            df.attrs[k] = meta[k]
    df.attrs["earlier_run"] = {"date": meta.get("date", "unknown"), "command": meta.get("command", "unknown"),
                               "wall_s": float(meta.get("benchmark_wall_s") or 0.0)}
    return df


# benchmarks run by their own scripts whose findings the report repeats: (folder, file, title, line prefix, how many
# lines with that prefix; 0 = all)
COMPANIONS = (
    ("masking", "MASKING.md", "Masking (entity vs gene vs none) on held-out simulator silences", "What it shows", 1),
    ("doubles", "DOUBLES.md", "Simulator unseen doubles vs Additive", "Seeds where", 1),
    ("design", "DESIGN.md", "DESIGN: which experiments next (retrospective lab in the loop, bw.design strategies vs "
     "random)", "Verdict", 0),
)


def _companion_sections(out: Path, report: Path) -> list[str]:
    """One section per companion result file present under ``out``: its finding line and a link."""
    lines: list[str] = []
    for folder, name, title, prefix, keep in COMPANIONS:
        path = out / folder / name
        if not path.is_file():
            continue
        found = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith(prefix)]
        found = found[:keep] if keep else found
        rel = os.path.relpath(path, report.parent)
        body = [f"- {f}" for f in found] if len(found) > 1 else found
        lines += [f"## {title}", "", f"From [{rel}]({rel}) (its script, command and machine load are in the file):",
                  "", *(body or ["(no finding line in the file)"]), ""]
    return lines


# ------------------------------------------------------------------------------------ CLI
RUNNERS = ("papalexi", "l1000", "simulator", "retrospective")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_benchmarks", description="bioworld benchmarks: world model vs baselines")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small settings (default): minutes on a laptop")
    mode.add_argument("--full", action="store_true", help="full settings: 5 folds, 3 seeds, default steps, ablations")
    p.add_argument("--only", default=",".join(RUNNERS),
                   help="comma-separated subset of papalexi,l1000,simulator,retrospective (retrospective: "
                        "bioworld.eval.retrospective on Papalexi and L1000, written to <out>/retrospective and a "
                        "section of the report)")
    p.add_argument("--out", default="benchmarks/results", help="folder for CSVs, plots and predictions")
    p.add_argument("--report", default=None, help="markdown report path (default: <out>/BENCHMARKS.md)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (overrides the mode)")
    p.add_argument("--steps", type=int, default=None, help="WorldModel max_steps (overrides the mode)")
    p.add_argument("--folds", type=int, default=None, help="Papalexi leave-targets-out folds (overrides the mode)")
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None,
                   help="train the mask_mode ablations on Papalexi (default: on in --full)")
    p.add_argument("--no-world-model", action="store_true", help="baselines and ceilings only")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--keep-earlier", action="store_true",
                   help="keep the tables of benchmarks not in --only from their earlier run in --out "
                        "(<bench>_scores.csv + <bench>_meta.json), marked with that run's date and command; "
                        "with --only '' the report is rewritten from the earlier runs alone")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python benchmarks/run_benchmarks.py") -> int:
    """Run the benchmarks and write the report. Returns the exit code (0). ``prog``: how the report and the
    ``<bench>_meta.json`` files name the command that was run (``bioworld benchmark`` from the CLI, whose options
    are the same, so a wheel's report names a command its user has)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    mode = "full" if args.full else "quick"
    st = SETTINGS[mode]
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in RUNNERS]
    if bad:
        raise BioworldError(f"--only {bad}: unknown benchmark(s); expected a subset of {','.join(RUNNERS)}")
    if not only and not args.keep_earlier:
        raise BioworldError("--only is empty: nothing to run. Fix: name benchmarks, or add --keep-earlier to "
                            "rewrite the report from the earlier runs in --out without running anything.")
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else st.seeds
    steps = args.steps if args.steps is not None else st.steps
    ablations = st.ablations if args.ablations is None else args.ablations
    out = Path(args.out)
    report = Path(args.report) if args.report else out / "BENCHMARKS.md"
    progress = not args.no_progress
    wm = not args.no_world_model
    frames: dict[str, pd.DataFrame] = {}
    walls: dict[str, float] = {}
    runners: dict[str, Callable[[], pd.DataFrame]] = {
        "papalexi": lambda: run_papalexi_lto(n_folds=args.folds or st.papalexi_folds, seeds=seeds, steps=steps,
                                             ablations=ablations, world_model=wm, out=out, progress=progress),
        "l1000": lambda: run_l1000(seeds=seeds, steps=steps, world_model=wm, out=out, progress=progress),
        "simulator": lambda: run_simulator(seeds=seeds, steps=steps, n_cells=st.sim_cells,
                                           n_control_cells=st.sim_control_cells, n_folds=st.sim_folds,
                                           n_truth_draws=st.sim_truth_draws,
                                           max_unsampled_doubles=st.sim_unsampled_doubles, world_model=wm, out=out,
                                           progress=progress),
    }
    for name in only:
        if name == "retrospective":
            continue
        t = time.perf_counter()
        frames[name] = runners[name]()
        walls[name] = time.perf_counter() - t
        print(f"{name}: {len(frames[name])} scores in {walls[name]:.0f} s", file=sys.stderr)
    if args.keep_earlier:  # in RUNNERS order, so the report reads the same however the runs were split
        kept = {b: load_earlier(out, b) for b in RUNNERS  # a benchmark never run into --out has nothing to keep
                if b != "retrospective" and b not in frames and (out / f"{b}_scores.csv").is_file()}
        print(f"kept from earlier runs: {', '.join(kept) or 'none'}", file=sys.stderr)
        frames = {b: frames[b] if b in frames else kept[b] for b in RUNNERS if b in frames or b in kept}
        walls.update({b: df.attrs["earlier_run"]["wall_s"] for b, df in kept.items()})
    command = f"{prog} {shlex.join(argv)}" if argv else prog
    ran = [b for b in only if b != "retrospective"]
    trained = f"WorldModel max_steps={steps or 'TrainConfig default'}" if wm else "no WorldModel (--no-world-model)"
    notes = [f"settings of the benchmarks this command ran ({', '.join(ran)}): seeds={list(seeds)}, {trained}"
             + (f", Papalexi folds={args.folds or st.papalexi_folds}, ablations={ablations}" if "papalexi" in ran
                else "")] if ran else []
    if frames:
        path = write_outputs(frames, out=out, report=report, command=command.strip(), mode=mode, wall_s=walls,
                             notes=notes)
        print(f"wrote {path}", file=sys.stderr)
    if "retrospective" in only:
        _retrospective(out, report, mode=mode, seeds=seeds, steps=steps, folds=args.folds, world_model=wm,
                       progress=progress, command=command.strip())
    return 0


def _retrospective(out: Path, report: Path, *, mode: str, seeds: Sequence[int], steps: int | None,
                   folds: int | None, world_model: bool, progress: bool, command: str) -> None:
    """The retrospective validation of prioritize: ``<out>/retrospective/RETROSPECTIVE.md`` (+ CSVs,
    plot) and its section of ``report`` (quick: 2 folds; full: 4; steps default 150)."""
    from bioworld.eval import retrospective as R

    if not world_model:
        print("retrospective: skipped (it ranks the world model's candidates; --no-world-model)", file=sys.stderr)
        return
    rs = R.RetroSettings(seeds=tuple(seeds), folds=folds or (4 if mode == "full" else 2), steps=steps or 150)
    load = R.loadavg()
    t = time.perf_counter()
    frames = R.run_retrospective(rs, progress=progress)
    path, summ = R.write_retro(frames, out / "retrospective", command=command, settings=rs,
                               notes=[f"total wall time {time.perf_counter() - t:.0f} s"],
                               load=f"{load} (start), {R.loadavg()} (end)")
    R.update_benchmarks_md(report, R.benchmarks_section(summ, frames, path, report, command))
    print(f"wrote {path} and its section of {report}", file=sys.stderr)
