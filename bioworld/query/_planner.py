"""Target prioritisation: search single and paired interventions in latent space.

Cells are encoded once (f_theta) into a :class:`CellCache` (latents, the readout of the source
cells, the unperturbed prediction); every candidate intervention is then a predictor rollout g_phi
on those latents, scored against a goal on the readout. Entity silencing is a do-operation on the
slot latents (the slot is clamped to its "inactive" latent, encoded for all entities in shared
encoder batches), so all singles and pairs over E entities cost E + E(E-1)/2 predictor rows per
cell and never touch optimiser state. Many candidates share one predictor pass.

The cost is the number of (candidate, cell) predictor rows, so ``WorldModel.prioritize`` screens
every candidate on a few prototype cells (:func:`latent_prototypes`: k-means medoids of the
latents, weighted by cluster size; approximate) and re-scores only the best on all cells (exact).

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
from bioworld.query._counterfactual import SilenceTerms, pin_members, silence_terms


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


@dataclass
class CellCache:
    """Everything about a set of starting cells that does not depend on the candidate.

    Built once by :func:`encode_cells`; the planner then runs only the predictor g_phi and the
    readout per (candidate, cell).
    """

    x: torch.Tensor  # [n, G] standardised expression
    z: torch.Tensor  # [n, E, D] context latents f_theta(x), encoded once
    r_src: torch.Tensor  # [n, G] candidate-independent part of the predicted expression (x - R(z_ref) with a residual readout, else 0)
    z_base: torch.Tensor  # [n, E, D] latents under the control action
    x_base: torch.Tensor  # [n, G] predicted unperturbed expression

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: np.ndarray) -> "CellCache":
        """The cache of cells ``idx`` (rows are independent, so nothing is recomputed)."""
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return CellCache(self.x[t], self.z[t], self.r_src[t], self.z_base[t], self.x_base[t])


def _action_batch(rows: dict[str, torch.Tensor], idx: torch.Tensor) -> ActionBatch:
    return ActionBatch(**{k: v[idx] for k, v in rows.items()})


def _expression(module: JEPA, z_new: torch.Tensor, act: ActionBatch, x: torch.Tensor, r_src: torch.Tensor) -> torch.Tensor:
    """``module.expression_from`` with the readout of the source cells precomputed in ``r_src``."""
    return r_src + module.readout(z_new) + module.cis(act, x)


@torch.inference_mode()
def encode_cells(module: JEPA, x_std: np.ndarray, control_row: dict[str, np.ndarray], *, rows_per_pass: int = 1024) -> CellCache:
    """Encode cells once: context latents, the target-encoder readout and the unperturbed prediction."""
    module.eval()
    x = torch.from_numpy(np.ascontiguousarray(x_std, dtype=np.float32))
    ctrl = {k: torch.from_numpy(np.asarray(v)[None]) for k, v in control_row.items()}
    parts: list[tuple[torch.Tensor, ...]] = []
    for s in range(0, len(x), rows_per_pass):
        xb = x[s:s + rows_per_pass]
        act = _action_batch(ctrl, torch.zeros(len(xb), dtype=torch.long))
        z = module.encode(xb)  # [b, E, D]
        r_src = xb - module.readout(module.encode_target(xb)) if module.cfg.residual_readout else torch.zeros_like(xb)
        z_base = module.next(z, act)
        parts.append((z, r_src, z_base, _expression(module, z_base, act, xb, r_src)))
    z, r_src, z_base, x_base = (torch.cat(p) for p in zip(*parts))
    return CellCache(x, z, r_src, z_base, x_base)


@torch.inference_mode()
def inactive_latents(
    module: JEPA,
    x_std: np.ndarray,
    entities: list[int],
    inactive_fn: Callable[[np.ndarray, int], np.ndarray],
    *,
    z: torch.Tensor | None = None,
    rows_per_pass: int = 1024,
) -> dict[int, SilenceTerms]:
    """Each entity's do(off) terms per cell: ``{e: SilenceTerms}`` from f_theta on
    ``inactive_fn(x_std, e)`` (the cells with entity ``e`` driven to its inactive state) and the
    cells' own latents ``z`` (encoded here when not given).

    All entities go through the encoder in shared batches (entity-major rows), instead of one
    encoder call per entity.
    """
    module.eval()
    x_std = np.ascontiguousarray(x_std, dtype=np.float32)
    n = len(x_std)
    if z is None:
        z = torch.cat([module.encode(torch.from_numpy(x_std[r:r + rows_per_pass])) for r in range(0, n, rows_per_pass)])
    out: dict[int, SilenceTerms] = {}
    per_pass = max(1, rows_per_pass // max(n, 1))
    for s in range(0, len(entities), per_pass):
        group = entities[s:s + per_pass]
        xi = np.ascontiguousarray(np.concatenate([inactive_fn(x_std, e) for e in group]), dtype=np.float32)  # [len(group) * n, G]
        zi = torch.cat([module.encode(torch.from_numpy(xi[r:r + rows_per_pass]))
                        for r in range(0, len(xi), rows_per_pass)])  # [len(group) * n, E, D]
        x_t = torch.from_numpy(x_std)
        for j, e in enumerate(group):
            out[e] = silence_terms(module, z, zi[j * n:(j + 1) * n], e, x_t, torch.from_numpy(xi[j * n:(j + 1) * n]))
    return out


@torch.inference_mode()
def score_interventions(
    module: JEPA,
    x_std: np.ndarray | None,
    candidates: list[tuple[str, dict[str, np.ndarray], list[int]]],
    control_row: dict[str, np.ndarray],
    x_inactive_latents: Callable[[int], torch.Tensor],
    goal_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    slot_scale: np.ndarray,
    rows_per_pass: int = 512,
    *,
    cache: CellCache | None = None,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell goal scores ``[n_candidates, cells]`` and mean slot shifts ``[n_candidates, E]``.

    ``candidates``: (label, action-table row, entities to clamp to their inactive latent).
    ``x_inactive_latents(e) -> SilenceTerms``: entity ``e``'s do(off) terms per cell (asked once
    per clamped entity; a pair of silences adds both entities' measurement terms). ``goal_fn(x_pred, x_base) -> [cells]`` scores predicted vs baseline
    standardised expression. ``cache`` (from :func:`encode_cells`) replaces ``x_std``: the cells are
    then not encoded again. ``weights`` ``[cells]`` weight the mean slot shift (default: equal).

    Every (candidate, cell) pair is one predictor row; candidates with the same number of action
    components share passes of about ``rows_per_pass`` rows (no padding mask needed).
    """
    module.eval()
    if cache is None:
        if x_std is None:
            raise BioworldError("score_interventions needs the cells: pass x_std or a CellCache from encode_cells")
        cache = encode_cells(module, x_std, control_row)
    n, E = len(cache), module.cfg.n_entities
    C = len(candidates)
    scores = np.empty((C, n), np.float32)
    shifts = np.empty((C, E), np.float32)
    if C == 0:
        return scores, shifts
    keys = list(control_row)
    table = {k: torch.from_numpy(np.stack([np.asarray(row[k]) for _, row, _ in candidates])) for k in keys}  # [C, ...]
    clamp_mask = torch.zeros(C, E, dtype=torch.bool)
    for i, (_, _, ents) in enumerate(candidates):
        clamp_mask[i, list(ents)] = True
    inact = cache.z.clone()  # [n, E, D]; only clamped slots are read
    used = torch.nonzero(clamp_mask.any(0)).flatten().tolist()
    terms = [x_inactive_latents(e) for e in used]
    for e, t in zip(used, terms):
        inact[:, e] = t.slot
    if used:  # measurement terms of each clamped entity, summed per candidate (SilenceTerms)
        sel = clamp_mask[:, used].float()  # [C, U]
        DX = torch.stack([t.dx for t in terms])  # [U, n, G]
        DZ = torch.stack([t.dz for t in terms])  # [U, n, E, D]
        MOVE = torch.stack([t.move for t in terms])  # [U, n, G]
        PIN = torch.stack([t.pinned for t in terms]).float()  # [U, G]
    scale = torch.from_numpy(np.asarray(slot_scale, dtype=np.float32))
    w = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
    # group candidates by number of action components so a pass needs no padding mask
    n_comp = (table["kind"] > 0).sum(1).numpy()
    k = max(1, rows_per_pass // n)
    for c in np.unique(n_comp):
        members = np.flatnonzero(n_comp == c)
        for s in range(0, len(members), k):
            idx = members[s:s + k]
            m = len(idx)
            rows = torch.from_numpy(idx).repeat_interleave(n)  # [m*n] candidate of each row
            act = _action_batch(table, rows)
            slots = clamp_mask[rows]  # [m*n, E]
            clamp = (slots, inact.repeat(m, 1, 1)) if bool(slots.any()) else None
            z_new = module.next(cache.z.repeat(m, 1, 1), act, clamp=clamp)  # [m*n, E, D]
            x_new = _expression(module, z_new, act, cache.x.repeat(m, 1), cache.r_src.repeat(m, 1))
            if clamp is not None:
                w_sel = sel[torch.from_numpy(idx)]  # [m, U]
                x_new = x_new + torch.einsum("mu,ung->mng", w_sel, DX).reshape(m * n, -1)
                z_new = z_new + torch.einsum("mu,uned->mned", w_sel, DZ).reshape(m * n, E, -1)
                # the do() sets the silenced entities' genes (a gene in two silenced entities: both moves)
                move = torch.einsum("mu,ung->mng", w_sel, MOVE).reshape(m * n, -1)
                pinned = (w_sel @ PIN > 0).repeat_interleave(n, 0)  # [m*n, G]
                x_new = pin_members(x_new, cache.x_base.repeat(m, 1), move, pinned)
            scores[idx] = goal_fn(x_new, cache.x_base.repeat(m, 1)).reshape(m, n).numpy()
            shift = ((z_new - cache.z_base.repeat(m, 1, 1)).norm(dim=-1) / scale).reshape(m, n, E)
            shifts[idx] = (shift.mean(1) if w is None else torch.einsum("mne,n->me", shift, w)).numpy()
    return scores, shifts


def latent_prototypes(z: np.ndarray | torch.Tensor, k: int, *, seed: int, n_iter: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """``k`` prototype cells of a k-means partition of the cells' latents, and their weights.

    k-means (k-means++ start, seeded) on the flattened latents ``[n, E*D]``; each centre is
    represented by its nearest cell (a medoid, so every prototype is a real cell with exact
    predictions), and every cell is then assigned to its nearest prototype. Returns the
    prototypes' row indices (ascending) and their weights (share of cells assigned, sum 1).
    With ``k >= n`` every cell is its own prototype.
    """
    X = (z.numpy() if isinstance(z, torch.Tensor) else np.asarray(z)).reshape(len(z), -1).astype(np.float64)
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
    medoids: list[int] = []
    for j in range(k):  # nearest cell to each centre, each cell used once
        for i in np.argsort(d[:, j], kind="stable"):
            if int(i) not in medoids:
                medoids.append(int(i))
                break
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


def pair_candidates(singles: list[tuple[str, dict[str, np.ndarray], list[int]]]) -> list[tuple[str, tuple[int, int]]]:
    """Index pairs of entity-silencing singles (clamping both slots)."""
    ent = [i for i, (_, _, c) in enumerate(singles) if c]
    return [(f"{singles[a][0]}+{singles[b][0]}", (a, b)) for a, b in itertools.combinations(ent, 2)]
