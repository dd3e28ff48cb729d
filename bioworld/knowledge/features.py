"""Knowledge features: one vector space for genes and compounds, built only from curated knowledge.

A gene gets three blocks, each L2-normalised and scaled by ``1/sqrt(3)`` (so the cosine of two
feature vectors is the mean of the blocks' cosines), followed by one *known* bit per block:

``network``   STRING neighbourhood embedding (:func:`bioworld.knowledge.network.network_embedding`)
``signed``    OmniPath signed in/out-neighbourhood embedding
``signature`` the atlas signatures that perturbed it — its CRISPRi knockdowns and the compounds that
              target it — averaged and projected on the atlas' principal axes

A compound lives in the same space: a drug acts like inhibiting its targets, so its ``network`` and
``signed`` blocks are the mean of its target genes' blocks, and its ``signature`` block is its own
atlas signatures (or, when it has none, its targets' signature block). Missing knowledge is explicit:
the block is zero and its known bit is 0 — never a silent zero that looks like information.

Ablations (``shuffle=``): ``"targets"`` permutes compound -> target links, ``"network"`` permutes the
gene labels of both networks, ``"signatures"`` re-assigns atlas signatures to other perturbations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from bioworld.errors import BioworldError

__all__ = ["BLOCKS", "KnowledgeBase", "KnowledgeConfig"]

BLOCKS = ("network", "signed", "signature")
SHUFFLES = ("targets", "network", "signatures")


@dataclass(frozen=True)
class KnowledgeConfig:
    """What the knowledge features are built from (stored with every model that uses them)."""

    network_dim: int = 64  # STRING neighbourhood SVD width
    signed_dim: int = 32  # OmniPath signed in/out-profile SVD width
    signature_dim: int = 32  # atlas principal axes a signature is projected on
    shuffle: tuple[str, ...] = ()  # ablations: any of "targets", "network", "signatures"
    seed: int = 0  # seed of the SVDs and of the shuffles

    def __post_init__(self) -> None:
        for name in ("network_dim", "signed_dim", "signature_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 512:
                raise BioworldError(f"KnowledgeConfig.{name}={v!r}; expected an int in [1, 512].")
        bad = [s for s in self.shuffle if s not in SHUFFLES]
        if bad:
            raise BioworldError(f"KnowledgeConfig.shuffle has {bad}; expected a subset of {list(SHUFFLES)}.")
        object.__setattr__(self, "shuffle", tuple(sorted(set(self.shuffle))))

    @property
    def dim(self) -> int:
        return self.network_dim + self.signed_dim + self.signature_dim + len(BLOCKS)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shuffle"] = list(self.shuffle)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KnowledgeConfig":
        d = dict(d)
        d["shuffle"] = tuple(d.get("shuffle", ()))
        return cls(**d)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1.0), 0.0).astype(np.float32)


def _centre(atlas) -> np.ndarray:
    """Mean z-scored signature of an atlas (cached on the atlas object)."""
    if getattr(atlas, "_centre", None) is None:
        atlas._centre = atlas.zscored().mean(0)
    return atlas._centre


@dataclass
class KnowledgeBase:
    """Gene and compound features from the bundled networks, atlas and compound targets.

    Parameters
    ----------
    config
        A :class:`KnowledgeConfig`.
    atlas
        A :class:`~bioworld.knowledge.atlas.SignatureAtlas` to take signatures from (default: the
        bundled one). Benchmarks pass an atlas without their held-out rows.
    compounds
        A :class:`~bioworld.knowledge.compounds.CompoundKnowledge` (default: bundled; pass
        ``.with_targets(table)`` to add compounds).
    """

    config: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    atlas: object | None = None
    compounds: object | None = None

    def __post_init__(self) -> None:
        from bioworld.knowledge.atlas import load_atlas
        from bioworld.knowledge.compounds import CompoundKnowledge
        from bioworld.knowledge.network import network_embedding, signed_embedding

        cfg = self.config
        self.compounds = self.compounds or CompoundKnowledge.bundled()
        self.atlas = self.atlas or load_atlas()
        self._net = network_embedding(cfg.network_dim, seed=cfg.seed)
        self._signed = signed_embedding(cfg.signed_dim, seed=cfg.seed)
        if "targets" in cfg.shuffle:
            self.compounds = self.compounds.shuffled(cfg.seed)
        if "network" in cfg.shuffle:
            self._net = self._net.shuffled(cfg.seed)
            self._signed = self._signed.shuffled(cfg.seed + 1)
        if "signatures" in cfg.shuffle:
            self.atlas = self.atlas.shuffled(cfg.seed)
        self.basis = self.atlas.basis(cfg.signature_dim, seed=cfg.seed)  # [G_atlas, S]
        # signatures share a common response (the first thing every drug does); project deviations from it
        self.centre = _centre(self.atlas)  # [G_atlas]
        self._sig_cache: dict[str, np.ndarray | None] = {}
        self.sources = ["signature_atlas", "compound_targets", "compound_aliases", "string", "omnipath"]

    @property
    def dim(self) -> int:
        return self.config.dim

    # ------------------------------------------------------------------------ signatures
    def _key_signature(self, key: str) -> np.ndarray | None:
        """Projected, unit mean signature of one atlas key (``cmp:x`` / ``kd:G``) or None."""
        if key not in self._sig_cache:
            z = self.atlas.mean_signature(key)
            self._sig_cache[key] = None if z is None else _unit((z - self.centre) @ self.basis)
        return self._sig_cache[key]

    def _gene_signature(self, gene: str, exclude: str | None = None) -> np.ndarray | None:
        """Mean signature block of the perturbations that hit ``gene`` (its knockdown, the compounds
        targeting it), leaving out the perturbation key ``exclude``."""
        keys = [f"kd:{gene}", *(f"cmp:{c}" for c in self.compounds.compounds_targeting(gene))]
        parts = [self._key_signature(k) for k in keys if k != exclude]
        parts = [p for p in parts if p is not None]
        return _unit(np.mean(parts, axis=0)) if parts else None

    # -------------------------------------------------------------------------- features
    def _assemble(self, net: np.ndarray, signed: np.ndarray, sig: np.ndarray, known: np.ndarray) -> np.ndarray:
        scale = 1.0 / np.sqrt(len(BLOCKS))
        return np.concatenate([_unit(net) * scale, _unit(signed) * scale, _unit(sig) * scale,
                               known.astype(np.float32)], axis=1).astype(np.float32)

    def gene_features(self, genes: Sequence[str], *, blind: bool = False,
                      exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``([n, dim] features, [n, 3] known per block)`` for gene symbols. ``blind``: the signature block
        leaves out each gene's own knockdown (its features as if it had never been knocked down);
        ``exclude``: a perturbation key left out of every gene's signature block."""
        genes = [str(g) for g in genes]
        net, k_net = self._net.lookup(genes)
        signed, k_signed = self._signed.lookup(genes)
        sig = np.zeros((len(genes), self.config.signature_dim), np.float32)
        k_sig = np.zeros(len(genes), bool)
        for i, g in enumerate(genes):
            s = self._gene_signature(g, f"kd:{g}" if blind else exclude)
            if s is not None:
                sig[i], k_sig[i] = s, True
        known = np.stack([k_net, k_signed, k_sig], axis=1)
        return self._assemble(net, signed, sig, known), known

    def compound_targets(self, name: str) -> list[str]:
        return self.compounds.targets(name)

    def compound_features(self, names: Sequence[str], *, blind: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``([n, dim] features, [n, 3] known per block)`` for compound names (any known spelling).
        ``blind``: as if the compound had never been measured — its own atlas signatures are left out
        (its signature block comes from its targets' other perturbations only)."""
        n = len(names)
        net = np.zeros((n, self.config.network_dim), np.float32)
        signed = np.zeros((n, self.config.signed_dim), np.float32)
        sig = np.zeros((n, self.config.signature_dim), np.float32)
        known = np.zeros((n, len(BLOCKS)), bool)
        for i, name in enumerate(names):
            targets = self.compounds.targets(name)
            key = self.compounds.resolve(name, strict=False)
            if targets:
                f, k = self.gene_features(targets, exclude=f"cmp:{key}" if blind and key else None)
                w = 1.0 / np.sqrt(len(BLOCKS))
                a, b = self.config.network_dim, self.config.network_dim + self.config.signed_dim
                if k[:, 0].any():
                    net[i], known[i, 0] = f[k[:, 0], :a].mean(0) / w, True
                if k[:, 1].any():
                    signed[i], known[i, 1] = f[k[:, 1], a:b].mean(0) / w, True
                if k[:, 2].any():
                    sig[i], known[i, 2] = f[k[:, 2], b:b + self.config.signature_dim].mean(0) / w, True
            own = self._key_signature(f"cmp:{key}") if key and not blind else None
            if own is not None:
                sig[i], known[i, 2] = own, True
        return self._assemble(net, signed, sig, known), known

    def key_relations(self, keys_a: Sequence[str], keys_b: Sequence[str]) -> np.ndarray:
        """``[len(keys_a), len(keys_b)]`` curated relatedness of perturbation keys (``cmp:x`` / ``kd:G``):
        the Jaccard overlap of their target sets (a knockdown's set is its gene; a compound's, its
        curated targets) plus 1 when both carry the same mechanism-of-action label. 0 between a key and
        itself and where nothing is shared or known. Follows the ``targets`` ablation (links shuffled)."""
        from scipy import sparse

        def describe(keys: Sequence[str]) -> tuple[list[set[str]], list[str]]:
            sets, moas = [], []
            for k in keys:
                k = str(k)
                if k.startswith("kd:"):
                    sets.append({k[3:]})
                    moas.append("")
                else:
                    name = k[4:] if k.startswith("cmp:") else k
                    sets.append(set(self.compounds.targets(name)))
                    moas.append(self.compounds.moa(name).strip().lower())
            return sets, moas

        (sa, ma), (sb, mb) = describe(keys_a), describe(keys_b)
        genes = {g: i for i, g in enumerate(sorted(set().union(*sa, *sb)))}

        def incidence(sets: list[set[str]]) -> sparse.csr_matrix:
            r = [i for i, s in enumerate(sets) for _ in s]
            c = [genes[g] for s in sets for g in s]
            return sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(sets), max(len(genes), 1)))

        inter = (incidence(sa) @ incidence(sb).T).toarray()
        na, nb = np.array([len(s) for s in sa], float), np.array([len(s) for s in sb], float)
        union = na[:, None] + nb[None, :] - inter
        rel = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        labels = {m: i for i, m in enumerate(sorted({m for m in ma + mb if m}))}
        ia = np.array([labels.get(m, -1) for m in ma])
        ib = np.array([labels.get(m, -2) for m in mb])
        rel += (ia[:, None] == ib[None, :]).astype(float)
        same = np.array([str(a) for a in keys_a])[:, None] == np.array([str(b) for b in keys_b])[None, :]
        return np.where(same, 0.0, rel).astype(np.float32)

    def knows_gene(self, gene: str) -> bool:
        return bool(self.gene_features([gene])[1].any())

    def knows_compound(self, name: str) -> bool:
        return bool(self.compound_features([name])[1].any())

    def describe(self) -> dict:
        from bioworld.knowledge._sources import source_records

        return {"config": self.config.to_dict(), "sources": source_records(self.sources)}
