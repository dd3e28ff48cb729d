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

    Accepts the records themselves (``WorldModel.counterfactual``) or their column form (after
    :func:`h5ad_safe` and an h5ad round trip).
    """
    if isinstance(effects, Mapping):
        keys = list(effects)
        n = len(effects[keys[0]]) if keys else 0
        return [{k: (effects[k][i].item() if hasattr(effects[k][i], "item") else effects[k][i]) for k in keys}
                for i in range(n)]
    return [dict(e) for e in effects]


def write_h5ad_atomic(adata: Any, path: str | os.PathLike) -> Path:
    """Write ``adata`` (with :func:`h5ad_safe` ``uns``) next to ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = adata.copy()
    out.uns = h5ad_safe(dict(adata.uns))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.h5ad")
    try:
        out.write_h5ad(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
