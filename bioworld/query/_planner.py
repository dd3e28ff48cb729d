"""Target prioritisation: search single and paired interventions in latent space.

Cells are encoded once (f_theta); every candidate intervention is a predictor rollout g_phi on
those latents, scored against a goal on the readout. Entity silencing is a do-operation on the
slot latents, so all singles and pairs over E entities cost E + E(E-1)/2 predictor passes over
the cached latents and never touch optimiser state.

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
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from bioworld.errors import BioworldError
from bioworld.model.jepa import JEPA, ActionBatch


@dataclass
class Goal:
    """A parsed goal: ``direction`` in {down, up, toward} and its ``target``."""

    direction: str
    target: str
    spec: str

    @classmethod
    def parse(cls, spec: str, *, entity_names: list[str]) -> "Goal":
        import difflib

        if not isinstance(spec, str) or ":" not in spec:
            raise BioworldError(
                f"goal {spec!r} is not of the form DIRECTION:TARGET; expected 'down:ENTITY', 'up:ENTITY' or 'toward:control'"
            )
        direction, target = spec.split(":", 1)
        if direction not in ("down", "up", "toward"):
            raise BioworldError(f"goal direction {direction!r} is unknown; expected 'down', 'up' or 'toward'")
        if direction == "toward" and target != "control":
            raise BioworldError(f"goal {spec!r}: only 'toward:control' is supported (the reference control population)")
        if direction in ("down", "up") and target not in entity_names:
            near = difflib.get_close_matches(target, entity_names, n=3)
            raise BioworldError(
                f"goal entity {target!r} is not one of the model's {len(entity_names)} entities; close matches: {near or 'none'}"
            )
        return cls(direction, target, spec)


@dataclass
class PrioritizationResult:
    """Ranked interventions for one goal (what :func:`bioworld.report.write_report` renders)."""

    goal: str
    table: pd.DataFrame  # rank, intervention, kind (single|pair), score, score_lo, score_hi, synergy, top_entities
    entity_shift: pd.DataFrame  # [interventions x entities] mean latent shift (units of slot spread)
    per_cell_scores: dict[str, np.ndarray]  # intervention -> [cells] per-cell score (top interventions)
    pair_synergy: pd.DataFrame  # [entities x entities] pair score minus the sum of the two singles
    provenance: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


@torch.no_grad()
def score_interventions(
    module: JEPA,
    x_std: np.ndarray,
    candidates: list[tuple[str, dict[str, np.ndarray], list[int]]],
    control_row: dict[str, np.ndarray],
    x_inactive_latents: Callable[[int], torch.Tensor],
    goal_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    slot_scale: np.ndarray,
    rows_per_pass: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell goal scores ``[n_candidates, cells]`` and mean slot shifts ``[n_candidates, E]``.

    ``candidates``: (label, action-table row, entities to clamp to their inactive latent).
    ``goal_fn(x_pred, x_base) -> [cells]`` scores predicted vs baseline standardised expression.
    """
    module.eval()
    x = torch.from_numpy(np.ascontiguousarray(x_std, dtype=np.float32))
    n, E = x.shape[0], module.cfg.n_entities
    z = module.encode(x)  # encoded once  [n, E, D]

    ctrl = ActionBatch(**{k: torch.from_numpy(np.repeat(v[None], n, 0)) for k, v in control_row.items()})
    z_ref = module.encode_target(x)
    z_base = module.next(z, ctrl)
    x_base = module.expression_from(z_base, ctrl, x, z_ref)
    scale = torch.from_numpy(slot_scale.astype(np.float32))
    scores = np.empty((len(candidates), n), np.float32)
    shifts = np.empty((len(candidates), E), np.float32)
    # candidates are evaluated in chunks: k candidates x n cells rows per predictor pass
    k = max(1, rows_per_pass // n)
    # group candidates with the same number of action components so a pass needs no padding mask
    order = sorted(range(len(candidates)), key=lambda i: int((candidates[i][1]["kind"] > 0).sum()))
    for s in range(0, len(candidates), k):
        idx = order[s:s + k]
        chunk = [candidates[i] for i in idx]
        m = len(chunk)
        act = ActionBatch(**{
            key: torch.from_numpy(np.concatenate([np.repeat(row[key][None], n, 0) for _, row, _ in chunk]))
            for key in control_row
        })
        zc = z.repeat(m, 1, 1)  # [m*n, E, D]
        slots = torch.zeros(m * n, E, dtype=torch.bool)
        values = zc.clone()
        for j, (_, _, clamp_entities) in enumerate(chunk):
            for e in clamp_entities:
                slots[j * n:(j + 1) * n, e] = True
                values[j * n:(j + 1) * n, e] = x_inactive_latents(e)
        clamp = (slots, values) if bool(slots.any()) else None
        z_new = module.next(zc, act, clamp=clamp)
        xc = x.repeat(m, 1)
        x_new = module.expression_from(z_new, act, xc, z_ref.repeat(m, 1, 1))
        scores[idx] = goal_fn(x_new, x_base.repeat(m, 1)).reshape(m, n).numpy()
        shift = ((z_new - z_base.repeat(m, 1, 1)).norm(dim=-1) / scale).reshape(m, n, E).mean(1)
        shifts[idx] = shift.numpy()
    return scores, shifts


def bootstrap_interval(per_cell: np.ndarray, *, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over cells, per row of ``[rows, cells]``."""
    rng = np.random.default_rng(seed)
    n = per_cell.shape[1]
    idx = rng.integers(0, n, size=(n_boot, n))
    means = per_cell[:, idx].mean(-1)  # [rows, n_boot]
    lo = np.quantile(means, (1 - level) / 2, axis=1)
    hi = np.quantile(means, 1 - (1 - level) / 2, axis=1)
    return lo, hi


def pair_candidates(singles: list[tuple[str, dict[str, np.ndarray], list[int]]]) -> list[tuple[str, tuple[int, int]]]:
    """Index pairs of entity-silencing singles (clamping both slots)."""
    ent = [i for i, (_, _, c) in enumerate(singles) if c]
    return [(f"{singles[a][0]}+{singles[b][0]}", (a, b)) for a, b in itertools.combinations(ent, 2)]
