"""Map an `EntitySet` onto an expression panel and score entities per cell."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioworld.entities._entity import Entity, EntitySet
from bioworld.errors import EntityError
from bioworld.errors import user_stacklevel


class EntityWarning(UserWarning):
    """Entities were dropped (or otherwise changed) while fitting them to a gene panel."""


class DroppedEntity(NamedTuple):
    """An entity left out by `map_to_panel`, and why."""

    name: str
    reason: str


@dataclass(frozen=True, eq=False)
class PanelMap:
    """An entity set fitted to a gene panel (the output of `map_to_panel`).

    Attributes
    ----------
    entity_set
        The kept entities only, in their original order (the model's slots ``E``).
    var_names
        The panel genes ``G`` (column order of ``membership`` and of ``X`` in `entity_scores`).
    membership
        ``[E, G]`` float32: the weight of gene ``g`` in entity ``e``, 0 = not a member. Each row is
        divided by its largest ``|weight|`` on the panel, so max ``|w|`` = 1 (gene sets: 1.0;
        regulons: +-1; PROGENy: signed, scaled).
    coverage
        One row per input entity: ``entity``, ``source``, ``n_genes_total``, ``n_genes_in_panel``,
        ``kept``, ``reason``.
    uncovered_genes
        Panel genes that belong to no kept entity (panel order).
    dropped
        `DroppedEntity` ``(name, reason)`` for each entity left out.
    min_genes
        The threshold used.
    case_mismatches
        ``(panel gene, entity gene)`` for uncovered panel genes that an entity names in another case
        (``'Stat1'`` vs ``'STAT1'``): matching is case-sensitive, so they are in no entity.
    """

    entity_set: EntitySet
    var_names: list[str]
    membership: np.ndarray
    coverage: pd.DataFrame
    uncovered_genes: list[str]
    dropped: list[DroppedEntity]
    min_genes: int
    case_mismatches: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Kept entity names (row order of ``membership``)."""
        return self.entity_set.names

    @property
    def n_entities(self) -> int:
        return self.membership.shape[0]

    @property
    def n_genes(self) -> int:
        return self.membership.shape[1]

    def summary(self) -> str:
        """A few lines for ``bioworld inspect``: counts per source, panel coverage, dropped entities."""
        cov = self.coverage
        G = len(self.var_names)
        covered = G - len(self.uncovered_genes)
        lines = [
            f"entities: {int(cov['kept'].sum())} kept of {len(cov)} (min_genes={self.min_genes}), "
            f"{len(self.dropped)} dropped",
            f"panel: {G} genes, {covered} in a kept entity ({100.0 * covered / max(G, 1):.1f}%), "
            f"{len(self.uncovered_genes)} uncovered",
        ]
        for source, g in cov.groupby("source", sort=False):
            kept = g[g["kept"]]
            med = int(kept["n_genes_in_panel"].median()) if len(kept) else 0
            lines.append(f"  {source}: {len(kept)}/{len(g)} kept, median {med} panel genes per kept entity")
        if len(cov):
            top = cov[cov["kept"]].sort_values("n_genes_in_panel", ascending=False, kind="stable").head(5)
            if len(top):
                lines.append(
                    "largest: " + ", ".join(f"{r.entity} ({r.n_genes_in_panel})" for r in top.itertuples())
                )
        if self.case_mismatches:
            lines.append(case_mismatch_note(self.case_mismatches))
        if self.dropped:
            shown = ", ".join(d.name for d in self.dropped[:8])
            more = f" (+{len(self.dropped) - 8} more)" if len(self.dropped) > 8 else ""
            lines.append(f"dropped: {shown}{more}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PanelMap({self.n_entities} entities x {self.n_genes} genes, {len(self.dropped)} dropped)"


def case_mismatch_note(pairs: list[tuple[str, str]]) -> str:
    """One line on uncovered panel genes that entities name in another case (``PanelMap.case_mismatches``)."""
    shown = ", ".join(f"{a!r} vs {b!r}" for a, b in pairs[:4])
    return (f"case: {len(pairs)} uncovered panel gene(s) match entity genes only ignoring case ({shown}"
            f"{', ...' if len(pairs) > 4 else ''}); matching is case-sensitive, so they are in no entity. Write the "
            "symbols as the gene sets do (HGNC: upper case), or give gene sets of the data's species")


def _case_mismatches(entity_set: EntitySet, uncovered: list[str]) -> list[tuple[str, str]]:
    """(panel gene, entity gene) for uncovered panel genes an entity names in another case."""
    upper: dict[str, str] = {}
    for g in entity_set.genes():
        upper.setdefault(g.upper(), g)
    return [(g, upper[g.upper()]) for g in uncovered if g.upper() in upper and upper[g.upper()] != g]


def _panel_names(var_names: Any) -> list[str]:
    names = [str(v) for v in list(var_names)]
    if not names:
        raise EntityError("Found an empty gene panel; expected var_names with at least one gene.")
    seen: set[str] = set()
    dups = []
    for n in names:
        if n in seen:
            dups.append(n)
        seen.add(n)
    if dups:
        raise EntityError(
            f"Found duplicated panel genes {sorted(set(dups))[:5]}; expected unique var_names. "
            "Fix: adata.var_names_make_unique() or aggregate duplicated genes."
        )
    return names


def _no_overlap_error(es: EntitySet, names: list[str], counts: list[int], min_genes: int) -> EntityError:
    set_genes = es.genes()
    overlap = set(names) & set(set_genes)
    upper_set = {g.upper(): g for g in set_genes}
    near = [(n, upper_set[n.upper()]) for n in names if n not in overlap and n.upper() in upper_set][:5]
    best = max(counts) if counts else 0
    msg = (
        f"Found no entity with >= {min_genes} genes in the panel: {len(overlap)} of {len(names)} panel genes "
        f"occur in any of the {len(es)} entities (best entity: {best} genes). "
        f"Panel ids look like {names[:3]}; entity genes look like {set_genes[:3]}. "
    )
    if near:
        msg += (
            "Case-insensitive matches exist (matching is case-sensitive on HGNC symbols): "
            + ", ".join(f"{a!r} vs {b!r}" for a, b in near)
            + ". "
        )
    if any(n.upper().startswith(("ENSG", "ENSMUSG")) for n in names[:50]):
        msg += "The panel uses Ensembl ids but gene sets use HGNC symbols. "
    msg += (
        "Fix: give HGNC symbols (a var column of symbols: gene_symbols_key=<column> (CLI: --gene-symbols-key "
        "COLUMN)) or map Ensembl ids to symbols, use gene sets of the data's species (a GMT file: "
        "entities=<file> (CLI: --entities FILE)), or (Python API) lower min_genes of map_to_panel."
    )
    return EntityError(msg)


def map_to_panel(entity_set: EntitySet, var_names: Sequence[str] | Any, *, min_genes: int = 3) -> PanelMap:
    """Fit entities to a gene panel: keep those with at least ``min_genes`` panel genes.

    Parameters
    ----------
    entity_set
        The candidate entities.
    var_names
        The panel genes (``adata.var_names``), HGNC symbols; matching is case-sensitive.
    min_genes
        Minimum number of an entity's genes that must be in the panel for it to be kept.

    Returns
    -------
    `PanelMap` (kept entities, ``membership`` ``[E, G]``, ``coverage`` table, uncovered genes,
    dropped entities).

    Warns
    -----
    EntityWarning
        Listing the dropped entities, when some are dropped.

    Raises
    ------
    EntityError
        When no entity keeps ``min_genes`` panel genes (the message shows example ids from both
        sides and case-insensitive near misses), or the panel has duplicated genes.
    """
    if not isinstance(entity_set, EntitySet):
        raise EntityError(
            f"Found a {type(entity_set).__name__}; expected an EntitySet. Fix: e.g. default_entities()."
        )
    if isinstance(min_genes, bool) or not isinstance(min_genes, (int, np.integer)) or min_genes < 1:
        raise EntityError(f"Found min_genes={min_genes!r}; expected a positive integer.")
    names = _panel_names(var_names)
    if len(entity_set) == 0:
        raise EntityError("Found an empty EntitySet; expected at least one entity. Fix: e.g. default_entities().")
    col = {g: j for j, g in enumerate(names)}

    rows: list[dict[str, Any]] = []
    kept: list[Entity] = []
    membership_rows: list[np.ndarray] = []
    dropped: list[DroppedEntity] = []
    counts: list[int] = []
    for e in entity_set:
        idx = [(col[g], w) for g, w in zip(e.genes, e.weights) if g in col]
        n_in = len(idx)
        counts.append(n_in)
        row = np.zeros(len(names), dtype=np.float64)
        for j, w in idx:
            row[j] = w
        max_abs = float(np.abs(row).max()) if n_in else 0.0
        if n_in < min_genes:
            reason = f"{n_in} of {len(e)} genes in panel (< min_genes={min_genes})"
        elif max_abs == 0.0:
            reason = f"all {n_in} panel genes have weight 0"
        else:
            reason = ""
        if reason:
            dropped.append(DroppedEntity(e.name, reason))
        else:
            kept.append(e)
            membership_rows.append(row / max_abs)
        rows.append(
            {
                "entity": e.name,
                "source": e.source,
                "n_genes_total": len(e),
                "n_genes_in_panel": n_in,
                "kept": not reason,
                "reason": reason or "kept",
            }
        )
    if not kept:
        raise _no_overlap_error(entity_set, names, counts, min_genes)

    membership = np.stack(membership_rows).astype(np.float32)  # [E, G]
    covered = (membership != 0).any(axis=0)
    uncovered = [g for g, c in zip(names, covered) if not c]
    coverage = pd.DataFrame(rows, columns=["entity", "source", "n_genes_total", "n_genes_in_panel", "kept", "reason"])
    if dropped:
        lost = coverage[~coverage["kept"]]
        shown = ", ".join(
            f"{r.entity} ({r.n_genes_in_panel}/{r.n_genes_total})" for r in lost.head(10).itertuples()
        )
        more = f", +{len(dropped) - 10} more" if len(dropped) > 10 else ""
        warnings.warn(
            f"Dropped {len(dropped)} of {len(entity_set)} entities with fewer than min_genes={min_genes} "
            f"genes in the panel (in panel/total): {shown}{more}; see PanelMap.coverage.",
            EntityWarning,
            stacklevel=user_stacklevel(),
        )
    return PanelMap(
        entity_set=entity_set.subset(e.name for e in kept),
        var_names=names,
        membership=membership,
        coverage=coverage,
        uncovered_genes=uncovered,
        dropped=dropped,
        min_genes=int(min_genes),
        case_mismatches=_case_mismatches(entity_set, uncovered),
    )


def entity_scores(
    X: Any,
    panel_map: PanelMap,
    *,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Per-cell entity activity: weighted mean of the member genes' z-scores.

    ``score[c, e] = sum_g M[e, g] * (X[c, g] - center[g]) / scale[g] / sum_g |M[e, g]|``
    with ``M = panel_map.membership``.

    Parameters
    ----------
    X
        ``[cells, G]`` log expression (dense or scipy sparse; sparse stays sparse), columns in
        ``panel_map.var_names`` order.
    panel_map
        From `map_to_panel`.
    center, scale
        ``[G]`` per-gene mean and standard deviation, e.g. of control cells or the training data;
        default: computed from ``X`` (population std). Genes with scale 0 (constant) get z = 0.

    Returns
    -------
    ``[cells, E]`` float32.
    """
    M = panel_map.membership.astype(np.float64)  # [E, G]
    G = M.shape[1]
    if sp.issparse(X):
        X = X.tocsr()
    else:
        X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != G:
        raise EntityError(
            f"Found X with shape {X.shape}; expected [cells, {G}] with columns in panel_map.var_names order. "
            "Fix: subset/reorder adata to panel_map.var_names before scoring."
        )
    if center is None or scale is None:
        if sp.issparse(X):
            mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
            sq = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).ravel()
            std = np.sqrt(np.maximum(sq - mean**2, 0.0))
        else:
            mean, std = X.mean(axis=0), X.std(axis=0)
        center = mean if center is None else center
        scale = std if scale is None else scale
    center = np.asarray(center, dtype=np.float64).ravel()
    scale = np.asarray(scale, dtype=np.float64).ravel()
    for arg, v in (("center", center), ("scale", scale)):
        if v.shape != (G,):
            raise EntityError(f"Found {arg} with shape {v.shape}; expected ({G},), one value per panel gene.")
        if not np.all(np.isfinite(v)):
            raise EntityError(f"Found non-finite values in {arg}; expected finite per-gene statistics.")
    if np.any(scale < 0):
        raise EntityError("Found negative values in scale; expected standard deviations >= 0.")
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)  # constant genes -> z = 0
    W = M / np.abs(M).sum(axis=1, keepdims=True)  # [E, G], rows sum |w| = 1
    Wz = (W * inv[None, :]).T  # [G, E]
    scores = X @ Wz - (center @ Wz)[None, :]  # [cells, E]
    return np.asarray(scores, dtype=np.float32)
