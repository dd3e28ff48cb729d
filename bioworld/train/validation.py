"""Held-in validation for early stopping and the data-sized number of training steps.

Held-in validation transitions are cells of *training* perturbations kept out of the batches: the
model never sees them, so how well it predicts their mean change (from a fixed set of control
cells) measures what training has learned about the perturbations it is fitting, without touching
the held-out perturbations a benchmark scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bioworld.model.jepa import JEPA, ActionBatch


def auto_steps(n_train_cells: int, cells_per_batch: int, *, epochs: float, min_steps: int, cap: int,
               n_groups: int = 0, groups_per_batch: int = 1, group_visits: float = 0.0) -> int:
    """Optimiser steps sized to the data: ``epochs`` passes over the perturbed training cells, and at
    least ``group_visits`` draws of every training perturbation group, clamped to ``[min_steps, cap]``.

    Many cells per perturbation (Papalexi: 14k perturbed cells in 20 groups, 442 steps at 3 epochs of
    96 cells) are sized by the cells; many perturbations with few samples each (the L1000 plate: 341
    wells in ~300 compound-dose groups) by the groups: 3 epochs of wells gave 150 steps, about 4 draws
    per group, and 2 of 3 seeds failed the fit check (benchmarks/results/fit_seeds).
    """
    by_cells = math.ceil(epochs * max(n_train_cells, 1) / max(cells_per_batch, 1))
    by_groups = math.ceil(group_visits * max(n_groups, 0) / max(groups_per_batch, 1))
    return int(min(max(by_cells, by_groups, min_steps), cap))


def split_held_in(action_row: np.ndarray, rows: list[int], *, fraction: float, min_cells: int, seed: int) -> np.ndarray:
    """Boolean mask of validation cells: ``fraction`` of the cells (at least 2) of every
    perturbation row in ``rows`` with at least ``min_cells`` cells; rows with fewer keep all theirs."""
    rng = np.random.default_rng([seed, 1212])  # own stream: the batch sampler's draws do not change
    val = np.zeros(len(action_row), bool)
    for r in rows:
        cells = np.flatnonzero(action_row == r)
        if len(cells) < min_cells or fraction <= 0:
            continue
        k = max(2, int(round(fraction * len(cells))))
        val[rng.choice(cells, size=k, replace=False)] = True
    return val


@dataclass
class HeldInValidation:
    """Mean-change error on held-in cells: what :func:`bioworld.train.fit` early-stops on.

    ``x_src`` ``[n, G]`` control cells (standardised), ``actions`` one row per validation group,
    ``control`` the control action (one row), ``obs_delta`` ``[groups, G]`` observed mean of the
    group's held-in cells minus the control mean, ``weight`` ``[groups]`` (held-in cells).
    """

    x_src: torch.Tensor
    actions: ActionBatch
    control: ActionBatch
    obs_delta: torch.Tensor
    weight: torch.Tensor

    @torch.no_grad()
    def __call__(self, module: JEPA) -> float:
        """Cell-weighted mean over groups of the squared error of the predicted mean change (per gene)."""
        was_training = module.training
        module.eval()
        dev = next(module.parameters()).device  # training may run on a GPU: the held-in cells go where the module is
        x_src, actions, control = self.x_src.to(dev), self.actions.to(dev), self.control.to(dev)
        obs_delta, weight = self.obs_delta.to(dev), self.weight.to(dev)
        n, k = x_src.shape[0], obs_delta.shape[0]
        z = module.encode(x_src)
        z_ref = module.encode_target(x_src)
        ctrl = control.index(torch.zeros(n, dtype=torch.long, device=dev))
        base = module.expression_from(module.next(z, ctrl), ctrl, x_src, z_ref).mean(0)
        pred = torch.empty_like(obs_delta)
        per = max(1, 2048 // n)  # groups per forward pass
        for s in range(0, k, per):
            g = torch.arange(s, min(k, s + per), device=dev)
            idx = g.repeat_interleave(n)
            act = actions.index(idx)
            zz, xs, zr = z.repeat(len(g), 1, 1), x_src.repeat(len(g), 1), z_ref.repeat(len(g), 1, 1)
            x = module.expression_from(module.next(zz, act), act, xs, zr)
            pred[g] = x.view(len(g), n, -1).mean(1) - base
        err = ((pred - obs_delta) ** 2).mean(1)
        module.train(was_training)
        return float((err * weight).sum() / weight.sum())
