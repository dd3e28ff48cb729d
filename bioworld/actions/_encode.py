"""Which slots a genetic target touches (used by :class:`bioworld.actions.ActionSpace`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


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


def gene_touch_index(entities: Sequence[object]) -> dict[str, np.ndarray]:
    """Gene -> its ``[E]`` row of :func:`gene_touch_matrix` for every gene of any entity's full list
    (built once; a gene of no entity touches nothing)."""
    rows: dict[str, np.ndarray] = {}
    E = len(entities)
    for e, ent in enumerate(entities):
        w = np.abs(np.asarray(ent.weights, dtype=np.float32))
        wmax = float(w.max()) if len(w) else 1.0
        for g, wi in zip(ent.genes, w):
            row = rows.get(g)
            if row is None:
                row = rows[g] = np.zeros(E, np.float32)
            row[e] = wi / (wmax if wmax > 0 else 1.0)
    return rows
