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
    df = pd.read_csv(path)
    need = {"split", "method", "metric", "mean", "sd", "n"}
    if not need <= set(df.columns):
        raise BioworldError(f"{path} has columns {list(df.columns)}; expected {sorted(need)} as written by evaluate(). "
                            "Fix: run 'bioworld evaluate' again.")
    return df
