"""`Entity` and `EntitySet`: named, weighted gene groups that become the model's slots.

An entity is a pathway, a program or a regulon: a name, its member genes (HGNC symbols) and one
signed weight per gene (1.0 for plain gene sets). An `EntitySet` is an ordered collection of
entities with unique names; its order is the slot order of the model, so it is part of the hash.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Sequence

from bioworld.errors import EntityError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from anndata import AnnData

#: Version tag written by `EntitySet.to_dict`; `from_dict` refuses other formats.
ENTITY_SET_FORMAT = "bioworld.entities/1"

#: Name prefix of regulon entities built by `EntitySet.from_regulons` (``REGULON_<TF>``).
REGULON_PREFIX = "REGULON_"


@dataclass(frozen=True)
class Entity:
    """One entity: a named group of genes with one signed weight per gene.

    Parameters
    ----------
    name
        Unique name within an `EntitySet` (e.g. ``HALLMARK_INTERFERON_GAMMA_RESPONSE``,
        ``JAK-STAT``, ``REGULON_STAT1``, ``NMF_3``).
    genes
        Member genes (HGNC symbols), without duplicates.
    weights
        One finite weight per gene: 1.0 for gene sets, signed for PROGENy / regulons (mode of
        regulation), nonnegative loadings for NMF programs.
    source
        Where the entity comes from (``"hallmark"``, ``"progeny"``, ``"dorothea"``, ``"nmf"``, a file
        stem, ...).
    """

    name: str
    genes: tuple[str, ...]
    weights: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise EntityError(
                f"Found an entity name {self.name!r}; expected a non-empty string. "
                "Fix: give every entity a name."
            )
        genes = tuple(str(g) for g in self.genes)
        weights = tuple(float(w) for w in self.weights)
        if not genes:
            raise EntityError(
                f"Entity {self.name!r} has no genes; expected at least one. "
                "Fix: drop empty gene sets before building an EntitySet."
            )
        if len(genes) != len(weights):
            raise EntityError(
                f"Entity {self.name!r} has {len(genes)} genes but {len(weights)} weights; "
                "expected one weight per gene. Fix: pass weights of the same length (1.0 for gene sets)."
            )
        if len(set(genes)) != len(genes):
            dups = sorted({g for g in genes if genes.count(g) > 1})
            raise EntityError(
                f"Entity {self.name!r} lists genes more than once: {dups[:5]}; expected unique genes. "
                "Fix: deduplicate the genes (keep one weight per gene)."
            )
        bad = [g for g, w in zip(genes, weights) if not math.isfinite(w)]
        if bad:
            raise EntityError(
                f"Entity {self.name!r} has non-finite weights for {bad[:5]}; expected finite numbers. "
                "Fix: remove or correct those rows."
            )
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "source", str(self.source))

    def __len__(self) -> int:
        return len(self.genes)

    def weight_of(self, gene: str) -> float:
        """Weight of ``gene`` in this entity (0.0 when it is not a member)."""
        try:
            return self.weights[self.genes.index(gene)]
        except ValueError:
            return 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``name``, ``genes``, ``weights``, ``source``)."""
        return {"name": self.name, "genes": list(self.genes), "weights": list(self.weights), "source": self.source}


class EntitySet:
    """An ordered collection of entities with unique names.

    Build one from files with `from_gmt`, `from_weight_table`, `from_regulons`, learn programs with
    `from_nmf`, and merge sets with `combine`. The order of the entities is the slot order of the
    model; `hash` depends on it.

    Parameters
    ----------
    entities
        The entities; names must be unique.

    Examples
    --------
    >>> es = EntitySet([Entity("A", ("G1", "G2"), (1.0, 1.0), "toy")])
    >>> es.names, len(es), es.containing("G2")
    (['A'], 1, ['A'])
    """

    def __init__(self, entities: Iterable[Entity]) -> None:
        entities = tuple(entities)
        for e in entities:
            if not isinstance(e, Entity):
                raise EntityError(
                    f"Found a {type(e).__name__} among the entities; expected bioworld.entities.Entity. "
                    "Fix: wrap gene lists as Entity(name, genes, weights, source)."
                )
        seen: dict[str, int] = {}
        dups: list[str] = []
        for e in entities:
            if e.name in seen:
                dups.append(e.name)
            seen[e.name] = seen.get(e.name, 0) + 1
        if dups:
            raise EntityError(
                f"Found duplicated entity names {sorted(set(dups))[:5]}; expected unique names. "
                "Fix: rename them, or use EntitySet.combine(..., on_clash='prefix') when merging sets."
            )
        self._entities: tuple[Entity, ...] = entities
        self._index: dict[str, int] = {e.name: i for i, e in enumerate(entities)}
        self._gene_index: dict[str, list[str]] | None = None

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_gmt(
        cls,
        path: str | PathLike,
        *,
        name_column: Literal["auto", "first", "second", "both"] = "auto",
        source: str | None = None,
    ) -> "EntitySet":
        """Read a GMT file (one set per line: name, description/id, genes...; tab-separated).

        Parameters
        ----------
        path
            GMT file (``.gmt``; ``.gz`` is read transparently).
        name_column
            How entity names are formed from the first two columns:
            ``"first"`` - column 1 (MSigDB, Reactome ``name<TAB>R-HSA-id``);
            ``"second"`` - column 2;
            ``"both"`` - ``"<col1> <col2>"``, e.g. ``"GO:0000002 mitochondrial genome maintenance"``:
            readable and unique because the ontology id is;
            ``"auto"`` (default) - ``"both"`` when every column 1 is an ontology id
            (``PREFIX:digits``, as in GO files), else ``"first"``.
        source
            The entities' ``source``; default: the file name without extension.

        Returns
        -------
        EntitySet with weights 1.0. Duplicated genes within a line are kept once; empty fields are
        skipped.

        Raises
        ------
        EntityError
            Missing or empty file, a line with fewer than 3 fields, duplicated entity names.
        """
        from bioworld.entities._io import read_gmt

        return read_gmt(path, name_column=name_column, source=source)

    @classmethod
    def from_weight_table(
        cls,
        path: str | PathLike,
        *,
        top_n: int | None = None,
        gene_col: str = "gene",
        set_col: str = "pathway",
        weight_col: str = "weight",
        source: str | None = None,
    ) -> "EntitySet":
        """Read a long weight table (TSV/CSV: one row per gene x set, e.g. PROGENy).

        Parameters
        ----------
        path
            Tab-separated (``.tsv``, ``.txt``) or comma-separated (``.csv``) file, optionally gzipped.
        top_n
            Keep the ``top_n`` genes with the largest ``|weight|`` per set (ties: file order).
            ``None`` keeps all rows.
        gene_col, set_col, weight_col
            Column names of gene, set name and weight.
        source
            The entities' ``source``; default: the file name without extension.

        Returns
        -------
        EntitySet, one entity per distinct ``set_col`` value (in order of first appearance), genes
        in file order.

        Raises
        ------
        EntityError
            Missing/empty file, missing columns, non-numeric or non-finite weights, a gene listed
            twice in one set.
        """
        from bioworld.entities._io import read_weight_table

        return read_weight_table(
            path, top_n=top_n, gene_col=gene_col, set_col=set_col, weight_col=weight_col, source=source
        )

    @classmethod
    def from_regulons(
        cls,
        path: str | PathLike,
        *,
        confidence: str = "ABC",
        min_targets: int = 5,
        source: str = "dorothea",
    ) -> "EntitySet":
        """Read TF regulons (DoRothEA layout: columns ``tf``, ``confidence``, ``target``, ``mor``).

        Parameters
        ----------
        path
            TSV (optionally gzipped).
        confidence
            Confidence levels to keep, e.g. ``"ABC"`` (letters A-E).
        min_targets
            Drop regulons with fewer targets (after the confidence filter).
        source
            The entities' ``source``.

        Returns
        -------
        EntitySet with one entity ``REGULON_<TF>`` per TF (sorted by TF), genes = targets,
        weights = mode of regulation (``mor``, +1 activation / -1 repression).
        """
        from bioworld.entities._io import read_regulons

        return read_regulons(path, confidence=confidence, min_targets=min_targets, source=source)

    @classmethod
    def from_nmf(
        cls,
        X: "np.ndarray | AnnData | Any",
        var_names: Sequence[str] | None = None,
        *,
        n_programs: int = 10,
        seed: int = 0,
        top_genes: int = 30,
        exclude_genes: Iterable[str] | None = None,
        max_iter: int = 400,
    ) -> "EntitySet":
        """Learn expression programs with NMF (scikit-learn) on nonnegative log expression.

        Parameters
        ----------
        X
            ``[cells, G]`` nonnegative log-normalised expression (dense or scipy sparse), or an
            AnnData whose ``.X`` is that (then ``var_names`` defaults to ``adata.var_names``).
        var_names
            The ``G`` gene names of the columns of ``X``.
        n_programs
            Number of programs (NMF components).
        seed
            ``random_state`` of NMF; the same seed and data give the same programs.
        top_genes
            Keep the ``top_genes`` genes with the largest loading per program.
        exclude_genes
            Genes to leave out before fitting, typically ``other_set.genes()``: programs then
            describe the genes no gene set covers.
        max_iter
            Maximum NMF iterations.

        Returns
        -------
        EntitySet with entities ``NMF_1`` ... ``NMF_<n_programs>`` (source ``"nmf"``); weights are
        loadings scaled so each program's largest weight is 1.
        """
        from bioworld.entities._nmf import nmf_programs

        return nmf_programs(
            X,
            var_names,
            n_programs=n_programs,
            seed=seed,
            top_genes=top_genes,
            exclude_genes=exclude_genes,
            max_iter=max_iter,
        )

    # ------------------------------------------------------------------ merging / selection
    def combine(self, *others: "EntitySet", on_clash: Literal["error", "prefix"] = "error") -> "EntitySet":
        """Concatenate entity sets (``a.combine(b, c)`` or ``EntitySet.combine(a, b, c)``).

        Parameters
        ----------
        *others
            Further sets, appended in order.
        on_clash
            What to do when the same name occurs in more than one set: ``"error"`` (default) raises
            `EntityError`; ``"prefix"`` renames every clashing entity to ``"<source>/<name>"``
            (non-clashing names are left alone).

        Returns
        -------
        A new EntitySet.
        """
        sets = (self, *others)
        for s in sets:
            if not isinstance(s, EntitySet):
                raise EntityError(
                    f"Found a {type(s).__name__} in combine(); expected EntitySet objects. "
                    "Fix: build sets with EntitySet.from_gmt / from_weight_table / ... first."
                )
        counts: dict[str, int] = {}
        for s in sets:
            for name in s.names:
                counts[name] = counts.get(name, 0) + 1
        clashes = sorted(n for n, c in counts.items() if c > 1)
        if clashes and on_clash == "error":
            raise EntityError(
                f"Found entity names present in more than one set: {clashes[:5]}"
                f"{' ...' if len(clashes) > 5 else ''} ({len(clashes)} in total); expected unique names. "
                "Fix: EntitySet.combine(..., on_clash='prefix') renames them to '<source>/<name>'."
            )
        if on_clash not in ("error", "prefix"):
            raise EntityError(f"Found on_clash={on_clash!r}; expected 'error' or 'prefix'.")
        clash_set = set(clashes)
        out: list[Entity] = []
        for s in sets:
            for e in s:
                if e.name in clash_set:
                    e = Entity(f"{e.source}/{e.name}", e.genes, e.weights, e.source)
                out.append(e)
        return EntitySet(out)

    def subset(self, names: Iterable[str]) -> "EntitySet":
        """A new set with the entities ``names``, in the order given."""
        names = list(names)
        for n in names:
            self._lookup(n)
        return EntitySet(self._entities[self._index[n]] for n in names)

    # ------------------------------------------------------------------ container protocol
    @property
    def names(self) -> list[str]:
        """Entity names in slot order."""
        return [e.name for e in self._entities]

    @property
    def entities(self) -> tuple[Entity, ...]:
        """The entities in slot order."""
        return self._entities

    def __len__(self) -> int:
        return len(self._entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self._entities)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Entity:
        """The entity called ``name``; raises `EntityError` (with close matches) when unknown."""
        return self._lookup(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntitySet) and self._entities == other._entities

    def __hash__(self) -> int:
        return hash(self._entities)

    def __repr__(self) -> str:
        sources: dict[str, int] = {}
        for e in self._entities:
            sources[e.source] = sources.get(e.source, 0) + 1
        src = ", ".join(f"{k}: {v}" for k, v in sources.items())
        return f"EntitySet({len(self)} entities, {len(self.genes())} genes; {src})"

    def _lookup(self, name: str) -> Entity:
        try:
            return self._entities[self._index[name]]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self.names, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise EntityError(
                f"Found no entity named {name!r}; expected one of the {len(self)} entity names "
                f"(e.g. {self.names[:3]}).{hint} Fix: check the spelling or list them with EntitySet.names."
            ) from None

    # ------------------------------------------------------------------ genes
    def genes(self) -> list[str]:
        """Sorted union of all member genes."""
        return sorted({g for e in self._entities for g in e.genes})

    def containing(self, gene: str) -> list[str]:
        """Names of the entities (slot order) that have ``gene`` as a member (case-sensitive)."""
        if self._gene_index is None:
            index: dict[str, list[str]] = {}
            for e in self._entities:
                for g in e.genes:
                    index.setdefault(g, []).append(e.name)
            self._gene_index = index
        return list(self._gene_index.get(gene, []))

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``{"format": "bioworld.entities/1", "entities": [Entity.to_dict(), ...]}``."""
        return {"format": ENTITY_SET_FORMAT, "entities": [e.to_dict() for e in self._entities]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EntitySet":
        """Rebuild a set written by `to_dict` (e.g. from a checkpoint's ``bioworld.json``)."""
        if not isinstance(d, dict) or d.get("format") != ENTITY_SET_FORMAT or not isinstance(d.get("entities"), list):
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise EntityError(
                f"Found an entity-set record with format {found!r}; expected a dict with "
                f"format={ENTITY_SET_FORMAT!r} and an 'entities' list. "
                "Fix: pass the output of EntitySet.to_dict()."
            )
        out = []
        for i, rec in enumerate(d["entities"]):
            if not isinstance(rec, dict) or not {"name", "genes", "weights", "source"} <= set(rec):
                raise EntityError(
                    f"Entity record {i} is {rec!r:.80}; expected keys name, genes, weights, source. "
                    "Fix: pass the output of EntitySet.to_dict()."
                )
            out.append(Entity(rec["name"], tuple(rec["genes"]), tuple(rec["weights"]), rec["source"]))
        return cls(out)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace); the input of `hash`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def hash(self) -> str:
        """SHA-256 hex digest of `to_json` (changes with any name, gene, weight, source or order)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def combine(*sets: EntitySet, on_clash: Literal["error", "prefix"] = "error") -> EntitySet:
    """Concatenate entity sets; see `EntitySet.combine`."""
    if not sets:
        return EntitySet([])
    return sets[0].combine(*sets[1:], on_clash=on_clash)


def regulon_tf(name: str) -> str | None:
    """The TF of a regulon entity name ``REGULON_<TF>`` (or ``<source>/REGULON_<TF>``), else ``None``."""
    name = name.rsplit("/", 1)[-1]
    if name.startswith(REGULON_PREFIX) and len(name) > len(REGULON_PREFIX):
        return name[len(REGULON_PREFIX):]
    return None
