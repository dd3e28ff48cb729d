"""Gene networks (STRING, OmniPath) and neighbourhood embeddings of genes.

A gene's *neighbourhood profile* is its row of ``I + W`` (itself plus its weighted neighbours,
rows L2-normalised); two genes are close when they share interaction partners. A deterministic
truncated SVD reduces the profiles to ``dim`` columns, so every gene in the network has a vector
whether or not anyone perturbed it. OmniPath's signed, directed edges give two profiles per gene
(what it regulates, signed; what regulates it, signed), embedded the same way.

The *regulation network* (:func:`regulation_network`) is OmniPath's signed directed edges plus DoRothEA's
TF -> target regulons: what a gene regulates, and with which sign; :func:`directed_paths` reads, for a set of
readout genes, each gene's shortest signed path into them (the planner's ``network_path`` evidence).

Sources and licences: STRING v12 (CC BY 4.0), OmniPath via cosmosR (GPL-3; some constituent
resources non-commercial), DoRothEA (GPL-3); see :mod:`bioworld.knowledge._sources`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import numpy as np
from scipy import sparse

__all__ = ["GeneEmbedding", "directed_paths", "joint_network", "load_omnipath", "load_string", "network_embedding",
           "network_proximity", "regulation_network", "signed_embedding", "signed_graph"]

_CACHE: dict[tuple, "GeneEmbedding"] = {}


@dataclass
class GeneEmbedding:
    """``[n_genes, dim]`` vectors (rows L2-normalised; zero rows are genes without information)."""

    genes: list[str]
    table: np.ndarray
    source: str

    def __post_init__(self) -> None:
        # rows whose name is not a gene (the shipped OmniPath table's '', '2' and ChEBI rows, from the v1 parse of
        # complexes in :func:`compute_signed_embedding`) are kept in the table but never looked up
        self.pos = {g: i for i, g in enumerate(self.genes) if complex_members(g) == [g]}

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def knows(self, gene: str) -> bool:
        return gene in self.pos

    def lookup(self, genes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``([n, dim] vectors, [n] known mask)``; unknown genes get zero rows and mask False."""
        out = np.zeros((len(genes), self.dim), np.float32)
        known = np.zeros(len(genes), bool)
        for i, g in enumerate(genes):
            j = self.pos.get(g)
            if j is not None:
                out[i] = self.table[j]
                known[i] = True
        return out, known

    def shuffled(self, seed: int) -> "GeneEmbedding":
        """Ablation: the same vectors assigned to permuted gene labels."""
        perm = np.random.default_rng(seed).permutation(len(self.genes))
        return GeneEmbedding([self.genes[i] for i in perm], self.table, self.source + " (labels shuffled)")


def _read_edges(name: str, cols: tuple[str, str, str], keep: tuple[str, tuple[str, ...]] | None = None
                ) -> tuple[list[str], list[str], np.ndarray]:
    """Columns ``cols`` (two names, one number) of a bundled edge table; ``keep=(column, values)``: only the
    rows whose ``column`` is one of ``values``."""
    from bioworld.data import bundled_path

    a, b, w = [], [], []
    with gzip.open(bundled_path(name), "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        idx = [header.index(c) for c in cols]
        k = None if keep is None else header.index(keep[0])
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if k is not None and parts[k] not in keep[1]:
                continue
            a.append(parts[idx[0]])
            b.append(parts[idx[1]])
            w.append(float(parts[idx[2]]))
    return a, b, np.asarray(w, np.float64)


def load_string() -> tuple[list[str], sparse.csr_matrix]:
    """STRING v12 (score >= 700, no text-mining): ``(genes, symmetric [n, n] weights in (0.7, 1])``."""
    a, b, w = _read_edges("networks/string_v12_human_ge700.tsv.gz", ("gene_a", "gene_b", "combined_score"))
    genes = sorted(set(a) | set(b))
    pos = {g: i for i, g in enumerate(genes)}
    i, j = np.array([pos[x] for x in a]), np.array([pos[x] for x in b])
    m = sparse.coo_matrix((w / 1000.0, (i, j)), shape=(len(genes), len(genes))).tocsr()
    return genes, (m + m.T).tocsr()


def complex_members(node: str) -> list[str]:
    """The genes of an OmniPath node: ``A_B_C`` is a complex of A, B and C, but a part that is a bare
    number belongs to the symbol before it (``C4B_2`` is one gene, HGNC's second C4B copy), empty parts (a
    complex written with a leading ``_``) are dropped, and so are non-gene members (ChEBI metabolites,
    ``CHEBI:...``). ``[]`` when nothing is left."""
    out: list[str] = []
    for part in node.split("_"):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        elif part and not part.isdigit() and not part.upper().startswith("CHEBI:"):
            out.append(part)
    return out


def load_omnipath(*, complexes: str = "genes") -> tuple[list[str], sparse.csr_matrix]:
    """OmniPath signed directed edges: ``(genes, [n, n] source -> target sign matrix)``.

    Complex nodes (``A_B_C``) are expanded to their member genes (:func:`complex_members`); a pair
    listed with both signs sums to 0. ``complexes="v1"``: the first parse, a plain split on ``_`` (which
    also makes nodes of ``''``, ``'2'`` and ChEBI ids), kept only so that :func:`compute_signed_embedding`
    reproduces the shipped feature table."""
    if complexes not in ("genes", "v1"):
        raise ValueError(f"complexes={complexes!r}; expected 'genes' or 'v1'")
    members = complex_members if complexes == "genes" else (lambda node: node.split("_"))
    a, b, s = _read_edges("networks/omnipath_signed_directed.tsv.gz", ("source", "target", "sign"))
    src, dst, sign = [], [], []
    for x, y, v in zip(a, b, s):
        for xi in members(x):
            for yi in members(y):
                if xi != yi:
                    src.append(xi)
                    dst.append(yi)
                    sign.append(v)
    genes = sorted(set(src) | set(dst))
    pos = {g: i for i, g in enumerate(genes)}
    m = sparse.coo_matrix((np.asarray(sign), ([pos[x] for x in src], [pos[y] for y in dst])),
                          shape=(len(genes), len(genes))).tocsr()
    m.sum_duplicates()
    m.data = np.clip(m.data, -1, 1)
    return genes, m


def _svd_rows(profiles: sparse.csr_matrix, dim: int, seed: int) -> np.ndarray:
    from sklearn.utils.extmath import randomized_svd

    k = min(dim, min(profiles.shape) - 1)
    u, s, vt = randomized_svd(profiles.astype(np.float64), k, n_iter=6, random_state=seed)
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    emb = np.zeros((profiles.shape[0], dim))
    emb[:, :k] = u * (s * signs)[None, :]
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _row_normalise(m: sparse.csr_matrix) -> sparse.csr_matrix:
    norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ m


def compute_network_embedding(dim: int = 64, *, seed: int = 0) -> GeneEmbedding:
    """STRING neighbourhood embedding: SVD of the L2-normalised rows of ``I + W`` (computed now)."""
    genes, w = load_string()
    prof = _row_normalise((sparse.identity(len(genes), format="csr") + w).tocsr())
    return GeneEmbedding(genes, _svd_rows(prof, dim, seed), "string")


def compute_signed_embedding(dim: int = 32, *, seed: int = 0) -> GeneEmbedding:
    """OmniPath embedding: SVD of ``[out-profile | in-profile]`` (signed edges, plus the gene itself).

    Computed on the v1 parse of complexes (``load_omnipath(complexes="v1")``), as the shipped table was: a
    fresh parse rotates the trailing SVD components, so every knowledge feature and benchmark figure would
    move. The parse's non-gene rows stay in the table and are never looked up (:class:`GeneEmbedding`)."""
    genes, m = load_omnipath(complexes="v1")
    eye = sparse.identity(len(genes), format="csr")
    prof = _row_normalise(sparse.hstack([eye + m, eye + m.T]).tocsr())
    return GeneEmbedding(genes, _svd_rows(prof, dim, seed), "omnipath")


def _shipped(name: str, dim: int, seed: int) -> GeneEmbedding | None:
    """The embedding precomputed by :func:`write_shipped_embeddings` (bundled, checksum-verified), if
    ``(dim, seed)`` are the shipped ones."""
    import json

    from safetensors.numpy import load_file

    from bioworld.data import bundled_path

    if (name, dim, seed) not in (("string", 64, 0), ("omnipath", 32, 0)):
        return None
    tensors = load_file(str(bundled_path(EMBEDDINGS_FILE)))
    genes = json.loads(bundled_path(EMBEDDINGS_GENES).read_text())[name]
    return GeneEmbedding(list(genes), tensors[name], name)


def network_embedding(dim: int = 64, *, seed: int = 0) -> GeneEmbedding:
    """STRING neighbourhood embedding (the shipped table for the defaults, else computed; cached per process)."""
    key = ("string", dim, seed)
    if key not in _CACHE:
        _CACHE[key] = _shipped("string", dim, seed) or compute_network_embedding(dim, seed=seed)
    return _CACHE[key]


def signed_embedding(dim: int = 32, *, seed: int = 0) -> GeneEmbedding:
    """OmniPath signed embedding (the shipped table for the defaults, else computed; cached per process)."""
    key = ("omnipath", dim, seed)
    if key not in _CACHE:
        _CACHE[key] = _shipped("omnipath", dim, seed) or compute_signed_embedding(dim, seed=seed)
    return _CACHE[key]


_JOINT: list[tuple[list[str], sparse.csr_matrix]] = []


def joint_network() -> tuple[list[str], sparse.csr_matrix]:
    """STRING (weights) joined with OmniPath (|sign| = 1, both directions): ``(genes, symmetric
    [n, n] csr)``, the larger weight where both list a pair (built once per process)."""
    if _JOINT:
        return _JOINT[0]
    sg, sm = load_string()
    og, om = load_omnipath()
    genes = sorted(set(sg) | set(og))
    pos = {g: i for i, g in enumerate(genes)}
    n = len(genes)

    def lift(names: list[str], m: sparse.csr_matrix) -> sparse.csr_matrix:
        c = m.tocoo()
        idx = np.array([pos[g] for g in names])
        return sparse.coo_matrix((np.abs(c.data), (idx[c.row], idx[c.col])), shape=(n, n)).tocsr()

    o = lift(og, om)
    a = lift(sg, sm).maximum(o.maximum(o.T))
    a.setdiag(0)
    a.eliminate_zeros()
    _JOINT.append((genes, a.tocsr()))
    return _JOINT[0]


def network_proximity(seeds: list[str], *, restart: float = 0.5, n_iter: int = 50,
                      network: tuple[list[str], sparse.csr_matrix] | None = None) -> dict[str, float]:
    """Random walk with restart from ``seeds`` (uniform restart mass) over ``network`` (default
    :func:`joint_network`): each gene's stationary visiting probability; genes off the network, or
    never reached, are absent (proximity 0). Raises ``BioworldError`` when no seed is on the network."""
    genes, a = network if network is not None else joint_network()
    pos = {g: i for i, g in enumerate(genes)}
    s = np.zeros(len(genes))
    idx = sorted({pos[g] for g in seeds if g in pos})
    if not idx:
        from bioworld.errors import BioworldError

        raise BioworldError(f"none of the {len(seeds)} seed genes is on the network; expected gene symbols of "
                            "STRING / OmniPath")
    s[idx] = 1.0 / len(idx)
    deg = np.asarray(a.sum(0)).ravel()
    inv = np.where(deg > 0, 1.0 / np.where(deg > 0, deg, 1.0), 0.0)
    p = s.copy()
    for _ in range(n_iter):  # p = (1 - r) A D^-1 p + r s
        p = (1 - restart) * (a @ (inv * p)) + restart * s
    return {g: float(p[i]) for i, g in enumerate(genes) if p[i] > 0}


def signed_graph(edges: list[tuple[str, str, float]]) -> tuple[list[str], sparse.csr_matrix]:
    """``(genes, [n, n] signed source -> target matrix)`` from ``(source, target, sign)`` edges: the signs of
    parallel edges are summed and clipped to [-1, 1] (a pair listed with both signs has no edge), self loops,
    zero signs and empty names (a complex written with a stray ``_``) are dropped."""
    edges = [(a, b, float(np.sign(v))) for a, b, v in edges if a != b and v != 0 and a and b]
    genes = sorted({a for a, _, _ in edges} | {b for _, b, _ in edges})
    pos = {g: i for i, g in enumerate(genes)}
    m = sparse.coo_matrix(([v for _, _, v in edges], ([pos[a] for a, _, _ in edges], [pos[b] for _, b, _ in edges])),
                          shape=(len(genes), len(genes))).tocsr()
    m.sum_duplicates()
    m.data = np.clip(m.data, -1.0, 1.0)
    m.eliminate_zeros()
    return genes, m


#: DoRothEA confidence levels the regulation network keeps (A: curated, B-C: supported by several sources)
REGULON_CONFIDENCE = ("A", "B", "C")
_REGULATION: list[tuple[list[str], sparse.csr_matrix]] = []


def regulation_network() -> tuple[list[str], sparse.csr_matrix]:
    """OmniPath's signed directed edges (complexes expanded) plus DoRothEA regulons of confidence
    :data:`REGULON_CONFIDENCE` (TF -> target, the sign of the mode of regulation), as one
    :func:`signed_graph` (built once per process)."""
    if not _REGULATION:
        genes, m = load_omnipath()
        c = m.tocoo()
        edges = [(genes[i], genes[j], float(v)) for i, j, v in zip(c.row, c.col, c.data)]
        tf, target, mor = _read_edges("networks/dorothea_hs_regulons.tsv.gz", ("tf", "target", "mor"),
                                      keep=("confidence", REGULON_CONFIDENCE))
        edges += list(zip(tf, target, mor.tolist()))
        _REGULATION.append(signed_graph(edges))
    return _REGULATION[0]


#: Steps and damping of :func:`signed_influence`.
INFLUENCE_HOPS, INFLUENCE_DAMPING = 3, 0.5


def signed_influence(weights: dict[str, float], network: tuple[list[str], sparse.csr_matrix] | None = None, *,
                     hops: int = INFLUENCE_HOPS, damping: float = INFLUENCE_DAMPING) -> dict[str, float]:
    """Each gene's signed influence on a readout through a directed signed graph: ``gene -> sum_{k=1..hops}
    damping^(k-1) (P^k w)[gene]`` for every gene with an out-edge, ``P[g, h] = sign(g -> h) / outdegree(g)`` and
    ``w`` the readout's gene weights (``weights``, e.g. an entity's definition) scaled to ``sum |w| = 1``. A gene's
    own weight (``k = 0``) does not count: only what it regulates. Positive: the gene drives the readout up (so
    removing it lowers the readout). ``network``: default :func:`regulation_network`. Raises
    :class:`~bioworld.errors.BioworldError` when no readout gene is on the graph."""
    from bioworld.errors import BioworldError

    genes, m = network if network is not None else regulation_network()
    pos = {g: i for i, g in enumerate(genes)}
    w = np.zeros(len(genes))
    for g, v in weights.items():
        if g in pos:
            w[pos[g]] = float(v)
    if not np.abs(w).sum():
        raise BioworldError(f"none of the readout's {len(weights)} genes is on the regulation graph")
    w /= np.abs(w).sum()
    out = np.asarray((m != 0).sum(1)).ravel()
    step = sparse.diags(np.where(out > 0, 1.0 / np.maximum(out, 1), 0.0)) @ m
    v, total = w, np.zeros(len(genes))
    for k in range(1, hops + 1):
        v = step @ v
        total += damping ** (k - 1) * v
    return {g: float(total[i]) for i, g in enumerate(genes) if out[i] > 0}


def directed_paths(readout: set[str] | frozenset[str], network: tuple[list[str], sparse.csr_matrix] | None = None,
                   *, max_len: int = 4, sources: list[str] | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """Each gene's shortest directed path into ``readout`` (at most ``max_len`` edges, at least one: a readout
    gene's path leads to *another* readout gene): ``gene -> ([gene, ..., readout gene], [edge signs])``, each
    sign +1 (activating) or -1 (repressing). Genes without such a path are absent. Ties go to
    the alphabetically first next gene (deterministic). ``network``: default :func:`regulation_network`;
    ``sources``: only these genes' paths (default: every gene's)."""
    genes, m = network if network is not None else regulation_network()
    m = m.tocsr()
    if not m.has_sorted_indices:  # _edge looks successors up by binary search
        m = m.sorted_indices()
    pos = {g: i for i, g in enumerate(genes)}
    n = len(genes)
    dist = np.full(n, np.inf)
    hits = [pos[g] for g in readout if g in pos]
    dist[hits] = 0.0
    rev = m.T.tocsr()  # rev[h, g] != 0: g -> h
    frontier = sorted(hits)
    for d in range(1, max_len + 1):  # multi-source BFS backwards from the readout genes
        nxt = sorted({int(g) for h in frontier for g in rev.indices[rev.indptr[h]:rev.indptr[h + 1]] if dist[g] > d})
        dist[nxt] = d
        frontier = nxt
    out: dict[str, tuple[list[str], list[int]]] = {}
    for g in (range(n) if sources is None else sorted({pos[x] for x in sources if x in pos})):
        found = _forward_path(m, g, dist == 0, max_len) if dist[g] == 0 else _descend(m, g, dist, max_len)
        if found is not None:
            out[genes[g]] = ([genes[i] for i in found[0]], found[1])
    return out


def _edge(m: sparse.csr_matrix, a: int, b: int) -> int:
    row = slice(m.indptr[a], m.indptr[a + 1])
    return int(m.data[row][np.searchsorted(m.indices[row], b)])


def _descend(m: sparse.csr_matrix, g: int, dist: np.ndarray, max_len: int) -> tuple[list[int], list[int]] | None:
    """A shortest path from ``g`` (not a target) down the distances ``dist`` to a target (distance 0)."""
    path, signs = [g], []
    while dist[path[-1]] > 0 and len(path) <= max_len:
        cur = path[-1]
        succ = m.indices[m.indptr[cur]:m.indptr[cur + 1]]
        if not len(succ):
            return None
        nxt = int(min(succ, key=lambda s: (dist[s], s)))
        if not np.isfinite(dist[nxt]) or dist[nxt] >= dist[cur]:
            return None
        signs.append(_edge(m, cur, nxt))
        path.append(nxt)
    return (path, signs) if dist[path[-1]] == 0 else None


def _forward_path(m: sparse.csr_matrix, g: int, target: np.ndarray, max_len: int) -> tuple[list[int], list[int]] | None:
    """A shortest path from ``g`` to a target other than ``g`` (breadth first; ties: the lowest index)."""
    parent = {g: -1}
    level = [g]
    for _ in range(max_len):
        nxt: list[int] = []
        for a in level:  # levels in index order: a node's parent is the first to reach it
            for b in m.indices[m.indptr[a]:m.indptr[a + 1]]:
                if int(b) not in parent:
                    parent[int(b)] = a
                    nxt.append(int(b))
        hits = sorted(b for b in nxt if target[b])
        if hits:
            path = [hits[0]]
            while parent[path[-1]] != -1:
                path.append(parent[path[-1]])
            path.reverse()
            return path, [_edge(m, a, b) for a, b in zip(path, path[1:])]
        level = sorted(nxt)
    return None


EMBEDDINGS_FILE = "knowledge/network_embeddings.safetensors"
EMBEDDINGS_GENES = "knowledge/network_embeddings_genes.json"


def write_shipped_embeddings(folder: str) -> None:
    """Recompute the default embeddings (STRING 64, OmniPath 32, seed 0) and write them into ``folder``
    (``python -m bioworld.knowledge.network DIR``; then update ``SHA256SUMS``)."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file

    s, o = compute_network_embedding(64, seed=0), compute_signed_embedding(32, seed=0)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"string": s.table, "omnipath": o.table}, str(out / Path(EMBEDDINGS_FILE).name))
    (out / Path(EMBEDDINGS_GENES).name).write_text(json.dumps({"string": s.genes, "omnipath": o.genes}))


if __name__ == "__main__":
    import sys

    write_shipped_embeddings(sys.argv[1])
