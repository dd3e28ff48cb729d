"""Transition sampling and entity-level masking (masking is data, as in I-JEPA's collators).

The sampler pairs control cells with perturbed cells of the same context (replicate / batch)
and the collator decides, per sample, which entity slots the context encoder may see and which
slots the latent loss scores. The model receives index/boolean tensors only.

Imports torch (to hand out tensors) but nothing from :mod:`bioworld.model`.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

MaskMode = Literal["entity", "gene", "none"]


class ActionTable(Protocol):
    """What the samplers need of an action table (:class:`bioworld.actions.ActionArrays`)."""

    touch: np.ndarray  # [n, A, E]

    def take(self, rows: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class MaskingConfig:
    """How slots (or genes, for the ablation) are hidden from the context encoder."""

    mode: MaskMode = "entity"  # "entity" (the method), "gene" (patch-style ablation), "none"
    self_ratio: tuple[float, float] = (0.15, 0.5)  # fraction of slots hidden in self (control) pairs
    transition_ratio: tuple[float, float] = (0.0, 0.25)  # fraction hidden in perturbation pairs
    structured_prob: float = 0.5  # P(hide every slot the action touches) in perturbation pairs


class EntityMaskCollator:
    """Samples context / target slot masks for a batch.

    Self pairs (control cell -> same cell, control action) hide a random subset of slots and score
    only the hidden ones: the pure masked-entity JEPA signal. Perturbation pairs hide, with
    probability ``structured_prob``, all slots the action touches (e.g. every entity containing the
    knocked-out gene) plus a few random ones, and score all slots of the perturbed cell.
    """

    def __init__(self, n_entities: int, n_genes: int, config: MaskingConfig) -> None:
        self.E, self.G, self.cfg = n_entities, n_genes, config

    def __call__(self, touch: np.ndarray, is_self: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``touch`` [B, E] summed action touch per sample; ``is_self`` [B] bool."""
        B, E = touch.shape
        ctx = np.ones((B, E), dtype=bool)
        tgt = np.ones((B, E), dtype=bool)
        gene_mask = np.zeros((B, self.G), dtype=bool)
        mode = self.cfg.mode
        if mode == "entity":
            lo_s, hi_s = self.cfg.self_ratio
            lo_t, hi_t = self.cfg.transition_ratio
            ratios = np.where(is_self, rng.uniform(lo_s, hi_s, B), rng.uniform(lo_t, hi_t, B))
            n_hide = np.floor(ratios * E).astype(int)
            n_hide = np.where(is_self, np.maximum(n_hide, 1), n_hide)
            scores = rng.random((B, E))
            order = np.argsort(scores, axis=1)
            for b in range(B):
                ctx[b, order[b, : n_hide[b]]] = False
            structured = (~is_self) & (rng.random(B) < self.cfg.structured_prob)
            ctx[structured] &= ~(touch[structured] > 0)
            # never hide everything: keep the least-touched slot visible
            empty = ~ctx.any(1)
            for b in np.flatnonzero(empty):
                ctx[b, int(np.argmin(touch[b] + scores[b] * 1e-3))] = True
            tgt = np.where(is_self[:, None], ~ctx, True)
        elif mode == "gene":
            lo_s, hi_s = self.cfg.self_ratio
            ratios = np.where(is_self, rng.uniform(lo_s, hi_s, B), rng.uniform(*self.cfg.transition_ratio, B))
            gene_mask = rng.random((B, self.G)) < ratios[:, None]
        elif mode != "none":
            raise ValueError(f"unknown masking mode {mode!r}; expected 'entity', 'gene' or 'none'")
        return {
            "context_mask": torch.from_numpy(ctx),
            "target_mask": torch.from_numpy(tgt),
            "gene_mask": torch.from_numpy(gene_mask),
        }


class TransitionSampler:
    """Draws batches of (control cell, perturbed cell, action) transitions plus self pairs.

    Parameters
    ----------
    X
        ``[cells, G]`` standardised expression (float32).
    action_row
        ``[cells]`` row of each cell's action in ``actions``.
    control_row
        The row of the control action.
    replicate
        ``[cells]`` integer context (batch/replicate) used to pair controls with perturbed cells.
    train_rows
        Action rows that may be sampled (held-out perturbations excluded).
    small_group_share
        A group with fewer cells than ``cells_per_group`` is drawn ``max(its cells, ceil(small_group_share x
        cells_per_group))`` times, not ``cells_per_group`` times: a plate's compound-dose group is one well, and
        12 copies of it in a batch cost twice the compute of 6 for no new target (1 = always ``cells_per_group``).
        The batch's self pairs shrink in the same proportion, so transitions keep their share of the losses.
    """

    def __init__(
        self,
        X: np.ndarray,
        action_row: np.ndarray,
        control_row: int,
        replicate: np.ndarray,
        actions: ActionTable,
        train_rows: list[int],
        collator: EntityMaskCollator,
        *,
        groups_per_batch: int = 8,
        cells_per_group: int = 16,
        self_pairs: int = 64,
        clamp_prob: float = 0.0,
        small_group_share: float = 1.0,
    ) -> None:
        self.X = X
        self.clamp_prob = float(clamp_prob)
        self.actions = actions
        self.collator = collator
        self.control_row = control_row
        self.k, self.m, self.n_self = groups_per_batch, cells_per_group, self_pairs
        self.m_small = min(self.m, max(1, math.ceil(float(small_group_share) * self.m)))
        self.cells_of = {int(r): np.flatnonzero(action_row == r) for r in set(train_rows) | {control_row}}
        self.train_rows = np.array(sorted(set(train_rows) | {control_row}))
        ctrl = self.cells_of[control_row]
        if len(ctrl) == 0:
            raise ValueError("no control cells to pair perturbed cells with")
        self.replicate = replicate
        self.ctrl_by_rep = {int(r): ctrl[replicate[ctrl] == r] for r in np.unique(replicate)}
        self.ctrl = ctrl

    def _pair_controls(self, tgt_cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(tgt_cells)
        for i, c in enumerate(tgt_cells):
            pool = self.ctrl_by_rep.get(int(self.replicate[c]))
            if pool is None or len(pool) == 0:
                pool = self.ctrl
            out[i] = pool[rng.integers(len(pool))]
        return out

    def sample(self, rng: np.random.Generator) -> dict[str, object]:
        """One global batch as a dict of tensors (fields of ``JEPABatch`` + action fields)."""
        k = min(self.k, len(self.train_rows))
        rows = rng.choice(self.train_rows, size=k, replace=False)
        tgt_cells, act_rows, group = [], [], []
        for gi, r in enumerate(rows):
            cells = self.cells_of[int(r)]
            m = self.m if len(cells) >= self.m else max(self.m_small, len(cells))
            tgt_cells.append(cells[rng.integers(len(cells), size=m)])
            act_rows.append(np.full(m, r))
            group.append(np.full(m, gi))
        tgt = np.concatenate(tgt_cells)
        src = self._pair_controls(tgt, rng)
        # self pairs keep their share of the batch when small groups were drawn fewer times
        n_self = self.n_self if len(tgt) == k * self.m else round(self.n_self * len(tgt) / (k * self.m))
        self_cells = self.ctrl[rng.integers(len(self.ctrl), size=n_self)]
        src = np.concatenate([src, self_cells])
        tgt = np.concatenate([tgt, self_cells])
        act_rows_a = np.concatenate(act_rows + [np.full(n_self, self.control_row)])
        group_a = np.concatenate(group + [np.full(n_self, -1)])
        is_self = group_a < 0
        touch = self.actions.touch[act_rows_a].sum(1)  # [B, E]
        masks = self.collator(touch, is_self, rng)
        out: dict[str, object] = {}
        if self.clamp_prob > 0:  # (no rng draw otherwise: clamp_prob=0 keeps earlier streams)
            # do()-transitions: the slots the action touches are given their perturbed-cell latents,
            # the action itself is withheld (control), and the other slots must follow
            clamped = (~is_self) & (touch > 0).any(1) & (rng.random(len(is_self)) < self.clamp_prob)
            act_rows_a = np.where(clamped, self.control_row, act_rows_a)
            out["clamp_mask"] = torch.from_numpy((touch > 0) & clamped[:, None])
        return {
            "x_src": torch.from_numpy(self.X[src]),
            "x_tgt": torch.from_numpy(self.X[tgt]),
            "action": self.actions.take(act_rows_a),
            "group": torch.from_numpy(group_a.astype(np.int64)),
            **masks,
            **out,
        }


class BlockBufferSampler:
    """Transitions drawn from a block buffer of an on-disk matrix (out-of-core training).

    The scDataset-style strategy (block shuffling with a fetch factor): every ``refresh_every``
    batches, ``buffer_blocks`` random contiguous blocks of ``block_size`` cells are read from
    ``source`` (sequential reads) and pooled with a resident, seeded subsample of at most
    ``resident_controls`` control cells; batches are then drawn from that pool by an ordinary
    :class:`TransitionSampler` (same pairing within replicate, same masking). Memory is bounded by
    ``(buffer_blocks * block_size + resident_controls) x genes`` floats whatever the number of
    cells in the file.

    Each epoch is a seeded permutation of the blocks dealt into consecutive buffers, so every block
    is read exactly once per epoch (:attr:`steps_per_epoch` batches). The buffer used for batch
    ``t`` depends only on ``(seed, t // refresh_every)``, so a resumed run (:meth:`set_step`) and
    every rank of a data-parallel run see the same buffers.

    Parameters
    ----------
    source
        Row source: ``source[rows]`` returns standardised ``float32 [len(rows), G]`` (e.g.
        :class:`bioworld.data._backed.BackedExpression`).
    action_row, control_row, replicate, actions, train_rows, collator, groups_per_batch,
    cells_per_group, self_pairs, small_group_share
        As for :class:`TransitionSampler`, over all cells of ``source``.
    """

    def __init__(
        self,
        source,
        action_row: np.ndarray,
        control_row: int,
        replicate: np.ndarray,
        actions: ActionTable,
        train_rows: list[int],
        collator: EntityMaskCollator,
        *,
        seed: int = 0,
        block_size: int = 256,
        buffer_blocks: int = 64,
        refresh_every: int = 50,
        resident_controls: int = 20000,
        groups_per_batch: int = 8,
        cells_per_group: int = 16,
        self_pairs: int = 64,
        clamp_prob: float = 0.0,
        small_group_share: float = 1.0,
    ) -> None:
        if min(block_size, buffer_blocks, refresh_every, resident_controls) < 1:
            raise ValueError("block_size, buffer_blocks, refresh_every and resident_controls must be >= 1")
        self.source = source
        self.action_row = np.asarray(action_row)
        self.replicate = np.asarray(replicate)
        self.control_row = control_row
        self.actions, self.collator = actions, collator
        self.train_rows = sorted(set(train_rows))
        self.seed = int(seed)
        self.block_size, self.buffer_blocks, self.refresh_every = block_size, buffer_blocks, refresh_every
        self.kw = dict(groups_per_batch=groups_per_batch, cells_per_group=cells_per_group, self_pairs=self_pairs,
                       clamp_prob=clamp_prob, small_group_share=small_group_share)
        ctrl = np.flatnonzero(self.action_row == control_row)
        if len(ctrl) == 0:
            raise ValueError("no control cells to pair perturbed cells with")
        rng = np.random.default_rng([self.seed, 0x5EED])
        self.ctrl_cells = np.sort(rng.choice(ctrl, size=min(resident_controls, len(ctrl)), replace=False))
        self.ctrl_X = source[self.ctrl_cells]
        usable = np.isin(self.action_row, np.array(self.train_rows + [control_row]))
        n = len(self.action_row)
        starts = np.arange(0, n, block_size)
        # only blocks holding at least one training cell are worth reading
        per_block = np.add.reduceat(usable.astype(np.int64), starts)
        self.block_starts = starts[per_block > 0]
        self._step = 0
        self._buffer_id: int | None = None
        self._local: TransitionSampler | None = None
        self.buffer_cells = np.zeros(0, dtype=np.int64)

    def set_step(self, step: int) -> None:
        """Continue as if ``step`` batches had been drawn (resume)."""
        self._step = int(step)

    @property
    def buffers_per_epoch(self) -> int:
        """Buffers needed to read every (useful) block once."""
        return max(1, -(-len(self.block_starts) // self.buffer_blocks))

    @property
    def steps_per_epoch(self) -> int:
        """Batches per pass over the file: every block is in exactly one buffer of each epoch."""
        return self.buffers_per_epoch * self.refresh_every

    def _refresh(self, buffer_id: int) -> None:
        epoch, j = divmod(buffer_id, self.buffers_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.block_starts)
        starts = np.sort(order[j * self.buffer_blocks:(j + 1) * self.buffer_blocks])
        k = len(starts)
        n = len(self.action_row)
        cells = np.concatenate([np.arange(s, min(n, s + self.block_size)) for s in starts]) if k else \
            np.zeros(0, np.int64)
        cells = cells[~np.isin(cells, self.ctrl_cells)]
        self.buffer_cells = cells
        X = np.concatenate([self.ctrl_X, self.source[cells]]) if len(cells) else self.ctrl_X
        all_cells = np.concatenate([self.ctrl_cells, cells])
        rows = self.action_row[all_cells]
        present = sorted(set(np.unique(rows).tolist()) & set(self.train_rows))
        self._local = TransitionSampler(X, rows, self.control_row, self.replicate[all_cells], self.actions,
                                        present, self.collator, **self.kw)
        self._buffer_id = buffer_id

    def sample(self, rng: np.random.Generator) -> dict[str, object]:
        """One global batch (see :meth:`TransitionSampler.sample`) from the current buffer."""
        bid = self._step // self.refresh_every
        if bid != self._buffer_id:
            self._refresh(bid)
        self._step += 1
        assert self._local is not None
        return self._local.sample(rng)
