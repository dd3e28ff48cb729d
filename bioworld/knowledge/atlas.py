"""The bundled perturbation signature atlas as a dense table over a fixed gene space.

Each row is one signature (a perturbation in a context): inverse-normal rank scores of its 500
most up and 500 most down genes, 0 elsewhere (Replogle CRISPRi rows are up-only). Values are
ranks, not effect sizes: compare them with rank- or correlation-type measures. A *perturbation key*
names what was done in one vocabulary for drugs and genes: ``cmp:<compound key>`` for a compound,
``kd:<GENE>`` for a CRISPRi knockdown; a *context* is a cell line or PBMC cell type
(``obs['context']``).

Licence: GPL-3 (sigrecon), upstream data keep their own terms (:mod:`bioworld.knowledge._sources`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtri

from bioworld.errors import DataValidationError, UnknownPerturbationError

__all__ = ["SignatureAtlas", "load_atlas", "rank_scores", "zscore_rows"]

ATLAS_FILE = "atlas/signature_atlas.h5ad"
MIN_SIGNATURES_PER_GENE = 300  # default gene space: genes among the extremes of >= this many signatures
TOP_K = 500  # extremes stored per side (the atlas transform)

_CACHE: dict[tuple, "SignatureAtlas"] = {}


def zscore_rows(x: np.ndarray) -> np.ndarray:
    """Each row centred and scaled to unit sd (constant rows stay 0)."""
    x = np.asarray(x, np.float32)
    mu = x.mean(axis=-1, keepdims=True)
    sd = x.std(axis=-1, keepdims=True)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def rank_scores(values: np.ndarray, *, n_ranked: int, k: int = TOP_K, up_only: bool = False) -> np.ndarray:
    """Put a predicted vector on the atlas score scale: rank genes (highest first), give position ``i``
    the score ``ndtri(1 - (i + 0.5) / n_ranked)``, keep the ``k`` most positive and ``k`` most negative
    (only the positive side when ``up_only``), 0 elsewhere — the transform the atlas was built with."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1:
        raise ValueError(f"rank_scores expects a 1-D vector, got shape {v.shape}")
    n = max(int(n_ranked), 2 * k, len(v))
    order = np.argsort(-v, kind="stable")
    out = np.zeros(len(v), np.float32)
    top = order[:k]
    out[top] = ndtri(1 - (np.arange(len(top)) + 0.5) / n)
    if not up_only:
        bottom = order[::-1][:k]
        out[bottom] = ndtri(1 - (n - 1 - np.arange(len(bottom)) + 0.5) / n)
    return out


@dataclass
class SignatureAtlas:
    """Signatures ``X`` ``[n_signatures, G]`` (float32) with ``obs`` (``source, context, context_type,
    perturbation, kind, compound, target_gene, n_ranked, ranked_sides, key``) over ``genes``."""

    X: np.ndarray
    obs: pd.DataFrame
    genes: list[str]
    sources: tuple[str, ...] = ("signature_atlas",)

    def __post_init__(self) -> None:
        if self.X.shape != (len(self.obs), len(self.genes)):
            raise DataValidationError(
                f"atlas table has shape {self.X.shape}; expected ({len(self.obs)}, {len(self.genes)}) from obs and genes."
            )
        self.gene_pos = {g: i for i, g in enumerate(self.genes)}
        self._basis_cache: dict[tuple, np.ndarray] = {}
        self._key_rows: dict[str, np.ndarray] | None = None  # key -> its rows (built on the first lookup by key)
        self._z: np.ndarray | None = None  # zscore_rows(X), shared by basis() and the mean signature

    # ------------------------------------------------------------------------------ views
    @property
    def contexts(self) -> list[str]:
        return sorted(self.obs["context"].unique())

    @property
    def keys(self) -> list[str]:
        return sorted(self.obs["key"].unique())

    def rows(self, *, key: str | None = None, context: str | None = None) -> np.ndarray:
        """Indices (ascending) of the signatures of ``key`` and / or in ``context`` (``obs`` is not edited in
        place: a lookup by key alone reads an index built once, ~20k lookups per knowledge table)."""
        if key is not None and context is None:
            if self._key_rows is None:
                keys = self.obs["key"].to_numpy()
                order = np.argsort(keys, kind="stable")
                uniq, start = np.unique(keys[order], return_index=True)
                self._key_rows = dict(zip(uniq.tolist(), np.split(order, start[1:])))
            return self._key_rows.get(key, np.zeros(0, np.int64))
        m = np.ones(len(self.obs), bool)
        if key is not None:
            m &= self.obs["key"].to_numpy() == key
        if context is not None:
            m &= self.obs["context"].to_numpy() == context
        return np.flatnonzero(m)

    def key_of(self, label: str) -> str:
        """Perturbation key of an atlas name (``obs['perturbation']``), a compound name/key or a gene
        symbol (a CRISPRi knockdown); raises with close matches when unknown."""
        text = str(label).strip()
        if text.startswith(("cmp:", "kd:")) and text in set(self.obs["key"]):
            return text
        hit = self.obs.loc[self.obs["perturbation"] == text, "key"]
        if len(hit):
            return str(hit.iloc[0])
        if f"kd:{text}" in set(self.obs["key"]):
            return f"kd:{text}"
        from bioworld.knowledge.compounds import CompoundKnowledge

        ck = CompoundKnowledge.bundled().resolve(text, strict=False)
        if ck and f"cmp:{ck}" in set(self.obs["key"]):
            return f"cmp:{ck}"
        from bioworld.errors import close_matches

        raise UnknownPerturbationError(
            f"{text!r} is not a perturbation of the atlas (no signature for it in any context); close "
            f"matches: {close_matches(text, sorted(set(self.obs['perturbation'])))[:5] or 'none'}. Fix: use "
            "an atlas name (obs['perturbation']), a compound name or a knocked-down gene symbol."
        )

    def check_context(self, context: str) -> str:
        if context not in set(self.obs["context"]):
            from bioworld.errors import close_matches

            raise UnknownPerturbationError(
                f"context {context!r} is not in the atlas; expected one of its {len(self.contexts)} contexts "
                f"(cell lines / cell types), close matches: {close_matches(context, self.contexts)[:5] or 'none'}. "
                "Fix: use a value of the atlas' obs['context'] (e.g. 'A498', 'myeloid')."
            )
        return context

    def mean_signature(self, key: str, *, exclude_rows: np.ndarray | None = None) -> np.ndarray | None:
        """z-scored mean of a perturbation's signatures over its contexts (``None`` when it has none)."""
        idx = self.rows(key=key)
        if exclude_rows is not None:
            idx = np.setdiff1d(idx, exclude_rows)
        if len(idx) == 0:
            return None
        return zscore_rows(self.X[idx].mean(0))

    def zscored(self) -> np.ndarray:
        """``zscore_rows(X)`` (computed once per atlas object; do not modify it)."""
        if self._z is None:
            self._z = zscore_rows(self.X)
        return self._z

    def basis(self, dim: int, *, rows: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """``[G, dim]`` orthonormal principal axes of the z-scored signatures (``rows`` only if given)."""
        from sklearn.utils.extmath import randomized_svd

        idx = np.arange(len(self.obs)) if rows is None else np.asarray(rows)
        key = (dim, seed, len(idx), hash(idx.tobytes()))
        if key not in self._basis_cache:  # deterministic in (rows, dim, seed): computed once per atlas object
            z = self.zscored()[idx]
            z -= z.mean(0, keepdims=True)
            _, _, vt = randomized_svd(z, dim, n_iter=3, random_state=seed)
            signs = np.sign(vt[np.arange(dim), np.abs(vt).argmax(axis=1)])
            self._basis_cache[key] = (vt * signs[:, None]).T.astype(np.float32)
        return self._basis_cache[key]

    def shuffled(self, seed: int) -> "SignatureAtlas":
        """Ablation: every perturbation's signatures re-assigned to another perturbation (keys permuted
        among perturbations of the same kind; contexts kept)."""
        rng = np.random.default_rng(seed)
        obs = self.obs.copy()
        keys = np.array(self.keys)
        for prefix in ("cmp:", "kd:"):
            sel = np.array([k.startswith(prefix) for k in keys])
            ks = keys[sel]
            mapping = dict(zip(ks, ks[rng.permutation(len(ks))]))
            m = obs["key"].str.startswith(prefix)
            obs.loc[m, "key"] = obs.loc[m, "key"].map(mapping)
        out = SignatureAtlas(self.X, obs, self.genes, self.sources)
        out._basis_cache = self._basis_cache  # same rows, same signatures: the axes do not change
        out._z = self._z
        return out


def load_atlas(*, min_signatures: int = MIN_SIGNATURES_PER_GENE, genes: list[str] | None = None) -> SignatureAtlas:
    """The bundled atlas, dense over a gene space (cached per process).

    Parameters
    ----------
    min_signatures
        Default gene space: genes among the stored extremes of at least this many signatures
        (300 -> 6,859 genes).
    genes
        An explicit gene space instead (genes the atlas does not have are all-zero columns).
    """
    key = (min_signatures, tuple(genes) if genes is not None else None)
    if key in _CACHE:
        return _CACHE[key]
    import anndata as ad

    from bioworld.data import bundled_path

    a = ad.read_h5ad(bundled_path(ATLAS_FILE))
    if genes is None:
        nz = np.asarray((a.X != 0).sum(axis=0)).ravel()
        cols = np.flatnonzero(nz >= min_signatures)
        gene_list = [str(g) for g in a.var_names[cols]]
        X = a.X[:, cols].toarray().astype(np.float32)
    else:
        pos = {g: i for i, g in enumerate(a.var_names)}
        gene_list = list(genes)
        X = np.zeros((a.n_obs, len(gene_list)), np.float32)
        have = [(j, pos[g]) for j, g in enumerate(gene_list) if g in pos]
        if have:
            dst, src = map(np.array, zip(*have))
            X[:, dst] = a.X[:, src].toarray()
    obs = a.obs[["source", "context", "context_type", "perturbation", "kind", "compound", "target_gene",
                 "n_ranked", "ranked_sides"]].copy()
    for c in ("source", "context", "context_type", "perturbation", "kind", "compound", "target_gene", "ranked_sides"):
        obs[c] = obs[c].astype(str)
    obs["key"] = np.where(obs["kind"] == "compound", "cmp:" + obs["compound"], "kd:" + obs["target_gene"])
    obs = obs.reset_index(names="signature")
    _CACHE[key] = SignatureAtlas(X, obs, gene_list)
    return _CACHE[key]
