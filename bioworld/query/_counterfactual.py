"""Counterfactual algorithms on the pure JEPA module (no AnnData; ``WorldModel`` wraps them).

An intervention is answered in latent space: encode the cells once (f_theta), roll the
action-conditioned predictor g_phi forward under the intervention, read out expression, and
compare with the same cells rolled forward under the control action. ``silence:ENTITY`` is a
do-operation on one slot: the cells are moved along the entity's activity axis to a low level
(:class:`ActivityAxes`); the entity's latent is clamped to its encoding and the predictor
propagates the change to the other slots, and what the other slots read differently from the moved
genes is added (:class:`SilenceTerms`).
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


@dataclass(frozen=True)
class ActivityAxes:
    """Each entity's activity axis in standardised gene space and the level that reads "off".

    ``axis[e]`` is a unit vector over the entity's member genes: its own signed weights when they
    carry a direction (PROGENy footprints, regulons with a mode of regulation), else the first
    principal component of the members over the reference cells, oriented so that most members
    load positively (an unsigned gene set: the direction along which its members co-vary, with
    repressed members loading negatively). ``low[e]`` is the ``quantile`` of the reference cells'
    projections onto it. :meth:`inactive` moves cells along the axis to that level, so repressed
    members rise while activated ones fall, and genes outside the entity stay as they are.
    """

    axis: np.ndarray  # [E, G] float32, unit rows, zero outside each entity's members
    low: np.ndarray  # [E] float32, inactive level of the projection x @ axis[e]
    quantile: float

    @classmethod
    def fit(cls, x_ref: np.ndarray, membership: np.ndarray, quantile: float = 0.01) -> "ActivityAxes":
        E, G = membership.shape
        axis = np.zeros((E, G), dtype=np.float32)
        for e in range(E):
            w = np.asarray(membership[e], dtype=np.float64)
            idx = np.flatnonzero(w)
            if len(idx) == 0:
                continue
            if (w[idx] > 0).any() and (w[idx] < 0).any():  # signed weights carry the direction
                u = w[idx]
            else:
                xc = x_ref[:, idx].astype(np.float64)
                xc -= xc.mean(0)
                if len(idx) == 1 or not np.isfinite(xc).all() or float(np.abs(xc).sum()) == 0.0:
                    u = np.sign(w[idx])
                else:
                    u = np.linalg.svd(xc, full_matrices=False)[2][0]
                    if u.sum() < 0 or (u.sum() == 0 and u[np.argmax(np.abs(u))] < 0):
                        u = -u
            axis[e, idx] = u / max(np.linalg.norm(u), 1e-12)
        low = np.quantile(x_ref @ axis.T, quantile, axis=0).astype(np.float32)
        return cls(axis=axis, low=low, quantile=float(quantile))

    def inactive(self, x_std: np.ndarray, entity: int) -> np.ndarray:
        """Cells moved along entity ``entity``'s axis to its inactive level (other genes unchanged)."""
        u = self.axis[entity]
        s = x_std @ u
        return (x_std + np.outer(self.low[entity] - s, u)).astype(np.float32)


def inactive_inputs(x_std: np.ndarray, axes: ActivityAxes, entity: int) -> np.ndarray:
    """Cells with entity ``entity`` driven to its inactive state (:meth:`ActivityAxes.inactive`)."""
    return axes.inactive(x_std, entity)


@dataclass(frozen=True)
class SilenceTerms:
    """What a do(entity off) changes before the predictor runs, per cell (standardised scale).

    ``slot`` is the entity's "off" latent (slot ``e`` of f_theta on the cells moved to the
    inactive state), which is clamped in the predictor. Moving the entity's member genes also
    changes what every other slot reads from them (entities share genes, and the encoder reads
    slots in context): ``dz`` = encoding of the moved cells minus the cells' own latents with only
    slot ``e`` replaced, and ``dx`` = the readout of that difference. They are added to the
    predictor's answer, so the do-operation = measurement consequences + propagation by g_phi.
    """

    slot: torch.Tensor  # [n, D]
    dz: torch.Tensor  # [n, E, D]
    dx: torch.Tensor  # [n, G]


def silence_terms(module: JEPA, z: torch.Tensor, z_off: torch.Tensor, entity: int) -> SilenceTerms:
    """:class:`SilenceTerms` from the cells' latents ``z`` and the latents ``z_off`` of the same cells
    with ``entity`` driven off (both ``[n, E, D]`` from ``module.encode``)."""
    swapped = z.clone()
    swapped[:, entity] = z_off[:, entity]
    return SilenceTerms(slot=z_off[:, entity], dz=z_off - swapped,
                        dx=module.readout(z_off) - module.readout(swapped))


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
        clamp, terms = None, None
        if clamp_entity is not None:
            zi = module.encode(torch.from_numpy(np.ascontiguousarray(x_inactive[s:s + batch_size], dtype=np.float32)))
            terms = silence_terms(module, z, zi, clamp_entity)
            slots = torch.zeros(n, E, dtype=torch.bool)
            slots[:, clamp_entity] = True
            clamp = (slots, zi)
        z_ref = module.encode_target(xb)
        z_base = module.next(z, c)
        z_new = module.next(z, a, clamp=clamp)
        x_new = module.expression_from(z_new, a, xb, z_ref)
        if terms is not None:  # the measurement consequences of the do() on the other slots
            x_new = x_new + terms.dx
            z_new = z_new + terms.dz
        preds.append(x_new.numpy())
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
