"""Target prioritisation: search single and paired interventions in latent space.

The planner calls only the query engine's verbs (:class:`~bioworld.query.engine.Engine`): the
cells are encoded once (:meth:`Engine.encode`), candidate labels become action rows with the same
meaning as in ``predict`` and ``counterfactual`` (:meth:`Engine.candidates`: a trained ``silence:``
is its learned action, an untrained one a do-operation on its slot), and every candidate is a
predictor rollout g_phi on the cached latents, scored against a goal on the readout
(:meth:`Engine.run`). It never touches optimiser state.

The cost is the number of (candidate, cell) predictor rows, so :func:`prioritize` screens every
candidate on a few prototype cells (:func:`latent_prototypes`: k-means medoids of the latents,
weighted by cluster size; approximate) and re-scores only the best on all cells (exact).

Goals
-----
``down:ENTITY`` / ``up:ENTITY``
    Lower / raise the entity's score (the weighted z-score of its member genes, read from the
    predicted expression). Score = -(predicted change) for down, +change for up (higher = better).
``toward:control``
    Move the cells' predicted mean expression towards the reference control population.
    Score = reduction of the Euclidean distance (standardised genes) to the control mean.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from bioworld.errors import BioworldError, UnknownPerturbationError
from bioworld.actions import Action
from bioworld.query._candidates import (
    OVERLAP, READOUT_FLAG, READOUT_SHARE, Readout, TargetCompound, describe_rows, encode_candidates, kind_of,
    own_transcript_flags, readout_flags,
)
from bioworld.query._priority import directed_prior, kind_percentiles, measured_kinds, priority_columns, raw_prior
from bioworld.query.engine import CellCache, Engine, goal_function


@dataclass
class Goal:
    """A parsed goal: ``direction`` in {down, up, toward} and its ``target``."""

    direction: str
    target: str
    spec: str

    @classmethod
    def parse(cls, spec: str, *, entity_names: list[str]) -> "Goal":
        if not isinstance(spec, str) or ":" not in spec:
            raise BioworldError(
                f"goal {spec!r} is not of the form DIRECTION:TARGET; expected 'down:ENTITY', 'up:ENTITY' or 'toward:control'. "
                "Fix: e.g. goal='down:HALLMARK_INTERFERON_GAMMA_RESPONSE' (CLI: --goal down:ENTITY), an entity of the model"
            )
        direction, target = spec.split(":", 1)
        if direction not in ("down", "up", "toward"):
            raise BioworldError(f"goal direction {direction!r} is unknown; expected 'down', 'up' or 'toward'. "
                                f"Fix: write 'down:{target}' or 'up:{target}'")
        if direction == "toward" and target != "control":
            raise BioworldError(f"goal {spec!r}: only 'toward:control' is supported (the reference control population). "
                                "Fix: write 'toward:control'")
        if direction in ("down", "up") and target not in entity_names:
            from bioworld.errors import close_matches, preview

            near = close_matches(target, list(entity_names))
            raise BioworldError(
                f"goal entity {target!r} is not one of the model's {len(entity_names)} entities "
                f"({preview(entity_names, 8)}); close matches: {near or 'none'}. Fix: use one of the model's entities, "
                f"e.g. {direction}:{(near or list(entity_names))[0]} (wm.entity_names lists them)"
            )
        return cls(direction, target, spec)


@dataclass
class PrioritizationResult:
    """Ranked interventions for one goal (what :func:`bioworld.report.write_report` renders)."""

    goal: str
    table: pd.DataFrame  # rank, intervention, kind (gene|compound|entity|pair), score, score_lo, score_hi, synergy,
    #                      flag, flag_reason, seen, evidence, drugs, network_path / path_effect (the shortest
    #                      directed path into the readout and what removing the gene does along it,
    #                      bioworld.query._paths), same_action / n_same_action (the other
    #                      compounds a genetic model scores as the same action: one row names them all),
    #                      action (what the engine ran: a genetic
    #                      model's compound is the knockout of its targets), collapsed_into, top_entities, n_cells,
    #                      own_share (share of the predicted readout change carried by knocked-out genes' own
    #                      transcripts, on the screen's prototype cells; 0 without readout genes / unscored)
    entity_shift: pd.DataFrame  # [interventions x entities] mean latent shift (units of slot spread)
    per_cell_scores: dict[str, np.ndarray]  # intervention -> [cells] per-cell score (top interventions)
    pair_synergy: pd.DataFrame  # [entities x entities] pair score minus the sum of the two singles
    provenance: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    #: [interventions x panel genes] mean predicted change of each gene (standardised expression,
    #: units of the control sd) for the top rows, on the screen's prototype cells (weighted)
    gene_delta: pd.DataFrame = field(default_factory=pd.DataFrame)


def latent_prototypes(z: np.ndarray | torch.Tensor, k: int, *, seed: int, n_iter: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """``k`` prototype cells of a k-means partition of the cells' latents, and their weights.

    k-means (k-means++ start, seeded) on the flattened latents ``[n, E*D]``; each centre is
    represented by its nearest cell (a medoid, so every prototype is a real cell with exact
    predictions), and every cell is then assigned to its nearest prototype. Returns the
    prototypes' row indices (ascending) and their weights (share of cells assigned, sum 1).
    With ``k >= n`` every cell is its own prototype.
    """
    X = (z.cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)).reshape(len(z), -1).astype(np.float64)
    n = len(X)
    if k >= n:
        return np.arange(n), np.full(n, 1.0 / n)
    rng = np.random.default_rng(seed)
    sq = (X * X).sum(1)

    def dist2(C: np.ndarray) -> np.ndarray:  # [n, len(C)] squared distances
        return np.maximum(sq[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None], 0.0)

    first = int(rng.integers(n))
    chosen = [first]
    dmin = dist2(X[[first]])[:, 0]
    for _ in range(1, k):  # k-means++: next centre with probability proportional to squared distance
        total = dmin.sum()
        p = dmin / total if total > 0 else np.where(np.isin(np.arange(n), chosen), 0.0, 1.0) / (n - len(chosen))
        c = int(rng.choice(n, p=p))
        chosen.append(c)
        dmin = np.minimum(dmin, dist2(X[[c]])[:, 0])
    centres = X[chosen]
    for _ in range(n_iter):
        lab = dist2(centres).argmin(1)
        new = centres.copy()
        for j in range(k):
            hit = lab == j
            if hit.any():
                new[j] = X[hit].mean(0)
        if np.array_equal(new, centres):
            break
        centres = new
    d = dist2(centres)
    # distances within float noise of the nearest are ties (a two-cell cluster's centre is their midpoint, equally
    # far from both): the first such cell wins, so float rounding of the latents never picks the prototype
    tol = 1e-9 * max(float(sq.max()), 1.0)
    medoids: list[int] = []
    for j in range(k):  # nearest cell to each centre, each cell used once
        free = np.ones(n, dtype=bool)
        free[medoids] = False
        nearest = d[free, j].min()
        medoids.append(int(np.flatnonzero(free & (d[:, j] <= nearest + tol))[0]))
    proto = np.sort(np.array(medoids))
    lab = dist2(X[proto]).argmin(1)
    return proto, np.bincount(lab, minlength=len(proto)) / n


def bootstrap_interval(
    per_cell: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over cells, per row of ``[rows, cells]``.

    The same ``n_boot`` resamples of the columns serve every row (one matrix product with the
    resample counts, no ``[rows, n_boot, cells]`` copy). With ``weights`` (prototype cells
    standing for clusters) a resample draws columns with those probabilities, so the interval is
    that of the weighted mean at the number of columns given.
    """
    rng = np.random.default_rng(seed)
    n = per_cell.shape[1]
    if weights is None:
        idx = rng.integers(0, n, size=(n_boot, n))
    else:
        p = np.asarray(weights, dtype=np.float64)
        idx = rng.choice(n, size=(n_boot, n), p=p / p.sum())
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    means = np.asarray(per_cell, dtype=np.float64) @ counts.T / n  # [rows, n_boot]
    lo = np.quantile(means, (1 - level) / 2, axis=1)
    hi = np.quantile(means, 1 - (1 - level) / 2, axis=1)
    return lo, hi


# ---------------------------------------------------------------------------------------- search
@dataclass
class _Search:
    """Candidates and their scores through the screen and refine stages."""

    engine: Engine
    goal: Any  # goal(x_pred, x_base) -> [rows]
    labels: list[str]
    pair_idx: list[tuple[int, int]]  # rows of the singles behind each pair (pairs follow the singles)
    n_single: int
    flags: list[str] = field(default_factory=list)  # guard flag of each single ("readout" or "")
    readout: Any = None
    overlap: float = OVERLAP
    readout_share: float = READOUT_SHARE
    own_shares: dict[str, float] = field(default_factory=dict)  # label -> share of its own transcripts
    own_reasons: dict[str, str] = field(default_factory=dict)  # label -> own-transcript flag reason
    _prior: list[float] = field(default_factory=list)  # raw knowledge prior of each row so far (NaN: none)
    direction: str = "down"  # the goal's direction (down / up / toward): the directed prior's sign
    _directed: list[float] = field(default_factory=list)  # raw directed signed prior of each row so far (NaN: none)
    #: row label -> the action the engine runs, where the label is not the action's own (compounds as
    #: the loss of their targets and pairs holding one); every other label is parsed
    acts: dict[str, Action] = field(default_factory=dict)
    compounds: dict[str, TargetCompound] = field(default_factory=dict)  # label -> compound as its targets
    parts_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # pair holding one -> its singles' labels

    def action(self, label: str) -> Action:
        """The action behind a row's label."""
        a = self.acts.get(label)
        return self.engine.space.parse(label) if a is None else a

    def guarded(self, label: str) -> Action:
        """What the guard's static rules read: the row's action without the knockouts that stand for a
        compound's targets (a compound acts on its targets' proteins, not on the readout's transcripts;
        whether the model's prediction of it runs through those transcripts is the own-transcript rule's
        question, :func:`own_transcript_flags`)."""
        if label in self.compounds:
            return Action(())
        if label in self.parts_of:
            return Action(tuple(p for lab in self.parts_of[label] for p in self.guarded(lab).components))
        return self.action(label)

    def kind(self, label: str) -> str:
        """The row's kind: ``compound`` for a compound written as its targets' loss, else :func:`kind_of`."""
        return "compound" if label in self.compounds else kind_of(self.action(label))

    def add_own(self, cache: CellCache, labels: list[str], weights: np.ndarray | None) -> None:
        """Own-transcript shares and flags of ``labels`` (on the screen's prototype cells)."""
        self.own_reasons.update(own_transcript_flags(self.engine, cache, labels, self.readout, weights,
                                                     shares=self.own_shares, parse=self.action))

    def priority(self, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(model_pct, prior_pct, directed_pct, priority)`` of every row for the mean scores ``mean``
        (:mod:`bioworld.query._priority`)."""
        space = self.engine.space
        actions = [self.action(lab) for lab in self.labels]
        if len(self._prior) < len(self.labels):
            k = len(self._prior)
            as_compound = [lab in self.compounds for lab in self.labels[k:]]
            self._prior += list(raw_prior(actions[k:], space, self.readout, as_compound=as_compound)[0])
            self._directed += list(directed_prior(actions[k:], space, self.readout, self.direction,
                                                  as_compound=as_compound))
        seen = [lab in self.engine.trained for lab in self.labels]
        own = np.array([self.own_shares.get(lab, 0.0) for lab in self.labels])
        parts = {self.n_single + k: ab for k, ab in enumerate(self.pair_idx)}
        kinds = [self.kind(lab) for lab in self.labels]
        has_prior = self.readout.goal_entity is not None
        directed = (kind_percentiles(np.asarray(self._directed, np.float64), np.array(kinds, dtype=object), parts)
                    if has_prior else np.full(len(self.labels), np.nan))
        model_pct, prior_pct, priority = priority_columns(
            actions, seen, np.asarray(mean, np.float64), own, np.asarray(self._prior), space, has_prior=has_prior,
            pair_parts=parts, measured=measured_kinds(self.engine.trained, space), kinds=kinds, directed_pct=directed)
        return model_pct, prior_pct, directed, priority

    def flagged(self) -> np.ndarray:
        """``[rows]`` bool: the row acts on the goal's readout (the guard on every label so far)."""
        if len(self.flags) != len(self.labels):
            acts = [self.guarded(lab) for lab in self.labels[len(self.flags):]]
            self.flags += readout_flags(acts, self.readout, overlap=self.overlap, readout_share=self.readout_share)[0]
        return np.array([f == READOUT_FLAG for f in self.flags], dtype=bool)


def prioritize(engine: Engine, x: np.ndarray, goal: str, *, genes: Sequence[str], entities: Sequence[str],
               panel: Sequence[str], compounds: Sequence[str] = (), pairs: bool = True, gene_pairs_top: int = 8,
               entity_pairs_top: int = 50,
               n_boot: int = 200, screen_cells: int = 16, refine_top: int = 20, seed: int = 0,
               overlap: float = OVERLAP, readout_share: float = READOUT_SHARE,
               provenance: dict[str, Any] | None = None,
               target_compounds: Sequence[TargetCompound] = ()) -> PrioritizationResult:
    """Rank single and paired interventions by how well they move cells ``x`` towards ``goal``.

    ``x`` ``[n, G]`` standardised cells of the ``panel`` genes; ``genes`` candidate knockouts,
    ``compounds`` candidate compound labels (``NAME@DOSE``), ``target_compounds`` compounds written as
    the loss of their targets (a model without compound features; row label the compound's name, kind
    ``compound``), ``entities`` entities to silence. See
    :meth:`bioworld.WorldModel.prioritize` for the search (screen on ``screen_cells`` latent
    prototypes, refine the ``refine_top`` best on all cells) and what is exact. Candidates that act
    on the goal's own readout (:func:`bioworld.query._candidates.readout_flags`, with ``overlap``
    and ``readout_share``) are flagged and ranked after every unflagged row.
    """
    t0 = time.perf_counter()
    names = engine.space.entity_names
    g = Goal.parse(goal, entity_names=names)
    for e in entities:
        if e not in names:
            raise UnknownPerturbationError(f"entity {e!r} is not one of the model's slots")
    singles = ([f"silence:{e}" for e in entities] + [engine.space.parse(f"ko:{gn}").label for gn in genes]
               + [engine.space.parse(c).label for c in compounds] + [tc.name for tc in target_compounds])
    dup = sorted({s for s in singles if singles.count(s) > 1}) if len(set(singles)) < len(singles) else []
    if dup:
        raise BioworldError(f"candidates {dup[:5]} are listed more than once; expected each candidate once. "
                            "Fix: remove the repeats from genes / compounds.")
    readout = Readout.of(g, engine, panel)
    search = _Search(engine, goal_function(g, engine.module, names, engine.reference.mean(0)), list(singles), [], len(singles))
    search.compounds, search.acts = {t.name: t for t in target_compounds}, {t.name: t.action for t in target_compounds}
    search.readout, search.direction = readout, g.direction
    search.overlap, search.readout_share = overlap, readout_share
    search.flags = readout_flags([search.guarded(s) for s in singles], readout, overlap=overlap,
                                 readout_share=readout_share)[0]
    cache = engine.encode(x)
    n = len(cache)
    exact = n <= screen_cells
    proto, pw = (np.arange(n), None) if exact else latent_prototypes(cache.z, screen_cells, seed=seed)
    pcache = cache.subset(proto)
    scores, shifts = _score(search, pcache, search.labels, pw)  # stage 1: screen every candidate
    search.add_own(pcache, list(search.labels), pw)
    if pairs and len(entities) > 1 and entity_pairs_top > 1:  # pairs among the best silences
        scores, shifts = _add_pairs(search, pcache, pw, scores, shifts, (0, len(entities)), entity_pairs_top)
    if pairs and genes and gene_pairs_top > 1:  # pairs among the best knockouts / compounds
        n_before = len(search.labels)
        scores, shifts = _add_pairs(search, pcache, pw, scores, shifts, (len(entities), search.n_single),
                                    gene_pairs_top)
        search.add_own(pcache, search.labels[n_before:], pw)
    screened = _weighted_mean(scores, pw)
    refined, per_cell, mean = _refine(search, cache, screened, scores, shifts, exact, refine_top)
    lo, hi = _intervals(scores, per_cell, refined, pw, n_boot=n_boot, seed=seed)
    synergy = np.full(len(search.labels), np.nan)
    for k, (a, b) in enumerate(search.pair_idx):
        p = search.n_single + k
        src = mean if refined[p] else screened  # a refined pair has refined singles: same cells
        synergy[p] = src[p] - (src[a] + src[b])
    # own-transcript shares of every row (flagged ones too: their share is reported; their flag keeps the
    # static reason, _table)
    table = _table(search, mean, lo, hi, synergy, shifts, refined, n, len(proto), search.own_reasons)
    table["own_share"] = [search.own_shares.get(lab, 0.0) for lab in table["intervention"]]
    shown = table[(table["flag"] == "") & (table["collapsed_into"] == "")]["intervention"]
    gene_delta = _gene_delta(engine, pcache, pw, list(shown[:GENE_DELTA_ROWS]), panel, search.action)
    ents = list(entities)
    syn_m = np.full((len(ents), len(ents)), np.nan)
    for k, (a, b) in enumerate(search.pair_idx):
        if a < len(ents) and b < len(ents):  # both silences (singles list the entities first)
            syn_m[a, b] = syn_m[b, a] = synergy[search.n_single + k]
    order = {lab: i for i, lab in enumerate(search.labels)}
    return PrioritizationResult(
        goal=g.spec, table=table,
        entity_shift=pd.DataFrame(shifts, index=search.labels, columns=names),
        per_cell_scores={lab: per_cell[order[lab]] for lab in table["intervention"][:12]},
        pair_synergy=pd.DataFrame(syn_m, index=ents, columns=ents), gene_delta=gene_delta,
        provenance={**(provenance or {}), "n_cells_used": n, "n_candidates": len(search.labels),
                    "n_screen_cells": len(proto), "n_refined": int(refined.sum()),
                    "screen": "all cells (exact)" if exact else
                              f"{len(proto)} k-means prototype cells of the latents, weighted by cluster size",
                    "interval": f"bootstrap {n_boot}x over cells, 95% percentile interval of the mean score",
                    "n_by_kind": {k: int(v) for k, v in table["kind"].value_counts().items()},
                    "knowledge_read": _knowledge_read(search, table), "n_flagged": int((table["flag"] != "").sum()),
                    "n_pairs_collapsed": int((table["collapsed_into"] != "").sum()),
                    "pair_collapse": "a pair whose score does not exceed the upper 95% bound of its best single "
                                     "adds nothing over it: collapsed_into names that single",
                    "guard": f"flag 'readout': silencing the goal entity or an entity overlapping it (Jaccard, "
                             f"share of either gene set >= {overlap:g}); a knockout of a gene carrying >= "
                             f"{readout_share:.0%} of the readout's weight; flagged rows ranked after the others"},
        wall_s=time.perf_counter() - t0,
    )


def _knowledge_read(search: _Search, table: pd.DataFrame) -> list[str]:
    """The bundled knowledge sources (:data:`bioworld.knowledge._sources.SOURCES` keys) the planner itself read:
    STRING and OmniPath for the prior and OmniPath and DoRothEA for ``network_path`` when the goal has a readout
    entity, the compound -> target table when compounds were candidates."""
    out = ["string", "omnipath", "dorothea"] if search.readout.goal_entity is not None else []
    return out + (["compound_targets"] if (table["kind"] == "compound").any() else [])


#: Rows (the best unflagged, not collapsed) whose per-gene predicted change is kept (``gene_delta``).
GENE_DELTA_ROWS = 30


def _gene_delta(engine: Engine, pcache: CellCache, weights: np.ndarray | None, labels: list[str],
                panel: Sequence[str], parse: Any) -> pd.DataFrame:
    """``[labels x panel]`` mean predicted change per gene on the prototype cells (weighted); ``parse``:
    label -> action."""
    if not labels:
        return pd.DataFrame(columns=[str(g) for g in panel])
    cands = encode_candidates(engine, [parse(lab) for lab in labels], labels)
    x_pred = engine.run(pcache, cands).x_pred  # [C, n, G]
    base = pcache.x_base.detach().cpu().numpy()
    w = np.full(len(base), 1.0 / len(base)) if weights is None else np.asarray(weights, np.float64)
    delta = np.einsum("cng,n->cg", x_pred.astype(np.float64) - base[None], w)
    return pd.DataFrame(delta.astype(np.float32), index=labels, columns=[str(g) for g in panel])


def _collapsed(search: _Search, labels: list[str], mean: np.ndarray, hi: np.ndarray) -> list[str]:
    """Per row: for a pair that adds nothing over its best single (its score does not exceed that
    single's upper 95% bound), the single's label; else ""."""
    out = [""] * len(labels)
    for k, (a, b) in enumerate(search.pair_idx):
        p = search.n_single + k
        best = a if mean[a] >= mean[b] else b
        if np.isfinite(mean[p]) and mean[p] <= hi[best]:
            out[p] = labels[best]
    return out


def _score(search: _Search, cache: CellCache, labels: list[str], weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell scores ``[C, n]`` and (weighted) mean entity shifts ``[C, E]`` of ``labels`` on ``cache``."""
    eng = search.engine
    cands = encode_candidates(eng, [search.action(lab) for lab in labels], labels)
    r = eng.run(cache, cands, goal=search.goal, weights=weights)
    return r.scores, r.shift


def _weighted_mean(scores: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """``[rows]`` float32 mean of per-cell scores (weighted on prototypes), as the per-cell scores."""
    return (scores.mean(1) if weights is None else scores @ weights).astype(np.float32)


def _add_pairs(search: _Search, pcache: CellCache, pw: np.ndarray | None, scores: np.ndarray,
               shifts: np.ndarray, rows: tuple[int, int], top: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs among the ``top`` best screened singles of ``rows`` (``[start, stop)``: the silences, or the
    knockouts and compounds), by screened priority (unflagged first), screened and appended."""
    start, stop = rows
    screened = _weighted_mean(scores, pw)
    single = screened[start:stop]
    prio = search.priority(screened)[3][start:stop]
    flagged = search.flagged()[start:stop]
    best = np.lexsort((-single, -prio, flagged))[:top] + start
    combos, labels = _pair_labels(search, list(itertools.combinations(sorted(best), 2)))
    if not combos:
        return scores, shifts
    s2, sh2 = _score(search, pcache, labels, pw)
    search.labels += labels
    search.pair_idx += combos
    return np.concatenate([scores, s2]), np.concatenate([shifts, sh2])


def _pair_labels(search: _Search, combos: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[str]]:
    """The pairs that are actions, and their labels: silences joined as given, knockouts / compounds by
    the canonical label; a pair holding a compound written as its targets' loss is ``A+NAME`` (its
    action the union of the parts', registered in ``search.acts``) and is left out when the parts
    share a target (no action perturbs a gene twice)."""
    space = search.engine.space
    silences = all(search.action(search.labels[i]).components[0].kind == "silence" for c in combos for i in c)
    kept, labels = [], []
    for a, b in combos:
        la, lb = search.labels[a], search.labels[b]
        if silences:
            labels.append(f"{la}+{lb}")
        elif la in search.compounds or lb in search.compounds:
            pa, pb = search.action(la).components, search.action(lb).components
            if {p.target for p in pa} & {p.target for p in pb}:
                continue
            labels.append(f"{la}+{lb}")
            search.acts[labels[-1]] = Action(tuple(pa) + tuple(pb))
            search.parts_of[labels[-1]] = (la, lb)
        else:
            labels.append(space.parse(f"{la}+{lb}").label)
        kept.append((a, b))
    return kept, labels


def _refine(search: _Search, cache: CellCache, screened: np.ndarray, scores: np.ndarray, shifts: np.ndarray,
            exact: bool, refine_top: int) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    """Stage 2: re-score the best screened candidates (and the singles of refined pairs) on all cells.

    Returns which rows are refined, the per-cell scores of every row and the mean scores; ``shifts``
    is updated in place for the refined rows."""
    C = len(search.labels)
    refined = np.full(C, exact)
    per_cell: dict[int, np.ndarray] = {i: scores[i] for i in range(C)}
    mean = screened.copy()
    if exact:
        return refined, per_cell, mean
    best = set(np.lexsort((-screened, search.flagged()))[:refine_top].tolist())  # the best unflagged first
    best |= {s for k, ab in enumerate(search.pair_idx) if search.n_single + k in best for s in ab}
    idx = sorted(best)
    s3, sh3 = _score(search, cache, [search.labels[i] for i in idx], None)
    for j, i in enumerate(idx):
        per_cell[i] = s3[j]
        shifts[i] = sh3[j]
        mean[i] = s3[j].mean()
    refined[idx] = True
    return refined, per_cell, mean


def _intervals(scores: np.ndarray, per_cell: dict[int, np.ndarray], refined: np.ndarray, pw: np.ndarray | None,
               *, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap 95% intervals: refined rows over all cells, screened rows over the weighted prototypes."""
    lo, hi = np.empty(len(refined)), np.empty(len(refined))
    rows = np.flatnonzero(refined)
    if len(rows):
        lo[rows], hi[rows] = bootstrap_interval(np.stack([per_cell[i] for i in rows]), n_boot=n_boot, seed=seed)
    rows = np.flatnonzero(~refined)
    if len(rows):
        lo[rows], hi[rows] = bootstrap_interval(scores[rows], n_boot=n_boot, seed=seed, weights=pw)
    return lo, hi


def _describe(search: _Search, actions: list[Action]) -> tuple[list[bool], list[str], list[str]]:
    """``seen``, ``evidence``, ``drugs`` of every row (:func:`describe_rows`); a compound written as its
    targets' loss is unseen, its evidence says so (:meth:`TargetCompound.evidence`), and a pair holding
    one joins its parts' evidence and drugs."""
    seen, evidence, drugs = describe_rows(actions, search.engine, search.readout)
    rows = {lab: i for i, lab in enumerate(search.labels)}
    for lab, tc in search.compounds.items():
        i = rows[lab]
        seen[i], evidence[i], drugs[i] = False, tc.evidence(), ""
    for k, (a, b) in enumerate(search.pair_idx):
        i = search.n_single + k
        if search.labels[a] in search.compounds or search.labels[b] in search.compounds:
            seen[i] = False
            evidence[i] = f"{evidence[a]}; {evidence[b]}"
            drugs[i] = "; ".join(d for d in (drugs[a], drugs[b]) if d)
    return seen, evidence, drugs


def _paths(search: _Search, actions: list[Action]) -> tuple[list[str], list[str]]:
    """``network_path`` and ``path_effect`` of every row (:mod:`bioworld.query._paths`): a compound written as
    its targets' loss reads its targets as a compound's, and a pair joins its parts' paths."""
    from bioworld.query._paths import path_columns
    from bioworld.query._priority import _compound_targets

    space = search.engine.space
    texts, effects = path_columns(actions, space, search.readout, lambda name: _compound_targets(name, space),
                                  as_compound=[lab in search.compounds for lab in search.labels])
    for k, (a, b) in enumerate(search.pair_idx):
        i = search.n_single + k
        texts[i] = "; ".join(t for t in (texts[a], texts[b]) if t)
        effects[i] = "; ".join(e for e in (effects[a], effects[b]) if e)
    return texts, effects


def _same_action_columns(search: _Search) -> dict[str, list]:
    """``same_action`` (the other compounds a row stands for, comma-separated: compounds a genetic model
    scores as the loss of the same targets are one row, :func:`~bioworld.query._candidates.merge_same_action`;
    a pair names each with the part it stands in for, ``B (as A)``) and ``n_same_action`` (how many)."""
    names: list[list[str]] = []
    for lab in search.labels:
        parts = search.parts_of.get(lab, (lab,))
        names.append([o.name if len(parts) == 1 else f"{o.name} (as {part})" for part in parts
                      if part in search.compounds for o in search.compounds[part].same_action])
    return {"same_action": [", ".join(v) for v in names], "n_same_action": [len(v) for v in names]}


def _table(search: _Search, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, synergy: np.ndarray,
           shifts: np.ndarray, refined: np.ndarray, n: int, n_proto: int, own: dict[str, str]) -> pd.DataFrame:
    """The ranked table: unflagged rows first, then flagged ones, each by ``priority``
    (:mod:`bioworld.query._priority`; ties by the predicted change)."""
    eng = search.engine
    names = eng.space.entity_names
    actions = [search.action(lab) for lab in search.labels]
    flags, reasons = readout_flags([search.guarded(lab) for lab in search.labels], search.readout,
                                   overlap=search.overlap, readout_share=search.readout_share)
    for i, lab in enumerate(search.labels):  # knockouts that move the readout through their own transcript
        if lab in own and not flags[i]:
            flags[i], reasons[i] = READOUT_FLAG, own[lab]
    for i, lab in enumerate(search.labels):  # a compound scored as its targets' knockout: say so
        if flags[i] and lab in own and (lab in search.compounds or lab in search.parts_of):
            reasons[i] = f"scored as the knockout of its compound's targets: {reasons[i]}"
    seen, evidence, drugs = _describe(search, actions)
    paths, effects = _paths(search, actions)
    model_pct, prior_pct, directed_pct, priority = search.priority(mean)
    table = pd.DataFrame({
        "intervention": search.labels,
        "kind": [search.kind(lab) for lab in search.labels],
        "score": mean, "score_lo": lo, "score_hi": hi, "synergy": synergy,
        "priority": priority, "model_pct": model_pct, "prior_pct": prior_pct, "directed_pct": directed_pct,
        "flag": flags, "flag_reason": reasons, "seen": seen, "evidence": evidence, "drugs": drugs,
        "network_path": paths, "path_effect": effects,
        **_same_action_columns(search),
        "action": [a.label for a in actions],  # what the engine ran (a compound of a genetic model: its targets)
        "collapsed_into": _collapsed(search, search.labels, mean, hi),
        "top_entities": [", ".join(names[j] for j in np.argsort(-row)[:3]) for row in shifts],
        "n_cells": np.where(refined, n, n_proto),
    })
    # unflagged rows first, then the flagged ones; each by priority (ties: the predicted change)
    flagged = table["flag"].to_numpy() != ""
    table = table.iloc[np.lexsort((-mean, -priority, flagged))].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
