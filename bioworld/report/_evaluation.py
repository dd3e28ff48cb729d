"""The held-out evaluation a model folder holds (``evaluation.csv``, written by ``bioworld evaluate``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from bioworld.errors import BioworldError

EVALUATION = "evaluation.csv"


def load_evaluation(model_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The summary written by :func:`evaluate` into a model folder, or None when it was never evaluated."""
    path = Path(model_dir) / EVALUATION
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BioworldError(f"{path} is not a readable CSV table ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            "expected the table written by evaluate(). Fix: run 'bioworld evaluate' again, or "
                            "delete the file.") from None
    need = {"split", "method", "metric", "mean", "sd", "n"}
    if not need <= set(df.columns):
        raise BioworldError(f"{path} has columns {list(df.columns)}; expected {sorted(need)} as written by evaluate(). "
                            "Fix: run 'bioworld evaluate' again.")
    for col in ("mean", "sd", "n"):  # numbers the model card and reports format
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df[col][values.isna() & df[col].notna()]
        if len(bad):
            raise BioworldError(f"{path} has {len(bad)} non-numeric value(s) in column {col!r} (e.g. {bad.iloc[0]!r}); "
                                "expected numbers as written by evaluate(). Fix: run 'bioworld evaluate' again, or "
                                "delete the file.")
        df[col] = values
    return df
