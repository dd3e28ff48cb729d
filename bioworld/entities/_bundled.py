"""The gene sets shipped in the repository's ``data/`` folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from bioworld.entities._entity import EntitySet
from bioworld.errors import BioworldError

#: Bundled collection name -> (file under data/, source label).
BUNDLED = {
    "hallmark": ("genesets/msigdb_hallmark_h.all.v7.0.symbols.gmt", "hallmark"),
    "progeny": ("genesets/progeny_human_top500.tsv", "progeny"),
    "reactome": ("genesets/reactome_pathways_2021_hs.gmt", "reactome"),
    "go_bp": ("genesets/go_bp_propagated_orgHsEgDb_3.16_size10-500.gmt", "go_bp"),
    "dorothea": ("networks/dorothea_hs_regulons.tsv.gz", "dorothea"),
}

BundledName = Literal["hallmark", "progeny", "reactome", "go_bp", "dorothea"]


def load_bundled(name: BundledName, **kwargs) -> EntitySet:
    """Load a bundled collection (checksums verified by `bioworld.data.bundled_path`).

    Parameters
    ----------
    name
        ``"hallmark"`` (MSigDB Hallmark v7.0, 50 sets), ``"progeny"`` (PROGENy human top 500,
        14 pathways, signed weights), ``"reactome"`` (Reactome 2021), ``"go_bp"`` (GO biological
        process, 10-500 genes; entity names ``"GO:0000002 mitochondrial genome maintenance"``),
        ``"dorothea"`` (DoRothEA regulons ``REGULON_<TF>``; default confidence ``"ABC"``).
    **kwargs
        Passed on to the reader (e.g. ``top_n=100`` for PROGENy, ``confidence="AB"`` for DoRothEA).

    Returns
    -------
    EntitySet with ``source`` = ``name``.
    """
    from bioworld.data import bundled_path
    from bioworld.errors import EntityError

    if name not in BUNDLED:
        raise EntityError(
            f"Found bundled collection {name!r}; expected one of {sorted(BUNDLED)}. "
            "Fix: pick one of those, or read your own file with EntitySet.from_gmt(path)."
        )
    file, source = BUNDLED[name]
    path = bundled_path(file)
    if name == "progeny":
        return EntitySet.from_weight_table(path, source=source, **kwargs)
    if name == "dorothea":
        return EntitySet.from_regulons(path, source=source, **kwargs)
    return EntitySet.from_gmt(path, source=source, **kwargs)


def default_entities() -> EntitySet:
    """The default entities: bundled MSigDB Hallmark (50 sets) followed by PROGENy (14 pathways).

    Returns
    -------
    EntitySet of 64 entities (sources ``"hallmark"`` and ``"progeny"``).
    """
    return load_bundled("hallmark").combine(load_bundled("progeny"))


def resolve_entities(entities: Any) -> EntitySet:
    """An :class:`EntitySet` from what a user passes as ``entities``.

    ``None`` = :func:`default_entities` (bundled Hallmark + PROGENy); an ``EntitySet`` as is; a
    bundled collection's name (``"hallmark"``, ``"progeny"``, ... : :data:`BUNDLED`); a ``.gmt`` path
    or a ``.tsv`` / ``.txt`` / ``.csv`` (``.tsv.gz``) weight table (gene, pathway, weight); or a list
    of those, combined (clashing names prefixed).
    """
    if entities is None:
        return default_entities()
    if isinstance(entities, EntitySet):
        return entities
    given = entities
    if isinstance(entities, (str, os.PathLike)):
        entities = [entities]
    try:
        entities = list(entities)
    except TypeError:
        entities = []
    if not entities:
        raise BioworldError(
            f"entities={given!r} ({type(given).__name__}); expected None (bundled Hallmark + PROGENy), an "
            "EntitySet, a .gmt / .tsv path, or a non-empty list of them. Fix: pass one of those."
        )
    sets = []
    for item in entities:
        if isinstance(item, EntitySet):
            sets.append(item)
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise BioworldError(
                f"entities holds {item!r} ({type(item).__name__}); expected EntitySets or .gmt / .tsv paths. "
                "Fix: pass those."
            )
        p = Path(item)
        if isinstance(item, str) and item in BUNDLED and not p.exists():  # entities=["hallmark", "my_sets.gmt"]
            sets.append(load_bundled(item))
            continue
        kind = Path(p.name.lower().removesuffix(".gz")).suffix  # x.gmt.gz / x.tsv.gz are read decompressed
        if not kind and not p.exists():
            raise unknown_collection(str(item))
        if kind == ".gmt":
            sets.append(EntitySet.from_gmt(p))
        elif kind in (".tsv", ".txt", ".csv"):
            sets.append(EntitySet.from_weight_table(p))
        else:
            raise BioworldError(
                f"entities file {str(p)!r} has an unknown type; expected a .gmt gene-set file or a "
                ".tsv weight table with columns gene, pathway, weight (either may be gzip-compressed: .gmt.gz, .tsv.gz)"
            )
    out = sets[0]
    return out.combine(*sets[1:], on_clash="prefix") if len(sets) > 1 else out


def unknown_collection(name: str, arg: str = "entities") -> BioworldError:
    """The error for ``name`` given as argument ``arg`` (``entities`` or ``gene_sets``) that is neither a bundled
    collection nor a file: the collections, close matches and the fix."""
    from bioworld.errors import close_matches

    close = close_matches(name, sorted(BUNDLED))
    best = (close or ["hallmark"])[0]
    fix = f"entities={[best]!r} (CLI: --entities {best})" if arg == "entities" else f"{arg}={best!r}"
    return BioworldError(
        f"{arg} {name!r} is neither a bundled collection nor a file; expected one of "
        f"{', '.join(repr(b) for b in sorted(BUNDLED))}, or a .gmt / .tsv path"
        + (f"; close matches: {', '.join(repr(c) for c in close)}" if close else "") + f". Fix: {fix}")

