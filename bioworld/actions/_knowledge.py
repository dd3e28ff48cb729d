"""Knowledge-grounded action features: genes and compounds in one space (:mod:`bioworld.knowledge`).

A genetic target's feature row is its gene-set membership features (the model's entities, Hallmark,
PROGENy, DoRothEA, GO) joined with its knowledge features (STRING / OmniPath neighbourhoods, atlas
knockdown signatures and the signatures of compounds that hit it), so a gene in no gene set but in
the networks has a representation, and genes that interact sit close together in the retrieval
over training targets. A compound's feature row is its knowledge features (its targets'
neighbourhoods, its own atlas signatures) joined with its Morgan fingerprint when a SMILES is
known: drugs and knock-outs of their targets are described by the same coordinates.

Missing knowledge is explicit: each knowledge block has a *known* bit (scaled down so it does not
dominate cosine similarity); a gene or compound without any knowledge is refused, not zero-filled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["KNOWN_BIT_SCALE", "KnowledgeCompoundFeatures", "joint_gene_table"]

KNOWN_BIT_SCALE = 0.05  # weight of a block's known bit inside the (unit-norm) feature row


def _unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def joint_gene_table(base_genes: Sequence[str], base_table: np.ndarray, kb: Any,
                     extra_genes: Iterable[str] = ()) -> tuple[list[str], np.ndarray]:
    """``(genes, [n, F_base + F_kb] table)``: every gene the gene sets or the knowledge know.

    Rows are ``[base / sqrt(2) | knowledge blocks / sqrt(2) | known bits * KNOWN_BIT_SCALE]``,
    renormalised to unit length; genes only one side knows have zeros (and known bits 0) on the other.
    """
    from bioworld.knowledge import BLOCKS

    known_kb = set(kb._net.genes) | set(kb._signed.genes) | set(kb.atlas.obs.loc[kb.atlas.obs["kind"] == "crispri", "target_gene"])
    # network files carry a few non-symbols (an empty name, bare numbers from split complexes): not genes
    genes = sorted(g for g in set(base_genes) | known_kb | set(extra_genes) if g and not g.isdigit())
    pos = {g: i for i, g in enumerate(base_genes)}
    base = np.zeros((len(genes), base_table.shape[1]), np.float32)
    for i, g in enumerate(genes):
        j = pos.get(g)
        if j is not None:
            base[i] = base_table[j]
    feats, known = kb.gene_features(genes)
    nb = len(BLOCKS)
    body = feats[:, :-nb]
    table = np.concatenate([_unit_rows(base) / np.sqrt(2), body / np.sqrt(2),
                            known.astype(np.float32) * KNOWN_BIT_SCALE], axis=1)
    keep = (np.abs(base).sum(1) > 0) | known.any(1)
    genes = [g for g, k in zip(genes, keep) if k]
    return genes, _unit_rows(table[keep])


class KnowledgeCompoundFeatures:
    """Compound features ``[knowledge (F_kb) | Morgan bits (1024, zero without SMILES)]``.

    A compound is known when it has a SMILES, has knowledge (targets or atlas signatures, resolved by
    any spelling in the bundled alias table or a user target table), or was seen in training.
    ``features`` of a compound known only by name uses the stored knowledge rows, so a loaded model
    answers without rebuilding the knowledge base; a compound added after training with
    ``extra_targets`` is described from the stored *gene* rows of its targets.
    """

    def __init__(self, smiles: Mapping[str, str], knowledge_rows: Mapping[str, np.ndarray], *, kb_dim: int,
                 seen: Iterable[str] = (), user_targets: Mapping[str, Sequence[str]] | None = None,
                 n_bits: int = 1024) -> None:
        from bioworld.actions._features import CompoundFeaturizer

        self.smiles = dict(smiles)
        self.rows = {str(k): np.asarray(v, np.float32) for k, v in knowledge_rows.items()}
        self.kb_dim = int(kb_dim)
        self.n_bits = int(n_bits)
        self.seen = set(seen)
        self.user_targets = {str(k): list(v) for k, v in (user_targets or {}).items()}
        self.dim = self.kb_dim + self.n_bits
        self._fp = CompoundFeaturizer(self.smiles, n_bits=self.n_bits) if self.smiles else None

    # --------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, names: Iterable[str], kb: Any, *, smiles: Mapping[str, str] | None = None,
              seen: Iterable[str] = (), user_targets: Mapping[str, Sequence[str]] | None = None) -> "KnowledgeCompoundFeatures":
        """Knowledge rows for ``names`` plus every compound the bundled knowledge resolves."""
        from bioworld.knowledge import BLOCKS

        ck = kb.compounds
        if user_targets:
            ck = ck.with_targets(user_targets)
            kb = _with_compounds(kb, ck)
        wanted = sorted(set(names) | set(ck.keys))
        feats, known = kb.compound_features(wanted)
        nb = len(BLOCKS)
        rows = {}
        for n, f, k in zip(wanted, feats, known):
            if k.any():
                rows[n] = np.concatenate([f[:-nb], k.astype(np.float32) * KNOWN_BIT_SCALE])
        return cls(smiles or {}, rows, kb_dim=kb.dim, seen=seen, user_targets=user_targets)

    def resolve(self, name: str) -> str | None:
        """The stored row name for ``name``: itself, or its compound key (any spelling)."""
        if name in self.rows:
            return name
        from bioworld.knowledge import CompoundKnowledge

        key = CompoundKnowledge.bundled().resolve(name, strict=False)
        return key if key in self.rows else None

    def knows(self, name: str) -> bool:
        return name in self.smiles or name in self.seen or self.resolve(name) is not None

    def knows_structure(self, name: str) -> bool:
        return name in self.smiles

    def features(self, names: Sequence[str]) -> np.ndarray:
        """``[len(names), dim]`` float32: knowledge row (zeros when unknown) | fingerprint (zeros without SMILES)."""
        out = np.zeros((len(names), self.dim), np.float32)
        for i, n in enumerate(names):
            key = self.resolve(n)
            if key is not None:
                out[i, :self.kb_dim] = self.rows[key]
            if self._fp is not None and n in self.smiles:
                out[i, self.kb_dim:] = self._fp.fingerprint(n)
        return out

    def validate(self) -> None:
        if self._fp is not None:
            self._fp.validate()

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        names = sorted(self.rows)
        table = np.stack([self.rows[n] for n in names]) if names else np.zeros((0, self.kb_dim), np.float32)
        return ({"compound_knowledge": table},
                {"smiles": dict(self.smiles), "compound_knowledge_names": names, "compound_kb_dim": self.kb_dim,
                 "compound_seen": sorted(self.seen), "compound_user_targets": self.user_targets})

    @classmethod
    def from_state(cls, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "KnowledgeCompoundFeatures":
        table = np.asarray(tensors["compound_knowledge"])
        names = list(meta["compound_knowledge_names"])
        return cls(dict(meta["smiles"]), dict(zip(names, table)), kb_dim=int(meta["compound_kb_dim"]),
                   seen=meta.get("compound_seen", ()), user_targets=meta.get("compound_user_targets") or {})

    def with_new(self, *, smiles: Mapping[str, str] | None = None, targets: Mapping[str, Sequence[str]] | None = None,
                 gene_rows: Any = None) -> "KnowledgeCompoundFeatures":
        """A copy that also knows compounds given at query time: ``smiles`` (name -> SMILES) and/or
        ``targets`` (name -> target genes, described by the mean of the targets' stored gene rows)."""
        rows = dict(self.rows)
        for name, genes in (targets or {}).items():
            known = [g for g in genes if gene_rows is not None and gene_rows.knows(g)]
            if not known:
                from bioworld.errors import UnknownPerturbationError

                raise UnknownPerturbationError(
                    f"compound {name!r}: none of its targets {list(genes)} is a gene the model knows; expected HGNC "
                    "symbols present in STRING / OmniPath / the gene sets. Fix: check the target symbols."
                )
            g = gene_rows.features(known)  # [k, F_g] = [base | knowledge | bits]
            rows[name] = _kb_part_of_gene_rows(g, self.kb_dim).mean(0)
        out = KnowledgeCompoundFeatures({**self.smiles, **(smiles or {})}, rows, kb_dim=self.kb_dim, seen=self.seen,
                                        user_targets={**self.user_targets, **{k: list(v) for k, v in (targets or {}).items()}},
                                        n_bits=self.n_bits)
        out.validate()  # a malformed structure is refused with its name
        return out


def _kb_part_of_gene_rows(rows: np.ndarray, kb_dim: int) -> np.ndarray:
    """The knowledge part (body + known bits) of joint gene rows, rescaled like a compound row."""
    from bioworld.knowledge import BLOCKS

    nb = len(BLOCKS)
    body = rows[:, -kb_dim:-nb] * np.sqrt(2)
    bits = rows[:, -nb:]
    return np.concatenate([body, bits], axis=1)


def _with_compounds(kb: Any, compounds: Any) -> Any:
    """The same knowledge base reading another compound table (no rebuild of networks or atlas axes)."""
    import copy

    out = copy.copy(kb)
    out.compounds = compounds
    return out


_KB_CACHE: dict[str, Any] = {}


def knowledge_base(config: Any = None) -> Any:
    """The shared :class:`~bioworld.knowledge.KnowledgeBase` of a config (built once per process)."""
    import json

    from bioworld.knowledge import KnowledgeBase, KnowledgeConfig

    cfg = config if isinstance(config, KnowledgeConfig) else KnowledgeConfig.from_dict(dict(config or {}))
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in _KB_CACHE:
        _KB_CACHE.clear()
        _KB_CACHE[key] = KnowledgeBase(cfg)
    return _KB_CACHE[key]


def knowledge_sources(base: Any, actions: Mapping[str, Any], *, config: Any, smiles: Mapping[str, str],
                      compound_targets: Any = None) -> tuple[Any, Any, list[str], dict[str, Any]]:
    """Gene and compound feature sources grounded in knowledge, for an :class:`ActionSpace`.

    ``base``: the gene-set :class:`GeneFeatureTable`; ``actions``: the data's label -> Action;
    ``smiles``: name -> SMILES found for the data's compounds (may be empty: knowledge suffices);
    ``compound_targets``: a user table (path or name -> genes) for compounds the bundled knowledge lacks.
    Returns ``(genes, compounds or None, findings, meta)`` with ``meta`` = ``knowledge_config`` and
    ``knowledge_sources`` (each source with its licence).
    """
    from bioworld.actions._space import GeneFeatureTable
    from bioworld.knowledge.compounds import target_mapping

    kb = knowledge_base(config)
    targets = sorted({p.target for a in actions.values() for p in a.components if p.kind in ("ko", "kd", "act")})
    genes, table = joint_gene_table(base.genes, base.table, kb, extra_genes=())
    gene_source = GeneFeatureTable(genes, table)
    compounds = sorted({p.target for a in actions.values() for p in a.components if p.kind == "compound"})
    findings: list[str] = []
    cmp_source = None
    user = None
    if compound_targets is not None:
        user = target_mapping(compound_targets)
    if compounds:
        cmp_source = KnowledgeCompoundFeatures.build(compounds, kb, smiles=smiles, seen=compounds, user_targets=user)
        blind = [c for c in compounds if cmp_source.resolve(c) is None and c not in smiles]
        if blind:
            findings.append(
                f"{len(blind)} compounds have neither a SMILES nor knowledge (targets, atlas signatures): "
                f"{', '.join(blind[:6])}; seen ones are learned from their dose alone, unseen ones cannot be predicted")
        cmp_source.validate()
    unknown = [g for g in targets if g not in gene_source.pos]
    if unknown:
        findings.append(f"{len(unknown)} genetic targets have no knowledge (gene sets, STRING, OmniPath, atlas): "
                        f"{', '.join(unknown[:6])}" + _label_hints(unknown, gene_source.pos, kb))
    meta = {"knowledge_config": kb.config.to_dict(), "knowledge_sources": kb.describe()["sources"]}
    return gene_source, cmp_source, findings, meta


_SEPARATORS = re.compile(r"[_,;|/]")
#: a guide-level label: a gene, then a guide id (``STAT1_g1``, ``IRF1-sg2``, ``JAK2_2``, ``SOCS1.gRNA3``, ``CD274_b``)
_GUIDE = re.compile(r"^([^_\-.]+)[_\-.](?:(?:s?g|sgRNA|gRNA|guide)?\d+|[a-dA-D])$", re.IGNORECASE)


def _label_hints(unknown: Sequence[str], known: Mapping[str, int], kb: Any) -> str:
    """What targets without knowledge may be instead (appended to that finding): combinations written with
    another separator (every part a gene the knowledge knows: ``STAT1_IRF1`` -> ``STAT1+IRF1``), or compound
    names written without a dose (``ruxolitinib`` -> ``ruxolitinib@DOSE``), guide-level labels or numeric codes
    (``"17"``); "" when none of these."""
    combos = [g for g in unknown if len(parts := [p for p in _SEPARATORS.split(g) if p]) > 1
              and all(p in known for p in parts)]
    guides = [g for g in unknown if g not in combos and (m := _GUIDE.match(g)) and m.group(1) in known]
    compounds = [g for g in unknown if g not in combos and g not in guides
                 and kb.compounds.resolve(g, strict=False) is not None]
    codes = [g for g in unknown if re.fullmatch(r"\d+", str(g))]
    hints = []
    if codes:
        one = len(codes) == 1
        hints.append(f"{', '.join(codes[:4])} {'looks like a numeric code' if one else 'look like numeric codes'}, not "
                     "a gene or compound name: relabel the cells with the targets the codes stand for (e.g. map "
                     "obs[key] through your code -> gene table) so that knowledge can describe them")
    if guides:
        one = len(guides) == 1
        hints.append(f"{', '.join(guides[:4])} {'looks like a guide' if one else 'look like guides'} of a known gene "
                     f"({guides[0]!r} -> {_GUIDE.match(guides[0]).group(1)!r}): label the cells by their target gene "
                     "(all guides of a gene under one label) to learn it as that gene's knockout")
    if combos:
        one = len(combos) == 1
        hints.append(f"{', '.join(combos[:4])} {'looks like a combination' if one else 'look like combinations'}: "
                     f"write {'it' if one else 'them'} with '+' (e.g. "
                     f"{'+'.join(p for p in _SEPARATORS.split(combos[0]) if p)!r}) to train {'it' if one else 'them'} "
                     "as such")
    if compounds:
        one = len(compounds) == 1
        hints.append(f"{', '.join(compounds[:4])} {'is a compound' if one else 'are compounds'} of the bundled "
                     f"knowledge: write {'it' if one else 'them'} NAME@DOSE (e.g. '{compounds[0]}@1') or give the "
                     "doses in an obs column (dose_key, CLI: --dose-key)")
    return "".join(f"; {h}" for h in hints)


def coverage_summary(labels: Sequence[str], entity_genes: Iterable[str], config: Any = None) -> str:
    """Before training (``bioworld inspect``): how many of the data's genetic targets and compounds the knowledge
    layer (:func:`knowledge_base` of ``config``) or a gene set (``entity_genes``) knows, and what the others may be
    (:func:`_label_hints`). Targets without knowledge are learned from their own cells only."""
    from bioworld.actions._parse import parse_action

    comps = [p for lab in labels for p in parse_action(lab).components]
    targets = sorted({p.target for p in comps if p.kind in ("ko", "kd", "act")})
    compounds = sorted({p.target for p in comps if p.kind == "compound"})
    kb = knowledge_base(config)
    in_sets = set(entity_genes)
    unknown = [g for g in targets if g not in in_sets and not kb.knows_gene(g)]
    lines = []
    if targets:
        # the parts of unknown labels written with another separator that are genes (combination hints)
        # ... and the gene of guide-level labels (STAT1_g1, IRF1-sg2)
        heads = [m.group(1) for g in unknown if (m := _GUIDE.match(g))]
        parts = {q: 0 for q in [*(q for g in unknown for q in _SEPARATORS.split(g)), *heads]
                 if q and (q in in_sets or kb.knows_gene(q))}
        lines.append(f"knowledge: {len(targets) - len(unknown)} of {len(targets)} genetic targets are in a gene set or "
                     "known to the bundled knowledge (STRING, OmniPath, regulons, atlas knockdowns)"
                     + (f"; without: {', '.join(unknown[:6])}{' …' if len(unknown) > 6 else ''} (learned from their "
                        "own cells only)" + _label_hints(unknown, parts, kb) if unknown else ""))
    if compounds:
        blind = [c for c in compounds if not kb.knows_compound(c)]
        lines.append(f"knowledge: {len(compounds) - len(blind)} of {len(compounds)} compounds known to the bundled "
                     "knowledge (targets, atlas signatures)"
                     + (f"; without: {', '.join(blind[:6])}{' …' if len(blind) > 6 else ''}" if blind else ""))
    return "\n".join(lines)
