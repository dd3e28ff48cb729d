"""Out-of-core expression: train from an on-disk (backed) ``.h5ad`` without loading all cells.

A backed AnnData (``anndata.read_h5ad(path, backed="r")``, or :func:`open_backed`) keeps ``X`` in
the file. bioworld then

* validates and summarises ``X`` in row blocks (:func:`iter_row_blocks`), so registration,
  the control mean and the per-gene spread cost one streaming pass and O(block) memory;
* trains from a **block buffer** (:class:`bioworld.data.collate.BlockBufferSampler`): the
  strategy of scDataset's block shuffling with a fetch factor (D'Ascenzo & Cultrera di Montesano,
  2025) and of the backed loaders in the anndata ecosystem: random *contiguous* blocks of rows
  are read (sequential I/O), pooled into a buffer of a fixed size that is refreshed every few
  steps, and transitions are drawn from the buffer plus a fixed resident pool of control cells.
  Peak memory is set by ``buffer_blocks x block_size`` and the control pool, not by the number of
  cells in the file.

:class:`BackedExpression` is the row source: indexing it with cell indices reads those rows
(grouped into contiguous runs), normalises them exactly as :func:`bioworld.data.normalize` does
and standardises them with the model's control mean and gene spread.
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from bioworld.errors import DataValidationError

__all__ = ["BackedExpression", "is_backed", "iter_row_blocks", "normalize_block", "open_backed", "read_rows",
           "streaming_moments", "write_h5ad_chunks"]

BLOCK_ROWS = 8192  # rows per block for streaming passes (bounded memory per pass)
#: whether streaming passes over a backed X show a progress bar (off inside :func:`scan_progress`\ (False))
_SHOW_SCANS: contextvars.ContextVar[bool] = contextvars.ContextVar("bioworld_show_scans", default=True)


@contextlib.contextmanager
def scan_progress(show: bool) -> Iterator[None]:
    """Show (or hide) the progress bar of the data's streaming passes inside the block (``bioworld train --quiet``
    hides it; the training bars take their own ``progress``)."""
    token = _SHOW_SCANS.set(bool(show))
    try:
        yield
    finally:
        _SHOW_SCANS.reset(token)


def scans_shown() -> bool:
    """False inside ``scan_progress(False)``."""
    return _SHOW_SCANS.get()


def open_backed(path: str | Path):
    """Open an ``.h5ad`` read-only with ``X`` left on disk (``anndata.read_h5ad(path, backed='r')``)."""
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise DataValidationError(f"{str(p)!r} does not exist; expected an .h5ad file to open backed (on disk)")
    import warnings

    from bioworld.data._io import _warn_repeated_cell_names

    try:
        with warnings.catch_warnings():  # said in bioworld's words below
            warnings.filterwarnings("ignore", message="Observation names are not unique")
            adata = ad.read_h5ad(p, backed="r")
    except Exception as e:  # noqa: BLE001 - h5py/anndata raise many types for broken files
        raise DataValidationError(
            f"could not open {str(p)!r} as a backed h5ad ({type(e).__name__}: {e}); expected an AnnData .h5ad "
            "file written by anndata. Fix: check the file is complete (re-copy it) and readable."
        ) from None
    _warn_repeated_cell_names(adata, p)
    return adata


def is_backed(adata: Any) -> bool:
    """True when ``adata.X`` lives on disk (AnnData opened with ``backed='r'``)."""
    return bool(getattr(adata, "isbacked", False))


def _as_block(x: Any) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(x):
        return sp.csr_matrix(x)
    return np.asarray(x)


def iter_row_blocks(X: Any, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(start, stop, block)`` over the rows of an in-memory or backed matrix.

    ``block`` is a dense ``ndarray`` or a ``csr_matrix`` of ``stop - start`` rows.
    """
    n = X.shape[0]
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        yield start, stop, _as_block(X[start:stop])


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``[(start, stop), ...]`` of sorted unique row indices."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops)]


def read_rows(X: Any, rows: np.ndarray) -> np.ndarray | sp.csr_matrix:
    """Rows ``rows`` (any order, repeats allowed) of ``X``, read as contiguous runs.

    On a backed matrix every run is one sequential read; the result is in the order of ``rows``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= X.shape[0]):
        raise IndexError(f"row indices outside 0..{X.shape[0] - 1}")
    uniq, inverse = np.unique(rows, return_inverse=True)
    parts = [_as_block(X[a:b]) for a, b in _runs(uniq)]
    if not parts:
        return np.zeros((0, X.shape[1]), dtype=np.float32)
    block = sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.concatenate(parts, axis=0)
    return block[inverse]


def normalize_block(block: Any, input: str) -> np.ndarray:
    """One block of rows on the log scale as dense ``float32`` (the math of :func:`bioworld.data.normalize`).

    ``input='counts'``: scale each cell to 10,000 total counts, then ``log1p`` (zero-count cells
    stay zero); ``input='log'``: values as they are.
    """
    if input == "log":
        out = block.toarray() if sp.issparse(block) else np.asarray(block)
        return np.asarray(out, dtype=np.float32)
    if sp.issparse(block):
        X = sp.csr_matrix(block)
        totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        out = (sp.diags(scale) @ X.astype(np.float64)).astype(np.float32).toarray()
    else:
        X = np.asarray(block)
        totals = X.sum(axis=1, dtype=np.float64)
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        out = (X * scale[:, None]).astype(np.float32)
    return np.log1p(out, out=out)


def streaming_moments(X: Any, input: str, is_control: np.ndarray, *, block_rows: int = BLOCK_ROWS,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over ``X``: ``(control mean, mean, std)`` per gene of the normalised expression.

    Accumulates in float64 over row blocks; memory is one block.
    """
    from tqdm.auto import tqdm

    n, G = X.shape
    s = np.zeros(G)
    s2 = np.zeros(G)
    sc = np.zeros(G)
    nc = int(np.sum(is_control))
    if nc == 0:
        raise DataValidationError("no control cells to compute the control mean from; expected at least one")
    bar = tqdm(total=n, desc="scanning cells", unit="cell", disable=not progress, leave=False)
    for start, stop, block in iter_row_blocks(X, block_rows):
        x = normalize_block(block, input).astype(np.float64)
        s += x.sum(0)
        s2 += np.square(x).sum(0)
        c = is_control[start:stop]
        if c.any():
            sc += x[c].sum(0)
        bar.update(stop - start)
    bar.close()
    mean = s / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return (sc / nc).astype(np.float32), mean.astype(np.float32), np.sqrt(var).astype(np.float32)


class BackedExpression:
    """Standardised expression rows read on demand from an in-memory or backed ``X``.

    ``self[rows]`` = ``(normalize(X[rows]) - mu) / sd`` as ``float32 [len(rows), G]``; rows are
    read as contiguous runs (see :func:`read_rows`). ``rows_read`` counts rows fetched so far (how
    much of the file training touched).
    """

    def __init__(self, X: Any, input: str, mu: np.ndarray, sd: np.ndarray) -> None:
        self.X, self.input = X, input
        self.mu = np.asarray(mu, dtype=np.float32)
        self.sd = np.asarray(sd, dtype=np.float32)
        self.rows_read = 0
        self.max_rows_per_read = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.X.shape[0]), int(self.X.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        self.rows_read += len(rows)
        self.max_rows_per_read = max(self.max_rows_per_read, len(rows))
        x = normalize_block(read_rows(self.X, rows), self.input)
        return ((x - self.mu) / self.sd).astype(np.float32)


def write_h5ad_chunks(path: str | Path, chunks: Iterable[Any], *, obs: Any = None, var: Any = None) -> Path:
    """Write an ``.h5ad`` whose sparse ``X`` is appended chunk by chunk (memory = one chunk + ``obs``).

    ``chunks`` yields either row blocks (``csr_matrix`` or dense, in the order of ``obs``; then
    ``obs`` and ``var`` are required) or AnnData pieces (their ``obs`` rows are concatenated and
    their ``var`` must agree). The file is an ordinary AnnData with a CSR ``X`` that
    :func:`open_backed` reads; used to build on-disk screens larger than memory (the 1M-cell
    scaling benchmark). It is written to ``PATH.tmp`` and renamed when complete, so an interrupted
    or refused write leaves nothing under ``path``.
    """
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    obs_parts: list[Any] = []
    n_rows = 0
    try:
        with h5py.File(tmp, "w") as f:
            for chunk in chunks:
                if hasattr(chunk, "obs") and hasattr(chunk, "X"):
                    if var is None:
                        var = chunk.var
                    elif list(chunk.var_names) != list(var.index):
                        raise DataValidationError(
                            f"chunk {len(obs_parts)} has genes {list(chunk.var_names)[:3]}...; expected the same "
                            f"var_names as the first chunk ({list(var.index)[:3]}...)")
                    obs_parts.append(chunk.obs)
                    chunk = chunk.X
                c = sp.csr_matrix(chunk, dtype=np.float32)
                if var is not None and c.shape[1] != len(var):
                    raise DataValidationError(f"chunk has {c.shape[1]} genes; expected {len(var)} (len(var))")
                if n_rows == 0:
                    write_elem(f, "X", c)  # anndata makes sparse datasets resizable
                else:
                    sparse_dataset(f["X"]).append(c)
                n_rows += c.shape[0]
            if obs is None:
                if not obs_parts:
                    raise DataValidationError("no obs given and the chunks are not AnnData; pass obs= and var=")
                obs = pd.concat(obs_parts)
            if var is None:
                raise DataValidationError("var is required when the chunks are plain matrices")
            if n_rows != len(obs):
                raise DataValidationError(f"chunks hold {n_rows} rows; expected {len(obs)} (len(obs))")
            if not obs.index.is_unique:
                dup = obs.index[obs.index.duplicated()][:3].tolist()
                raise DataValidationError(
                    f"cell names repeat across chunks (e.g. {dup}); expected unique obs_names. "
                    "Fix: prefix each chunk's obs_names (e.g. with the chunk number).")
            write_elem(f, "obs", obs)
            write_elem(f, "var", var)
            for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
                write_elem(f, key, {})
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(p)
    return p
