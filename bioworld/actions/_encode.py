"""Turn parsed :class:`Action` objects into the model's tensorisable action table.

Component kinds are integers shared with :mod:`bioworld.model.jepa` (0 = padding).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bioworld.errors import UnknownPerturbationError

KIND_CODES = {"ko": 1, "kd": 2, "act": 3, "compound": 4, "silence": 5}


def gene_touch_matrix(genes: Sequence[str], entities: Sequence[object]) -> np.ndarray:
    """``[n_genes, E]``: |weight| of each gene in each entity's *full* gene list, scaled to max 1 per entity.

    Uses the entity definitions (not only the expression panel), so a target gene that is not
    measured still touches the pathways it belongs to.
    """
    out = np.zeros((len(genes), len(entities)), dtype=np.float32)
    pos = {g: i for i, g in enumerate(genes)}
    for e, ent in enumerate(entities):
        w = np.abs(np.asarray(ent.weights, dtype=np.float32))
        wmax = float(w.max()) if len(w) else 1.0
        for g, wi in zip(ent.genes, w):
            i = pos.get(g)
            if i is not None:
                out[i, e] = wi / (wmax if wmax > 0 else 1.0)
    return out


def encode_actions(
    actions: Sequence[object],
    *,
    entity_names: Sequence[str],
    gene_features: Callable[[list[str]], np.ndarray],
    gene_feature_dim: int,
    gene_touch: Callable[[list[str]], np.ndarray],
    compound_features: Callable[[str, float], np.ndarray] | None = None,
    compound_feature_dim: int = 0,
    max_components: int = 2,
    panel_genes: Sequence[str] = (),
    gene_bank: Sequence[str] = (),
):
    """Tensorise actions into :class:`bioworld.data.collate.ActionArrays` (one row per action).

    ``gene_features(genes) -> [n, F_g]``, ``gene_touch(genes) -> [n, E]``,
    ``compound_features(name, dose) -> [F_c + 1]`` (fingerprint then log-dose); ``panel_genes``
    gives each measured genetic target its column (for the direct cis effect); ``gene_bank`` lists
    the training genetic targets (the model's retrieval bank).
    """
    from bioworld.data.collate import ActionArrays

    n, A, E = len(actions), max_components, len(entity_names)
    kind = np.zeros((n, A), np.int64)
    strength = np.zeros((n, A), np.float32)
    gene_feat = np.zeros((n, A, gene_feature_dim), np.float32)
    cmp_feat = np.zeros((n, A, compound_feature_dim), np.float32)
    log_dose = np.zeros((n, A), np.float32)
    entity_idx = np.full((n, A), -1, np.int64)
    touch = np.zeros((n, A, E), np.float32)
    target_gene = np.full((n, A), -1, np.int64)
    bank_idx = np.full((n, A), -1, np.int64)
    bank_pos = {g: i for i, g in enumerate(gene_bank)}
    gene_pos = {g: i for i, g in enumerate(panel_genes)}
    ent_pos = {name: i for i, name in enumerate(entity_names)}
    for i, action in enumerate(actions):
        comps = action.components
        if len(comps) > A:
            raise UnknownPerturbationError(
                f"action {action.label!r} has {len(comps)} components; this model handles at most {A}. "
                f"Split it into combinations of up to {A} perturbations."
            )
        for j, p in enumerate(comps):
            kind[i, j] = KIND_CODES[p.kind]
            strength[i, j] = p.strength
            if p.kind in ("ko", "kd", "act"):
                gene_feat[i, j] = gene_features([p.target])[0]
                touch[i, j] = gene_touch([p.target])[0]
                target_gene[i, j] = gene_pos.get(p.target, -1)
                bank_idx[i, j] = bank_pos.get(p.target, -1)
            elif p.kind == "compound":
                if compound_features is None or compound_feature_dim == 0:
                    raise UnknownPerturbationError(
                        f"{p} is a compound, but this model was trained without compound features. "
                        "Train on data with compounds (and --smiles) to predict compounds."
                    )
                f = compound_features(p.target, float(p.dose))
                cmp_feat[i, j] = f[:-1]
                log_dose[i, j] = f[-1]
            elif p.kind == "silence":
                if p.target not in ent_pos:
                    raise UnknownPerturbationError(
                        f"cannot silence {p.target!r}: it is not one of the model's {E} entities"
                    )
                entity_idx[i, j] = ent_pos[p.target]
                touch[i, j, ent_pos[p.target]] = 1.0
    return ActionArrays(kind, strength, gene_feat, cmp_feat, log_dose, entity_idx, touch, target_gene, bank_idx)
