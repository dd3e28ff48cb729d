"""The do-operation behind an untrained ``silence:ENTITY`` (used by :mod:`bioworld.query.engine`).

The cells are moved along the entity's activity axis to a low level (:class:`ActivityAxes`); the
entity's latent is clamped to its encoding and the predictor propagates the change to the other
slots, and what the other slots read differently from the moved genes is added
(:class:`SilenceTerms`); the moved genes themselves are set (:func:`pin_members`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bioworld.errors import BioworldError
from bioworld.model.jepa import JEPA


PC1_DOMINANCE = 1.5  # an unsigned set's first PC is its axis only when its variance is >= this x the second's


def unsigned_axis(xc: np.ndarray) -> np.ndarray:
    """Activity direction of an unsigned gene set from its centred member columns ``xc`` [cells, members].

    When the members co-vary along one clear direction (first PC variance >= ``PC1_DOMINANCE`` x the
    second's), that first PC, oriented so most members load positively: repressed members load
    negatively. Otherwise the members do not co-vary enough in these cells to say which way each one
    goes (e.g. the Hallmark IFN-gamma genes of the Papalexi panel among control cells; figures in
    ``benchmarks/results/causal/design_notes.md``), so every member moves by the same amount, down
    unless its correlation with the other members' mean is significantly negative (r < -3/sqrt(cells)).
    """
    n, p = xc.shape
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    if len(s) > 1 and s[0] ** 2 >= PC1_DOMINANCE * s[1] ** 2:
        u = vt[0]
        if u.sum() < 0 or (u.sum() == 0 and u[np.argmax(np.abs(u))] < 0):
            u = -u
        return u
    sd = xc.std(0)
    zc = xc / np.where(sd > 0, sd, 1.0)
    rest = (zc.sum(1, keepdims=True) - zc) / max(p - 1, 1)  # mean of the other members, per member
    r = (zc * rest).mean(0) / np.maximum(rest.std(0), 1e-12)
    sign = np.where(r < -3.0 / np.sqrt(n), -1.0, 1.0)
    return -sign if sign.sum() < 0 else sign


@dataclass(frozen=True)
class ActivityAxes:
    """Each entity's activity axis in standardised gene space and the level that reads "off".

    ``axis[e]`` is a unit vector over the entity's member genes: its own signed weights when they
    carry a direction (PROGENy footprints, regulons with a mode of regulation), else
    :func:`unsigned_axis` of the members over the reference cells (their first principal component
    when it clearly dominates, else equal moves signed by each member's correlation with the rest).
    ``low[e]`` is the ``quantile`` of the reference cells' projections onto it. :meth:`inactive` moves cells along the axis to that level, so repressed
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
                    u = unsigned_axis(xc)
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
    The intervened genes themselves are set, not predicted: ``move`` is the do() itself (moved cells
    minus cells, nonzero on the entity's members = ``pinned``), and a pinned gene's predicted change
    is exactly its move (:func:`pin_members`); only the other genes are the model's answer.
    """

    slot: torch.Tensor  # [n, D]
    dz: torch.Tensor  # [n, E, D]
    dx: torch.Tensor  # [n, G]
    move: torch.Tensor  # [n, G]
    pinned: torch.Tensor  # [G] bool


def silence_terms(module: JEPA, z: torch.Tensor, z_off: torch.Tensor, entity: int,
                  x: torch.Tensor, x_off: torch.Tensor) -> SilenceTerms:
    """:class:`SilenceTerms` from the cells ``x`` and their latents ``z``, and the same cells with
    ``entity`` driven off, ``x_off`` / ``z_off`` (latents ``[n, E, D]`` from ``module.encode``)."""
    swapped = z.clone()
    swapped[:, entity] = z_off[:, entity]
    move = x_off - x
    return SilenceTerms(slot=z_off[:, entity], dz=z_off - swapped,
                        dx=module.readout(z_off) - module.readout(swapped), move=move,
                        pinned=(move != 0).any(0))


def pin_members(x_new: torch.Tensor, x_base: torch.Tensor, move: torch.Tensor, pinned: torch.Tensor) -> torch.Tensor:
    """``x_new`` with the pinned (intervened) genes' change from ``x_base`` set to ``move``.

    Shapes broadcast: ``x_new``, ``x_base``, ``move`` ``[..., G]``, ``pinned`` ``[..., G]`` bool. What
    pinning changed on the simulator and THP-1 is in ``benchmarks/results/causal/design_notes.md``.
    """
    return torch.where(pinned, x_base + move, x_new)


def shift_effects(slot_shift: np.ndarray, entity_names: list[str]) -> dict[str, list]:
    """:func:`explain_shifts` as columns ``entity, shift, share`` (the same values and order)."""
    mean = slot_shift.mean(0)
    order = np.argsort(-mean)
    total = float(mean.sum()) or 1.0
    return {"entity": [entity_names[i] for i in order], "shift": mean[order].astype(np.float64).tolist(),
            "share": (mean[order] / total).astype(np.float64).tolist()}


def explain_shifts(slot_shift: np.ndarray, entity_names: list[str]) -> list[dict[str, float | str]]:
    """Entities ordered by how far their latent moved (mean over cells, in units of slot spread)."""
    cols = shift_effects(slot_shift, entity_names)
    return [{"entity": e, "shift": s, "share": r} for e, s, r in zip(cols["entity"], cols["shift"], cols["share"])]


def intervention_template(axis: np.ndarray, move: np.ndarray, effects: np.ndarray, noise_var: np.ndarray
                          ) -> np.ndarray:
    """Response ``[G]`` of every gene to a do() that moves the cells by ``move`` along an entity's unit
    ``axis`` (both ``[G]``, standardised), estimated from observed interventions on that entity.

    ``effects`` ``[n, G]`` are the observed mean effects of ``n`` perturbations acting on the entity
    (e.g. knockouts of its member genes) and ``noise_var`` ``[n, G]`` the sampling variance of each of
    those means. Each perturbation moved the entity by ``s_a = effects[a] @ axis``; per gene the slope
    ``b_g`` of its change on that move (least squares through the origin over the perturbations) is its
    response per unit of the entity's activity, and the do() moves the entity by ``move @ axis``. A
    slope within sampling noise is shrunk toward 0 (positive-part rule ``b * max(0, 1 - se^2 / b^2)``),
    so genes no intervention on the entity reliably moved are left unchanged. Linear in the move: the
    interventions' sizes bracket the slope, not the shape of a saturating response.
    """
    E = np.asarray(effects, dtype=np.float64)
    V = np.asarray(noise_var, dtype=np.float64)
    u = np.asarray(axis, dtype=np.float64)
    if E.ndim != 2 or E.shape != V.shape or E.shape[1] != len(u) or len(move) != len(u):
        raise BioworldError(f"effects {E.shape}, noise_var {V.shape}, axis {u.shape}, move {np.shape(move)}: "
                         "expected [n, G], [n, G], [G], [G]. Fix: pass one row of effects and noise per intervention")
    s = E @ u  # [n] how far each intervention moved the entity
    ss = float(s @ s)
    if len(s) == 0 or ss <= 0.0:
        return np.zeros(len(u))
    beta = (s @ E) / ss  # [G]
    se2 = (s ** 2 @ V) / ss ** 2  # [G] sampling variance of the slope
    shrink = np.clip(1.0 - se2 / np.maximum(beta ** 2, 1e-300), 0.0, 1.0)
    return beta * shrink * float(np.asarray(move, dtype=np.float64) @ u)
