"""Silence response heads: what the interventional training data say a do(entity off) does to each gene.

An untrained ``silence:E`` is answered by the latent do-operation (:mod:`bioworld.query.engine`) or by
E's *response head*, whichever validates better on held-in data (the observed effects of the training
perturbations that act on E; never a held-out silence). The head is fitted once after training
(:func:`fit_silence_heads`) and stored in the checkpoint. A head is, per gene outside E, the slope of its
observed change on E's activity over the training perturbations that act on E
(:func:`~bioworld.query._counterfactual.intervention_template`), times a calibration weight ``w`` in
[0, 1]: the leave-one-out least-squares scale of that slope's predictions on the held-in perturbations
(a slope that predicts the left-out perturbations only loosely is shrunk toward 0, so the answer does
not spread an unreliable pattern over the panel). Per cell, the head moves gene ``g`` by
``slope[g] * (move @ axis)``: the cell's own move along E's activity axis to the "off" level; E's member
genes are set by the move, as in the latent do-operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bioworld.query._counterfactual import ActivityAxes, intervention_template

MIN_ACTING = 2  # fewest training perturbations acting on an entity for a head (one is left out in validation)
ENTITIES_PER_PASS = 4  # latent do-operations answered per engine call during the fit (memory: x cells x genes)


@dataclass(frozen=True)
class HeadFit:
    """How one entity's head was fitted and validated (``meta['silence_heads']`` rows)."""

    entity: str
    n_acting: int  # training perturbations acting on the entity
    weight: float  # calibration weight w in [0, 1]
    v_head: float  # held-in validation score of the head (mean signed Pearson, genes outside the entity)
    v_latent: float  # the same for the latent do-operation's answer
    used: bool  # the head answers silence:<entity> (it validated better)

    def to_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "n_acting": self.n_acting, "weight": round(self.weight, 6),
                "v_head": round(self.v_head, 6), "v_latent": round(self.v_latent, 6), "used": self.used}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (no information)."""
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def validate_head(axis: np.ndarray, move: np.ndarray, effects: np.ndarray, noise_var: np.ndarray,
                  latent: np.ndarray) -> tuple[float, float, float]:
    """Leave-one-out validation of a head on the perturbations acting on an entity: ``(w, v_head, v_latent)``.

    ``axis``, ``move`` ``[G]`` (the entity's unit activity axis, the do()'s mean move), ``effects`` /
    ``noise_var`` ``[n, G]`` (observed mean effects of the ``n`` acting perturbations and their sampling
    variances), ``latent`` ``[G]`` (the latent do-operation's answer to the silence). Only genes outside the
    entity (``move == 0``) are scored: the members are set by the move either way. Perturbation ``a`` moved
    the entity by ``s_a = effects[a] @ axis``; the head fitted on the others predicts ``b_(-a) s_a``, the latent
    answer (linear in the move) ``latent * s_a / (move @ axis)``. ``v_head`` / ``v_latent``: mean Pearson of
    those predictions with ``effects[a]``; ``w``: the least-squares scale of the head's predictions over all
    ``a`` (``sum <pred, obs> / sum <pred, pred>``), clipped to [0, 1].
    """
    out = move == 0
    m = float(move @ axis)
    n = len(effects)
    if n < MIN_ACTING or m == 0.0 or not out.any():
        return 0.0, 0.0, 0.0
    num = den = 0.0
    v_head, v_lat = [], []
    for a in range(n):
        keep = np.arange(n) != a
        ratio = float(effects[a] @ axis) / m
        pred = intervention_template(axis, move, effects[keep], noise_var[keep])[out] * ratio
        obs = effects[a][out]
        num, den = num + float(pred @ obs), den + float(pred @ pred)
        v_head.append(_pearson(pred, obs))
        v_lat.append(_pearson(latent[out] * ratio, obs))
    w = float(np.clip(num / den, 0.0, 1.0)) if den > 0 else 0.0
    return w, float(np.mean(v_head)), float(np.mean(v_lat))


def acting_effects(engine: Any, X: np.ndarray, labels: np.ndarray, control: str, train_labels: Sequence[str]
                   ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The training single perturbations with >= 2 cells: ``(labels, touch [n, E] bool, effects [n, G],
    noise_var [n, G])`` (observed mean effect vs control on the standardised scale and its sampling variance)."""
    ctrl = X[labels == control]
    singles = [lab for lab in train_labels if lab != control and len(engine.space.parse(lab).components) == 1
               and int((labels == lab).sum()) >= 2]
    G = X.shape[1]
    if not singles:
        return [], np.zeros((0, len(engine.space.entity_names)), bool), np.zeros((0, G)), np.zeros((0, G))
    touch = np.asarray(engine.space.encode([engine.space.parse(lab) for lab in singles]).touch).sum(1) > 0
    mu0, var0 = ctrl.mean(0, dtype=np.float64), ctrl.var(0, dtype=np.float64) / len(ctrl)
    effects, noise = np.empty((len(singles), G)), np.empty((len(singles), G))
    for i, lab in enumerate(singles):
        cells = X[labels == lab]
        effects[i] = cells.mean(0, dtype=np.float64) - mu0
        noise[i] = cells.var(0, dtype=np.float64) / len(cells) + var0
    return singles, touch, effects, noise


def _latent_answers(engine: Any, entities: list[int]) -> dict[int, np.ndarray]:
    """The latent do-operation's mean answer ``[G]`` (standardised) to silencing each entity, over the
    engine's reference cells (what ``predict`` answers)."""
    cache = engine.encode(engine.reference)
    base = cache.x_base.cpu().numpy().mean(0, dtype=np.float64)
    out: dict[int, np.ndarray] = {}
    for s in range(0, len(entities), ENTITIES_PER_PASS):
        part = entities[s:s + ENTITIES_PER_PASS]
        acts = [engine.space.parse(f"silence:{engine.space.entity_names[e]}") for e in part]
        x = engine.run(cache, engine.candidates(acts)).x_pred  # [c, n, G]
        for k, e in enumerate(part):
            out[e] = x[k].mean(0, dtype=np.float64) - base
    return out


def fit_silence_heads(engine: Any, X: np.ndarray, labels: np.ndarray, control: str,
                      train_labels: Sequence[str]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Fit and validate a response head for every entity whose silence the model was not trained on and
    that >= :data:`MIN_ACTING` training perturbations act on (touch its slot: knockouts of its member genes,
    compounds targeting them). ``engine``: the trained model's engine without heads (its latent answers are
    the competitor); ``X`` ``[cells, G]`` standardised training data, ``labels`` per cell.

    Returns ``(heads, table)``: entity name -> calibrated slope ``[G]`` float32 (zero on the entity's
    members) for the entities whose head validated better than the latent do-operation
    (``v_head > v_latent`` and ``w > 0``, see :func:`validate_head`), and one :class:`HeadFit` row (as a dict)
    per fitted entity.
    """
    axes: ActivityAxes = engine.axes
    names = list(engine.space.entity_names)
    trained = set(engine.trained)
    singles, touch, effects, noise = acting_effects(engine, X, np.asarray(labels).astype(str), control, train_labels)
    todo = [e for e in range(len(names)) if f"silence:{names[e]}" not in trained and touch[:, e].sum() >= MIN_ACTING]
    if not todo:
        return {}, []
    latent = _latent_answers(engine, todo)
    ref = np.asarray(engine.reference, dtype=np.float32)
    heads, table = {}, []
    for e in todo:
        u = axes.axis[e].astype(np.float64)
        move = (axes.inactive(ref, e) - ref).mean(0, dtype=np.float64)
        move[axes.axis[e] == 0] = 0.0  # exact zeros outside the members (float32 rounding)
        E, V = effects[touch[:, e]], noise[touch[:, e]]
        w, v_head, v_lat = validate_head(u, move, E, V, latent[e])
        used = v_head > v_lat and w > 0.0
        m = float(move @ u)
        if used and m != 0.0:
            slope = intervention_template(u, move, E, V) / m * w
            slope[move != 0] = 0.0
            heads[names[e]] = slope.astype(np.float32)
        table.append(HeadFit(names[e], int(len(E)), w, v_head, v_lat, bool(used and m != 0.0)).to_dict())
    return heads, table
