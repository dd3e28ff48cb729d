"""``ActionSpace``: what a model knows about actions, and the one place they are checked and encoded.

The space holds the action vocabulary of a dataset (label -> :class:`Action`), the slots actions
can touch, the genetic targets of the retrieval bank and two pluggable feature sources:

- a **gene feature source** (:class:`GeneFeatureTable`): ``knows(gene)``, ``features(genes) ->
  [n, F_g]`` and a stored table (``state()``) that goes into the checkpoint, so an unseen gene has
  a representation whenever the source knows it;
- a **compound feature source** (:class:`CompoundFeatures`): ``knows(name)``, ``features(names) ->
  [n, F_c]`` (Morgan fingerprints) and its stored SMILES.

Another source (e.g. knowledge-graph embeddings) plugs in by implementing the same three methods;
a target no source knows is refused with the close matches, never encoded as zeros.
:meth:`ActionSpace.encode` checks every action once and builds the :class:`ActionArrays` table.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from bioworld.actions._contract import GENETIC_KINDS, ActionArrays, Kind
from bioworld.actions._parse import Action, parse_action
from bioworld.errors import close_matches
from bioworld.errors import DataValidationError, UnknownPerturbationError

#: Gene-feature sources for genetic targets (knowledge that lets unseen targets be predicted).
FEATURE_SOURCES = ("hallmark", "progeny", "dorothea", "go_bp")
GENE_FEATURE_DIM = 64
COMPOUND_BITS = 1024  # Morgan fingerprint bits
DOSE_EPS = 1e-3  # log-dose = log10(dose + DOSE_EPS)
_GENE_TABLE_CACHE: dict[str, "GeneFeatureTable"] = {}


class FeatureSource(Protocol):
    """What the action space asks of a gene or compound feature source."""

    dim: int

    def knows(self, name: str) -> bool: ...

    def features(self, names: Sequence[str]) -> np.ndarray: ...


class GeneFeatureTable:
    """Frozen gene features (entity / regulon / GO membership reduced by SVD), one row per known gene.

    Built once from bundled knowledge plus the model's own entities
    (:class:`bioworld.actions.GeneFeaturizer`) and stored in the checkpoint as a tensor.
    """

    def __init__(self, genes: Sequence[str], table: np.ndarray) -> None:
        self.genes = list(genes)
        self.table = np.asarray(table).astype(np.float32)
        self.pos = {g: i for i, g in enumerate(self.genes)}
        self.dim = int(self.table.shape[1]) if self.table.ndim == 2 else GENE_FEATURE_DIM

    @classmethod
    def from_entities(cls, entity_set: Any, *, dim: int = GENE_FEATURE_DIM, seed: int = 0) -> "GeneFeatureTable":
        """The table for a model whose slots are ``entity_set`` (cached per entity-set hash)."""
        from bioworld.actions._features import GeneFeaturizer
        from bioworld.entities import load_bundled

        key = entity_set.hash()
        if key not in _GENE_TABLE_CACHE:  # deterministic in the entity set: build once per process
            sets = [entity_set] + [load_bundled(name) for name in FEATURE_SOURCES]
            feat = GeneFeaturizer(sets[0], extra_sets=sets[1:], dim=dim, seed=seed)
            genes = list(feat.genes)
            _GENE_TABLE_CACHE.clear()
            _GENE_TABLE_CACHE[key] = cls(genes, feat.features(genes))
        return _GENE_TABLE_CACHE[key]

    def knows(self, gene: str) -> bool:
        return gene in self.pos

    def features(self, genes: Sequence[str]) -> np.ndarray:
        """``[len(genes), dim]`` float32 rows of the table (every gene must be known)."""
        return np.stack([self.table[self.pos[g]] for g in genes])

    __call__ = features

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(tensors, JSON fields) stored in the checkpoint."""
        return {"gene_features": self.table}, {"gene_feature_genes": self.genes}


class CompoundFeatures:
    """Morgan fingerprints of compounds with SMILES; compounds seen in training without one are known
    with an all-zero fingerprint (recorded in the model's findings), any other compound is unknown."""

    dim = COMPOUND_BITS

    def __init__(self, smiles: Mapping[str, str], seen_without_smiles: Iterable[str] = ()) -> None:
        from bioworld.actions._features import CompoundFeaturizer

        self.smiles = dict(smiles)
        self.without_smiles = set(seen_without_smiles) - set(self.smiles)
        self._fp = CompoundFeaturizer(self.smiles, n_bits=COMPOUND_BITS)

    def validate(self) -> None:
        """Parse every SMILES now (malformed structures are refused before anything is fitted)."""
        self._fp.validate()

    def knows(self, name: str) -> bool:
        return name in self.smiles or name in self.without_smiles

    def features(self, names: Sequence[str]) -> np.ndarray:
        """``[len(names), dim]`` float32 fingerprints."""
        out = np.zeros((len(names), self.dim), np.float32)
        for i, n in enumerate(names):
            if n in self.smiles:
                out[i] = self._fp.fingerprint(n)
        return out

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"smiles": dict(self.smiles)}


class ActionSpace:
    """The actions of one model: vocabulary, slots, bank, feature sources; check + encode.

    Parameters
    ----------
    control
        The control label of the data (``"control"`` is accepted too).
    actions
        Label -> parsed :class:`Action` of every label in the data (control first).
    entity_set, entity_names
        The slots (their full gene lists decide which slots a genetic target touches).
    panel_genes
        The measured genes (a measured genetic target also gets its own column: the cis effect).
    gene_bank
        The training genetic targets (the model's retrieval bank), in bank order.
    compound_bank
        The training compound-dose components (canonical ``NAME@DOSE``), in order: each has its own
        action embedding in the model (learned from its observed effect, next to its structure features).
    genes, compounds
        Gene and compound feature sources (``compounds=None``: no compound features).
    max_components
        Components per action row ``A``.
    """

    def __init__(self, *, control: str, actions: Mapping[str, Action], entity_set: Any, entity_names: Sequence[str],
                 panel_genes: Sequence[str], gene_bank: Sequence[str], genes: GeneFeatureTable,
                 compounds: CompoundFeatures | None, max_components: int, compound_bank: Sequence[str] = ()) -> None:
        self.control = control
        self.actions = dict(actions)
        self.entities = list(entity_set)
        self.entity_names = list(entity_names)
        self.panel_genes = list(panel_genes)
        self.gene_bank = list(gene_bank)
        self.genes = genes
        self.compounds = compounds
        self.max_components = int(max_components)
        self._ent_pos = {name: i for i, name in enumerate(self.entity_names)}
        self._gene_pos = {g: i for i, g in enumerate(self.panel_genes)}
        self._bank_pos = {g: i for i, g in enumerate(self.gene_bank)}
        self.compound_bank = list(compound_bank)
        self._cmp_pos = {c: i for i, c in enumerate(self.compound_bank)}

    # ---------------------------------------------------------------- vocabulary
    def parse(self, label: str | Action) -> Action:
        """Parse a label with the project's one parser (the data's control label means control)."""
        return parse_action(label, control_labels=(self.control, "control"))

    @property
    def compound_dim(self) -> int:
        return 0 if self.compounds is None else self.compounds.dim

    def genetic_targets(self) -> list[str]:
        """Every genetic target of the data's labels (trained or held out), sorted."""
        return sorted({p.target for a in self.actions.values() for p in a.components if Kind.of(p.kind) in GENETIC_KINDS})

    def target_features(self, genes: Sequence[str]) -> np.ndarray:
        """Knowledge features ``[n, F_g]`` of genetic targets. A *training* target that the gene source
        does not know gets all zeros: it is learned from its observed effect alone (its own action
        embedding, never dropped; see :class:`bioworld.model.jepa.ActionEncoder`)."""
        out = np.zeros((len(genes), self.genes.dim), np.float32)
        known = [i for i, g in enumerate(genes) if self.genes.knows(g)]
        if known:
            out[known] = self.genes.features([genes[i] for i in known])
        return out

    def featureless_targets(self) -> list[str]:
        """Training genetic targets the gene source does not know (learned from their effect alone)."""
        return [g for g in self.gene_bank if not self.genes.knows(g)]

    def bank_features(self) -> np.ndarray | None:
        """``[n_bank, F_g]`` features of the retrieval bank (``None`` without genetic training targets)."""
        return self.target_features(self.gene_bank) if self.gene_bank else None

    # ---------------------------------------------------------------- check + encode
    def check(self, action: Action, *, width: int | None = None) -> None:
        """Refuse an action the model cannot represent (unknown gene / entity / compound, too many parts:
        more than ``max_components``, or than ``width`` where a caller widens the table on purpose, e.g.
        a compound written as the loss of its targets; the module composes any number additively)."""
        A = max(self.max_components, int(width or 0))
        if len(action.components) > A:
            raise UnknownPerturbationError(
                f"action {action.label!r} has {len(action.components)} components; this model handles at most {A}. "
                f"Split it into combinations of up to {A} perturbations."
            )
        for p in action.components:
            kind = Kind.of(p.kind)
            if kind in GENETIC_KINDS and not self.genes.knows(p.target) and p.target not in self._bank_pos:
                raise UnknownPerturbationError(
                    f"gene {p.target!r} was not a training target and is in no entity, regulon or GO set the model "
                    f"knows, so its effect cannot be predicted; {self._near_targets(p.target)}. Fix: check the "
                    "symbol (HGNC, case-sensitive), or train on data where it was perturbed." + _compound_hint(p.target)
                )
            if kind == Kind.SILENCE and p.target not in self._ent_pos:
                near = close_matches(p.target, self.entity_names)
                raise UnknownPerturbationError(
                    f"cannot silence {p.target!r}: not one of the model's {len(self.entity_names)} entities; "
                    f"close matches: {near or 'none'}. Fix: silence one of them, e.g. "
                    f"silence:{(near or list(self.entity_names))[0]} (wm.entity_names lists them)"
                )
            if kind == Kind.COMPOUND:
                self._check_compound(p)

    def _near_targets(self, target: str) -> str:
        """Close matches of an unknown genetic target among the training targets and the known genes; the gene
        of a guide-level name (``STAT1_sg3`` -> ``STAT1``) when the model knows it."""
        from bioworld.actions._knowledge import _GUIDE, _SEPARATORS

        def known(gene: str) -> bool:
            return self.genes.knows(gene) or gene in self._bank_pos

        near = close_matches(target, [*self.gene_bank, *self.genes.genes])
        text = f"close matches: {near or 'none'}"
        guide = _GUIDE.match(target)
        parts = [p for p in _SEPARATORS.split(target) if p]
        if guide and known(guide.group(1)):
            text += f"; {target!r} looks like a guide of {guide.group(1)!r}: ask for {guide.group(1)!r} (its knockout)"
        elif len(parts) > 1 and all(known(p) for p in parts):
            text += f"; {target!r} looks like a combination: write it {'+'.join(parts)!r}"
        return text

    def _check_compound(self, p: Any) -> None:
        if self.compounds is None:
            raise UnknownPerturbationError(
                f"compound {p.target!r} has no SMILES in this model: it was trained without compound features. "
                "Train on data with compounds (and --smiles) to predict compounds."
            )
        if not self.compounds.knows(p.target):
            raise UnknownPerturbationError(
                f"compound {p.target!r} is unknown to this model: no SMILES and no knowledge (targets, atlas "
                f"signatures) resolve it; known with structures: {sorted(self.compounds.smiles)[:5]}… Fix: give its "
                "structure (--compound NAME=SMILES / compounds={name: smiles}) or its targets (--compound-targets "
                "TABLE / compound_targets=...)."
            )
        dose = p.dose
        if dose is None or not math.isfinite(float(dose)) or dose < 0:
            raise UnknownPerturbationError(f"dose {dose!r} for compound {p.target!r}; expected a finite number >= 0")

    def encode(self, actions: Sequence[Action | str], *, width: int | None = None) -> ActionArrays:
        """Check each action once and tensorise them into an :class:`ActionArrays` table (one row each;
        ``max(max_components, width)`` component columns)."""
        acts = [a if isinstance(a, Action) else self.parse(a) for a in actions]
        for a in acts:
            self.check(a, width=width)
        n, A, E = len(acts), max(self.max_components, int(width or 0)), len(self.entity_names)
        t = ActionArrays(
            kind=np.zeros((n, A), np.int64), strength=np.zeros((n, A), np.float32),
            gene_feat=np.zeros((n, A, self.genes.dim), np.float32), cmp_feat=np.zeros((n, A, self.compound_dim), np.float32),
            log_dose=np.zeros((n, A), np.float32), entity_idx=np.full((n, A), -1, np.int64),
            touch=np.zeros((n, A, E), np.float32), target_gene=np.full((n, A), -1, np.int64),
            bank_idx=np.full((n, A), -1, np.int64), cmp_idx=np.full((n, A), -1, np.int64),
        )
        for i, action in enumerate(acts):
            for j, p in enumerate(action.components):
                self._encode_component(t, i, j, p)
        return t

    def _encode_component(self, t: ActionArrays, i: int, j: int, p: Any) -> None:
        kind = Kind.of(p.kind)
        t.kind[i, j] = kind
        t.strength[i, j] = p.strength
        if kind in GENETIC_KINDS:
            t.gene_feat[i, j] = self.target_features([p.target])[0]
            t.touch[i, j] = self.gene_touch([p.target])[0]
            t.target_gene[i, j] = self._gene_pos.get(p.target, -1)
            t.bank_idx[i, j] = self._bank_pos.get(p.target, -1)
        elif kind == Kind.COMPOUND:
            t.cmp_feat[i, j] = self.compounds.features([p.target])[0]
            t.log_dose[i, j] = math.log10(float(p.dose) + DOSE_EPS)
            t.cmp_idx[i, j] = self._cmp_pos.get(str(p), -1)
        elif kind == Kind.SILENCE:
            e = self._ent_pos[p.target]
            t.entity_idx[i, j] = e
            t.touch[i, j, e] = 1.0

    def gene_touch(self, genes: Sequence[str]) -> np.ndarray:
        """``[n_genes, E]`` how strongly each gene touches each slot (see :func:`gene_touch_matrix`)."""
        from bioworld.actions._encode import gene_touch_index

        index = getattr(self, "_touch_index", None)
        if index is None:  # one pass over the entities' gene lists, then a lookup per gene
            index = self._touch_index = gene_touch_index(self.entities)
        out = np.zeros((len(genes), len(self.entities)), np.float32)
        for i, g in enumerate(genes):
            row = index.get(g)
            if row is not None:
                out[i] = row
        return out

    # ---------------------------------------------------------------- checkpoint
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(tensors, JSON fields) that :meth:`from_state` rebuilds the space from."""
        tensors, meta = self.genes.state()
        c_t, c_m = self.compounds.state() if self.compounds is not None else ({}, {"smiles": {}})
        meta = {**meta, **c_m, "actions": {lab: a.label for lab, a in self.actions.items()}, "gene_bank": self.gene_bank,
                "compound_bank": self.compound_bank}
        return {**tensors, **c_t}, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any], *, control: str, entity_set: Any,
                   entity_names: Sequence[str], panel_genes: Sequence[str], max_components: int) -> "ActionSpace":
        actions = {lab: parse_action(lab, control_labels=(control, "control")) for lab in meta["actions"]}
        smiles = dict(meta["smiles"])
        if "compound_knowledge" in tensors:  # compounds grounded in knowledge (+ fingerprints where SMILES exist)
            from bioworld.actions._knowledge import KnowledgeCompoundFeatures

            compounds: Any = KnowledgeCompoundFeatures.from_state(tensors, meta)
        else:
            compounds = CompoundFeatures(smiles, _compound_targets(actions)) if smiles else None
        return cls(control=control, actions=actions, entity_set=entity_set, entity_names=entity_names,
                   panel_genes=panel_genes, gene_bank=list(meta["gene_bank"]),
                   genes=GeneFeatureTable(list(meta["gene_feature_genes"]), np.asarray(tensors["gene_features"])),
                   compounds=compounds, max_components=max_components,
                   compound_bank=list(meta.get("compound_bank", [])))  # (written before compound embeddings: none)


def compound_bank_of(labels: Iterable[str], actions: Mapping[str, Action]) -> list[str]:
    """The compound-dose components (canonical ``NAME@DOSE``) of the training ``labels``, sorted: the
    actions that get their own embedding (:class:`bioworld.model.jepa.ActionEncoder`)."""
    return sorted({str(p) for lab in labels for p in actions[lab].components if p.kind == "compound"})


def _compound_targets(actions: Mapping[str, Action]) -> set[str]:
    return {p.target for a in actions.values() for p in a.components if p.kind == "compound"}


def compound_features_for(actions: Mapping[str, Action], smiles: Any, adata: Any,
                          compound_id_key: str | None) -> tuple[CompoundFeatures | None, list[str]]:
    """The compound feature source of a dataset and findings about it.

    ``smiles``: a CSV path ``id, SMILES`` / a dict name -> SMILES / ``None``. Refuses data with
    compounds but no SMILES for any, and malformed SMILES; compounds seen without a SMILES are
    named in the findings (learned from their dose; unseen ones cannot be predicted).
    """
    compounds = sorted(_compound_targets(actions))
    table = read_smiles(smiles, adata, compound_id_key, compounds)
    if compounds and not table:
        raise DataValidationError(
            f"the data has {len(compounds)} compounds (e.g. {compounds[:3]}) but no SMILES were found for any"
            f" (smiles={'not given' if smiles is None else repr(str(smiles))}); compounds are represented by their"
            " structure. Pass smiles= a CSV 'id, SMILES' or a dict name -> SMILES (LINCS: the bundled"
            " compounds/lincs_drugs_smiles.csv with compound_id_key='pert_id')"
        )
    if not table:
        return None, []
    feats = CompoundFeatures(table, compounds)
    findings = []
    missing = sorted(feats.without_smiles)
    if missing:
        findings.append(
            f"{len(missing)} compounds have no SMILES and get no structure features (seen ones are still "
            f"learned from their dose; unseen ones cannot be predicted): {', '.join(missing[:6])}"
        )
    feats.validate()
    return feats, findings


def read_smiles(smiles: str | os.PathLike | Mapping[str, str] | None, adata: Any, compound_id_key: str | None,
                compounds: Sequence[str]) -> dict[str, str]:
    """Compound name -> SMILES for the ``compounds`` of the data (and any extra the table names by them)."""
    if not compounds or smiles is None:
        return {}
    if isinstance(smiles, Mapping):
        table = dict(smiles)
    else:
        from bioworld.actions._features import load_smiles_table

        table = load_smiles_table(smiles)
    out: dict[str, str] = {}
    name_key = _compound_name_key(adata)
    if compound_id_key is not None and name_key is not None and compound_id_key in adata.obs.columns:
        names = adata.obs[name_key].astype(str)
        ids = adata.obs[compound_id_key].astype(str)
        for n, i in zip(names, ids):
            s = table.get(i[:13]) or table.get(i) or table.get(n)
            if s:
                out[n] = s
    for c in compounds:
        if c not in out and c in table:
            out[c] = table[c]
    return out


def _compound_name_key(adata: Any) -> str | None:
    """The ``obs`` column of compound names that ids are joined through: the one ``compound_labels`` built the
    ``NAME@DOSE`` labels from (``--perturbation-key`` with ``--dose-key``), else LINCS's ``pert_iname``."""
    uns = getattr(adata, "uns", {}) or {}
    loader = uns.get("bioworld", {}).get("loader", {}) if hasattr(uns.get("bioworld", {}), "get") else {}
    record = loader.get("compound_labels") if hasattr(loader, "get") else None
    name_key = record.get("name_key") if hasattr(record, "get") else None
    for key in (name_key, "pert_iname"):
        if key is not None and str(key) in adata.obs.columns:
            return str(key)
    return None


def _compound_hint(name: str) -> str:
    """`` If 'X' is the compound ..., write it with a dose`` when the bundled compound knowledge knows ``name``
    (a bare name parses as a gene knockout), else ""."""
    from bioworld.knowledge import CompoundKnowledge

    if CompoundKnowledge.bundled().resolve(name, strict=False) is None:
        return ""
    return f" If {name!r} is the compound of that name, write it with a dose: '{name}@1' (NAME@DOSE)."
