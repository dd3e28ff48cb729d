"""Writing query results as ``.h5ad``: ``uns`` made storable (h5ad holds no lists of dicts or None)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["effect_records", "h5ad_safe", "write_h5ad_atomic"]


def h5ad_safe(value: Any) -> Any:
    """A copy of ``value`` that ``write_h5ad`` can store in ``uns``.

    Lists of dicts (e.g. ``entity_effects[spec]`` = ``[{entity, shift, share}, ...]``) become dicts of
    columns (``{"entity": [...], "shift": array, "share": array}``); ``None`` values are left out;
    everything else is kept as is. :func:`effect_records` turns the columns back into records.
    """
    if isinstance(value, Mapping):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        keys = list(dict.fromkeys(k for v in value for k in v))
        columns = {}
        for k in keys:
            col = [v.get(k) for v in value]
            if all(isinstance(c, (int, float, np.number)) and not isinstance(c, bool) for c in col):
                columns[str(k)] = np.asarray(col, dtype=float)
            else:
                columns[str(k)] = np.asarray(["" if c is None else str(c) for c in col], dtype=object)
        return columns
    if isinstance(value, (list, tuple)):
        return [h5ad_safe(v) for v in value if v is not None]
    return value


def effect_records(effects: Any) -> list[dict[str, Any]]:
    """Entity effects of one intervention as records ``[{entity, shift, share}, ...]``.

    Accepts a DataFrame ``entity, shift, share`` (``WorldModel.counterfactual``), records, or their
    column form (after :func:`h5ad_safe` and an h5ad round trip).
    """
    if hasattr(effects, "to_dict") and hasattr(effects, "columns"):  # a DataFrame (WorldModel.counterfactual)
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                for r in effects.to_dict("records")]
    if isinstance(effects, Mapping):
        keys = list(effects)
        n = len(effects[keys[0]]) if keys else 0
        return [{k: (effects[k][i].item() if hasattr(effects[k][i], "item") else effects[k][i]) for k in keys}
                for i in range(n)]
    return [dict(e) for e in effects]


def h5ad_bytes(adata: Any) -> bytes:
    """``adata`` serialised as an ``.h5ad`` file, in memory.

    HDF5 caches what it writes and can crash the process (not raise) when the disk fills up under
    it; building the file in memory first makes the only disk write a plain one, whose failure is
    an ordinary ``OSError``.
    """
    import io

    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write_elem(f, "/", adata)
    return buf.getvalue()


def write_h5ad_atomic(adata: Any, path: str | os.PathLike) -> Path:
    """Write ``adata`` (with :func:`h5ad_safe` ``uns``) to ``path`` atomically.

    Through :func:`bioworld._atomic.write_files`: the file is built in memory
    (:func:`h5ad_bytes`), written to a temporary file beside ``path`` and renamed over it when
    complete, with mode ``0o666 & ~umask``; a failed write is an
    :class:`~bioworld.errors.OutputError` naming ``path`` and leaves nothing behind.
    """
    from bioworld._atomic import write_bytes

    out = adata.copy()
    out.uns = h5ad_safe(dict(adata.uns))
    out.strings_to_categoricals()  # as AnnData.write_h5ad does
    return write_bytes(path, h5ad_bytes(out))
