"""Experiment design: which perturbations to measure next so the model (and the goal ranking) improve fastest.

:func:`design` ranks candidate perturbations a model has not been trained on; :func:`select` is the
selection itself on arrays (what the retrospective benchmark ``benchmarks/run_design.py`` calls with
any predictor).

Strategies
----------
``information``
    Expected reduction of the model's uncertainty over all candidates. The uncertainty of a
    candidate is the disagreement of ``M`` predictions of its effect (the members of a seed
    ensemble; a single model has no members, so its ``M`` predictions are the mean effect over
    bootstrap resamples of the reference cells: that spread is cell-sampling noise, not model
    uncertainty, and the table's ``reason`` says so). Each candidate ``c`` has a deviation vector
    ``u_c`` (its ``M`` predictions minus their mean, over genes, scaled so ``|u_c|^2`` is its
    per-gene variance). Measuring ``s`` is taken to resolve the direction ``u_s``: every candidate's
    uncertainty drops by its projection on it, ``sum_c w_c (u_c . u_s)^2 / |u_s|^2`` (``w_c`` = 1,
    or the goal relevance with a goal). The batch is chosen greedily and the chosen direction is
    projected out of every ``u_c`` before the next pick, so a second candidate that would answer
    the same question (its predicted deviations correlate with a chosen one) gains little: batch
    diversity.
``discovery``
    Expected goal value with an optimism bonus (UCB over the members): ``mean + beta * sd`` of the
    goal score (the planner's score: lower / raise the goal entity, or move toward control), minus
    a diversity penalty for candidates whose predicted mean effect correlates with a chosen one.
    Needs a goal.
``mix``
    Both: at each greedy step the remaining candidates' information gain and UCB are turned into
    rank percentiles and summed (information alone without a goal).
``error``
    Expected error of the model on each candidate, explored across knowledge: at each greedy step
    the rank percentile of the candidate's expected error plus ``novelty`` x that of its knowledge
    distance to the nearest measured or chosen perturbation (the ``knowledge`` score). The expected
    error (:func:`expected_error`) is ``s_c^2 + v_c`` (``(s_c - p_c)^2 + v_c`` for a combination
    the model answers from its components' observed effects), with ``p_c`` the size (root mean
    square over genes) of the predicted effect, ``v_c`` the members' disagreement (per-gene
    variance) and ``s_c`` the size its true effect is expected to have from what was measured
    (:func:`expected_sizes`: a Gaussian process over components fitted to the sizes of the model's
    answers on its measured perturbations, optimistic by ``BETA`` posterior sd, a combination's
    mean square the sum of its components'). Unseen effects come out shrunk (on the simulator a
    candidate's error tracks its true size, Spearman 0.92, not its predicted size, 0.24, nor the
    disagreement, 0.12), so what the measured look-alikes say a perturbation does is a better guide
    to how wrong the model is on it than the model's own spread; the knowledge distance spreads the
    batch over what was not measured yet (expected error alone ended no better than random).
    Without sizes (nothing measured) ``s_c = p_c``: the disagreement and the distance alone.
    Replayed (``benchmarks/results/design/DESIGN.md``, 3 seeds): on the simulator its error-curve
    area was 0.84 of random's (knowledge 0.86; 0.80 when the model trains 150 instead of 75 steps
    per round), 0.98 in three atlas cell lines (below random on all 9 seeds), on Papalexi 1.69
    (worse than random; 1.65 with the knowledge layer: on 2 of 3 seeds it never measures STAT1,
    the screen's largest effect).
    With ``network=`` (a lab's own directed network, e.g. a pathway map) the expected sizes' prior
    scales with each component's reach in it (:mod:`bioworld.query._reach`): on the simulator with its
    pathway DAG, 0.585 of random's measurements over six seeds against 0.619 without it and 0.625
    with the DAG's node names shuffled (``benchmarks/results/design/NOTES.md``).
``knowledge``
    Baseline without the model: farthest-first coverage of the action features (knowledge
    features of genes / compounds, the entities an action touches): each pick is the candidate
    farthest (cosine) from every measured or chosen perturbation.
``random``
    Baseline: a seeded random order.

With a goal on an entity (``down:E`` / ``up:E``), the planner's tautology guard
(:func:`bioworld.query._candidates.readout_flags`) runs on the candidates: one that acts on the
goal's own readout (silencing the goal entity or an entity overlapping it, knocking out genes that
carry a large share of the readout's weight) moves the goal score by construction, so for
``information``, ``mix`` and ``discovery`` it is ranked after every unflagged candidate, its goal
value does not weight information, and the table says why (``flag`` = ``readout``, ``flag_reason``).
The baselines ignore the goal and only report the flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bioworld.errors import BioworldError

STRATEGIES = ("information", "mix", "discovery", "error", "knowledge", "random")
COLUMNS = ["rank", "perturbation", "kind", "strategy_score", "expected_info", "expected_goal", "reason", "flag",
           "flag_reason"]
#: Strategies that use the goal and therefore rank candidates flagged by the readout guard last.
GOAL_AWARE = ("information", "mix", "discovery")
#: UCB optimism: goal score mean + BETA x its spread over the members.
BETA = 1.0
#: Discovery diversity: UCB minus this x (max correlation with a chosen candidate) x UCB spread.
DIVERSITY = 1.0
#: Information: prior variance of a per-gene gain error of the predictions (the true effect = the predicted one
#: x (1 + eps_g), eps_g ~ N(0, SCALE_PRIOR) shared by all candidates). Members that agree can still be wrong
#: together: unseen effects come out shrunk (simulator: error ~ 0.4-0.6 x the true effect's size while the
#: members' spread was ~10x smaller), so a large predicted effect carries a large possible error. 0 = disagreement only.
SCALE_PRIOR = 1.0
#: Error: weight of the knowledge distance to the nearest measured / chosen perturbation (rank percentiles) beside
#: the expected error's. 0 = expected error alone: on the simulator (3 seeds) it found big errors first but ended
#: no better than random (AUC ratio 0.878 vs 0.836 with 1; benchmarks/results/design/DESIGN.md).
NOVELTY = 1.0
#: Error: share of a look-alike's expected error (weighted by the action-feature cosine, clipped at 0) a measurement
#: is expected to remove (the look-alike is learnt from it). Default 0: a probe (simulator seed 0, one extra
#: measurement) showed such transfer (a second knockout of a pathway removed 57% of a third one's error), but
#: ranking by it did worse on 3 seeds (AUC ratio 0.908 at 0.5, 0.951 at 1, against 0.878 at 0, without novelty).
TRANSFER = 0.0
#: Single model: bootstrap resamples of the reference cells standing in for members.
N_BOOT = 8
#: Candidates per engine pass (x cells rows).
CHUNK = 128
#: Information works in at most this many principal directions of the members' disagreement.
MAX_RANK = 256


@dataclass
class Selection:
    """What :func:`select` chose: candidate indices in pick order and per-pick numbers."""

    order: np.ndarray  # [K] candidate indices, best first
    score: np.ndarray  # [K] the strategy's score at pick time
    info: np.ndarray  # [K] expected uncertainty reduction over all candidates at pick time (error: its expected error)
    goal: np.ndarray  # [K] mean goal score over members (NaN without a goal)
    goal_sd: np.ndarray  # [K] its spread over members (NaN without a goal)
    redundant_with: list[int | None]  # chosen candidate whose prediction it most resembles (None: first/none)
    redundancy: np.ndarray  # [K] that correlation
    variance_kept: float = 1.0  # share of the members' disagreement in the directions information used


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        from bioworld.errors import close_matches

        close = close_matches(str(strategy), list(STRATEGIES)) or [s for s in STRATEGIES if s.startswith(str(strategy))]
        raise BioworldError(f"strategy {strategy!r} is unknown; expected one of {', '.join(STRATEGIES)}. Fix: "
                            f"strategy={(close or ['information'])[0]!r} (CLI: --strategy)")
    return strategy


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or int(budget) < 1:
        raise BioworldError(f"budget {budget!r}; expected a whole number >= 1 of perturbations to measure next "
                            "(CLI: --budget)")
    return int(budget)


def _corr_rows(a: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length (their dot products are Pearson correlations)."""
    a = a - a.mean(1, keepdims=True)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.where(n > 0, a / np.where(n > 0, n, 1.0), 0.0)


def _pct(v: np.ndarray) -> np.ndarray:
    """Rank percentiles in (0, 1] (ties share the mean rank); higher value = higher percentile."""
    return pd.Series(v).rank(method="average").to_numpy() / max(len(v), 1)


def select(effects: np.ndarray, budget: int, strategy: str, *, goal_scores: np.ndarray | None = None,
           features: np.ndarray | None = None, measured_features: np.ndarray | None = None, seed: int = 0,
           beta: float = BETA, diversity: float = DIVERSITY, scale_prior: float = SCALE_PRIOR,
           knowledge_prior: float = 0.0, flagged: np.ndarray | None = None,
           sizes: np.ndarray | None = None, anchored: np.ndarray | None = None, transfer: float = TRANSFER,
           novelty: float = NOVELTY) -> Selection:
    """Choose ``budget`` of ``C`` candidates.

    Parameters
    ----------
    effects
        ``[M, C, G]`` predicted effects of each candidate by ``M`` predictors (ensemble members or
        bootstrap resamples; ``M = 1`` gives no uncertainty: information is then zero everywhere).
    goal_scores
        ``[M, C]`` goal score of each candidate per predictor (higher = better), or ``None``.
    features, measured_features
        ``[C, F]`` / ``[n, F]`` action features of the candidates and of the measured
        perturbations (``knowledge`` strategy; ``features`` also for ``knowledge_prior``).
    scale_prior, knowledge_prior
        Information only: prior variance of a per-gene gain error shared by all candidates
        (:data:`SCALE_PRIOR`), and of an error shared by candidates alike in knowledge features
        (cosine), sized by each candidate's predicted effect (default 0: off).
    flagged
        ``[C]`` bool: candidates the readout guard flagged. ``information``, ``mix`` and
        ``discovery`` pick them only after every unflagged candidate, and their goal value does
        not weight information; ``knowledge`` and ``random`` ignore it.
    sizes
        ``[C]`` expected effect size (root mean square over genes) of each candidate for the gain
        prior, e.g. from measured look-alikes (:func:`transferred_sizes`); default: the size of its
        predicted effect. The prior keeps the predicted effect's direction. ``error``: the expected
        size of the true effect (:func:`expected_sizes`).
    anchored
        ``error`` only: ``[C]`` bool, candidates the model answers from observed effects (combinations
        whose components were all measured alone, :func:`anchored_on_measured`).
    transfer, novelty
        ``error`` only: share of a look-alike's expected error a measurement is expected to remove
        (:data:`TRANSFER`), and the weight of the knowledge distance beside the expected error
        (:data:`NOVELTY`; needs ``features``, and ``measured_features`` when something was measured).
    """
    strategy = _check_strategy(strategy)
    effects = np.asarray(effects, dtype=np.float64)
    if effects.ndim != 3 or effects.shape[1] == 0:
        raise BioworldError(f"effects have shape {effects.shape}; expected [members, candidates, genes] with >= 1 candidate")
    M, C, G = effects.shape
    K = min(_check_budget(budget), C)
    if strategy == "discovery" and goal_scores is None:
        raise BioworldError("strategy 'discovery' ranks by expected goal value and needs a goal; expected "
                            "goal='down:ENTITY', 'up:ENTITY' or 'toward:control' (CLI: --goal)")
    mean = effects.mean(0)  # [C, G]
    rho = _corr_rows(mean)  # [C, G] for redundancy / diversity
    g_mean, g_sd = _goal_stats(goal_scores, M, C)
    Y, kept = _uncertainty(effects, mean, features, scale_prior, knowledge_prior, _sized(mean, sizes))
    # uncertainty matters where the goal may be reached: optimistic relevance
    w = _pct(g_mean + beta * g_sd) if goal_scores is not None else np.ones(C)
    last = _check_flagged(flagged, C) if strategy in GOAL_AWARE else np.zeros(C, bool)
    if goal_scores is not None and last.any():  # a tautological goal value is no reason to care about a candidate
        w = np.where(last, w.min(), w)
    rand_order = np.random.default_rng(seed).permutation(C)
    tie = np.empty(C)
    tie[rand_order] = np.arange(C)  # ties (e.g. no uncertainty at all) are broken by the seeded random order
    use_near = strategy == "knowledge" or (strategy == "error" and novelty > 0)
    f, near = _nearness(features, measured_features, C) if use_near else (None, None)
    if strategy == "error":  # expected errors, and how much of a look-alike's error a measurement is expected to remove
        expected, kappa = expected_error(effects, sizes, anchored), _transfer(features, transfer, C)
    chosen: list[int] = []
    out_score, out_info = [], []
    remaining = np.ones(C, bool)
    for _ in range(K):
        diag = (Y ** 2).sum(1)  # each candidate's remaining uncertainty
        B = Y.T @ (w[:, None] * Y)  # [r, r]
        gain = np.where(diag > 1e-12, ((Y @ B) * Y).sum(1) / np.where(diag > 1e-12, diag, 1.0), 0.0)
        red = (rho @ rho[chosen].T).max(1) if chosen else np.zeros(C)
        if strategy == "random":
            s = -tie
        elif strategy == "knowledge":
            s = 1.0 - near  # cosine distance to the nearest measured / chosen perturbation
        elif strategy == "error":
            s = _error_scores(expected, kappa, remaining, near, novelty)
        elif strategy == "information" or goal_scores is None:  # mix without a goal: information alone
            s = gain
        else:
            s = _goal_scores(strategy, gain, red, remaining, g_mean + beta * g_sd, diversity)
        s = np.where(remaining, s, -np.inf)
        pick = int(np.lexsort((tie, -s, np.where(remaining, last, 2)))[0])  # unflagged, then flagged, never twice
        chosen.append(pick)
        out_score.append(float(s[pick]))
        out_info.append(float(expected[pick] if strategy == "error" else gain[pick]))
        remaining[pick] = False
        d = float(diag[pick])
        if d > 1e-12:  # the measured direction is resolved: project it out of every candidate
            u = Y[pick] / np.sqrt(d)
            Y = Y - np.outer(Y @ u, u)
        if near is not None:
            near = np.maximum(near, f @ f[pick])
        if strategy == "error":  # the look-alikes of a chosen candidate are expected to be learnt from it
            expected = expected * (1.0 - kappa[pick])
    order = np.array(chosen, dtype=np.int64)
    red_with, red_val = _redundancy(rho, order)
    return Selection(order, np.array(out_score), np.array(out_info), g_mean[order], g_sd[order], red_with,
                     red_val, kept)


def _transfer(features: Any, transfer: float, C: int) -> np.ndarray:
    """``[C, C]`` share of each candidate's expected error a measurement of another removes: ``transfer`` x their
    action-feature cosine clipped at 0 (``transfer`` x identity without features)."""
    if features is None:
        return transfer * np.eye(C)
    f = _unit_rows(features)
    return transfer * np.clip(f @ f.T, 0.0, 1.0)


def _error_scores(expected: np.ndarray, kappa: np.ndarray, remaining: np.ndarray, near: np.ndarray | None,
                  novelty: float) -> np.ndarray:
    """``error`` at one greedy step: a candidate's expected error plus the share of its remaining look-alikes'
    it is expected to remove; with ``novelty`` > 0 that value's rank percentile + novelty x the rank percentile
    of the knowledge distance to the nearest measured or chosen perturbation."""
    s = expected + (kappa @ np.where(remaining, expected, 0.0) - np.diag(kappa) * expected)
    if novelty > 0 and near is not None:
        s = np.where(remaining, _pct(np.where(remaining, s, -np.inf)) + novelty * _pct(1.0 - near), -np.inf)
    return s


def _check_flagged(flagged: Any, C: int, name: str = "flagged") -> np.ndarray:
    if flagged is None:
        return np.zeros(C, bool)
    f = np.asarray(flagged)
    if f.shape != (C,) or f.dtype != bool:
        raise BioworldError(f"{name} has shape {f.shape} and dtype {f.dtype}; expected ({C},) bool (one per candidate)")
    return f


def _unit_rows(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _goal_stats(goal_scores: np.ndarray | None, M: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread (over the members) of each candidate's goal score; NaN without a goal."""
    if goal_scores is None:
        return np.full(C, np.nan), np.full(C, np.nan)
    gs = np.asarray(goal_scores, dtype=np.float64)
    if gs.shape != (M, C):
        raise BioworldError(f"goal_scores have shape {gs.shape}; expected ({M}, {C}) (members x candidates)")
    return gs.mean(0), (gs.std(0, ddof=1) if M > 1 else np.zeros(C))


def _sized(mean: np.ndarray, sizes: Any) -> np.ndarray:
    """The predicted effects rescaled to the given sizes (root mean square over genes); unchanged without sizes."""
    if sizes is None:
        return mean
    sz = _sizes_of(sizes, len(mean))
    rms = np.sqrt((mean ** 2).mean(1))
    unit = np.where(rms[:, None] > 0, mean / np.where(rms > 0, rms, 1.0)[:, None], 1.0)
    return unit * sz[:, None]


def _uncertainty(effects: np.ndarray, mean: np.ndarray, features: Any, scale_prior: float,
                 knowledge_prior: float, prior_mean: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Each candidate's uncertainty vector (members' deviations [+ priors]) in principal coordinates."""
    M, C, G = effects.shape
    dev = (effects - mean[None]).transpose(1, 0, 2).reshape(C, M * G) / np.sqrt(max(M - 1, 1) * G)
    prior_mean = mean if prior_mean is None else prior_mean
    if scale_prior > 0:  # per-gene gain error: truth - mean = eps_g * mean, eps_g ~ N(0, scale_prior), shared
        dev = np.concatenate([dev, np.sqrt(scale_prior / G) * prior_mean], axis=1)
    if knowledge_prior > 0 and features is not None:  # errors shared by look-alikes in knowledge, sized by the effect
        size = np.linalg.norm(mean, axis=1, keepdims=True) / np.sqrt(G)
        dev = np.concatenate([dev, np.sqrt(knowledge_prior) * size * _unit_rows(features)], axis=1)
    return _coordinates(dev)


def transferred_sizes(features: Any, measured_features: Any, measured_sizes: Any, *, floor: float = 0.1) -> np.ndarray:
    """``[C]`` expected effect size of each candidate from the measured ones: the mean of the measured sizes
    weighted by the (non-negative) cosine of action features, plus ``floor`` weight on their plain mean (a
    candidate like no measured one gets the mean size)."""
    f, mf = _unit_rows(features), _unit_rows(measured_features)
    ms = np.asarray(measured_sizes, dtype=np.float64)
    if mf.shape[0] != len(ms) or mf.shape[0] == 0 or f.shape[1] != mf.shape[1]:
        raise BioworldError(f"measured features {mf.shape} and sizes {ms.shape}; expected one size per measured "
                            f"perturbation (>= 1) and {f.shape[1]} features")
    k = np.clip(f @ mf.T, 0.0, None)
    return (k @ ms + floor * ms.mean()) / (k.sum(1) + floor)


def expected_error(effects: Any, sizes: Any = None, anchored: Any = None) -> np.ndarray:
    """``[C]`` expected mean-square error (per gene) of the members' mean prediction of each candidate.

    ``sizes`` (``[C]``): the expected root mean square ``s`` of the true effect. A candidate the model
    answers from observed effects (``anchored``: a combination whose components were all measured
    alone) is taken to point the right way: ``(s - p)^2 + v`` with ``p`` the root mean square of the
    prediction and ``v`` the members' per-gene variance (0 with one member). Any other candidate is
    unseen, and unseen answers come out shrunk toward nothing: ``s^2 + v``. Without sizes ``s = p``
    (the disagreement alone)."""
    effects = np.asarray(effects, dtype=np.float64)
    M, C, G = effects.shape
    mean = effects.mean(0)
    p = np.sqrt((mean ** 2).mean(1))
    v = effects.var(0, ddof=1).mean(1) if M > 1 else np.zeros(C)
    if sizes is None:
        return v
    s = _sizes_of(sizes, C)
    a = np.zeros(C, bool) if anchored is None else _check_flagged(anchored, C, "anchored")
    return np.where(a, (s - p) ** 2, s ** 2) + v


def _sizes_of(sizes: Any, C: int) -> np.ndarray:
    sz = np.asarray(sizes, dtype=np.float64)
    if sz.shape != (C,) or not np.all(np.isfinite(sz)) or np.any(sz < 0):
        raise BioworldError(f"sizes have shape {sz.shape}; expected ({C},) finite values >= 0 (one per candidate)")
    return sz


def _nearness(features: Any, measured_features: Any, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit candidate features and each one's cosine to the nearest measured perturbation (-1: none)."""
    if features is None:
        raise BioworldError("strategy 'knowledge' needs action features of the candidates")
    f = _unit_rows(features)
    if measured_features is None or len(measured_features) == 0:
        return f, np.full(C, -1.0)
    return f, (f @ _unit_rows(measured_features).T).max(1)


def _goal_scores(strategy: str, gain: np.ndarray, red: np.ndarray, remaining: np.ndarray, ucb: np.ndarray,
                 diversity: float) -> np.ndarray:
    """discovery: UCB minus the look-alike penalty; mix: its rank percentile + information's."""
    spread = float(np.std(ucb[remaining])) if remaining.sum() > 1 else 0.0
    disc = ucb - diversity * np.clip(red, 0, None) * spread
    if strategy == "discovery":
        return disc
    s = np.full(len(gain), -np.inf)
    s[remaining] = _pct(gain[remaining]) + _pct(disc[remaining])
    return s


def _redundancy(rho: np.ndarray, order: np.ndarray) -> tuple[list[int | None], np.ndarray]:
    """For each pick after the first: the earlier pick its predicted effect correlates with most, and how much."""
    red_with: list[int | None] = [None]
    red_val = [np.nan]
    for k in range(1, len(order)):
        c = rho[order[:k]] @ rho[order[k]]
        j = int(np.argmax(c))
        red_with.append(int(order[j]))
        red_val.append(float(c[j]))
    return red_with, np.array(red_val)


def _coordinates(dev: np.ndarray, max_rank: int = MAX_RANK) -> tuple[np.ndarray, float]:
    """``Y [C, r]`` with ``Y Y^T = dev dev^T`` (exact when ``r = min(C, D)`` <= ``max_rank``; else the top
    ``max_rank`` principal directions) and the share of the total variance kept."""
    C, D = dev.shape
    total = float((dev ** 2).sum())
    if total <= 0:
        return np.zeros((C, 1)), 1.0
    if D <= max_rank:
        return dev, 1.0
    if C <= 4 * max_rank:
        U, S, _ = np.linalg.svd(dev, full_matrices=False)
    else:
        import torch

        U_t, S_t, _ = torch.svd_lowrank(torch.from_numpy(dev), q=max_rank, niter=3)
        U, S = U_t.numpy(), S_t.numpy()
    r = min(max_rank, len(S))
    Y = U[:, :r] * S[:r]
    return Y, float((Y ** 2).sum() / total)


# ------------------------------------------------------------------------------- models -> arrays
def _members(model: Any) -> list[Any]:
    members = list(getattr(model, "members", None) or [model])
    for i, m in enumerate(members):
        if getattr(m, "module", None) is None or not hasattr(m, "engine"):
            raise BioworldError(f"model {i} is not a trained WorldModel (got {type(m).__name__}); expected a trained "
                                "bw.WorldModel or bw.Ensemble (train it, or load a model folder)")
    return members


def measured_labels(model: Any) -> list[str]:
    """Canonical labels of the perturbations the model was trained on (control excluded)."""
    m = _members(model)[0]
    out = []
    for lab in m.train_labels:
        a = m.space.parse(lab)
        if not a.is_control:
            out.append(a.label)
    return sorted(set(out))


def candidate_labels(model: Any, candidates: Sequence[str] | None, *, goal: str | None, max_genes: int | None,
                     dose: float) -> tuple[list[str], list[str], dict[str, tuple[str, str]]]:
    """The candidates (canonical labels, not yet measured), the given ones dropped as measured and, on a model
    without compound features, the compounds among them: canonical label (the loss of the compound's targets,
    :func:`~bioworld.query._candidates.as_target_losses`, as predict answers it) -> (the label as given, what it
    was answered as)."""
    from bioworld.query._candidates import default_candidates

    m = _members(model)[0]
    measured = set(measured_labels(model))
    if candidates is None:
        genes, compounds = default_candidates(m.engine, goal or "toward:control", panel=m.genes, genes=None,
                                              compounds=None, dose=dose, max_genes=max_genes)
        held = [lab for lab in getattr(m, "holdout", [])]  # measured in the data but not trained on
        labels = list(genes) + list(compounds) + held
    else:
        if isinstance(candidates, str):
            raise BioworldError(f"candidates {candidates!r} is one string; expected a list of labels such as "
                                "['JAK2', 'ruxolitinib@1'] (CLI: --candidates FILE, one label per line)")
        labels = [str(c) for c in candidates]
        if not labels:
            raise BioworldError("candidates is empty; expected at least one perturbation label (or None: the "
                                "genome-wide default set)")
        dups = sorted({c for c in labels if labels.count(c) > 1})
        if dups:
            raise BioworldError(f"candidates list {dups[:5]} more than once; expected each perturbation once. Fix: "
                                "remove the repeats")
    seen: set[str] = set()
    out, dropped = [], []
    as_targets: dict[str, tuple[str, str]] = {}
    for lab in labels:
        a = m.space.parse(lab)
        if a.is_control:
            if candidates is not None:
                raise BioworldError(f"candidate {lab!r} is the control; expected perturbations to measure. Fix: "
                                    "leave the control out of the candidates (CLI: the --candidates file)")
            continue
        note = ""
        if a.compounds and m.space.compounds is None:
            a, note = _as_target_loss(m, a)
        if a.label in measured:
            dropped.append(lab)
            continue
        if a.label in seen:
            if note or a.label in as_targets:  # a compound and its targets' loss (or two such compounds): one action
                first, text = as_targets.get(a.label, (a.label, ""))
                as_targets[a.label] = (first, f"{text}; " * bool(text) + f"the same action as {lab}")
            continue
        seen.add(a.label)
        out.append(a.label)
        if note:
            as_targets[a.label] = (lab, note)
    if not out:
        raise BioworldError(f"all {len(labels)} candidates were already measured (the model trained on them); "
                            "expected perturbations the model has not seen. Fix: give other candidates")
    if candidates is not None:
        _check_given(m, [lab for lab in out if lab not in as_targets])
    return out, dropped, as_targets


def _check_given(m: Any, labels: list[str]) -> None:
    """Refuse given candidates the model cannot answer, all of them in one error (not the first one found
    during the predictions)."""
    from bioworld.errors import UnknownPerturbationError

    bad: dict[str, str] = {}
    for lab in labels:
        try:
            m.space.check(m.space.parse(lab))
        except UnknownPerturbationError as err:
            bad[lab] = str(err)
    if bad:
        first, why = next(iter(bad.items()))
        raise UnknownPerturbationError(
            f"{len(bad)} of the {len(labels)} candidates not yet measured cannot be predicted by this model: "
            f"{', '.join(map(repr, list(bad)[:10]))}{', ...' if len(bad) > 10 else ''} (e.g. {why.split('. Fix:')[0]}); "
            "expected labels the model can answer. Fix: remove them from the candidates (CLI: the --candidates "
            "file), or check their spelling")


def _as_target_loss(m: Any, action: Any) -> tuple[Any, str]:
    """A compound candidate on a model trained on gene perturbations: the loss of its targets and the note saying so
    (predict's rule); refused with the reason when it has none the model represents."""
    from bioworld.errors import UnknownPerturbationError
    from bioworld.query._candidates import as_target_losses

    try:
        acts, notes = as_target_losses(m.space, sorted(m.engine.trained), [action])
    except UnknownPerturbationError as exc:  # its fix names a targets table, which design does not take
        raise UnknownPerturbationError(
            str(exc).split(" Fix: ")[0] + " Fix: list it as the knockout of its targets joined by '+' (e.g. "
            "'GENE1+GENE2'), or leave it out of the candidates.") from None
    return acts[0], notes[0]


def action_features(space: Any, labels: Sequence[str]) -> np.ndarray:
    """``[n, F]`` features of actions from the model's own encoding: summed gene knowledge features,
    compound features and touched entities of their components (the ``knowledge`` strategy's space)."""
    acts = [space.parse(lab) for lab in labels]
    t = space.encode(acts, width=max((len(a.components) for a in acts), default=0))  # a compound's targets can be many
    parts = [t.gene_feat.sum(1), t.touch.sum(1)]
    if t.cmp_feat.shape[-1]:
        parts.append(t.cmp_feat.sum(1))
    return np.concatenate(parts, axis=1).astype(np.float64)


def expected_sizes(space: Any, labels: Sequence[str], measured: Sequence[str], measured_sizes: Any, *,
                   beta: float = BETA, network: Any = None) -> np.ndarray:
    """``[C]`` optimistic size (root mean square over genes) of each candidate's true effect, from the sizes
    of the measured perturbations (``measured_sizes``: their root mean square effects).

    A Gaussian process over components (genes, silenced entities, compounds at doses): a component's
    mean-square effect has prior mean the measured mean per component and covariance ``tau^2 (cos +
    same_kind) / 2`` (``cos`` = cosine of action features, ``same_kind`` = both knockouts, both silences,
    ...; ``tau^2`` = the measured per-component variance); a perturbation's mean square is the sum over
    its components (effects of different targets taken as roughly orthogonal), observed for the measured
    ones. Returned: ``sqrt(max(mean + beta * sd, 0))`` of each candidate's posterior (``beta`` =
    optimism: a component like no measured one keeps the prior's spread, so a new family is explored).

    ``network`` (a user's directed network, :func:`bioworld.query._reach.read_network`): a component's prior
    mean becomes ``mu r_c / r_bar``, ``r_c`` its reach in the network (:func:`bioworld.query._reach.component_reach`)
    and ``r_bar`` the mean reach of the measured components that have one (else of every component that has one):
    a perturbation that reaches more of the network is expected to move more. A component the network does not
    know keeps ``mu``.
    """
    acts = [space.parse(lab) for lab in labels]
    macts = [space.parse(lab) for lab in measured]
    y = np.square(np.asarray(measured_sizes, dtype=np.float64))
    if len(macts) != len(y) or not len(y) or not np.all(np.isfinite(y)):
        raise BioworldError(f"{len(macts)} measured perturbations and {len(y)} sizes; expected one finite size "
                            "per measured perturbation (>= 1)")
    comps = sorted({c for a in acts + macts for c in a.components}, key=lambda c: c.label)
    pos = {c: i for i, c in enumerate(comps)}
    A = np.zeros((len(macts), len(comps)))
    B = np.zeros((len(acts), len(comps)))
    for M_, group in ((A, macts), (B, acts)):
        for r, a in enumerate(group):
            M_[r, [pos[c] for c in a.components]] = 1.0
    f = _unit_rows(action_features(space, [c.label for c in comps]))
    kinds = np.array([c.kind for c in comps])
    per = y / np.maximum(A.sum(1), 1.0)  # per-component mean squares of the measured
    mu, tau2 = float(per.mean()), float(per.var()) if len(per) > 1 else float(per.mean() ** 2)
    if not tau2 > 1e-12 * max(mu * mu, 1e-300):  # measured sizes all alike: no spread to learn, use the single-size prior
        tau2 = max(mu * mu, 1e-12)
    K = tau2 * 0.5 * (f @ f.T + (kinds[:, None] == kinds[None, :]))
    S = A @ K @ A.T + 0.05 * tau2 * np.eye(len(y))
    W = np.linalg.solve(S, A @ K @ B.T)  # [n, C]
    if network is None:
        mean = B.sum(1) * mu + W.T @ (y - A.sum(1) * mu)
    else:
        m = _reach_prior(space, comps, network, A, mu)  # [components] prior means
        mean = B @ m + W.T @ (y - A @ m)
    var = np.clip(np.einsum("ij,jk,ik->i", B, K, B) - np.einsum("ni,ni->i", A @ K @ B.T, W), 0.0, None)
    return np.sqrt(np.clip(mean + beta * np.sqrt(var), 0.0, None))


def _reach_prior(space: Any, comps: Sequence[Any], network: Any, A: np.ndarray, mu: float) -> np.ndarray:
    """Per component the prior mean square ``mu r / r_bar`` (``mu`` where the network does not reach it)."""
    from bioworld.query._reach import component_reach, read_network

    net = network if isinstance(network, dict) else read_network(network)
    r = component_reach(space, comps, net)
    known = r > 0
    if not known.any():
        return np.full(len(comps), mu)
    measured = known & (A.sum(0) > 0)
    r_bar = float(r[measured].mean() if measured.any() else r[known].mean())
    return np.where(known, mu * r / r_bar, mu)


def predicted_effects(model: Any, labels: Sequence[str], *, goal: str | None, n_cells: int = 64, seed: int = 0,
                      n_boot: int = N_BOOT) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``[M, C, G]`` predicted mean effects (standardised genes) of ``labels`` on the reference cells, the
    ``[M, C]`` goal scores (or None) and what the ``M`` rows are (ensemble members or cell bootstraps)."""
    import torch

    from bioworld.query._candidates import encode_candidates
    from bioworld.query._planner import Goal
    from bioworld.query.engine import goal_function

    members = _members(model)
    rng = np.random.default_rng(seed)
    ref = np.asarray(members[0].reference)
    take = np.sort(rng.choice(len(ref), size=min(n_cells, len(ref)), replace=False))
    x0 = ref[take]
    single = len(members) == 1
    boots = [rng.integers(0, len(x0), len(x0)) for _ in range(n_boot)] if single else None
    effects, goals = [], []
    for m in members:
        eng = m.engine
        cands_all = [m.space.parse(lab) for lab in labels]
        cache = eng.encode(x0)
        base = cache.x_base.cpu().numpy()  # [n, G]
        gfn = None
        if goal is not None:
            g = Goal.parse(goal, entity_names=list(m.entity_names))
            gfn = goal_function(g, m.module, list(m.entity_names), np.asarray(m.reference).mean(0))
        rows = n_boot if single else 1
        eff = np.empty((rows, len(labels), base.shape[1]), np.float32)
        gsc = np.empty((rows, len(labels)), np.float32)
        for s in range(0, len(labels), CHUNK):
            part = cands_all[s:s + CHUNK]
            r = eng.run(cache, encode_candidates(eng, part, [a.label for a in part]))  # as wide as the widest
            d = r.x_pred - base[None]  # [c, n, G]
            if gfn is not None:
                with torch.inference_mode():
                    xp = torch.from_numpy(r.x_pred.reshape(-1, base.shape[1]))
                    xb = torch.from_numpy(np.tile(base, (len(part), 1)))
                    per_cell = gfn(xp.to(eng.device), xb.to(eng.device)).cpu().numpy().reshape(len(part), -1)
            if single:
                for b, idx in enumerate(boots):
                    eff[b, s:s + len(part)] = d[:, idx].mean(1)
                    if gfn is not None:
                        gsc[b, s:s + len(part)] = per_cell[:, idx].mean(1)
            else:
                eff[0, s:s + len(part)] = d.mean(1)
                if gfn is not None:
                    gsc[0, s:s + len(part)] = per_cell.mean(1)
        effects.append(eff)
        goals.append(gsc)
    source = (f"{len(members)} ensemble members" if not single else
              f"single model: {n_boot} bootstrap resamples of {len(x0)} reference cells (cell-sampling spread, not "
              "model uncertainty; an ensemble gives model disagreement)")
    return np.concatenate(effects), (np.concatenate(goals) if goal is not None else None), source


def design(model: Any, candidates: Sequence[str] | None = None, *, budget: int = 8, goal: str | None = None,
           strategy: str = "information", seed: int = 0, n_cells: int = 64, max_genes: int | None = 1000,
           dose: float = 1.0, network: Any = None) -> pd.DataFrame:
    """Rank the next ``budget`` perturbations to measure.

    Parameters
    ----------
    model
        A trained :class:`~bioworld.WorldModel` or :class:`~bioworld.Ensemble` (an ensemble's
        members disagree where the model is uncertain; a single model only gives the spread over
        bootstrap resamples of its reference cells).
    candidates
        Perturbation labels to choose from. Default: the planner's genome-wide candidates
        (:func:`bioworld.query._candidates.default_candidates`: the data's targets, ``max_genes``
        genes closest to the goal entity by knowledge, every compound the model resolves at
        ``dose``) plus the data's held-out labels. Perturbations the model was trained on are
        left out (listed in ``attrs['excluded_measured']``).
    budget
        How many to choose (fewer when there are fewer candidates).
    goal
        ``down:ENTITY``, ``up:ENTITY`` or ``toward:control``: needed by ``discovery``; makes
        ``information`` weight the candidates by optimistic goal value.
    strategy
        ``information`` (default), ``mix``, ``discovery``, ``error``, ``knowledge`` or ``random`` (see
        the module docstring). Replayed on the simulator, Papalexi and an atlas cell line
        (``benchmarks/results/design/DESIGN.md``), information was the one strategy with a lower
        mean error-curve area than random on all three; mix and discovery find goal hits sooner.
    seed
        Seeds the reference-cell subsample (``n_cells``), the bootstraps and the random order.
    network
        ``error`` only: your own directed network (a table with ``source`` / ``target`` columns or its CSV /
        TSV path, gene and / or entity names; :mod:`bioworld.query._reach`): a candidate that reaches more of
        it is expected to move more, so its expected error is larger (:func:`expected_sizes`).

    Returns
    -------
    DataFrame with columns ``rank, perturbation, kind, strategy_score, expected_info,
    expected_goal, reason, flag, flag_reason`` (``flag`` = ``readout`` where the tautology guard
    fired, see the module docstring); ``attrs``: ``strategy``, ``goal``, ``uncertainty`` (what the
    spread is over), ``n_candidates``, ``excluded_measured``, ``n_cells``, ``n_flagged``, ``flagged``
    (the flagged candidates, chosen or not).
    """
    from bioworld.query._candidates import kind_of
    from bioworld.query._reach import network_nodes, read_network

    strategy = _check_strategy(strategy)
    budget = _check_budget(budget)
    members = _members(model)
    m0 = members[0]
    if goal is not None:
        from bioworld.query._planner import Goal

        Goal.parse(goal, entity_names=list(m0.entity_names))
    elif strategy == "discovery":
        raise BioworldError("strategy 'discovery' ranks by expected goal value and needs a goal; expected "
                            "goal='down:ENTITY', 'up:ENTITY' or 'toward:control' (CLI: --goal)")
    labels, dropped, as_targets = candidate_labels(model, candidates, goal=goal, max_genes=max_genes, dose=dose)
    feats = measured = None
    if strategy in ("knowledge", "error"):
        feats = action_features(m0.space, labels)
        known = measured_labels(model)
        measured = action_features(m0.space, known) if known else None
    if strategy == "knowledge":
        effects, goals, source = np.zeros((1, len(labels), 1)), None, "none (knowledge features only)"
    elif strategy == "random":
        effects, goals, source = np.zeros((1, len(labels), 1)), None, "none (random order)"
    else:
        effects, goals, source = predicted_effects(model, labels, goal=goal, n_cells=n_cells, seed=seed)
    if network is not None:
        if strategy != "error":
            raise BioworldError(f"network= sizes the expected errors of strategy 'error'; strategy {strategy!r} "
                                "does not read it. Fix: strategy='error', or leave network out")
        network = read_network(network)
    sizes = measured_fit_sizes(model, labels, n_cells=n_cells, seed=seed, network=network) if strategy == "error" \
        else None
    flags, why = readout_guard(m0, labels, goal)
    sel = select(effects, budget, strategy, goal_scores=goals, features=feats, measured_features=measured, seed=seed,
                 flagged=np.array([f != "" for f in flags], dtype=bool), sizes=sizes,
                 anchored=anchored_on_measured(model, labels) if strategy == "error" else None)
    shown_labels = [as_targets.get(lab, (lab,))[0] for lab in labels]  # compounds as given
    rows = []
    for k, c in enumerate(sel.order):
        lab = labels[c]
        reason = _reason(strategy, sel, k, shown_labels, goal, source)
        if flags[c] and strategy in GOAL_AWARE:
            reason += "; acts on the goal's own readout: ranked after every unflagged candidate"
        shown, note = as_targets.get(lab, (lab, ""))
        if note:
            reason += f"; {note}"
        rows.append({"rank": k + 1, "perturbation": shown, "kind": "compound" if shown != lab else kind_of(m0.space.parse(lab)),
                     "strategy_score": sel.score[k], "expected_info": sel.info[k],
                     "expected_goal": sel.goal[k], "reason": reason, "flag": flags[c], "flag_reason": why[c]})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs.update({"strategy": strategy, "goal": goal, "uncertainty": source, "n_candidates": len(labels),
                        "network_nodes": 0 if network is None else len(network_nodes(network)),
                        "excluded_measured": list(dropped), "n_cells": int(min(n_cells, len(m0.reference))),
                        "budget": budget, "n_flagged": int(sum(f != "" for f in flags)),
                        "flagged": [lab for lab, f in zip(shown_labels, flags) if f]})
    return table


def anchored_on_measured(model: Any, labels: Sequence[str]) -> np.ndarray:
    """``[C]`` bool: combinations whose components all have an observed single effect in the model (its
    answer to them starts from the sum of those effects, :meth:`bioworld.query.engine.QueryEngine.candidates`)."""
    m = _members(model)[0]
    seen = set(getattr(m, "single_effects", None) or {})
    acts = [m.space.parse(lab) for lab in labels]
    return np.array([len(a.components) > 1 and all(c in seen for c in a.components) for a in acts], dtype=bool)


def measured_fit_sizes(model: Any, labels: Sequence[str], *, n_cells: int = 64, seed: int = 0,
                       beta: float = BETA, network: Any = None) -> np.ndarray | None:
    """``error``'s expected sizes (:func:`expected_sizes`, with the user's ``network`` when given) of ``labels``
    from the model's own answers on the perturbations it was trained on (its fit of what was measured); None
    when it was trained on none."""
    known = measured_labels(model)
    if not known:
        return None
    eff, _, _ = predicted_effects(model, known, goal=None, n_cells=n_cells, seed=seed)
    return expected_sizes(_members(model)[0].space, labels, known, np.sqrt((eff.mean(0) ** 2).mean(1)), beta=beta,
                          network=network)


def readout_guard(model: Any, labels: Sequence[str], goal: str | None) -> tuple[list[str], list[str]]:
    """The planner's tautology guard on the candidates: ``flag`` (``"readout"`` or ``""``) and its reason per
    label (nothing is flagged without a goal or for ``toward:control``)."""
    if goal is None:
        return [""] * len(labels), [""] * len(labels)
    from bioworld.query._candidates import Readout, readout_flags
    from bioworld.query._planner import Goal

    g = Goal.parse(goal, entity_names=list(model.entity_names))
    readout = Readout.of(g, model.engine, list(model.genes))
    return readout_flags([model.space.parse(lab) for lab in labels], readout)


def _reason(strategy: str, sel: Selection, k: int, labels: Sequence[str], goal: str | None, source: str) -> str:
    parts = []
    if strategy in ("information", "mix"):
        parts.append(f"expected uncertainty reduction {sel.info[k]:.3g} over all candidates")
    if goal is not None and strategy in ("discovery", "mix", "information"):
        parts.append(f"goal {goal} score {sel.goal[k]:+.3g} +- {sel.goal_sd[k]:.2g}")
    if strategy == "error":
        parts.append(f"expected squared error {sel.info[k]:.3g} per gene (true size expected from the measured "
                     "look-alikes, the prediction's size and the members' disagreement)")
    if strategy == "knowledge":
        parts.append(f"knowledge distance {sel.score[k]:.3g} to the nearest measured or chosen perturbation")
    if strategy == "random":
        parts.append("random order (baseline)")
    j = sel.redundant_with[k]
    if j is not None and strategy in ("information", "mix", "discovery"):
        parts.append(f"most similar chosen: {labels[j]} (corr {sel.redundancy[k]:+.2f})")
    if k == 0 and strategy in ("information", "mix", "discovery"):
        parts.append(f"spread over {source}")
    return "; ".join(parts)
