"""Simulated single-cell perturbation data with a known causal ground truth.

A small, fully specified world: ``K`` pathways linked by a random DAG, each with *driver* genes
(their expression feeds the pathway's activity) and *footprint* genes (their expression follows
the activity), plus ``other`` genes that belong to no pathway. Interventions are driver knockouts
(single or double) and pathway silencing; the exact expected effect of every one of them on
expression and on pathway activity is returned next to the sampled counts, so models can be scored
against the truth and not only against noisy held-out cells.

The model
---------
Pathways ``SIM_P1 .. SIM_PK`` are listed in topological order: an edge ``SIM_Pj -> SIM_Pk``
(probability ``edge_prob`` for every ``j < k``) carries a signed weight ``w_jk`` with
``|w_jk|`` uniform in ``[0.6, 1.2]``. Per cell, with ``r_ki`` the relative expression of driver
``i`` of pathway ``k`` (log-normal, mean 1) and ``eps_k ~ N(0, 1)``::

    u_k = c_k + gamma * (mean_i r_ki - 1) + beta * sum_j w_jk * (a_j - a0_j) + sigma * eps_k
    a_k = sigmoid(u_k)                      # activity, bounded in (0, 1)

with ``a0_k = sigmoid(c_k)`` the noise-free control activity, ``gamma = 3`` (driver strength),
``beta = 4`` (coupling) and ``sigma = 0.5`` (cell noise). The sigmoid makes combined effects
non-additive. Gene rates (before normalisation to a composition ``p`` over the panel)::

    driver    P{k}_DRV{i}:  b_g * r_ki
    footprint P{k}_FP{i}, induced (i % 3 != 0):
                            b_g * exp(loading_g * (a_k - a0_k))   # log-mean = base + loading * a_k
    footprint P{k}_FP{i}, repressed (i % 3 == 0):
                            share_g * (M_k - sum of the pathway's induced rates)
    other     OTHER{i}:     b_g * lognormal noise                  # unaffected by any intervention

with ``loading_g`` uniform in ``[1.5, 2.5]``. A pathway's footprint has a fixed budget ``M_k``:
its repressed genes (every third footprint gene) share what the induced genes leave, so they go
down as the activity goes up, and the pathway's total footprint rate does not depend on its
activity. Interventions therefore shift the CP10k composition of the genes they cannot reach
only through the (small) rate of knocked-out drivers. ``var['sign']`` is ``+1`` for induced and
``-1`` for repressed footprint genes, ``0`` otherwise. ``OTHER`` genes are abundant
(housekeeping-like: base rate ~5 against ~1 for induced footprint genes and ~0.5 for drivers).

Interventions
-------------
- knockout ``P{k}_DRV{i}``: that driver's relative expression ``r_ki`` becomes ``0.02`` (both its
  own expression and its contribution to ``u_k``; one of ``n`` drivers lowers ``u_k`` by about
  ``gamma / n``); the change propagates to the descendants of ``SIM_Pk`` through the DAG;
- double knockout ``A+B`` of drivers of two different pathways;
- ``silence:SIM_Pk``: ``a_k`` is held at its inactive level ``0``; descendants follow through the
  DAG, non-descendants are unchanged and the pathway's footprint genes follow its activity.

Labels use the bioworld action grammar (``control``, ``GENE``, ``A+B`` with components sorted,
``silence:PATHWAY``).

Counts
------
Cell ``c`` gets a library size ``L_c`` (log-normal around ``library_size``), replicate ``r`` a
small per-gene batch factor ``beta_rg`` (log-sd 0.05), and counts are negative binomial (gamma-
Poisson) with mean ``L_c * p_gc * beta_rg`` and a per-gene inverse dispersion ``theta_g``.

Ground truth
------------
``truth_delta[pert, gene]`` is the expected change of log1p(CP10k) expression against control,
computed on *expected rates* (no count sampling, no batch effect, i.e. infinite sequencing
depth: the library size cancels in CP10k): ``E[log1p(1e4 * p_g)]`` over ``n_truth_draws`` latent
draws (cell noise, driver noise, other-gene noise) taken from their own random stream, the *same*
draws for every intervention (common random numbers), minus the same for control. Pathways an
intervention cannot reach therefore have exactly zero activity change; their genes have exactly
zero expression change under silencing and a tiny one (~0.003, the knocked-out drivers' share of
the CP10k composition) under knockouts. The Monte Carlo error of a delta is about
``0.5 / sqrt(n_truth_draws)`` at most.
``truth_entity_delta[pert, pathway]`` is the matching change of mean activity ``E[a_k]``.

Truth is computed for ``control`` (a row of zeros), every single driver knockout, every pair of
drivers from two different pathways and every pathway silencing, whether or not the intervention
was sampled into ``.adata`` (:attr:`SimulationResult.held_out` lists those that were not).
"""

from __future__ import annotations

import difflib
import itertools
import json


from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioworld.errors import BioworldError, DataValidationError, UnknownPerturbationError

__all__ = ["simulate", "SimulationResult"]

# --- fixed constants of the generative model (documented in the module docstring) -------------
_EDGE_WEIGHT = (0.6, 1.2)  # |w_jk| range of a DAG edge
_POSITIVE_EDGE_PROB = 0.6  # share of activating edges
_OFFSET = (-0.5, 0.5)  # c_k range: control activity sigmoid(c_k) in about [0.38, 0.62]
_DRIVER_STRENGTH = 3.0  # gamma: pre-activation change when all of a pathway's drivers are lost
_COUPLING = 4.0  # beta: how strongly a parent's activity change moves its children
_ACTIVITY_NOISE = 0.5  # sigma: per-cell Gaussian noise on the pre-activation u_k
_DRIVER_NOISE = 0.25  # log-sd of a driver's relative expression r_ki
_OTHER_NOISE = 0.2  # log-sd of the per-cell noise of "other" genes
_KO_RESIDUAL = 0.02  # relative expression of a knocked-out driver
_SILENCED_ACTIVITY = 0.0  # activity of a silenced pathway
_LOADING = (1.5, 2.5)  # |loading| range of a footprint gene
_OTHER_BASE = 5.0  # median base rate of an other gene (induced footprint genes ~1, drivers ~0.5)
_REPRESSED_FLOOR = 0.2  # repressed pool left at activity 1, relative to the induced base mass
_LIBRARY_LOG_SD = 0.3  # log-sd of the per-cell library size
_BATCH_LOG_SD = 0.05  # log-sd of the per-replicate, per-gene batch factor
_THETA_MEDIAN = 5.0  # median NB inverse dispersion (var = mu + mu^2 / theta)
_CP10K = 1e4

CONTROL = "control"
SILENCE_PREFIX = "silence:"


# ------------------------------------------------------------------------------------------------
# result
# ------------------------------------------------------------------------------------------------
@dataclass
class SimulationResult:
    """A simulated data set and its causal ground truth.

    Attributes
    ----------
    adata
        Cells x genes AnnData. ``X``: raw counts, CSR float32 (integer values);
        ``obs['perturbation']`` (action-grammar labels, ``control`` for controls),
        ``obs['replicate']`` (``rep1`` ..); ``var['pathway']`` (``''`` for other genes),
        ``var['role']`` in {``driver``, ``footprint``, ``other``}, ``var['sign']`` (+1 induced,
        -1 repressed footprint gene, 0 otherwise); ``obsm['sim_activity']``
        ``[cells, K]`` float32: the sampled activity of each pathway (column order
        ``uns['simulation']['pathways']``); ``uns['simulation']``: the parameters.
    gmt
        Pathway name -> member genes (drivers first, then footprint genes).
    dag
        Edges ``(parent, child, weight)`` between pathways.
    truth_delta
        ``[perturbation x gene]`` exact expected change of mean log1p(CP10k) against control.
    truth_entity_delta
        ``[perturbation x pathway]`` exact expected change of mean pathway activity.
    params
        The arguments and model constants the data were generated with (JSON-able).
    """

    adata: Any  # anndata.AnnData
    gmt: dict[str, list[str]]
    dag: list[tuple[str, str, float]]
    truth_delta: pd.DataFrame
    truth_entity_delta: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)

    # -- graph queries ---------------------------------------------------------------------------
    @property
    def pathways(self) -> list[str]:
        """Pathway names in topological order."""
        return list(self.gmt)

    @property
    def held_out(self) -> list[str]:
        """Labels with ground truth that were not sampled into :attr:`adata`."""
        seen = set(self.adata.obs["perturbation"].astype(str))
        return [label for label in self.truth_delta.index if label not in seen]

    def _check_pathway(self, pathway: str) -> None:
        if pathway not in self.gmt:
            raise UnknownPerturbationError(_unknown_message("pathway", pathway, list(self.gmt)))

    def parents(self, pathway: str) -> set[str]:
        """Direct parents of ``pathway`` in the DAG."""
        self._check_pathway(pathway)
        return {p for p, c, _ in self.dag if c == pathway}

    def children(self, pathway: str) -> set[str]:
        """Direct children of ``pathway`` in the DAG."""
        self._check_pathway(pathway)
        return {c for p, c, _ in self.dag if p == pathway}

    def descendants(self, pathway: str) -> set[str]:
        """All pathways reachable from ``pathway`` (excluding itself)."""
        return self._reach(pathway, self.children)

    def ancestors(self, pathway: str) -> set[str]:
        """All pathways from which ``pathway`` is reachable (excluding itself)."""
        return self._reach(pathway, self.parents)

    def _reach(self, pathway: str, step) -> set[str]:
        found: set[str] = set()
        frontier = [pathway]
        while frontier:
            for nxt in step(frontier.pop()):
                if nxt not in found:
                    found.add(nxt)
                    frontier.append(nxt)
        return found

    def driver_genes(self, pathway: str) -> list[str]:
        """Driver genes of ``pathway`` (``P{k}_DRV{i}``)."""
        self._check_pathway(pathway)
        return [g for g in self.gmt[pathway] if _role_of(g) == "driver"]

    def footprint_genes(self, pathway: str) -> list[str]:
        """Footprint genes of ``pathway`` (``P{k}_FP{i}``)."""
        self._check_pathway(pathway)
        return [g for g in self.gmt[pathway] if _role_of(g) == "footprint"]

    def pathway_of(self, gene: str) -> str | None:
        """The pathway a gene belongs to (``None`` for other genes)."""
        for name, genes in self.gmt.items():
            if gene in genes:
                return name
        return None

    # -- files -----------------------------------------------------------------------------------
    def write(self, directory: str | Path) -> Path:
        """Write the data set and its truth into ``directory`` (created if needed).

        Files: ``train.h5ad`` (:attr:`adata`), ``pathways.gmt`` (standard GMT: name, description,
        genes; tab-separated), ``truth_delta.csv``, ``truth_entity_delta.csv`` (first column
        ``perturbation``), ``dag.json`` (pathways, edges, drivers, params).

        Returns
        -------
        The directory path.
        """
        from bioworld._atomic import write_files

        out = Path(directory)
        gmt = "".join("\t".join([name, "bioworld simulated pathway", *genes]) + "\n" for name, genes in self.gmt.items())
        payload = {
            "pathways": self.pathways,
            "edges": [{"parent": p, "child": c, "weight": w} for p, c, w in self.dag],
            "drivers": {name: self.driver_genes(name) for name in self.pathways},
            "params": self.params,
        }
        # one writer for the package: each file complete or absent, all written before any is renamed
        write_files([
            (out / "train.h5ad", self.adata.write_h5ad),
            (out / "pathways.gmt", lambda tmp: Path(tmp).write_text(gmt, encoding="utf-8")),
            (out / "truth_delta.csv", lambda tmp: self.truth_delta.to_csv(tmp, index_label="perturbation")),
            (out / "truth_entity_delta.csv", lambda tmp: self.truth_entity_delta.to_csv(tmp, index_label="perturbation")),
            (out / "dag.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2), encoding="utf-8")),
        ], what="simulated data file")
        return out

    @classmethod
    def read(cls, directory: str | Path) -> "SimulationResult":
        """Read a directory written by :meth:`write`."""
        import anndata as ad

        src = Path(directory)
        expected = ["train.h5ad", "pathways.gmt", "truth_delta.csv", "truth_entity_delta.csv", "dag.json"]
        missing = [name for name in expected if not (src / name).is_file()]
        if missing:
            raise DataValidationError(
                f"simulation directory {src} lacks {missing}; expected the files {expected} "
                "written by SimulationResult.write(). Re-run simulate(...).write(directory)."
            )
        with open(src / "dag.json", encoding="utf-8") as fh:
            payload = json.load(fh)
        gmt: dict[str, list[str]] = {}
        with open(src / "pathways.gmt", encoding="utf-8") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    gmt[parts[0]] = parts[2:]
        return cls(
            adata=ad.read_h5ad(src / "train.h5ad"),
            gmt=gmt,
            dag=[(e["parent"], e["child"], float(e["weight"])) for e in payload["edges"]],
            truth_delta=pd.read_csv(src / "truth_delta.csv", index_col="perturbation"),
            truth_entity_delta=pd.read_csv(src / "truth_entity_delta.csv", index_col="perturbation"),
            params=payload["params"],
        )


# ------------------------------------------------------------------------------------------------
# model internals
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Intervention:
    """Typed intervention: knocked-out driver genes and silenced pathways."""

    knockouts: tuple[str, ...] = ()
    silenced: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        parts = sorted([*self.knockouts, *(SILENCE_PREFIX + p for p in self.silenced)])
        return "+".join(parts) if parts else CONTROL


@dataclass(frozen=True)
class _Model:
    """Parameters of one simulated world (all arrays read-only by convention)."""

    pathways: list[str]  # K names, topological order
    genes: list[str]  # G names
    gene_pathway: np.ndarray  # [G] int, pathway index or -1 for other genes
    role: np.ndarray  # [G] str: driver / footprint / other
    driver_idx: np.ndarray  # [K, n_drivers] int: gene column of each driver
    other_idx: np.ndarray  # [n_other] int
    weights: np.ndarray  # [K, K] w[j, k] for edge j -> k (0 = no edge)
    offset: np.ndarray  # [K] c_k
    log_base: np.ndarray  # [G] log b_g
    loading: np.ndarray  # [G] loadings of induced footprint genes (0 elsewhere)
    repressed_share: np.ndarray  # [G] share of its pathway's repressed pool (0 if not repressed)
    budget: np.ndarray  # [K] M_k: total footprint rate of a pathway (inf = no repressed genes)
    theta: np.ndarray  # [G] NB inverse dispersion
    batch: np.ndarray  # [R, G] per-replicate multiplicative batch factor

    @property
    def a0(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.offset))


@dataclass(frozen=True)
class _Noise:
    """Latent per-cell randomness (genes-major), shared across interventions for the truth."""

    eps: np.ndarray  # [K, N] activity noise
    driver: np.ndarray  # [K * n_drivers, N] driver log-noise (standard normal)
    other: np.ndarray  # [n_other, N] other-gene log-noise (standard normal)

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, model: _Model) -> "_Noise":
        k, d = model.driver_idx.shape
        return cls(
            eps=rng.standard_normal((k, n)),
            driver=rng.standard_normal((k * d, n)),
            other=rng.standard_normal((len(model.other_idx), n)),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _affected(model: _Model, iv: _Intervention) -> list[int]:
    """Pathway indices whose activity ``iv`` can change: its targets and their descendants."""
    hit = {model.pathways.index(p) for p in iv.silenced}
    hit |= {int(model.gene_pathway[model.genes.index(g)]) for g in iv.knockouts}
    for k in range(len(model.pathways)):  # topological order: parents come first
        if k not in hit and any(model.weights[j, k] != 0 for j in hit if j < k):
            hit.add(k)
    return sorted(hit)


def _activities(
    model: _Model, noise: _Noise, iv: _Intervention, base: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pathway activities ``[K, N]`` and driver relative expression ``r`` ``[K * n_drivers, N]``.

    With ``base`` (the control activities of the same draws) only the pathways ``iv`` can reach
    are recomputed; the others are copied, so they are bit-identical to control.
    """
    n_pw, n_drv = model.driver_idx.shape
    position = {model.genes[g]: i for i, g in enumerate(model.driver_idx.reshape(-1))}
    r = np.exp(_DRIVER_NOISE * noise.driver - 0.5 * _DRIVER_NOISE**2)
    for gene in iv.knockouts:
        r[position[gene]] = _KO_RESIDUAL
    r_mean = r.reshape(n_pw, n_drv, -1).mean(axis=1)  # [K, N]

    silenced = {model.pathways.index(p) for p in iv.silenced}
    todo = range(n_pw) if base is None else _affected(model, iv)
    a0 = model.a0
    act = np.empty_like(noise.eps) if base is None else base.copy()  # [K, N]
    for k in todo:
        if k in silenced:
            act[k] = _SILENCED_ACTIVITY
            continue
        u = model.offset[k] + _DRIVER_STRENGTH * (r_mean[k] - 1.0) + _ACTIVITY_NOISE * noise.eps[k]
        if k > 0:
            u = u + _COUPLING * (model.weights[:k, k] @ (act[:k] - a0[:k, None]))
        act[k] = _sigmoid(u)
    return act, r


def _footprint_rates(model: _Model, act: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (gene indices) and rates ``[rows, N]`` of pathway ``k``'s footprint genes.

    Induced genes: ``b_g * exp(loading_g * (a_k - a0_k))``. Repressed genes share what the induced
    ones leave of the pathway's budget: ``share_g * (M_k - sum of induced rates)``, so the
    pathway's footprint mass is the same at every activity.
    """
    in_k = model.gene_pathway == k
    up = np.flatnonzero(in_k & (model.loading > 0))
    down = np.flatnonzero(in_k & (model.repressed_share > 0))
    x = act[k] - model.a0[k]  # [N]
    induced = np.exp(model.log_base[up, None] + model.loading[up, None] * x)  # [up, N]
    if not down.size:
        return up, induced
    pool = model.budget[k] - induced.sum(axis=0)  # [N]
    repressed = model.repressed_share[down, None] * pool  # [down, N]
    return np.concatenate([up, down]), np.vstack([induced, repressed])


def _rates(model: _Model, noise: _Noise, act: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Unnormalised expression rates ``[G, N]`` (composition = rate / rate.sum(0))."""
    rate = np.empty((len(model.genes), act.shape[1]))  # [G, N]
    drivers = model.driver_idx.reshape(-1)
    rate[drivers] = np.exp(model.log_base[drivers, None]) * r
    for k in range(len(model.pathways)):
        rows, values = _footprint_rates(model, act, k)
        rate[rows] = values
    other = model.other_idx
    rate[other] = np.exp(model.log_base[other, None] + _OTHER_NOISE * noise.other - 0.5 * _OTHER_NOISE**2)
    return rate


def _mean_log1p_cp10k(rate: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``mean_n log1p(1e4 * rate[g, n] / total[n])`` per row; float32 maps, float64 means."""
    scale = (_CP10K / total).astype(np.float32)
    return np.log1p(rate * scale).mean(axis=1, dtype=np.float64)


def _truth(
    model: _Model, noise: _Noise, ivs: Sequence[_Intervention]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean log1p(CP10k) ``[I, G]`` and mean activity ``[I, K]`` of each intervention.

    Expected rates, common random numbers (the same ``noise`` for every intervention). Genes an
    intervention cannot reach keep their control rates bit for bit; if it knocks out no driver
    (and every reachable pathway conserves its footprint mass) the total rate is unchanged too, so
    their log1p(CP10k) is the control's exactly. Otherwise all genes see the new per-draw total.
    """
    act0, r0 = _activities(model, noise, _Intervention())
    rate0 = _rates(model, noise, act0, r0)  # [G, N]
    total0 = rate0.sum(axis=0)  # [N]
    rate0_32 = rate0.astype(np.float32)
    expr0 = _mean_log1p_cp10k(rate0_32, total0)  # [G]
    drivers = model.driver_idx.reshape(-1)
    position = {model.genes[g]: i for i, g in enumerate(drivers)}
    expr_rows, act_rows = [], []
    for iv in ivs:
        act, r = _activities(model, noise, iv, base=act0)
        parts = [_footprint_rates(model, act, k) for k in _affected(model, iv)]  # reachable pathways
        ko_rows = np.asarray([drivers[position[g]] for g in iv.knockouts], dtype=np.int64)
        ko_rates = np.exp(model.log_base[ko_rows, None]) * r[[position[g] for g in iv.knockouts]]
        rows = np.concatenate([ko_rows, *(p[0] for p in parts)])
        new = np.vstack([ko_rates, *(p[1] for p in parts)])  # [rows, N]
        hit = _affected(model, iv)
        if iv.knockouts or not np.isfinite(model.budget[hit]).all():
            total = total0 + new.sum(axis=0) - rate0[rows].sum(axis=0)
            expr = _mean_log1p_cp10k(rate0_32, total)
        else:  # footprint mass is conserved: the per-draw total is the control's
            total = total0
            expr = expr0.copy()
        expr[rows] = _mean_log1p_cp10k(new.astype(np.float32), total)
        expr_rows.append(expr)
        act_rows.append(act.mean(axis=1))
    return np.asarray(expr_rows), np.asarray(act_rows)


class _GeneColumns:
    """The per-gene columns of a simulated model, filled gene by gene."""

    def __init__(self) -> None:
        self.genes: list[str] = []
        self.gene_pathway: list[int] = []
        self.role: list[str] = []
        self.log_base: list[float] = []
        self.loading: list[float] = []
        self.shares: list[float] = []

    def add(self, name: str, pathway: int, role: str, log_base: float, *, loading: float = 0.0, share: float = 0.0) -> None:
        self.genes.append(name)
        self.gene_pathway.append(pathway)
        self.role.append(role)
        self.log_base.append(log_base)
        self.loading.append(loading)
        self.shares.append(share)


def _build_model(
    rng: np.random.Generator,
    *,
    n_pathways: int,
    genes_per_pathway: int,
    n_drivers: int,
    n_other_genes: int,
    n_replicates: int,
    edge_prob: float,
) -> _Model:
    pathways = [f"SIM_P{k + 1}" for k in range(n_pathways)]
    n_fp = genes_per_pathway - n_drivers

    weights = np.zeros((n_pathways, n_pathways))
    for j, k in itertools.combinations(range(n_pathways), 2):
        if rng.random() < edge_prob:
            sign = 1.0 if rng.random() < _POSITIVE_EDGE_PROB else -1.0
            weights[j, k] = sign * rng.uniform(*_EDGE_WEIGHT)
    offset = rng.uniform(*_OFFSET, size=n_pathways)

    t = _GeneColumns()
    budget = np.zeros(n_pathways)
    driver_idx = np.zeros((n_pathways, n_drivers), dtype=np.int64)
    for k in range(n_pathways):
        for i in range(n_drivers):
            driver_idx[k, i] = len(t.genes)
            t.add(f"P{k + 1}_DRV{i + 1}", k, "driver", rng.normal(np.log(0.5), 0.3))
        # footprint: every third gene is repressed, the others induced; the repressed genes share
        # what the induced ones leave of the pathway's fixed budget M_k (see _rates)
        n_up = n_fp - n_fp // 3
        sizes = rng.uniform(*_LOADING, size=n_up)
        base = np.exp(rng.normal(0.0, 0.4, size=n_up))
        share = rng.dirichlet(np.full(n_fp // 3, 4.0)) if n_fp // 3 else np.zeros(0)
        a0_k = 1.0 / (1.0 + np.exp(-offset[k]))
        top = float((base * np.exp(sizes * (1.0 - a0_k))).sum())  # induced mass at activity 1
        budget[k] = top + _REPRESSED_FLOOR * base.sum() if share.size else np.inf
        up_i = down_i = 0
        for i in range(n_fp):
            name = f"P{k + 1}_FP{i + 1}"
            if i % 3 == 2:  # repressed
                pool0 = budget[k] - base.sum()  # repressed pool at the control activity a0_k
                t.add(name, k, "footprint", float(np.log(share[down_i] * pool0)), share=float(share[down_i]))
                down_i += 1
            else:
                t.add(name, k, "footprint", float(np.log(base[up_i])), loading=float(sizes[up_i]))
                up_i += 1
    other_start = len(t.genes)
    for i in range(n_other_genes):  # housekeeping-like, abundant
        t.add(f"OTHER{i + 1}", -1, "other", rng.normal(np.log(_OTHER_BASE), 0.5))
    genes, n_genes = t.genes, len(t.genes)
    theta = np.exp(rng.normal(np.log(_THETA_MEDIAN), 0.5, size=n_genes))
    batch = np.exp(rng.normal(0.0, _BATCH_LOG_SD, size=(n_replicates, n_genes)))
    return _Model(
        pathways=pathways,
        genes=genes,
        gene_pathway=np.asarray(t.gene_pathway),
        role=np.asarray(t.role),
        driver_idx=driver_idx,
        other_idx=np.arange(other_start, n_genes),
        weights=weights,
        offset=offset,
        log_base=np.asarray(t.log_base),
        loading=np.asarray(t.loading),
        repressed_share=np.asarray(t.shares),
        budget=budget,
        theta=theta,
        batch=batch,
    )


def _role_of(gene: str) -> str:
    if gene.startswith("OTHER"):
        return "other"
    return "driver" if "_DRV" in gene else "footprint"


def _unknown_message(what: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3)
    hint = f" Did you mean {close}?" if close else ""
    return f"unknown {what} {name!r}; expected one of the simulated {what}s ({len(known)}).{hint}"


# ------------------------------------------------------------------------------------------------
# argument resolution
# ------------------------------------------------------------------------------------------------
def _resolve_singles(singles: str | Iterable[str], model: _Model) -> list[_Intervention]:
    drivers = [model.genes[i] for i in model.driver_idx.reshape(-1)]
    if isinstance(singles, str):
        if singles != "all":
            raise BioworldError(
                f"singles={singles!r}; expected 'all' or a list of driver genes such as {drivers[:2]}."
            )
        return [_Intervention(knockouts=(g,)) for g in drivers]
    out = []
    for gene in singles:
        if gene not in drivers:
            raise UnknownPerturbationError(_unknown_message("driver gene", gene, drivers))
        out.append(_Intervention(knockouts=(gene,)))
    return out


def _all_pairs(model: _Model) -> list[tuple[str, str]]:
    pairs = []
    for k, m in itertools.combinations(range(len(model.pathways)), 2):
        for gi in model.driver_idx[k]:
            for gj in model.driver_idx[m]:
                pairs.append((model.genes[gi], model.genes[gj]))
    return pairs


def _resolve_doubles(
    doubles: int | str | Iterable[Sequence[str]], model: _Model, rng: np.random.Generator
) -> list[_Intervention]:
    pairs = _all_pairs(model)
    if isinstance(doubles, str):
        if doubles != "all":
            raise BioworldError(f"doubles={doubles!r}; expected an int, 'all' or a list of (gene, gene) pairs.")
        chosen = pairs
    elif isinstance(doubles, (int, np.integer)):
        if not 0 <= doubles <= len(pairs):
            raise BioworldError(
                f"doubles={doubles}; expected 0..{len(pairs)} (the number of driver pairs across "
                "pathways). Lower it or add pathways."
            )
        picked = sorted(rng.choice(len(pairs), size=int(doubles), replace=False))
        chosen = [pairs[i] for i in picked]
    else:
        chosen = []
        gene_pw = dict(zip(model.genes, model.gene_pathway))
        drivers = set(model.genes[i] for i in model.driver_idx.reshape(-1))
        for pair in doubles:
            if isinstance(pair, str) or len(pair) != 2:
                raise BioworldError(
                    f"double {pair!r}; expected a pair of driver genes like ('P1_DRV1', 'P2_DRV1')."
                )
            for gene in pair:
                if gene not in drivers:
                    raise UnknownPerturbationError(_unknown_message("driver gene", gene, sorted(drivers)))
            if gene_pw[pair[0]] == gene_pw[pair[1]]:
                raise BioworldError(
                    f"double {tuple(pair)} knocks out two drivers of the same pathway; expected drivers "
                    "of two different pathways."
                )
            chosen.append(tuple(pair))
    return [_Intervention(knockouts=tuple(sorted(p))) for p in chosen]


def _resolve_silence(silence: str | Iterable[str], model: _Model) -> list[_Intervention]:
    if isinstance(silence, str):
        if silence != "all":
            raise BioworldError(
                f"silence={silence!r}; expected 'all' or a list of pathway names such as "
                f"{model.pathways[:2]}."
            )
        names = list(model.pathways)
    else:
        names = list(silence)
        for name in names:
            if name not in model.pathways:
                raise UnknownPerturbationError(_unknown_message("pathway", name, model.pathways))
    return [_Intervention(silenced=(name,)) for name in names]


def _check_int(name: str, value: Any, minimum: int, why: str = "") -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise BioworldError(f"{name}={value!r}; expected an integer >= {minimum}{why}.")


# ------------------------------------------------------------------------------------------------
# public entry point
# ------------------------------------------------------------------------------------------------
_MODEL_CONSTANTS = {  # recorded in uns['simulation']
    "driver_strength": _DRIVER_STRENGTH,
    "coupling": _COUPLING,
    "activity_noise": _ACTIVITY_NOISE,
    "ko_residual": _KO_RESIDUAL,
    "silenced_activity": _SILENCED_ACTIVITY,
    "truth": "expected rates, common random numbers, no count sampling, no batch effect",
}


def _check_arguments(*, n_pathways: int, n_drivers: int, genes_per_pathway: int, n_other_genes: int,
                     n_cells_per_condition: int, n_control_cells: int, n_replicates: int, n_truth_draws: int,
                     seed: int, edge_prob: float, library_size: float) -> None:
    _check_int("n_pathways", n_pathways, 1)
    _check_int("n_drivers", n_drivers, 1)
    _check_int("genes_per_pathway", genes_per_pathway, n_drivers + 1, " (the drivers plus at least one footprint gene)")
    _check_int("n_other_genes", n_other_genes, 0)
    _check_int("n_cells_per_condition", n_cells_per_condition, 1)
    _check_int("n_control_cells", n_control_cells, 1)
    _check_int("n_replicates", n_replicates, 1)
    _check_int("n_truth_draws", n_truth_draws, 1)
    _check_int("seed", seed, 0)
    if not 0.0 <= edge_prob <= 1.0:
        raise BioworldError(f"edge_prob={edge_prob!r}; expected a probability in [0, 1].")
    if not library_size > 0:
        raise BioworldError(f"library_size={library_size!r}; expected a positive number of counts.")


def _sample_cells(model: "_Model", conditions: list, cell_rng: np.random.Generator, *, n_replicates: int,
                  library_size: float, labels: list[str]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Counts ``[cells, G]``, pathway activities ``[cells, K]`` and ``obs`` of ``conditions`` (intervention,
    number of cells), shuffled; every draw from ``cell_rng`` in a fixed order."""
    blocks, acts, obs_labels, obs_reps = [], [], [], []
    for iv, n in conditions:
        noise = _Noise.draw(cell_rng, n, model)
        act_t, r = _activities(model, noise, iv)  # [K, n]
        rate = _rates(model, noise, act_t, r)  # [G, n]
        comp = (rate / rate.sum(axis=0)).T  # [n, G]
        act = act_t.T  # [n, K]
        rep = np.arange(n) % n_replicates
        lib = library_size * np.exp(_LIBRARY_LOG_SD * cell_rng.standard_normal(n))
        mu = lib[:, None] * comp * model.batch[rep]  # [n, G] expected counts
        lam = cell_rng.gamma(shape=model.theta, scale=mu / model.theta)
        blocks.append(cell_rng.poisson(lam).astype(np.float32))
        acts.append(act.astype(np.float32))
        obs_labels += [iv.label] * n
        obs_reps += [f"rep{r + 1}" for r in rep]
    order = cell_rng.permutation(len(obs_labels))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(np.asarray(obs_labels)[order], categories=[CONTROL, *labels]),
            "replicate": pd.Categorical(np.asarray(obs_reps)[order]),
        },
        index=[f"cell{i:06d}" for i in range(len(order))],
    )
    return np.vstack(blocks)[order], np.vstack(acts)[order], obs


def _gene_frame(model: "_Model") -> pd.DataFrame:
    """``var``: each gene's pathway (``''`` for none), role and sign (+1 induced, -1 repressed footprint gene)."""
    return pd.DataFrame(
        {
            "pathway": [model.pathways[k] if k >= 0 else "" for k in model.gene_pathway],
            "role": pd.Categorical(model.role, categories=["driver", "footprint", "other"]),
            "sign": (np.sign(model.loading) - (model.repressed_share > 0)).astype(np.int8),
        },
        index=pd.Index(model.genes),
    )


def _ground_truth(model: "_Model", rng: np.random.Generator, n_draws: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact expected gene and pathway-activity deltas of every single, pair and silence vs control."""
    truth_ivs = [
        _Intervention(),
        *_resolve_singles("all", model),
        *[_Intervention(knockouts=tuple(sorted(p))) for p in _all_pairs(model)],
        *_resolve_silence("all", model),
    ]
    noise = _Noise.draw(rng, n_draws, model)
    expr, act_mean = _truth(model, noise, truth_ivs)
    index = pd.Index([iv.label for iv in truth_ivs], name="perturbation")
    return (pd.DataFrame(expr - expr[0], index=index, columns=pd.Index(model.genes)),
            pd.DataFrame(act_mean - act_mean[0], index=index, columns=pd.Index(model.pathways)))


def simulate(
    *,
    n_pathways: int = 8,
    genes_per_pathway: int = 12,
    n_drivers: int = 3,
    n_other_genes: int = 20,
    n_cells_per_condition: int = 200,
    n_control_cells: int = 800,
    singles: str | Sequence[str] = "all",
    doubles: int | str | Sequence[Sequence[str]] = 8,
    silence: str | Sequence[str] = "all",
    n_replicates: int = 2,
    edge_prob: float = 0.3,
    library_size: float = 5000.0,
    n_truth_draws: int = 20000,
    seed: int = 0,
    cells_seed: int | None = None,
) -> SimulationResult:
    """Simulate a perturbation screen over a random pathway DAG, with exact ground truth.

    See the module docstring for the generative model. Same arguments and ``seed`` give
    identical results.

    Parameters
    ----------
    n_pathways
        ``K``: pathways ``SIM_P1 .. SIM_PK`` (topological order).
    genes_per_pathway
        Genes per pathway: ``n_drivers`` drivers ``P{k}_DRV{i}`` plus footprint genes ``P{k}_FP{i}``.
    n_drivers
        Driver genes per pathway (at least 1, fewer than ``genes_per_pathway``).
    n_other_genes
        Genes ``OTHER{i}`` in no pathway, unaffected by any intervention.
    n_cells_per_condition
        Cells sampled per intervention.
    n_control_cells
        Control cells (label ``control``).
    singles
        ``'all'`` driver genes, or a list of driver genes to knock out one at a time.
    doubles
        Double knockouts sampled into the data: an int (that many random pairs of drivers from two
        different pathways), ``'all'``, or a list of ``(gene, gene)`` pairs.
    silence
        ``'all'`` pathways, or a list of pathway names to silence (label ``silence:NAME``).
    n_replicates
        Replicates ``rep1 ..``; every condition's cells are spread evenly over them.
    edge_prob
        Probability of an edge ``SIM_Pj -> SIM_Pk`` for each ``j < k``.
    library_size
        Median total counts per cell.
    n_truth_draws
        Latent draws for the ground truth (Monte Carlo error of a delta <= ~0.5 / sqrt(draws)).
    seed
        Seeds everything; the model, the design, the cells and the truth use separate streams.
    cells_seed
        Draw the cells from another stream of the same world (same model, design and truth as
        ``seed``): calls with ``cells_seed=0, 1, ...`` are independent batches of one screen, e.g.
        to write a screen larger than memory chunk by chunk
        (:func:`bioworld.data.write_h5ad_chunks`). ``None``: the default stream of ``seed``.

    Returns
    -------
    :class:`SimulationResult` with ``adata`` (counts, ``obs['perturbation']``,
    ``obs['replicate']``, ``var['pathway']``, ``var['role']``, ``var['sign']``, ``obsm['sim_activity']``,
    ``uns['simulation']``), ``gmt``, ``dag``, ``truth_delta``, ``truth_entity_delta``, ``params``.
    """
    import anndata as ad

    _check_arguments(n_pathways=n_pathways, n_drivers=n_drivers, genes_per_pathway=genes_per_pathway,
                     n_other_genes=n_other_genes, n_cells_per_condition=n_cells_per_condition,
                     n_control_cells=n_control_cells, n_replicates=n_replicates, n_truth_draws=n_truth_draws,
                     seed=seed, edge_prob=edge_prob, library_size=library_size)
    model_ss, design_ss, cells_ss, truth_ss = np.random.SeedSequence(seed).spawn(4)
    if cells_seed is not None:
        _check_int("cells_seed", cells_seed, 0)
        cells_ss = np.random.SeedSequence([seed, cells_seed, 0xCE11])
    model = _build_model(
        np.random.default_rng(model_ss),
        n_pathways=n_pathways,
        genes_per_pathway=genes_per_pathway,
        n_drivers=n_drivers,
        n_other_genes=n_other_genes,
        n_replicates=n_replicates,
        edge_prob=edge_prob,
    )

    # --- design: which interventions are sampled into the data ----------------------------------
    design_rng = np.random.default_rng(design_ss)
    sampled = [
        *_resolve_singles(singles, model),
        *_resolve_doubles(doubles, model, design_rng),
        *_resolve_silence(silence, model),
    ]
    labels = [iv.label for iv in sampled]
    duplicated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicated:
        raise BioworldError(f"interventions {duplicated} are requested more than once; list each once.")

    # --- cells ----------------------------------------------------------------------------------
    conditions = [(_Intervention(), n_control_cells)] + [(iv, n_cells_per_condition) for iv in sampled]
    counts, activity, obs = _sample_cells(model, conditions, np.random.default_rng(cells_ss),
                                          n_replicates=n_replicates, library_size=library_size, labels=labels)
    params: dict[str, Any] = {
        "n_pathways": n_pathways,
        "genes_per_pathway": genes_per_pathway,
        "n_drivers": n_drivers,
        "n_other_genes": n_other_genes,
        "n_cells_per_condition": n_cells_per_condition,
        "n_control_cells": n_control_cells,
        "n_replicates": n_replicates,
        "edge_prob": float(edge_prob),
        "library_size": float(library_size),
        "n_truth_draws": n_truth_draws,
        "seed": int(seed),
        "cells_seed": None if cells_seed is None else int(cells_seed),
        "sampled": labels,
        "pathways": list(model.pathways),
        **_MODEL_CONSTANTS,
    }
    adata = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=_gene_frame(model))
    adata.obsm["sim_activity"] = activity
    adata.uns["simulation"] = params
    truth_delta, truth_entity = _ground_truth(model, np.random.default_rng(truth_ss), n_truth_draws)
    gmt = {p: [g for g, k in zip(model.genes, model.gene_pathway) if k == i] for i, p in enumerate(model.pathways)}
    dag = [(model.pathways[j], model.pathways[k], float(model.weights[j, k])) for j, k in zip(*np.nonzero(model.weights))]
    return SimulationResult(adata=adata, gmt=gmt, dag=dag, truth_delta=truth_delta, truth_entity_delta=truth_entity,
                            params=params)
