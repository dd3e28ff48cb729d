"""The planner's default ranking: the model's predicted goal change joined with a knowledge prior.

A row's ``priority`` (0-1, higher = better) joins two rank percentiles, each taken within a
*calibration group* of comparable candidates:

``model_pct`` (the model's evidence)
    The predicted goal change without the part the knocked-out genes' own transcripts carry
    (``score x (1 - own_share)``: what the tautology guard calls moving the readout through
    itself is not evidence of an upstream target), as a rank percentile within the row's group.
    Groups: the kind and how the model describes the candidate, because the model's output scale
    differs between descriptions (measured in the retrospective: compounds described by structure
    and knowledge scored below compounds described by knowledge alone, whatever their effect):
    measured candidates (trained on) apart from unseen ones; unseen compounds by which features
    describe them (structure and knowledge, structure only, knowledge only); compounds a genetic
    model scores as the loss of their targets (``compound:targets``); entity silences; pairs. The percentile puts every group on one scale: an assumption that no description is a
    priori better, stated rather than learned. A gene knockout (or compound) scored by a model
    that was never trained on any genetic perturbation (compound) has no model evidence of its kind
    to stand on: its ``model_pct`` is 0.5 (no information), and so is that of a pair containing one.
``prior_pct`` (knowledge)
    Network proximity of the candidate to the goal's readout: a random walk with restart
    (:func:`bioworld.knowledge.network.network_proximity`, STRING v12 joined with OmniPath) from
    the goal entity's genes (:func:`prior_seeds`); a gene knockout reads its own gene's proximity, a compound its
    best known target's (a compound written as its targets' loss: the best of those targets), a pair
    the mean of its parts' percentiles. Percentile within the kind
    (genes, compounds). A gene off the network or a compound without a target on it gets 0.5 (no
    information). No prior for entity silences, for pairs of silences, or for ``toward:control``
    goals (no readout entity): ``prior_pct`` is NaN and counts as 0.5 in the priority, so every row
    is on the same scale (a row without a prior cannot outrank one with both parts at their best).

``directed_pct`` (knowledge with direction and sign)
    The candidate's signed influence on the goal's readout through the directed regulation graph
    (:func:`bioworld.knowledge.network.signed_influence` over OmniPath signed directed edges + DoRothEA
    regulons A-C: out-degree normalised, 3 steps, damping 0.5, from the goal entity's gene set with its
    definition's weights; :func:`directed_prior`), signed so that higher = removing the gene moves the
    readout the goal's way; a compound its best target's. The undirected walk rewards being *in or next to*
    the readout (effectors, negative regulators); this part rewards being *upstream with the right sign*.
    Percentiles as ``prior_pct`` (:func:`kind_percentiles`; a gene without an out-edge: 0.5; no value for
    silences and ``toward:control`` goals). Added in stop 28 after a declared retrospective
    (``benchmarks/results/retrospective/three_part/THREE_PART.md``).
Percentiles are mid-ranks, ``(rank - 0.5) / n`` (ties averaged): inside (0, 1), 0.5 for a group of
one, so a small group's extremes stay near the middle. The three parts join as evidence
(:data:`FUSION` ``"logodds"``): ``priority = sigmoid((logit(model_pct) + logit(prior_pct) +
logit(directed_pct)) / 3)``, i.e. the odds are the geometric mean of the three parts' odds (without
``directed_pct``: ``sigmoid(w logit(model_pct) + (1 - w) logit(prior_pct))``, ``w`` = :data:`MODEL_WEIGHT`).
A part at 0.5 adds nothing; a part near its top (or bottom) counts for more than the same step in
the middle, so a candidate one source places among its very best is not pulled to the middle by a
lukewarm other. ``"mean"`` is the earlier rank average ``w model_pct + (1 - w) prior_pct``. Neither
the weight nor the fusion is fitted per dataset (benchmarks/results/retrospective: both fusions and
fitted-weight variants, with their selection). Ties: the predicted change decides.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bioworld.query._candidates import GENETIC, Readout, kind_of

#: Weight of the model's evidence (the prior has 1 - this).
MODEL_WEIGHT = 0.5
NO_INFORMATION = 0.5
#: How the two parts join: ``"logodds"`` (weighted log-odds, the default) or ``"mean"`` (weighted rank average).
FUSION = "logodds"
FUSIONS = ("logodds", "mean")
#: The prior's restart genes: ``"entity"`` (the goal entity's full gene set) or ``"panel"`` (its panel
#: genes); chosen between by nested selection on the retrospective (benchmarks/run_retrospective_variants.py).
PRIOR_SEEDS = "entity"


def rank_pct(values: np.ndarray) -> np.ndarray:
    """Mid-rank percentiles ``(rank - 0.5) / n`` (higher value = higher, ties averaged): inside (0, 1),
    one value gets 0.5; NaN stays NaN."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    out = np.full(len(v), np.nan)
    ok = np.isfinite(v)
    n = int(ok.sum())
    if n:
        out[ok] = (rankdata(v[ok], method="average") - 0.5) / n
    return out


def fuse(model_pct: np.ndarray, prior_pct: np.ndarray, *, weight: float = MODEL_WEIGHT,
         how: str | None = None, directed_pct: np.ndarray | None = None) -> np.ndarray:
    """The priority of rows with percentiles ``model_pct`` and ``prior_pct`` (NaN = no information,
    0.5): ``"logodds"`` ``sigmoid(w logit(m) + (1 - w) logit(p))`` or ``"mean"`` ``w m + (1 - w) p``.
    With ``directed_pct`` (the directed signed prior's percentiles) the three parts join with equal
    weights, ``sigmoid((logit m + logit p + logit d) / 3)`` (``"mean"``: ``(m + p + d) / 3``); ``weight``
    is then not used."""
    from scipy.special import expit, logit

    from bioworld.errors import BioworldError

    how = how or FUSION
    if how not in FUSIONS:
        raise BioworldError(f"fusion {how!r}; expected one of {FUSIONS}")
    parts = [np.where(np.isfinite(x), x, NO_INFORMATION).astype(np.float64)
             for x in ((model_pct, prior_pct) if directed_pct is None else (model_pct, prior_pct, directed_pct))]
    weights = [weight, 1.0 - weight] if directed_pct is None else [1.0 / 3.0] * 3
    if how == "mean":
        return sum(w * x for w, x in zip(weights, parts))
    eps = 1e-9  # percentiles are inside (0, 1); this only guards hand-made inputs at 0 or 1
    return expit(sum(w * logit(np.clip(x, eps, 1 - eps)) for w, x in zip(weights, parts)))


def measured_kinds(trained: Any, space: Any) -> set[str]:
    """The kinds (``gene``, ``compound``) of the components of the labels a model was trained on."""
    out: set[str] = set()
    for lab in trained:
        for p in space.parse(lab).components:
            if p.kind == "compound":
                out.add("compound")
            elif p.kind in GENETIC:
                out.add("gene")
    return out


def _unmeasured_kind(action: Any, measured: set[str]) -> bool:
    """A gene knockout / compound (or a pair holding one) whose kind the model was never trained on."""
    for p in action.components:
        kind = "compound" if p.kind == "compound" else "gene" if p.kind in GENETIC else None
        if kind is not None and kind not in measured:
            return True
    return False


def calibration_group(action: Any, seen: bool, space: Any, kind: str | None = None) -> str:
    """The row's calibration group: kind, measured or not, and (unseen compounds) which features
    describe the compound; a compound scored as the loss of its targets (``kind`` ``compound``, an
    action of genetic parts; :class:`bioworld.query._candidates.TargetCompound`) is
    ``compound:targets``."""
    kind = kind or kind_of(action)
    if seen:
        return f"{kind}:measured"
    if kind != "compound":
        return kind
    if not any(p.kind == "compound" for p in action.components):
        return "compound:targets"
    comp = getattr(space, "compounds", None)
    name = action.components[0].target
    structure = bool(comp is not None and hasattr(comp, "knows_structure") and comp.knows_structure(name))
    knowledge = bool(comp is not None and hasattr(comp, "resolve") and comp.resolve(name) is not None)
    return "compound:" + ("structure+knowledge" if structure and knowledge else "structure" if structure
                          else "knowledge" if knowledge else "name")


def _compound_targets(name: str, space: Any) -> list[str]:
    from bioworld.query._candidates import _compound_knowledge

    user = getattr(getattr(space, "compounds", None), "user_targets", {}) or {}
    if name in user:
        return list(user[name])
    ck = _compound_knowledge()
    return ck.targets(name) if ck.resolve(name, strict=False) else []


def prior_seeds(space: Any, readout: Readout, how: str | None = None) -> list[str]:
    """Where the prior's random walk restarts: the goal entity's full gene set as its definition lists
    it (``how="entity"``, the default :data:`PRIOR_SEEDS`; the panel genes when the model keeps no
    definition), or only its genes on the model's panel (``"panel"``)."""
    how = how or PRIOR_SEEDS
    goal = readout.goal_entity or ""
    if how == "entity":
        for ent in getattr(space, "entities", None) or ():
            if getattr(ent, "name", None) == goal and len(getattr(ent, "genes", ())):
                return sorted({str(g) for g in ent.genes})
    return sorted(readout.members.get(goal, ()))


def raw_prior(actions: Sequence[Any], space: Any, readout: Readout, as_compound: Sequence[bool] | None = None
              ) -> tuple[np.ndarray, dict[str, float]]:
    """``[rows]`` network proximity of each single gene / compound to the goal's readout genes (NaN:
    no prior, i.e. entity silences, pairs, unknown genes, compounds without a target on the network),
    and the proximity of every gene reached. All NaN when the goal has no readout entity. Rows marked
    in ``as_compound`` are compounds written as the loss of their targets: their best target's
    proximity, as for a compound."""
    from bioworld.errors import BioworldError
    from bioworld.knowledge.network import joint_network, network_proximity

    out = np.full(len(actions), np.nan)
    if readout.goal_entity is None:
        return out, {}
    seeds = prior_seeds(space, readout)
    if not seeds:
        return out, {}
    genes, _ = joint_network()
    on_net = set(genes)
    try:
        prox = network_proximity(seeds)
    except BioworldError:  # no readout gene on the network: no prior
        return out, {}
    for i, a in enumerate(actions):
        if as_compound is not None and as_compound[i]:
            t = [prox.get(p.target, 0.0) for p in a.components if p.kind in GENETIC and p.target in on_net]
            if t:
                out[i] = max(t)
            continue
        if len(a.components) != 1:
            continue
        p = a.components[0]
        if p.kind in GENETIC and p.target in on_net:
            out[i] = prox.get(p.target, 0.0)
        elif p.kind == "compound":
            t = [prox.get(g, 0.0) for g in _compound_targets(p.target, space) if g in on_net]
            if t:
                out[i] = max(t)
    return out, prox


def readout_definition(space: Any, readout: Readout) -> dict[str, float]:
    """The goal entity's genes with its definition's weights (Hallmark: 1 each, PROGENy: signed), from the
    model's entity definitions; the panel members with weight 1 when the model keeps no definition."""
    goal = readout.goal_entity or ""
    for ent in getattr(space, "entities", None) or ():
        if getattr(ent, "name", None) == goal and len(getattr(ent, "genes", ())):
            weights = getattr(ent, "weights", None)
            weights = [1.0] * len(ent.genes) if weights is None else weights
            return {str(g): float(w) for g, w in zip(ent.genes, weights)}
    return {g: 1.0 for g in sorted(readout.members.get(goal, ()))}


def directed_prior(actions: Sequence[Any], space: Any, readout: Readout, direction: str,
                   as_compound: Sequence[bool] | None = None) -> np.ndarray:
    """``[rows]`` the signed influence of each single gene / compound on the goal's readout through the directed
    regulation graph (:func:`bioworld.knowledge.network.signed_influence` over
    :func:`~bioworld.knowledge.network.regulation_network`: OmniPath signed directed edges + DoRothEA
    regulons), signed so that higher = removing it moves the readout the goal's way (``down``: the influence,
    ``up``: minus it); a compound (or one written as its targets' loss, ``as_compound``) its best target's. NaN:
    no prior (entity silences, pairs, genes without an out-edge, compounds without such a target, goals without a
    readout entity or none of whose genes is on the graph)."""
    from bioworld.errors import BioworldError
    from bioworld.knowledge.network import signed_influence

    out = np.full(len(actions), np.nan)
    if readout.goal_entity is None or direction not in ("down", "up"):
        return out
    try:
        influence = signed_influence(readout_definition(space, readout))
    except BioworldError:  # no readout gene on the graph: no prior
        return out
    sign = 1.0 if direction == "down" else -1.0
    for i, a in enumerate(actions):
        comps = a.components
        if as_compound is not None and as_compound[i]:
            names = [p.target for p in comps if p.kind in GENETIC]
        elif len(comps) == 1 and comps[0].kind == "compound":
            names = _compound_targets(comps[0].target, space)
        elif len(comps) == 1 and comps[0].kind in GENETIC:
            names = [comps[0].target]
        else:
            continue
        vals = [sign * influence[g] for g in names if g in influence]
        if vals:
            out[i] = max(vals)
    return out


def kind_percentiles(raw: np.ndarray, kinds: np.ndarray, pair_parts: dict[int, Sequence[int]] | None = None
                     ) -> np.ndarray:
    """A prior's percentiles: mid-rank within each kind (genes, compounds; no value there: 0.5), a pair the
    mean of its parts' (those with one), every other row NaN (no information)."""
    out = np.full(len(raw), np.nan)
    for k in ("gene", "compound"):
        idx = np.flatnonzero(kinds == k)
        if len(idx):
            pct = rank_pct(raw[idx])
            out[idx] = np.where(np.isfinite(pct), pct, NO_INFORMATION)
    for row, parts in (pair_parts or {}).items():
        vals = [out[j] for j in parts if np.isfinite(out[j])]
        if vals:
            out[row] = float(np.mean(vals))
    return out


def priority_columns(actions: Sequence[Any], seen: Sequence[bool], score: np.ndarray, own_share: np.ndarray,
                     prior: np.ndarray, space: Any, *, has_prior: bool,
                     pair_parts: dict[int, Sequence[int]] | None = None, measured: set[str] | None = None,
                     fusion: str | None = None, kinds: Sequence[str] | None = None,
                     directed_pct: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(model_pct, prior_pct, priority)`` of each row (see the module docstring).

    ``score`` the predicted goal change, ``own_share`` the share of it carried by knocked-out genes'
    own transcripts, ``prior`` from :func:`raw_prior`, ``has_prior`` whether the goal has a readout
    entity (else no prior at all); ``pair_parts``: row -> rows of its singles (pairs); ``measured``:
    the kinds the model was trained on (:func:`measured_kinds`; None: every kind); ``fusion``:
    :data:`FUSION` by default; ``kinds``: each row's kind where it is not the action's own
    (:func:`kind_of`): ``compound`` for a compound written as the loss of its targets; ``directed_pct``: the
    directed signed prior's percentiles (:func:`kind_percentiles` of :func:`directed_prior`), the third part
    of the priority (None: the two-part priority)."""
    n = len(actions)
    upstream = np.asarray(score, np.float64) * (1.0 - np.nan_to_num(np.asarray(own_share, np.float64)))
    kinds = np.array(list(kinds) if kinds is not None else [kind_of(a) for a in actions], dtype=object)
    groups = np.array([calibration_group(a, bool(s), space, k) for a, s, k in zip(actions, seen, kinds)])
    model_pct = np.full(n, np.nan)
    for g in dict.fromkeys(groups):
        idx = np.flatnonzero(groups == g)
        model_pct[idx] = rank_pct(upstream[idx])
    if measured is not None:  # no measured perturbation of the row's kind: no model evidence
        model_pct[np.array([_unmeasured_kind(a, measured) for a in actions], dtype=bool)] = NO_INFORMATION
    prior_pct = kind_percentiles(np.asarray(prior, np.float64), kinds, pair_parts) if has_prior else np.full(n, np.nan)
    # no prior (NaN): no information
    return model_pct, prior_pct, fuse(model_pct, prior_pct, how=fusion, directed_pct=directed_pct if has_prior else None)
