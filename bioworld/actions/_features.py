"""Action features: a fixed vector per gene (from gene-set membership) and per compound (structure).

`GeneFeaturizer` gives every gene that appears in any of its entity sets a vector, so a model
can act on genes it never saw perturbed (and genes outside the expression panel). `CompoundFeaturizer`
gives Morgan fingerprints plus log-dose.
"""

from __future__ import annotations

import base64
import csv
import math
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
from scipy import sparse

from bioworld.errors import close_matches
from bioworld.errors import BioworldError, CheckpointError, EntityError, UnknownPerturbationError

REGULON_PREFIX = "REGULON_"
_GENE_FEATURIZER_VERSION = 1
_COMPOUND_FEATURIZER_VERSION = 1
_DENSE_SVD_MAX_CELLS = 4_000_000  # exact (LAPACK) SVD below this many matrix cells, randomized above


# ---------------------------------------------------------------------------------------- helpers
def _b64(array: np.ndarray, dtype: str) -> str:
    little_endian = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return base64.b64encode(little_endian.tobytes()).decode("ascii")


def _unb64(text: str, dtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    return out.reshape(shape) if shape is not None else out


def regulon_tf_of(entity: Any) -> str | None:
    """The TF whose regulon ``entity`` is: name ``REGULON_<TF>`` (optionally ``<prefix>/``), or any
    entity whose ``source`` mentions DoRothEA (then the name is the TF). ``None`` otherwise."""
    name = str(entity.name).rsplit("/", 1)[-1]
    if name.startswith(REGULON_PREFIX) and len(name) > len(REGULON_PREFIX):
        return name[len(REGULON_PREFIX):]
    if "dorothea" in str(getattr(entity, "source", "")).lower():
        return name
    return None


def _entity_weights(entity: Any) -> list[float]:
    genes = tuple(entity.genes)
    weights = tuple(getattr(entity, "weights", ()) or ())
    if not weights:
        return [1.0] * len(genes)
    if len(weights) != len(genes):
        raise EntityError(
            f"entity {entity.name!r} has {len(genes)} genes but {len(weights)} weights; expected one weight "
            "per gene. Fix the entity definition."
        )
    out = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in out):
        raise EntityError(f"entity {entity.name!r} has NaN/inf weights; expected finite weights. Fix the source file.")
    return out


def _svd_embed(matrix: sparse.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """``[n_genes, dim]`` = U * S of a rank-``dim`` SVD (deterministic signs), zero-padded if rank < dim."""
    n, c = matrix.shape
    k = min(dim, n, c)
    if n * c <= _DENSE_SVD_MAX_CELLS or k >= min(n, c):
        u, s, vt = np.linalg.svd(matrix.toarray().astype(np.float64), full_matrices=False)
        u, s, vt = u[:, :k], s[:k], vt[:k]
    else:
        from sklearn.utils.extmath import randomized_svd

        u, s, vt = randomized_svd(matrix.astype(np.float64), k, n_iter=7, random_state=seed)
    # sign convention: the largest-magnitude loading of each component is positive
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    emb = u * (s * signs)[None, :]
    out = np.zeros((n, dim), dtype=np.float64)
    out[:, :k] = emb
    return out


# ------------------------------------------------------------------------------- gene featurizer
class GeneFeaturizer:
    """Fixed-length features for genes from their membership in entity sets.

    Each entity (pathway, program, GO term, regulon) is one column of a gene x entity matrix
    holding the gene's signed weight (scaled to max 1 per entity, then by ``1/sqrt(size)`` so large
    sets do not dominate). For a regulon entity (name ``REGULON_<TF>`` or source DoRothEA) its TF
    also gets +1 in that column (so a TF sits next to its targets) and a per-set "is a TF" column is
    added. Rows are L2-normalised and reduced by a deterministic SVD to ``dim`` columns
    (zero-padded when the matrix has rank < ``dim``), then L2-normalised again.

    Every gene in the union of the sets has features, whether or not it is in the expression
    panel; genes in no set are unknown (`knows` is False and `features` raises).

    Parameters
    ----------
    entity_set
        An ``EntitySet`` or any iterable of objects with ``.name``, ``.genes``, ``.weights``,
        ``.source`` (e.g. the panel-mapped entity set).
    extra_sets
        More such sets (regulons, GO, Reactome, ...).
    dim
        Output feature dimension ``F``.
    seed
        Seed for the randomized SVD used on large matrices.
    """

    def __init__(self, entity_set: Iterable[Any], extra_sets: Sequence[Iterable[Any]] = (), *, dim: int = 64,
                 seed: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise BioworldError(f"GeneFeaturizer dim={dim!r}; expected a positive int. Use e.g. dim=64.")
        self.dim = dim
        self.seed = int(seed)
        columns: list[str] = []
        triples: list[tuple[str, int, float]] = []  # (gene, column, raw weight)
        tf_pairs: list[tuple[str, int]] = []  # (TF gene, its regulon column)
        for s, entities in enumerate([entity_set, *extra_sets]):
            ents = sorted(entities, key=lambda e: str(e.name))
            for ent in ents:
                col = len(columns)
                columns.append(f"{ent.name} [{getattr(ent, 'source', '') or f'set {s}'}]")
                for g, w in zip(ent.genes, _entity_weights(ent)):
                    if w != 0.0:
                        triples.append((str(g), col, w))
                tf = regulon_tf_of(ent)
                if tf is not None:
                    tf_pairs.append((tf, col))
        genes = sorted({g for g, _, _ in triples} | {tf for tf, _ in tf_pairs})
        if not genes:
            raise EntityError(
                "GeneFeaturizer got no genes (all entity sets are empty); expected at least one entity with "
                "genes. Pass e.g. bw.entities.default_entities()."
            )
        self._genes = tuple(genes)
        self._index = {g: i for i, g in enumerate(genes)}
        self._columns = tuple(columns)
        rows = [self._index[g] for g, _, _ in triples]
        cols = [c for _, c, _ in triples]
        vals = [w for _, _, w in triples]
        self._membership = sparse.csr_matrix(
            (np.asarray(vals, np.float32), (rows, cols)), shape=(len(genes), len(columns)), dtype=np.float32
        )
        self._membership.sum_duplicates()
        self._tf = sparse.csr_matrix(
            (np.ones(len(tf_pairs), np.float32), ([self._index[t] for t, _ in tf_pairs], [c for _, c in tf_pairs])),
            shape=(len(genes), len(columns)), dtype=np.float32,
        )
        self._tf.data[:] = 1.0
        self._table = self._fit().astype(np.float32)
        self._has_membership = True
        self._lower: dict[str, list[str]] | None = None

    def _fit(self) -> np.ndarray:
        m = self._membership.tocsc(copy=True).astype(np.float64)
        # scale each entity column to max |w| = 1, put TFs into their regulon column with +1
        col_max = np.asarray(abs(m).max(axis=0).todense()).ravel()
        col_max[col_max == 0] = 1.0
        m = m @ sparse.diags(1.0 / col_max)
        tf = self._tf.tocsc().astype(np.float64)
        m = m - m.multiply(tf) + tf  # the TF flag replaces a self-regulation weight
        blocks = [sparse.csc_matrix(m)]
        is_tf = np.asarray(self._tf.sum(axis=1)).ravel() > 0
        if is_tf.any():
            blocks.append(sparse.csc_matrix(is_tf.astype(np.float64)[:, None]))
        x = sparse.hstack(blocks, format="csc")
        nnz = np.diff(x.indptr).astype(np.float64)
        x = x @ sparse.diags(1.0 / np.sqrt(np.maximum(nnz, 1.0)))
        x = sparse.csr_matrix(x)
        row_norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        x = sparse.diags(1.0 / np.maximum(row_norm, 1e-12)) @ x
        emb = _svd_embed(sparse.csr_matrix(x), self.dim, self.seed)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norm, 1e-12)

    # ---- queries
    @property
    def genes(self) -> tuple[str, ...]:
        """All genes with features (sorted)."""
        return self._genes

    def knows(self, gene: str) -> bool:
        """True when ``gene`` is in at least one entity (or is a regulon's TF)."""
        return gene in self._index

    def _unknown_error(self, unknown: list[str]) -> UnknownPerturbationError:
        if self._lower is None:
            self._lower = {}
            for g in self._genes:
                self._lower.setdefault(g.lower(), []).append(g)
        parts = []
        for g in unknown[:5]:
            close = close_matches(g, self._genes, lower_index=self._lower)
            parts.append(f"{g!r}" + (f" (close: {', '.join(close)})" if close else ""))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return UnknownPerturbationError(
            f"no gene features for {', '.join(parts)}{more}; expected genes that appear in the featurizer's "
            f"entity sets ({len(self._genes)} genes). Check the symbols, or add gene sets (e.g. GO, regulons) "
            "that contain them."
        )

    def features(self, genes: Sequence[str] | str) -> np.ndarray:
        """``[n, F]`` float32 features, one L2-normalised row per gene (a single str gives ``[1, F]``).

        Raises `UnknownPerturbationError` (with close matches) for genes in no entity set.
        """
        if isinstance(genes, str):
            genes = [genes]
        genes = list(genes)
        unknown = [g for g in genes if g not in self._index]
        if unknown:
            raise self._unknown_error(unknown)
        return self._table[[self._index[g] for g in genes]].copy().reshape(len(genes), self.dim)

    def explain(self, gene: str) -> list[str]:
        """The entities (``"NAME [source]"``) that contain ``gene``, and the regulons whose TF it is."""
        if gene not in self._index:
            raise self._unknown_error([gene])
        if not self._has_membership:
            raise BioworldError(
                "this GeneFeaturizer was saved with include_membership=False, so it cannot explain genes; "
                "expected the membership table. Rebuild it from the entity sets to use explain()."
            )
        i = self._index[gene]
        row = self._membership.getrow(i)
        out = []
        for c, w in sorted(zip(row.indices, row.data), key=lambda t: self._columns[t[0]]):
            out.append(self._columns[c] if w == 1.0 else f"{self._columns[c]} (weight {float(w):g})")
        out += [f"TF of {self._columns[c]}" for c in sorted(self._tf.getrow(i).indices, key=lambda c: self._columns[c])]
        return out

    def __repr__(self) -> str:
        return f"GeneFeaturizer({len(self._genes)} genes, {len(self._columns)} entities, dim={self.dim})"

    # ---- state
    def to_dict(self, *, include_membership: bool = True) -> dict[str, Any]:
        """JSON-able state: the exact feature table (base64 little-endian float32) and, unless
        ``include_membership=False``, the membership needed by `explain` (the larger part with
        GO / Reactome: ~14 MB of JSON vs ~6 MB without). Restoring needs no refit and gives
        bit-identical features."""
        mem = self._membership.tocsr()
        if not include_membership:
            mem = sparse.csr_matrix(mem.shape, dtype=np.float32)
        tf = self._tf.tocoo()
        return {
            "has_membership": bool(include_membership),
            "version": _GENE_FEATURIZER_VERSION, "dim": self.dim, "seed": self.seed,
            "genes": list(self._genes), "columns": list(self._columns),
            "table_f32": _b64(self._table, "float32"),
            "membership": {"indptr": _b64(mem.indptr, "int64"), "indices": _b64(mem.indices, "int32"),
                           "data_f32": _b64(mem.data, "float32")},
            "tf": [[int(r), int(c)] for r, c in zip(tf.row, tf.col)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneFeaturizer":
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or d.get("version") != _GENE_FEATURIZER_VERSION:
            raise CheckpointError(
                f"gene featurizer state with version {d.get('version') if isinstance(d, dict) else d!r}; expected "
                f"version {_GENE_FEATURIZER_VERSION}. Re-save the model with this bioworld version."
            )
        self = cls.__new__(cls)
        self.dim, self.seed = int(d["dim"]), int(d["seed"])
        self._genes = tuple(d["genes"])
        self._index = {g: i for i, g in enumerate(self._genes)}
        self._columns = tuple(d["columns"])
        n, c = len(self._genes), len(self._columns)
        try:
            self._table = _unb64(d["table_f32"], "float32", (n, self.dim))
            m = d["membership"]
            self._membership = sparse.csr_matrix(
                (_unb64(m["data_f32"], "float32"), _unb64(m["indices"], "int32"), _unb64(m["indptr"], "int64")),
                shape=(n, c),
            )
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"gene featurizer state is corrupt ({err}); expected the output of GeneFeaturizer.to_dict. "
                "Re-save the model."
            ) from err
        tf = np.asarray(d["tf"], dtype=np.int64).reshape(-1, 2)
        self._tf = sparse.csr_matrix((np.ones(len(tf), np.float32), (tf[:, 0], tf[:, 1])), shape=(n, c))
        self._has_membership = bool(d.get("has_membership", True))
        self._lower = None
        return self


# --------------------------------------------------------------------------- compound featurizer
def compound_key(pert_id: str) -> str:
    """Join key of a LINCS ``pert_id``: its first 13 characters (``BRD-K12345678-001-01-1`` ->
    ``BRD-K12345678``); shorter ids (``DMSO``) are kept whole."""
    if not isinstance(pert_id, str) or not pert_id.strip():
        raise BioworldError(f"compound id {pert_id!r}; expected a non-empty string such as 'BRD-K12345678'. "
                            "Fill missing pert_ids.")
    return pert_id.strip()[:13]


def load_smiles_table(path: str | Path, *, kind: Literal["auto", "lincs", "sciplex"] = "auto") -> dict[str, str]:
    """Read a bundled SMILES table into ``{key: SMILES}``.

    Parameters
    ----------
    path
        The CSV, e.g. ``bw.data.bundled_path("compounds/lincs_drugs_smiles.csv")``.
    kind
        ``"lincs"``: no header, ``BRD-ID, SMILES``; keys are `compound_key` of the id (join with
        ``compound_key(obs['pert_id'])``). ``"sciplex"``: no header, ``name,SMILES,target class``;
        keys are the names. ``"auto"`` (default): ``lincs`` when the first row has two columns,
        ``sciplex`` when it has three.

    Duplicate keys with the same SMILES are merged; with different SMILES they raise.
    """
    if kind not in ("auto", "lincs", "sciplex"):
        raise BioworldError(f"SMILES table kind {kind!r}; expected 'auto', 'lincs' or 'sciplex'. Pass one of those.")
    path = Path(path)
    if not path.is_file():
        raise BioworldError(f"SMILES table {str(path)!r} does not exist; expected a CSV file. Check the path.")
    if kind == "auto":
        with path.open(newline="", encoding="utf-8") as fh:
            first = next((row for row in csv.reader(fh, skipinitialspace=True) if any(c.strip() for c in row)), [])
        if len(first) not in (2, 3):
            raise BioworldError(
                f"{path.name} starts with a row of {len(first)} column(s) {first!r}; expected 'BRD-ID, SMILES' "
                "(lincs) or 'name,SMILES,target class' (sciplex). Pass kind= or fix the file."
            )
        kind = "lincs" if len(first) == 2 else "sciplex"
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh, skipinitialspace=True), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 2 or (kind == "lincs" and len(row) != 2):
                raise BioworldError(
                    f"{path.name} line {lineno} has {len(row)} column(s) {row!r}; expected "
                    f"{'BRD-ID, SMILES' if kind == 'lincs' else 'name,SMILES,target class'}. Check kind= and the file."
                )
            key = compound_key(row[0]) if kind == "lincs" else row[0].strip()
            smiles = row[1].strip()
            if not key or not smiles:
                raise BioworldError(
                    f"{path.name} line {lineno} has an empty name or SMILES; expected both. Fix the row."
                )
            if key in out and out[key] != smiles:
                raise BioworldError(
                    f"{path.name} line {lineno}: {key!r} has two SMILES ({out[key]!r}, {smiles!r}); expected one "
                    "structure per compound. Remove one of the rows."
                )
            out[key] = smiles
    return out


def smiles_for(compound_ids: Mapping[str, str], table: Mapping[str, str]) -> dict[str, str]:
    """``{compound name: SMILES}`` by joining ``{name: pert_id}`` to a LINCS table on `compound_key`."""
    out, missing = {}, []
    for name, pert_id in compound_ids.items():
        key = compound_key(pert_id)
        if key in table:
            out[name] = table[key]
        else:
            missing.append(f"{name} ({pert_id})")
    if missing:
        raise UnknownPerturbationError(
            f"no SMILES for {len(missing)} compound(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            "expected their ids (first 13 characters) in the SMILES table. Add their structures to the table."
        )
    return out


class CompoundFeaturizer:
    """Morgan fingerprints (RDKit, radius 2, 1024 bits) plus ``log10(dose + 1e-3)``.

    Parameters
    ----------
    smiles
        ``{compound name: SMILES}`` (names as in the action labels). SMILES are parsed on first use
        of each compound (`validate` checks them all at once).
    radius, n_bits
        Morgan fingerprint settings.
    """

    dose_eps: float = 1e-3

    def __init__(self, smiles: Mapping[str, str], *, radius: int = 2, n_bits: int = 1024) -> None:
        if isinstance(smiles, (str, bytes)) or not isinstance(smiles, Mapping):
            raise BioworldError(
                f"CompoundFeaturizer got {type(smiles).__name__}; expected a mapping {{name: SMILES}}. "
                "Use load_smiles_table(...) or build a dict."
            )
        for name, smi in smiles.items():
            if not isinstance(name, str) or not name or not isinstance(smi, str) or not smi.strip():
                raise BioworldError(
                    f"SMILES entry {name!r}: {smi!r}; expected a non-empty name and SMILES string. Fix that entry."
                )
        self.smiles = {str(k): v.strip() for k, v in smiles.items()}
        self.radius, self.n_bits = int(radius), int(n_bits)
        self._fps: dict[str, np.ndarray] = {}
        self._bitvects: dict[str, Any] = {}
        self._generator: Any = None
        self._lower: dict[str, list[str]] | None = None

    @property
    def dim(self) -> int:
        """Feature length: ``n_bits + 1`` (fingerprint, then log-dose)."""
        return self.n_bits + 1

    def knows(self, name: str) -> bool:
        """True when the compound has a SMILES."""
        return name in self.smiles

    def _mol(self, name: str) -> Any:
        from rdkit import Chem
        from rdkit.rdBase import BlockLogs

        if name not in self.smiles:
            if self._lower is None:
                self._lower = {}
                for k in self.smiles:
                    self._lower.setdefault(k.lower(), []).append(k)
            close = close_matches(name, list(self.smiles), lower_index=self._lower)
            raise UnknownPerturbationError(
                f"no SMILES for compound {name!r}{' (close: ' + ', '.join(close) + ')' if close else ''}; expected "
                f"one of the {len(self.smiles)} compounds of the SMILES table. Check the name or add its SMILES."
            )
        with BlockLogs():  # RDKit would print its own parse errors to stderr
            mol = Chem.MolFromSmiles(self.smiles[name])
        if mol is None:
            raise BioworldError(
                f"malformed SMILES for compound {name!r}: {self.smiles[name]!r}; expected a valid SMILES string. "
                "Fix or remove that entry of the SMILES table."
            )
        return mol

    def _bitvect(self, name: str) -> Any:
        if name not in self._bitvects:
            if self._generator is None:
                from rdkit.Chem import rdFingerprintGenerator

                self._generator = rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.n_bits)
            self._bitvects[name] = self._generator.GetFingerprint(self._mol(name))
        return self._bitvects[name]

    def fingerprint(self, name: str) -> np.ndarray:
        """``[n_bits]`` uint8 Morgan fingerprint of a compound."""
        if name not in self._fps:
            bv = self._bitvect(name)
            fp = np.zeros(self.n_bits, dtype=np.uint8)
            fp[list(bv.GetOnBits())] = 1
            self._fps[name] = fp
        return self._fps[name].copy()

    def features(self, name: str, dose: float) -> np.ndarray:
        """``[n_bits + 1]`` float32: fingerprint, then ``log10(dose + 1e-3)`` (dose in the data's unit)."""
        if isinstance(dose, bool) or not isinstance(dose, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(dose)) or dose < 0:
            raise BioworldError(f"dose {dose!r} for compound {name!r}; expected a finite number >= 0. Fix the dose.")
        out = np.empty(self.dim, dtype=np.float32)
        out[:-1] = self.fingerprint(name)
        out[-1] = math.log10(float(dose) + self.dose_eps)
        return out

    def tanimoto(self, a: str, b: str) -> float:
        """Tanimoto similarity of two compounds' fingerprints (1.0 for identical structures)."""
        from rdkit import DataStructs

        return float(DataStructs.TanimotoSimilarity(self._bitvect(a), self._bitvect(b)))

    def validate(self, names: Iterable[str] | None = None) -> None:
        """Parse the SMILES of ``names`` (default: all); one error lists every unknown / malformed compound."""
        bad = []
        for name in (self.smiles if names is None else names):
            try:
                self._mol(name)
            except BioworldError:
                bad.append(name)
        if bad:
            detail = ", ".join(f"{n!r} ({self.smiles.get(n, 'no SMILES')!r})" for n in bad[:5])
            raise BioworldError(
                f"{len(bad)} compound(s) without a valid SMILES: {detail}{' ...' if len(bad) > 5 else ''}; "
                "expected parseable SMILES for every compound. Fix or remove those entries."
            )

    def __repr__(self) -> str:
        return f"CompoundFeaturizer({len(self.smiles)} compounds, radius={self.radius}, n_bits={self.n_bits})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {"version": _COMPOUND_FEATURIZER_VERSION, "radius": self.radius, "n_bits": self.n_bits,
                "smiles": dict(self.smiles)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompoundFeaturizer":
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or d.get("version") != _COMPOUND_FEATURIZER_VERSION:
            raise CheckpointError(
                f"compound featurizer state with version {d.get('version') if isinstance(d, dict) else d!r}; "
                f"expected version {_COMPOUND_FEATURIZER_VERSION}. Re-save the model with this bioworld version."
            )
        return cls(d["smiles"], radius=d["radius"], n_bits=d["n_bits"])
