"""Gene-level membership features (used downstream as action features for genetic targets)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from bioworld.entities._entity import EntitySet, regulon_tf
from bioworld.errors import EntityError

#: Suffix of the feature that marks a gene as the TF of a regulon (``REGULON_STAT1:is_tf``).
TF_FEATURE_SUFFIX = ":is_tf"


def gene_membership_features(
    genes: Sequence[str] | Iterable[str],
    entity_sets: EntitySet | Sequence[EntitySet],
) -> tuple[np.ndarray, list[str]]:
    """Signed membership of each query gene in every entity of the given sets.

    Works for any gene, including genes outside the expression panel (a gene in no entity gets an
    all-zero row).

    Parameters
    ----------
    genes
        Query genes (HGNC symbols, case-sensitive), e.g. perturbation targets.
    entity_sets
        One `EntitySet` or several (e.g. ``[panel_map.entity_set, regulons, go]``); entity names
        must be unique across them.

    Returns
    -------
    features
        ``[n_genes, F]`` float32. Column ``f`` for entity ``e`` holds the gene's weight in ``e``
        divided by ``e``'s largest ``|weight|`` (gene sets: 1/0; regulons: +-1 mode of regulation;
        PROGENy: signed in [-1, 1]). Each regulon ``REGULON_<TF>`` adds a second column
        ``REGULON_<TF>:is_tf`` that is 1 for the TF itself.
    feature_names
        ``F`` names, in column order: entity names (and the ``:is_tf`` columns, each right after its
        regulon).
    """
    sets = [entity_sets] if isinstance(entity_sets, EntitySet) else list(entity_sets)
    for s in sets:
        if not isinstance(s, EntitySet):
            raise EntityError(
                f"Found a {type(s).__name__} in entity_sets; expected EntitySet objects. "
                "Fix: pass e.g. [panel_map.entity_set, EntitySet.from_regulons(...)]."
            )
    query = [str(g) for g in genes]
    row_of: dict[str, list[int]] = {}
    for i, g in enumerate(query):
        row_of.setdefault(g, []).append(i)

    columns: list[tuple[str, list[tuple[list[int], float]]]] = []  # (feature name, [(rows, value)])
    for s in sets:
        for e in s:
            scale = max(abs(w) for w in e.weights) or 1.0
            entries = [(row_of[g], w / scale) for g, w in zip(e.genes, e.weights) if g in row_of]
            columns.append((e.name, entries))
            tf = regulon_tf(e.name)
            if tf is not None:
                columns.append((e.name + TF_FEATURE_SUFFIX, [(row_of[tf], 1.0)] if tf in row_of else []))
    names = [c[0] for c in columns]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dups = sorted({n for n in names if n in seen or seen.add(n)})
        raise EntityError(
            f"Found entity names present in more than one set: {dups[:5]}; expected unique feature names. "
            "Fix: merge the sets with EntitySet.combine(..., on_clash='prefix') and pass the result."
        )
    features = np.zeros((len(query), len(columns)), dtype=np.float32)  # [n_genes, F]
    for j, (_, entries) in enumerate(columns):
        for rows, value in entries:
            features[rows, j] = value
    return features, names
