"""The model's slots: entities mapped onto a gene panel, plus NMF programs for the genes no entity covers."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from bioworld.entities._bundled import resolve_entities
from bioworld.entities._entity import EntitySet
from bioworld.entities._panel import PanelMap, case_mismatch_note, map_to_panel

__all__ = ["Slots", "build_slots", "quiet_map_to_panel"]


@dataclass(frozen=True)
class Slots:
    """The slot entities on a panel: ``membership[e, g]`` weights of slot ``e`` on panel gene ``g``."""

    entity_set: EntitySet
    names: list[str]
    membership: np.ndarray  # [E, G] float32
    findings: list[str] = field(default_factory=list)


def quiet_map_to_panel(entity_set: EntitySet, genes: Sequence[str], *, min_genes: int) -> PanelMap:
    """:func:`map_to_panel` without its per-entity warnings (the callers report the dropped ones once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return map_to_panel(entity_set, genes, min_genes=min_genes)


def build_slots(entities: Any, genes: Sequence[str], *, min_genes: int, nmf_programs: int,
                nmf_input: Callable[[list[int]], np.ndarray], seed: int) -> Slots:
    """Resolve ``entities`` (:func:`resolve_entities`), keep those with ``min_genes`` panel genes, and add
    ``nmf_programs`` NMF programs over the panel genes no entity covers when there are at least 3 per
    program. ``nmf_input(gene_indices)`` returns the normalised expression those programs are fitted on."""
    genes = list(genes)
    base = resolve_entities(entities)
    panel = quiet_map_to_panel(base, genes, min_genes=min_genes)
    findings: list[str] = []
    if panel.dropped:
        findings.append(
            f"{len(panel.dropped)} entities have < {min_genes} panel genes and are not slots: "
            + ", ".join(d.name for d in panel.dropped[:8]) + (" …" if len(panel.dropped) > 8 else "")
        )
    if panel.case_mismatches:
        findings.append(case_mismatch_note(panel.case_mismatches))
    if nmf_programs and len(panel.uncovered_genes) >= 3 * nmf_programs:
        idx = [genes.index(g) for g in panel.uncovered_genes]
        nmf = EntitySet.from_nmf(np.clip(nmf_input(idx), 0, None), panel.uncovered_genes,
                                 n_programs=nmf_programs, seed=seed)
        base = base.combine(nmf, on_clash="prefix")
        panel = quiet_map_to_panel(base, genes, min_genes=min_genes)
        findings.append(f"added {len(nmf)} NMF programs over {len(idx)} genes no entity covers")
    return Slots(panel.entity_set, list(panel.names), panel.membership.astype(np.float32), findings)
