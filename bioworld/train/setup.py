"""Training wiring for :class:`bioworld.WorldModel`: configs, the module, the sampler, data-sized steps.

:func:`train_state` trains a :class:`~bioworld.train.state.ModelState` on its
:class:`~bioworld.data._prepare.PreparedData`: it encodes the action table, sizes the run from the
data when ``max_steps=0`` (:func:`size_training`: the number of steps and a held-in validation
for early stopping), builds the sampler (in memory, or a block buffer over a backed file) and the
module, and runs :func:`bioworld.train.fit`. :func:`single_effects` are the observed single
effects combinations are anchored on.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from bioworld.errors import BioworldError
from bioworld.model import JEPA, JEPAConfig
from bioworld.train.config import TrainConfig
from bioworld.train.state import ModelState

__all__ = ["VALIDATION_SOURCE_CELLS", "resolve_train_config", "model_config_for", "new_module", "size_training",
           "data_key", "make_sampler", "train_state", "single_effects", "combination_prior", "anchor_effects"]

VALIDATION_SOURCE_CELLS = 32  # control cells the held-in validation predicts from (early stopping)


def resolve_train_config(config: Any) -> TrainConfig:
    """A :class:`TrainConfig` from ``None`` (defaults), a config, a dict of fields or a JSON path."""
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict({**TrainConfig().to_dict(), **config})
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.from_file(config)
    raise BioworldError(f"config must be a TrainConfig, dict or JSON path; got {type(config).__name__}")


def model_config_for(space: Any, *, n_genes: int, n_entities: int, overrides: Mapping[str, Any] | None) -> JEPAConfig:
    """The JEPA config: sizes from the data and the action space, the rest from ``overrides``."""
    sizes = dict(
        gene_bank_size=len(space.gene_bank), compound_bank_size=len(space.compound_bank),
        n_genes=n_genes, n_entities=n_entities,
        gene_feature_dim=space.genes.dim, compound_feature_dim=space.compound_dim,
        max_components=space.max_components,
    )
    tunable = set(JEPAConfig.__dataclass_fields__) - set(sizes)
    unknown = sorted(set(overrides or {}) - tunable)
    if unknown:
        raise BioworldError(
            f"unknown model_config field(s) {unknown}; expected a subset of {sorted(tunable)} "
            "(data-derived sizes are set automatically)"
        )
    return JEPAConfig(**{**sizes, **(overrides or {})})


def new_module(state: ModelState) -> JEPA:
    """A freshly initialised JEPA (seeded by the train config) for ``state``."""
    torch.manual_seed(state.train_config.seed)
    feats = state.space.bank_features()
    bank = None if feats is None else torch.from_numpy(feats)
    module = JEPA(state.model_config, torch.from_numpy(state.membership), gene_bank=bank)
    if state.registration.input == "counts":  # cis effects act multiplicatively on log1p counts
        module.set_scale(torch.from_numpy(state.mu), torch.from_numpy(state.sd))
    return module


def size_training(cfg: TrainConfig, X: Any, table: Any, action_row: np.ndarray, train_rows: list[int],
                  control_row: int) -> tuple[TrainConfig, Callable[[JEPA], Any] | None, np.ndarray]:
    """With ``max_steps=0``: the data-sized number of steps and the held-in validation.

    Returns the config ``fit`` runs with (``max_steps`` resolved; warmup at most a fifth of it),
    a ``module -> HeldInValidation`` factory or None, and the action rows the sampler draws from
    (held-in cells set to -1, so batches never contain them). An explicit ``max_steps`` trains
    exactly that many steps on every cell, without early stopping.
    """
    from bioworld.train.validation import HeldInValidation, auto_steps, split_held_in

    if cfg.max_steps > 0:
        return cfg, None, action_row
    in_memory = isinstance(X, np.ndarray)
    val = split_held_in(action_row, train_rows, fraction=cfg.val_fraction, min_cells=cfg.val_min_cells,
                        seed=cfg.seed) if in_memory else np.zeros(len(action_row), bool)
    n_train = int(np.isin(action_row, train_rows).sum() - val.sum())
    steps = auto_steps(n_train, cfg.groups_per_batch * cfg.cells_per_group, epochs=cfg.auto_epochs,
                       min_steps=cfg.min_steps, cap=cfg.step_cap, n_groups=len(train_rows),
                       groups_per_batch=cfg.groups_per_batch, group_visits=cfg.group_visits)
    cfg = replace(cfg, max_steps=steps, warmup_steps=min(cfg.warmup_steps, max(1, steps // 5)),
                  min_steps=min(steps, max(cfg.min_steps, math.ceil(cfg.early_stop_after * steps))))
    groups = [r for r in train_rows if val[action_row == r].any()]
    if not groups:
        return cfg, None, action_row
    ctrl = np.flatnonzero(action_row == control_row)
    rng = np.random.default_rng([cfg.seed, 1213])
    src = np.sort(rng.choice(ctrl, size=min(VALIDATION_SOURCE_CELLS, len(ctrl)), replace=False))
    mu_c = X[ctrl].mean(0)
    obs = np.stack([X[val & (action_row == r)].mean(0) - mu_c for r in groups]).astype(np.float32)
    weight = np.array([(val & (action_row == r)).sum() for r in groups], np.float32)

    def rows_of(ids: list[int]):
        return table.take(np.asarray(ids))

    def factory(module: JEPA):
        return HeldInValidation(torch.from_numpy(X[src]), rows_of(groups), rows_of([control_row]),
                                torch.from_numpy(obs), torch.from_numpy(weight))

    return cfg, factory, np.where(val, -1, action_row)


def data_key(state: ModelState, data: Any, action_row: np.ndarray) -> dict[str, Any]:
    """What a resumed training must share with the interrupted one (hashes, JSON-able)."""

    def digest(*arrays: Any) -> str:
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    key = {
        "genes": digest(np.asarray(state.genes, dtype=object).astype(str)),
        "entities": state.entity_set.hash(),
        "train_labels": digest(np.asarray(sorted(state.train_labels), dtype=str)),
        "statistics": digest(state.mu, state.sd, state.membership),
        "cells": digest(action_row, data.replicate),
    }
    if isinstance(data.X, np.ndarray):  # in memory: the data themselves (backed: their statistics above)
        key["data"] = digest(data.X)
    return key


def make_sampler(cfg: TrainConfig, data: Any, table: Any, action_row: np.ndarray, train_rows: list[int],
                 control_row: int, *, n_entities: int, n_genes: int) -> Any:
    """The transition sampler with the entity-mask collator (a block buffer for a backed file)."""
    from bioworld.data.collate import BlockBufferSampler, EntityMaskCollator, TransitionSampler

    collator = EntityMaskCollator(n_entities, n_genes, cfg.mask)
    sizes = dict(groups_per_batch=cfg.groups_per_batch, cells_per_group=cfg.cells_per_group,
                 self_pairs=cfg.self_pairs, clamp_prob=cfg.clamp_prob, small_group_share=cfg.small_group_share)
    if isinstance(data.X, np.ndarray):
        return TransitionSampler(data.X, action_row, control_row, data.replicate, table, train_rows, collator, **sizes)
    return BlockBufferSampler(  # out of core: block-buffer sampling over the on-disk matrix
        data.X, action_row, control_row, data.replicate, table, train_rows, collator,
        seed=cfg.seed, block_size=cfg.buffer.block_size, buffer_blocks=cfg.buffer.buffer_blocks,
        refresh_every=cfg.buffer.buffer_refresh, resident_controls=cfg.buffer.resident_controls, **sizes,
    )


def train_state(state: ModelState, data: Any, *, state_dir: str | os.PathLike | None, progress: bool) -> None:
    """Train a new module for ``state`` on ``data`` (sets ``state.module`` and ``state.train_result``)."""
    from bioworld.train._threads import pin_threads
    from bioworld.train import fit  # (looked up at call time: tests replace bioworld.train.fit)

    cfg = state.train_config
    pin_threads(cfg.resolved_threads())
    labels = list(state.space.actions)
    table = state.space.encode([state.space.actions[lab] for lab in labels])
    row_of = {lab: i for i, lab in enumerate(labels)}
    action_row = np.array([row_of.get(lab, -1) for lab in data.labels])
    train_rows = [row_of[lab] for lab in state.train_labels if lab != state.control]
    control_row = row_of[state.control]
    cfg, validate, action_row = size_training(cfg, data.X, table, action_row, train_rows, control_row)
    sampler = make_sampler(cfg, data, table, action_row, train_rows, control_row,
                           n_entities=len(state.entity_names), n_genes=len(state.genes))
    state.module = new_module(state)
    key = data_key(state, data, action_row) if state_dir is not None else None
    state.train_result = fit(state.module, sampler, cfg, state_dir=state_dir, progress=progress, data_key=key,
                             validate=None if validate is None else validate(state.module))


def single_effects(state: ModelState, data: Any) -> dict[Any, tuple[str, np.ndarray]]:
    """Observed mean effect (standardised, vs control) of every trained single perturbation with cells."""
    ctrl_mean = data.X[data.labels == state.control].mean(0)
    out = {}
    for lab in state.train_labels:
        a = state.space.actions[lab]
        if lab == state.control or len(a.components) != 1:
            continue
        cells = data.labels == lab
        if cells.any():
            out[a.components[0]] = (lab, (data.X[cells].mean(0) - ctrl_mean).astype(np.float32))
    return out


def combination_prior(state: ModelState, data: Any,
                      singles: dict[Any, tuple[str, np.ndarray]]) -> tuple[np.ndarray, int] | None:
    """The expected departure from additivity of an untrained combination: ``(prior [G], n)``.

    Over the ``n`` trained combinations whose components all have an observed single effect, the
    mean of (observed effect - sum of the single effects), shrunk toward additivity by ``n / (n + 1)``
    (one combination is weak evidence of a shared departure). None without such combinations. On
    the simulator's unseen doubles, the mean departure of the 8 trained doubles lowered the additive
    composition's top-20 MSE by ~10% (0.0109 -> 0.0097-0.0102 over 3 splits), where the learned
    interaction term raised it (0.0158; benchmarks/results/doubles/DOUBLES.md).
    """
    ctrl_mean = data.X[data.labels == state.control].mean(0)
    departures = []
    for lab in state.train_labels:
        a = state.space.actions[lab]
        if lab == state.control or len(a.components) < 2 or not all(c in singles for c in a.components):
            continue
        cells = data.labels == lab
        if cells.any():
            additive = np.sum([singles[c][1] for c in a.components], axis=0)
            departures.append(data.X[cells].mean(0) - ctrl_mean - additive)
    if not departures:
        return None
    n = len(departures)
    return (np.mean(departures, axis=0) * (n / (n + 1))).astype(np.float32), n


def anchor_effects(state: ModelState, data: Any) -> None:
    """Store what untrained combinations are anchored on: the observed single effects and the combination
    prior (``state.single_effects``, ``state.combination_prior``, ``meta['combination_prior_n']``)."""
    state.single_effects = single_effects(state, data)
    prior = combination_prior(state, data, state.single_effects)
    state.combination_prior = None if prior is None else prior[0]
    state.meta["combination_prior_n"] = 0 if prior is None else prior[1]
