"""The planner's ``network_path`` evidence: how a candidate reaches the goal's readout in the regulation network.

For each gene knockout (and each compound, through its targets) the ranked table names the shortest directed path
from the gene into the goal entity's genes in the bundled regulation network (OmniPath signed directed edges plus
DoRothEA regulons A-C, :func:`bioworld.knowledge.network.regulation_network`), with ``→`` for an activating and
``⊣`` for a repressing edge, and ``path_effect``: what *removing* the gene (a knockout, a knockdown, an inhibitor)
does to the readout along that path — ``lowers`` when the path's signs times the readout gene's weight sign are
positive (removing an activator of a positively weighted readout gene), ``raises`` otherwise (an activation
reverses it). It is evidence for a reader, not part of the ranking: a shortest path is one route, not the net
effect (a gene may reach the readout along paths of both signs), and a gene with no directed path within
:data:`MAX_LEN` edges (for example a readout effector that regulates nothing) has none. Entity silences and
``toward:control`` goals have no path.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from bioworld.query._candidates import GENETIC, Readout

#: Longest path searched (edges).
MAX_LEN = 4
ARROWS = {1: "→", -1: "⊣"}


def readout_signs(space: Any, readout: Readout) -> dict[str, float]:
    """The goal entity's genes -> the sign of their readout weight: its full definition where the model keeps
    it (so a path may end in a readout gene off the panel), else its panel genes; {} without a goal entity."""
    goal = readout.goal_entity
    if goal is None:
        return {}
    for ent in getattr(space, "entities", None) or ():
        if getattr(ent, "name", None) == goal and len(getattr(ent, "genes", ())):
            weights = getattr(ent, "weights", None) or (1.0,) * len(ent.genes)
            return {str(g): float(np.sign(w)) for g, w in zip(ent.genes, weights) if w != 0}
    if readout.weights is None:
        return {}
    return {g: float(np.sign(w)) for g, w in zip(readout.panel, readout.weights) if w != 0}


def _text(path: list[str], signs: list[int]) -> str:
    return path[0] + "".join(f" {ARROWS[s]} {g}" for s, g in zip(signs, path[1:]))


def path_columns(actions: Sequence[Any], space: Any, readout: Readout, compound_targets: Callable[[str], list[str]],
                 as_compound: Sequence[bool] | None = None) -> tuple[list[str], list[str]]:
    """``network_path`` and ``path_effect`` of each action (:mod:`bioworld.query._paths`).

    A single gene: its own path; a compound: the shortest of its targets' paths (``via TARGET: ...``), and so an
    action marked in ``as_compound`` (a compound a genetic model scores as the loss of its targets: its genetic
    parts are the targets); a pair: its parts' paths joined by ``"; "``. ``compound_targets(name)``: the
    compound's known target genes."""
    from bioworld.knowledge.network import directed_paths

    signs = readout_signs(space, readout)
    n = len(actions)
    if not signs:
        return [""] * n, [""] * n
    targets = {p.target: compound_targets(p.target) for a in actions for p in a.components if p.kind == "compound"}
    genes = {p.target for a in actions for p in a.components if p.kind in GENETIC} | {g for t in targets.values() for g in t}
    paths = directed_paths(set(signs), max_len=MAX_LEN, sources=sorted(genes))

    def one(genes: list[str], kind: str, via: bool) -> tuple[str, str]:
        found = sorted(((g, paths[g]) for g in genes if g in paths), key=lambda x: (len(x[1][0]), x[0]))[:1]
        if not found:
            return "", ""
        gene, (path, sgn) = found[0]
        removal = -1.0 if kind == "act" else 1.0
        effect = "lowers" if removal * np.prod(sgn) * signs[path[-1]] > 0 else "raises"
        return (f"via {gene}: " if via else "") + _text(path, sgn), effect

    def part(p: Any) -> tuple[str, str]:
        if p.kind in GENETIC:
            return one([p.target], p.kind, False)
        return one(targets[p.target], "compound", True) if p.kind == "compound" else ("", "")

    texts, effects = [], []
    for i, a in enumerate(actions):
        if as_compound is not None and as_compound[i]:
            parts = [one([p.target for p in a.components if p.kind in GENETIC], "compound", True)]
        else:
            parts = [part(p) for p in a.components]
        kept = [x for x in parts if x[0]]
        texts.append("; ".join(t for t, _ in kept))
        effects.append("; ".join(e for _, e in kept))
    return texts, effects
