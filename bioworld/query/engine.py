"""The query engine: batched rollouts of a trained JEPA, the one path under predict, counterfactual
and prioritize.

Cells are encoded once (f_theta, :meth:`Engine.encode` -> :class:`CellCache`): their latents, the
readout of their target latents and their predicted unperturbed state. A batch of interventions
(:class:`Candidates`, built by :meth:`Engine.candidates`, the one place that decides what a label
means) is then answered by :meth:`Engine.run`: one predictor pass g_phi + readout per (candidate,
cell) row. Rows go through the module in blocks of about :data:`ROWS_PER_PASS` (candidates x cells),
blocks run on :attr:`Engine.workers` threads (``TrainConfig.query_threads()``, set by the facade), which
write their results in place, and under ``torch.inference_mode`` attention uses two batched matmuls instead of the fused training
kernel; answers equal one pass over all cells up to float rounding and do not depend on the thread
count (``tests/test_engine_blocks.py``).

What a label means
------------------
- a label the model was trained on (including a ``silence:`` label) is its learned action;
- an untrained single ``silence:ENTITY`` is a do-operation: the cells are moved along the entity's
  activity axis to its "off" level (:class:`~bioworld.query.ActivityAxes`) and the silenced genes are
  set to their move. The other genes follow either the entity's response head, when the model has one
  for it (:mod:`bioworld.query._response`: fitted after training on the observed effects of the training
  perturbations acting on the entity, chosen over the latent path where it validated better on them;
  each gene moves by its calibrated slope times the cell's move along the axis; the answer's latent
  shifts are how f_theta reads its cells against the unperturbed prediction), or the latent path: the
  slot is clamped to the moved cells' encoding under the control action, the predictor propagates the
  change to the other slots, and what the other slots read differently from the moved genes is added (:class:`~bioworld.query._counterfactual.SilenceTerms`);
- an untrained combination containing a silence is the learned action when the model learned any
  silence; otherwise a combination of silences only is the do-operation on all of them, and a
  silence combined with another perturbation is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from bioworld.actions import Action, ActionArrays
from bioworld.errors import UnknownPerturbationError
from bioworld.model.jepa import JEPA
from bioworld.query._counterfactual import ActivityAxes, SilenceTerms, pin_members, silence_terms

# Rows (candidates x cells) per module call, and cells encoded per call, up to 128 slots. The workers share
# the GIL between torch calls: 512-row blocks scaled best on 2 cores (64-2,048 measured; SPEED.md, section h)
ROWS_PER_PASS = 512
SLOT_ROWS_PER_PASS = ROWS_PER_PASS * 128  # above 128 slots, fewer rows per call: memory ~ rows x slots stays bounded


@dataclass
class CellCache:
    """Everything about a set of starting cells that does not depend on the intervention."""

    x: torch.Tensor  # [n, G] standardised expression
    z: torch.Tensor  # [n, E, D] context latents f_theta(x)
    r_ref: torch.Tensor | None  # [n, G] readout of the target latents (residual readout), else None
    z_base: torch.Tensor  # [n, E, D] latents under the control action
    x_base: torch.Tensor  # [n, G] predicted unperturbed expression
    # [n, E, D] f_theta(x_base): how the encoder reads the unperturbed prediction (answers with a silence
    # response head are read against it); filled by the engine when a query needs it, else None
    z_read: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, start: int, stop: int) -> "CellCache":
        """The cache of cells ``start:stop`` (views, nothing copied)."""
        return CellCache(self.x[start:stop], self.z[start:stop], None if self.r_ref is None else self.r_ref[start:stop],
                         self.z_base[start:stop], self.x_base[start:stop],
                         None if self.z_read is None else self.z_read[start:stop])

    def subset(self, idx: np.ndarray) -> "CellCache":
        """The cache of cells ``idx`` (rows are independent, so nothing is recomputed)."""
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.x.device)
        return CellCache(self.x[t], self.z[t], None if self.r_ref is None else self.r_ref[t], self.z_base[t], self.x_base[t],
                         None if self.z_read is None else self.z_read[t])


@dataclass(frozen=True)
class Candidates:
    """Interventions ready to run: their labels, action-table rows and the slots under do()."""

    labels: list[str]
    table: ActionArrays  # [C] rows (the control action for do-operations)
    clamp: np.ndarray  # [C, E] bool, entities silenced by a do-operation
    anchor: dict[int, np.ndarray] | None = None  # candidate -> summed observed single effects [G] (combinations)
    # anchored candidates whose anchor already holds their departure from additivity (untrained
    # combinations: + the combination prior), so the model's own interaction term is not added
    anchor_full: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.labels)

    def __add__(self, other: "Candidates") -> "Candidates":
        anchor = {**(self.anchor or {}), **{len(self) + i: v for i, v in (other.anchor or {}).items()}}
        full = self.anchor_full | {len(self) + i for i in other.anchor_full}
        return Candidates(self.labels + other.labels, ActionArrays.concat([self.table, other.table]),
                          np.concatenate([self.clamp, other.clamp]), anchor or None, frozenset(full))


@dataclass
class RunResult:
    """Answers of :meth:`Engine.run` (standardised scale). Per-cell arrays are candidate-major."""

    x_pred: np.ndarray | None  # [C, n, G] predicted expression (None when a goal was scored)
    scores: np.ndarray | None  # [C, n] goal scores (None without a goal)
    shift: np.ndarray  # [C, n, E] per-cell latent shift, or [C, E] its (weighted) mean with a goal


class Engine:
    """Batched world-model queries on one trained module (no optimiser state, no AnnData).

    Parameters
    ----------
    module
        The trained :class:`~bioworld.model.JEPA` (used in eval mode, under ``inference_mode``).
    space
        The model's :class:`~bioworld.actions.ActionSpace` (checks + encodes every label once).
    reference
        ``[cells, G]`` standardised reference control cells: they define the slot spread the shifts
        are measured in and the activity axes of the do-operation.
    membership
        ``[E, G]`` entity weights of the slots (the activity axes follow signed weights).
    trained
        The labels the model was trained on (their learned action answers them).
    inactive_quantile
        The "off" level of an entity: this quantile of the reference cells' activity.
    """

    def __init__(self, module: JEPA, space: Any, reference: np.ndarray, membership: np.ndarray,
                 trained: Iterable[str], *, inactive_quantile: float,
                 single_effects: dict[Any, np.ndarray] | None = None,
                 combination_prior: np.ndarray | None = None,
                 silence_heads: dict[int, np.ndarray] | None = None) -> None:
        self.module = module
        # entity slot -> calibrated response slope [G] of its untrained silence (bioworld.query._response)
        self.silence_heads = {int(e): np.asarray(v, dtype=np.float32) for e, v in (silence_heads or {}).items()}
        self._head_mask = np.zeros(len(space.entity_names), dtype=bool)
        self._head_mask[list(self.silence_heads)] = True
        self.single_effects = dict(single_effects or {})  # trained single component -> observed effect [G]
        # untrained combinations: their expected departure from additivity [G] (None: the learned interaction term)
        self.combination_prior = combination_prior
        self.space = space
        self.reference = reference
        self.membership = membership
        self.trained = {space.actions[lab].label if lab in space.actions else lab for lab in trained}
        self.learned_silence = any(p.kind == "silence" for lab in self.trained for p in space.parse(lab).components)
        self.inactive_quantile = inactive_quantile
        self._axes: ActivityAxes | None = None
        self._slot_scale: np.ndarray | None = None
        self._control = space.encode([space.parse("control")])
        self._held: int | None = None  # workers of the query in progress (torch is at 1 thread meanwhile)
        self.threads: int | None = None  # workers of a query on the CPU (None: torch's thread count)

    # ---------------------------------------------------------------- cached per model
    @property
    def rows_per_pass(self) -> int:
        """Rows (cells x candidates) per module pass: ``ROWS_PER_PASS`` up to 128 slots, fewer above (memory)."""
        return max(1, SLOT_ROWS_PER_PASS // max(128, self.module.cfg.n_entities))

    @property
    def device(self) -> torch.device:
        """Where the module is (``WorldModel.to``); inputs go there, answers come back as numpy on the CPU."""
        return next(self.module.parameters()).device

    def _take(self, table: ActionArrays, rows: np.ndarray) -> Any:
        """``table.take(rows)`` on the module's device."""
        batch = table.take(rows)
        dev = self.device
        if dev.type == "cpu":
            return batch
        return type(batch)(**{k: getattr(batch, k).to(dev) for k in batch.__dataclass_fields__})

    @property
    def axes(self) -> ActivityAxes:
        """Per-entity activity axes and "off" levels over the reference cells (see :class:`ActivityAxes`)."""
        if self._axes is None:
            self._axes = ActivityAxes.fit(self.reference, self.membership, quantile=self.inactive_quantile)
        return self._axes

    @property
    def slot_scale(self) -> np.ndarray:
        """Per-slot spread of the reference cells' latents ``[E]`` (shifts are in these units)."""
        if self._slot_scale is None:
            z = self.encode(self.reference).z.cpu().numpy()  # [n, E, D]
            self._slot_scale = np.sqrt(z.var(0).sum(-1)).clip(1e-6)
        return self._slot_scale

    # ---------------------------------------------------------------- labels -> candidates
    def candidates(self, actions: Sequence[Action], labels: Sequence[str] | None = None, *,
                   width: int | None = None) -> Candidates:
        """Route every action (see the module docstring) and encode the rows, checking each once.

        ``labels`` name the candidates (default: the actions' canonical labels); ``width``: allow actions
        of up to that many components (default the model's ``max_components``; the module composes
        combinations additively over any number, :meth:`bioworld.model.jepa.JEPA.next`)."""
        E = len(self.space.entity_names)
        rows: list[Action] = []
        clamp = np.zeros((len(actions), E), dtype=bool)
        control = self.space.parse("control")
        for i, a in enumerate(actions):
            ents = self._do_entities(a)
            if ents is None:
                rows.append(a)
                continue
            self.space.check(a)  # the row is the control action: check the silence itself
            rows.append(control)
            clamp[i, ents] = True
        anchor = {i: np.sum([self.single_effects[c] for c in a.components], axis=0)
                  for i, a in enumerate(actions)
                  if len(a.components) >= 2 and not clamp[i].any() and all(c in self.single_effects for c in a.components)}
        full = frozenset() if self.combination_prior is None else frozenset(
            i for i in anchor if actions[i].label not in self.trained)
        for i in full:
            anchor[i] = anchor[i] + self.combination_prior
        return Candidates([a.label for a in actions] if labels is None else list(labels), self.space.encode(rows, width=width), clamp,
                          anchor or None, full)

    def _do_entities(self, a: Action) -> list[int] | None:
        """The entities a do-operation silences for ``a``, or ``None`` when ``a`` is its learned action."""
        sil = [p for p in a.components if p.kind == "silence"]
        if not sil or a.label in self.trained or (self.learned_silence and len(a.components) > 1):
            return None
        if len(sil) < len(a.components):
            raise UnknownPerturbationError(
                f"{a.label!r}: this model never saw a silence: action in training, so silence: is a "
                "do-operation on slots and cannot be combined with other perturbations; query them separately"
            )
        pos = {n: i for i, n in enumerate(self.space.entity_names)}
        for p in sil:
            if p.target not in pos:
                self.space.check(a)  # raises with the close matches
        return [pos[p.target] for p in sil]

    # ---------------------------------------------------------------- blocks, in parallel
    @property
    def workers(self) -> int:
        """Threads that answer row blocks at once on the CPU: :attr:`threads` (default torch's thread count); 1 elsewhere."""
        if self._held is not None:
            return self._held
        return max(1, self.threads or torch.get_num_threads()) if self.device.type == "cpu" else 1

    @contextmanager
    def _one_torch_thread(self) -> Iterator[None]:
        """For a query with several workers: torch at one thread on this thread as well, for the whole
        query, so no multi-thread OpenMP region runs between the blocks (its idle threads spin-wait and
        cost CPU time, SPEED.md section h); the count is restored at the end."""
        if self._held is not None or self.workers <= 1:
            yield
            return
        self._held, before = self.workers, torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)
            self._held = None

    def _map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], consume: Callable[[Any, Any], None]) -> None:
        """``consume(job, fn(job))`` for every job, in order, on this thread. Row blocks are independent,
        so with :attr:`workers` > 1 ``fn`` runs on that many threads, each with one torch thread: every
        block is computed exactly as alone, and the answers do not depend on the number of workers."""
        with self._one_torch_thread():
            workers = min(self.workers, len(jobs))

            def call(job: Any) -> Any:
                if workers > 1:
                    torch.set_num_threads(1)  # OpenMP / MKL thread counts are per thread: one in each worker too
                with torch.inference_mode():  # thread-local: each worker enters it
                    return fn(job)

            if workers <= 1:
                for job in jobs:
                    consume(job, call(job))
                return
            with ThreadPoolExecutor(workers) as pool:
                for job, result in zip(jobs, pool.map(call, jobs)):
                    consume(job, result)

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        """``[fn(job) for job in jobs]`` on the query's workers (for work on answers that releases the GIL,
        e.g. numpy on whole arrays: it then runs on every core instead of after the rollouts on one)."""
        out: list[Any] = []
        self._map(fn, jobs, lambda _, r: out.append(r))
        return out

    # ---------------------------------------------------------------- cells
    def encode(self, x_std: np.ndarray) -> CellCache:
        """Encode cells once: latents, the readout of their target latents, the unperturbed prediction."""
        with self._one_torch_thread(), torch.inference_mode():
            return self._encode(x_std)

    def _encode(self, x_std: np.ndarray) -> CellCache:
        m = self.module
        m.eval()
        x = torch.from_numpy(np.ascontiguousarray(x_std, dtype=np.float32)).to(self.device)
        rows = self.rows_per_pass

        def block(s: int) -> tuple:
            xb = x[s:s + rows]
            ctrl = self._take(self._control, np.zeros(len(xb), dtype=np.int64))
            z = m.encode(xb)  # [b, E, D]
            r_ref = m.readout(m.encode_target(xb)) if m.cfg.residual_readout else None
            z_base = m.next(z, ctrl)
            return z, r_ref, z_base, m.expression_from(z_base, ctrl, xb, r_ref=r_ref)

        parts: list[tuple] = []
        self._map(block, range(0, max(len(x), 1), rows), lambda _, part: parts.append(part))
        z, r_ref, z_base, x_base = zip(*parts)
        return CellCache(x, torch.cat(z), None if r_ref[0] is None else torch.cat(r_ref), torch.cat(z_base), torch.cat(x_base))

    def silence_terms(self, cache: CellCache, entities: Iterable[int]) -> dict[int, SilenceTerms]:
        """Each entity's do(off) terms on the cells (:class:`SilenceTerms`): the moved cells are encoded
        once per (entity, cell), in blocks of :attr:`rows_per_pass` cells."""
        with self._one_torch_thread(), torch.inference_mode():
            return self._silence_terms(cache, entities)

    def _silence_terms(self, cache: CellCache, entities: Iterable[int]) -> dict[int, SilenceTerms]:
        x_np = cache.x.cpu().numpy()
        n, rows = len(x_np), self.rows_per_pass
        moved = {e: torch.from_numpy(self.axes.inactive(x_np, e)).to(self.device) for e in entities}
        # each entity's terms over all cells, written block by block by the workers (no concatenation
        # afterwards on this thread); an entity with a response head has no latent change (dz: zeros, not stored)
        out = {e: SilenceTerms(slot=cache.z.new_empty(cache.z[:, e].shape),
                               dz=cache.z.new_zeros(()).expand_as(cache.z) if e in self.silence_heads else torch.empty_like(cache.z),
                               dx=torch.empty_like(cache.x), move=torch.empty_like(cache.x),
                               pinned=torch.zeros(cache.x.shape[1], dtype=torch.bool, device=cache.x.device))
               for e in moved}
        jobs = [(e, s) for e in moved for s in range(0, n, rows)]

        def block(job: tuple[int, int]) -> torch.Tensor:
            e, s = job
            x_off, x, z = moved[e][s:s + rows], cache.x[s:s + rows], cache.z[s:s + rows]
            o = out[e]
            if e not in self.silence_heads:
                t = silence_terms(self.module, z, self.module.encode(x_off), e, x, x_off)
                o.dz[s:s + rows] = t.dz
            else:
                # the head answers the other genes: each moves by its slope x the cell's move along the axis. The
                # slot is never clamped and the answer's latents are read from its cells (_headed), so the moved
                # cells need no encoder pass
                move = x_off - x
                u = torch.from_numpy(self.axes.axis[e]).to(x_off.device)
                resp = (move @ u)[:, None] * torch.from_numpy(self.silence_heads[e]).to(x_off.device)[None]
                t = SilenceTerms(slot=z[:, e], dz=o.dz[s:s + rows], dx=resp, move=move, pinned=(move != 0).any(0))
            o.slot[s:s + rows], o.dx[s:s + rows], o.move[s:s + rows] = t.slot, t.dx, t.move
            return t.pinned

        def pin(job: tuple[int, int], pinned: torch.Tensor) -> None:
            out[job[0]].pinned.logical_or_(pinned)

        self._map(block, jobs, pin)
        return out

    # ---------------------------------------------------------------- rollouts
    def _blocks(self, n: int, members: np.ndarray, rows_per_pass: int) -> list[tuple[np.ndarray, int, int]]:
        """``(candidates, first cell, end cell)`` blocks of about ``rows_per_pass`` rows covering ``members`` x ``n`` cells."""
        per = max(1, rows_per_pass // max(n, 1))  # candidates per block (all cells when they fit)
        step = max(1, min(n, rows_per_pass))  # cells per block
        return [(members[s:s + per], c0, min(n, c0 + step)) for s in range(0, len(members), per) for c0 in range(0, n, step)]

    def run(self, cache: CellCache, cands: Candidates, *,
            goal: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            weights: np.ndarray | None = None, rows_per_pass: int | None = None) -> RunResult:
        """Answer every candidate on every cached cell.

        Without ``goal``: predicted expression ``[C, n, G]`` and per-cell latent shifts ``[C, n, E]``
        (units of slot spread). With ``goal(x_pred, x_base) -> [rows]``: its per-cell scores
        ``[C, n]`` and the mean shift ``[C, E]`` (weighted by ``weights`` ``[n]``, default equal).
        Candidates with the same number of action components share module calls of about
        ``rows_per_pass`` rows (default :attr:`rows_per_pass`; cells are split when there are more),
        so no padding mask is needed; blocks run on :attr:`workers` threads.
        """
        with self._one_torch_thread(), torch.inference_mode():
            return self._run(cache, cands, goal, weights, rows_per_pass)

    def _run(self, cache: CellCache, cands: Candidates, goal: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
             weights: np.ndarray | None, rows_per_pass: int | None) -> RunResult:
        rows_per_pass = rows_per_pass or self.rows_per_pass
        n, C = len(cache), len(cands)
        E = len(self.space.entity_names)
        terms = self.silence_terms(cache, np.flatnonzero(cands.clamp.any(0)).tolist())
        out = RunResult(
            x_pred=None if goal is not None else np.empty((C, n, cache.x.shape[1]), np.float32),
            scores=None if goal is None else np.empty((C, n), np.float32),
            shift=np.empty((C, n, E) if goal is None else (C, E), np.float32),
        )
        dev = self.device
        w = torch.full((n,), 1.0 / max(n, 1), device=dev) if weights is None else \
            torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(dev)
        scale = torch.from_numpy(np.asarray(self.slot_scale, dtype=np.float32)).to(dev)
        if (cands.clamp & self._head_mask).any():
            self._read_base(cache)
        n_comp = cands.table.n_components()
        offsets = self._anchor_offsets(cache, cands, terms, rows_per_pass)
        zero = torch.zeros(cache.x.shape[1], device=dev)
        x_out = None if out.x_pred is None else torch.from_numpy(out.x_pred)  # views of the answer's arrays
        shift_out = torch.from_numpy(out.shift)

        def block(job: tuple[np.ndarray, int, int]) -> tuple[np.ndarray, torch.Tensor] | None:
            idx, c0, c1 = job
            sub = cache.rows(c0, c1)
            x_new, z_new = self._pass(sub, cands, idx, _rows_of(terms, c0, c1))
            m, nb = len(idx), c1 - c0
            if offsets:
                x_new = x_new + torch.stack([offsets.get(int(i), zero) for i in idx]).repeat_interleave(nb, 0)
            shift = (z_new.reshape(m, nb, E, -1) - sub.z_base).norm(dim=-1) / scale  # [m, nb, E]
            if goal is None:  # written into the answer here, on the worker (the copies run outside the GIL)
                _put(x_out, idx, c0, c1, x_new.reshape(m, nb, -1))
                _put(shift_out, idx, c0, c1, shift)
                return None
            return goal(x_new, _rep(sub.x_base, m)).reshape(m, nb).cpu().numpy(), torch.einsum("mne,n->me", shift, w[c0:c1])

        # blocks of one route and component count: learned actions, do() with a clamped slot, do() by heads only
        key = n_comp * 3 + self._routes(cands)
        jobs = [j for k in np.unique(key) for j in self._blocks(n, np.flatnonzero(key == k), rows_per_pass)]
        mean_shift = None if goal is None else torch.zeros(C, E, device=dev)

        def store(job: tuple[np.ndarray, int, int], result: tuple | None) -> None:
            if result is None:  # already written by the block
                return
            (idx, c0, c1), (first, shift) = job, result
            out.scores[idx, c0:c1] = first
            mean_shift[torch.from_numpy(idx).to(dev)] += shift  # in block order: the same sums for any workers

        self._map(block, jobs, store)
        if mean_shift is not None:
            out.shift[:] = mean_shift.cpu().numpy()
        return out

    def _anchor_offsets(self, cache: CellCache, cands: Candidates, terms: dict, rows_per_pass: int) -> dict[int, torch.Tensor]:
        """Combinations built on the observed effects of their components: per anchored candidate, the
        shift ``[G]`` that makes its mean predicted change = the sum of its components' observed
        single effects + a departure from additivity. A trained combination keeps the learned
        interaction term (the model's mean change minus the same with the interaction term off, i.e.
        purely additive latent slots); an untrained one gets the combination prior (the shrunk mean
        departure of the trained combinations, ``anchor_full``) when the model has one, since the
        learned term did not carry to unseen doubles (benchmarks/results/doubles/DOUBLES.md). Without
        either the answer is the additive composition of the known effects."""
        if not cands.anchor:
            return {}
        n = len(cache)
        out: dict[int, torch.Tensor] = {}

        def block(job: tuple[np.ndarray, int, int]) -> torch.Tensor:
            part, c0, c1 = job
            sub = cache.rows(c0, c1)
            x_new, _ = self._pass(sub, cands, part, _rows_of(terms, c0, c1))
            return (x_new.reshape(len(part), c1 - c0, -1) - sub.x_base[None]).sum(1)  # [m, G]

        def offsets(idx: list[int], interaction: bool) -> None:
            before, self.module.use_interaction = self.module.use_interaction, interaction and self.module.use_interaction
            total = {int(i): torch.zeros(cache.x.shape[1], device=self.device) for i in idx}
            try:
                def add(job: tuple[np.ndarray, int, int], change: torch.Tensor) -> None:
                    for k, i in enumerate(job[0]):
                        total[int(i)] += change[k]

                self._map(block, self._blocks(n, np.asarray(idx, dtype=np.int64), rows_per_pass), add)
            finally:
                self.module.use_interaction = before
            for i in idx:
                out[int(i)] = torch.from_numpy(np.asarray(cands.anchor[int(i)], dtype=np.float32)).to(self.device) - total[int(i)] / n

        offsets([i for i in sorted(cands.anchor) if i not in cands.anchor_full], interaction=False)
        offsets(sorted(cands.anchor_full), interaction=True)  # the main pass's own mean is replaced whole
        return out

    def _routes(self, cands: Candidates) -> np.ndarray:
        """Per candidate ``[C]``: 0 its action (no do()), 1 a do() with a slot the predictor clamps, 2 a do()
        whose silenced entities all have a response head (no predictor pass: :meth:`_headed`)."""
        latent = (cands.clamp & ~self._head_mask).any(1)
        return np.where(~cands.clamp.any(1), 0, np.where(latent, 1, 2))

    def _read_base(self, cache: CellCache) -> None:
        """``cache.z_read`` = f_theta(x_base), once per cell (answers with a response head are read against it)."""
        if cache.z_read is not None or not len(cache):
            return
        rows, parts = self.rows_per_pass, []
        self._map(lambda s: self.module.encode(cache.x_base[s:s + rows]), range(0, len(cache), rows),
                  lambda _, z: parts.append(z))
        cache.z_read = torch.cat(parts)

    def _pass(self, cache: CellCache, cands: Candidates, idx: np.ndarray,
              terms: dict[int, SilenceTerms]) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted expression and latents ``[m*n, G]``, ``[m*n, E, D]`` of candidates ``idx`` on all cells."""
        m, n = len(idx), len(cache)
        rows = np.repeat(idx, n)  # [m*n] candidate of each row
        ents = [np.flatnonzero(cands.clamp[i]).tolist() for i in idx]
        latent = cands.clamp[rows] & ~self._head_mask  # [m*n, E] slots the predictor clamps (no response head)
        if all(ents) and not latent.any():
            return self._headed(cache, terms, ents)
        act = self._take(cands.table, rows)
        u = self.module.action_encoder(self._take(cands.table, idx)).repeat_interleave(n, 0)  # once per candidate
        clamp = inact = None
        if any(ents):
            inact = cache.z.clone()  # [n, E, D]; only the silenced slots are read
            for e in sorted({e for es in ents for e in es}):
                inact[:, e] = terms[e].slot
            inact = _rep(inact, m)
            if latent.any():
                clamp = (torch.from_numpy(latent).to(self.device), inact)
        z_new = self.module.next(_rep(cache.z, m), act, clamp=clamp, u=u)
        x_new = self.module.expression_from(z_new, act, _rep(cache.x, m), r_ref=None if cache.r_ref is None else _rep(cache.r_ref, m))
        if inact is None:
            return x_new, z_new
        # the do() of each candidate: the sum of its silenced entities' terms (none for learned actions)
        dx, dz, move, pinned = self._do_sums(cache, terms, ents, with_dz=True)
        # the do() sets the silenced entities' genes (a gene in two silenced entities: both moves)
        x_new = pin_members(x_new + dx, _rep(cache.x_base, m), move, pinned)
        z_new = z_new + dz
        headed = np.flatnonzero((cands.clamp[rows] & self._head_mask).any(1))
        if len(headed):  # an answer with a response head: its latents are how f_theta reads the answer's cells
            h = torch.from_numpy(headed).to(self.device)
            z_read = cache.z_read if cache.z_read is not None else self.module.encode(cache.x_base)
            z_new[h] = _rep(cache.z_base, m)[h] + self.module.encode(x_new[h]) - _rep(z_read, m)[h]
        return x_new, z_new

    def _headed(self, cache: CellCache, terms: dict[int, SilenceTerms], ents: list[list[int]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_pass` for candidates whose silenced entities all have a response head: nothing is clamped and
        the action is the control one, so the predictor's answer is the unperturbed prediction (``x_base``,
        ``z_base``); the heads and the do() move the genes, and the latents are how f_theta reads the answer's
        cells against ``x_base`` (``cache.z_read``)."""
        m = len(ents)
        dx, _, move, pinned = self._do_sums(cache, terms, ents, with_dz=False)
        x_base = _rep(cache.x_base, m)
        x_new = pin_members(x_base + dx, x_base, move, pinned)
        z_read = cache.z_read if cache.z_read is not None else self.module.encode(cache.x_base)
        return x_new, _rep(cache.z_base, m) + self.module.encode(x_new) - _rep(z_read, m)

    def _do_sums(self, cache: CellCache, terms: dict[int, SilenceTerms], ents: list[list[int]], *, with_dz: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Per row ``[m*n, ...]``: the sums of each candidate's silenced entities' ``dx``, ``dz`` (when
        ``with_dz``) and ``move``, and the genes any of them pins (none for learned actions)."""
        n = len(cache)
        no_x = torch.zeros_like(cache.x)
        dx = _cat([_sum([terms[e].dx for e in es], no_x) for es in ents])  # [m*n, G]
        dz = _cat([_sum([terms[e].dz for e in es], torch.zeros_like(cache.z)) for es in ents]) if with_dz else None
        move = _cat([_sum([terms[e].move for e in es], no_x) for es in ents])  # [m*n, G]
        no_pin = torch.zeros(cache.x.shape[1], dtype=torch.bool, device=cache.x.device)
        pinned = torch.stack([torch.stack([terms[e].pinned for e in es]).any(0) if es else no_pin for es in ents])
        return dx, dz, move, pinned.repeat_interleave(n, 0)


def _put(dst: torch.Tensor, idx: np.ndarray, c0: int, c1: int, value: torch.Tensor) -> None:
    """``dst[idx, c0:c1] = value`` (``dst`` on the CPU, ``value`` ``[len(idx), c1 - c0, ...]`` on any device)."""
    if len(idx) == 1:
        dst[int(idx[0]), c0:c1].copy_(value[0])
    elif int(idx[-1]) - int(idx[0]) == len(idx) - 1:  # consecutive candidates (the usual case): a slice
        dst[int(idx[0]):int(idx[-1]) + 1, c0:c1].copy_(value)
    else:
        dst[torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)), c0:c1] = value.to(dst.device)


def _rows_of(terms: dict[int, SilenceTerms], start: int, stop: int) -> dict[int, SilenceTerms]:
    """The do() terms of cells ``start:stop`` (views)."""
    return {e: SilenceTerms(t.slot[start:stop], t.dz[start:stop], t.dx[start:stop], t.move[start:stop], t.pinned)
            for e, t in terms.items()}


def _rep(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t`` ``[n, ...]`` repeated ``m`` times along rows (``t`` itself for one: nothing here writes into it)."""
    return t if m == 1 else t.repeat(m, *([1] * (t.dim() - 1)))


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)`` (the tensor itself for one: nothing here writes into it)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _sum(tensors: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """``t0 + t1 + ...`` in order (one term: that tensor itself); ``empty`` for no terms."""
    if not tensors:
        return empty
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


def goal_function(goal: Any, module: JEPA, entity_names: Sequence[str], center: np.ndarray
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-cell score of a parsed :class:`~bioworld.query.Goal` from predicted vs baseline expression.

    ``down:E`` / ``up:E``: minus / plus the change of entity E's score (its readout weights on the
    standardised genes); ``toward:control``: reduction of the distance to ``center`` (reference mean).
    """
    if goal.direction == "toward":
        c = torch.from_numpy(np.asarray(center, dtype=np.float32)).to(next(module.parameters()).device)

        def toward(x_new: torch.Tensor, x_base: torch.Tensor) -> torch.Tensor:
            return (x_base - c).norm(dim=1) - (x_new - c).norm(dim=1)

        return toward
    w = module.encoder.score_w[list(entity_names).index(goal.target)]
    sign = -1.0 if goal.direction == "down" else 1.0

    def shift(x_new: torch.Tensor, x_base: torch.Tensor) -> torch.Tensor:
        return sign * ((x_new - x_base) @ w)

    return shift

