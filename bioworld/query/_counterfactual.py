"""Counterfactual algorithms on the pure JEPA module (no AnnData; ``WorldModel`` wraps them).

An intervention is answered in latent space: encode the cells once (f_theta), roll the
action-conditioned predictor g_phi forward under the intervention, read out expression, and
compare with the same cells rolled forward under the control action. ``silence:ENTITY`` is a
do-operation on one slot: the entity's latent is clamped to its inactive state (the encoding of the
cell with the entity's member genes at their inactive level) and the predictor propagates the
change to the other slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bioworld.model.jepa import JEPA, ActionBatch


@dataclass(frozen=True)
class CounterfactualResult:
    """Per-cell answers for one intervention (standardised scale)."""

    x_pred: np.ndarray  # [cells, G] predicted expression under the intervention
    x_base: np.ndarray  # [cells, G] the same cells under the control action
    slot_shift: np.ndarray  # [cells, E] how far each entity latent moved (in units of its spread)


def inactive_inputs(x_std: np.ndarray, membership: np.ndarray, entity: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Cells with entity ``entity``'s member genes set to their inactive level.

    Members with positive weight go to ``low`` (a low quantile of the reference population),
    members with negative weight to ``high``: the pathway's footprint reads "off".
    """
    w = membership[entity]
    out = x_std.copy()
    pos, neg = w > 0, w < 0
    out[:, pos] = low[pos]
    out[:, neg] = high[neg]
    return out


@torch.no_grad()
def rollout(
    module: JEPA,
    x_std: np.ndarray,
    act: dict[str, np.ndarray],
    control: dict[str, np.ndarray],
    *,
    clamp_entity: int | None = None,
    x_inactive: np.ndarray | None = None,
    slot_scale: np.ndarray | None = None,
    batch_size: int = 2048,
) -> CounterfactualResult:
    """Predict cells under one intervention (``act``: one row of an action table, broadcast)."""
    module.eval()
    E = module.cfg.n_entities
    preds, bases, shifts = [], [], []
    for s in range(0, len(x_std), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x_std[s:s + batch_size], dtype=np.float32))
        n = xb.shape[0]
        a = ActionBatch(**{k: torch.from_numpy(np.repeat(v[None], n, 0)) for k, v in act.items()})
        c = ActionBatch(**{k: torch.from_numpy(np.repeat(v[None], n, 0)) for k, v in control.items()})
        z = module.encode(xb)
        clamp = None
        if clamp_entity is not None:
            zi = module.encode(torch.from_numpy(np.ascontiguousarray(x_inactive[s:s + batch_size], dtype=np.float32)))
            slots = torch.zeros(n, E, dtype=torch.bool)
            slots[:, clamp_entity] = True
            clamp = (slots, zi)
        z_ref = module.encode_target(xb)
        z_base = module.next(z, c)
        z_new = module.next(z, a, clamp=clamp)
        preds.append(module.expression_from(z_new, a, xb, z_ref).numpy())
        bases.append(module.expression_from(z_base, c, xb, z_ref).numpy())
        shift = (z_new - z_base).norm(dim=-1).numpy()  # [n, E]
        if slot_scale is not None:
            shift = shift / slot_scale[None]
        shifts.append(shift)
    return CounterfactualResult(np.concatenate(preds), np.concatenate(bases), np.concatenate(shifts))


def explain_shifts(slot_shift: np.ndarray, entity_names: list[str]) -> list[dict[str, float | str]]:
    """Entities ordered by how far their latent moved (mean over cells, in units of slot spread)."""
    mean = slot_shift.mean(0)
    order = np.argsort(-mean)
    total = float(mean.sum()) or 1.0
    return [
        {"entity": entity_names[i], "shift": float(mean[i]), "share": float(mean[i] / total)}
        for i in order
    ]
