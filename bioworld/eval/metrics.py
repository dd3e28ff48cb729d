"""Metrics for predicted perturbation effects (pure numpy).

Inputs are per-perturbation mean profiles on the model's log scale (log1p CP10k for counts, the
input scale for log data): an *observed delta* (mean of the perturbed cells minus the mean of the
control cells, ``[G]``) and a *predicted delta* for the same perturbation (``[G]``).
`energy_distance` is the one per-cell metric (``[cells, G]`` inputs).

Every definition is stated in the function's docstring and collected in `METRIC_DEFINITIONS`
(markdown, copied into ``BENCHMARKS.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bioworld.data._deltas import top_de_genes
from bioworld.errors import BioworldError

__all__ = [
    "METRIC_DEFINITIONS",
    "centred_pearson",
    "direction_accuracy",
    "discrimination",
    "energy_distance",
    "mse_top_de",
    "pearson_delta",
    "score_deltas",
    "top_de_genes",
]

METRIC_DEFINITIONS = """\
All profile metrics compare, for one held-out perturbation, the **predicted delta** `p` (predicted
mean expression minus predicted control, `[G]`) with the **observed delta** `o` (mean of the
perturbation's cells minus mean of the control cells, `[G]`), both on log1p-CP10k (single-cell
counts) or on the data's own log scale (L1000). *Top-k DE genes* are the `k` genes with the
largest `|o|` (ties broken by gene order); they are chosen from the observed delta only.

| metric | definition | best |
|---|---|---|
| `mse_top{k}` | mean of `(p_g - o_g)^2` over the top-k DE genes | 0 |
| `pearson_all` | Pearson correlation of `p` and `o` over all genes (undefined = NaN when either is constant, e.g. the no-change baseline) | 1 |
| `pearson_top{k}` | the same over the top-k DE genes | 1 |
| `direction_top{k}` | share of the top-k DE genes where `sign(p_g) == sign(o_g)` (a predicted 0 never agrees) | 1 |
| `discrimination` | `1 - r / (n - 1)` where `r` is the 0-based rank of the true perturbation among the `n` candidate observed deltas, sorted by L1 distance `sum_g abs(p_g - o'_g)` to the prediction (ties count half); 1 = the prediction is closest to its own perturbation, 0.5 = chance | 1 |
| `centred_pearson` | Systema-style: Pearson of `p - m` and `o - m`, where `m` is the mean observed delta over all perturbations (train and test); removes the shared "perturbed vs control" shift that any average profile gets right | 1 |
| `energy_distance` | per-cell: `2 E‖a - b‖ - E‖a - a'‖ - E‖b - b'‖` (Euclidean, cells drawn from the two populations; V-statistic) | 0 |

**Ceiling (split-half)**: each perturbation's cells and the control cells are split at random into
halves A and B; half A's delta is scored as a "prediction" of half B's delta with the metrics
above. It says how reproducible the observed effect is at all. Both sides carry the noise of half
the cells, so it is a conservative (low) estimate of what a perfect model scored against the
full-data delta could reach; a model near or above it is at the noise floor.

Summaries report mean ± sd over held-out perturbations (pooled over folds and seeds; each
perturbation counts once per seed). The *relative MSE reduction vs MeanOfTrain* is
`1 - mean(mse_method) / mean(mse_MeanOfTrain)` over the same perturbations (positive = better
than the mean baseline).
"""


def _vec(x: Any, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise BioworldError(f"{what} has shape {v.shape}; expected a 1-D per-gene delta vector [G]")
    if not np.isfinite(v).all():
        raise BioworldError(f"{what} contains NaN or infinite values; expected finite deltas")
    return v


def _pair(pred: Any, obs: Any) -> tuple[np.ndarray, np.ndarray]:
    p, o = _vec(pred, "pred"), _vec(obs, "obs")
    if p.shape != o.shape:
        raise BioworldError(
            f"pred has {p.shape[0]} genes and obs has {o.shape[0]}; expected the same gene panel in the same order"
        )
    return p, o


def _check_k(k: int, n_genes: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BioworldError(f"k={k!r}; expected a positive integer number of top DE genes")
    return int(min(k, n_genes))


def mse_top_de(pred: Any, obs: Any, k: int = 20) -> float:
    """Mean squared error ``mean((pred_g - obs_g)^2)`` over the top-``k`` DE genes of ``obs``."""
    p, o = _pair(pred, obs)
    idx = top_de_genes(o, k)
    return float(np.mean((p[idx] - o[idx]) ** 2))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if len(a) < 2 or den <= 1e-300:
        return float("nan")
    return float(np.clip((a * b).sum() / den, -1.0, 1.0))


def _gene_index(genes: Any, obs: np.ndarray) -> np.ndarray:
    if genes is None:
        return np.arange(len(obs))
    if isinstance(genes, (int, np.integer)) and not isinstance(genes, bool):
        return top_de_genes(obs, int(genes))
    idx = np.asarray(genes)
    if idx.dtype == bool:
        if idx.shape != obs.shape:
            raise BioworldError(f"gene mask has shape {idx.shape}; expected {obs.shape} (one flag per gene)")
        return np.flatnonzero(idx)
    if not np.issubdtype(idx.dtype, np.integer):
        raise BioworldError(
            f"genes has dtype {idx.dtype}; expected None (all genes), an int k (top-k DE genes), "
            "integer indices or a boolean mask"
        )
    return idx


def pearson_delta(pred: Any, obs: Any, genes: Any = None) -> float:
    """Pearson correlation of predicted and observed deltas.

    Parameters
    ----------
    pred, obs
        ``[G]`` deltas.
    genes
        None: all genes; an int ``k``: the top-``k`` DE genes of ``obs``; or indices / a boolean mask.

    Returns
    -------
    The correlation in [-1, 1]; NaN when either vector is constant over the chosen genes (e.g. a
    no-change prediction), because the correlation is undefined there.
    """
    p, o = _pair(pred, obs)
    idx = _gene_index(genes, o)
    return _pearson(p[idx], o[idx])


def direction_accuracy(pred: Any, obs: Any, k: int = 20) -> float:
    """Share of the top-``k`` DE genes where ``sign(pred_g) == sign(obs_g)``.

    A predicted change of exactly 0 has sign 0 and never matches a DE gene (whose observed change
    is nonzero unless the whole delta is 0).
    """
    p, o = _pair(pred, obs)
    idx = top_de_genes(o, k)
    return float(np.mean(np.sign(p[idx]) == np.sign(o[idx])))


def centred_pearson(pred: Any, obs: Any, reference: Any, genes: Any = None) -> float:
    """Systema-style centred Pearson: ``pearson(pred - reference, obs - reference)``.

    ``reference`` is the mean observed delta over all perturbations of the data set (training and
    test), i.e. the generic "perturbed vs control" shift; a prediction that only reproduces that
    shift scores about 0. ``genes`` as in `pearson_delta` (the top-k set is taken from ``obs``).
    """
    p, o = _pair(pred, obs)
    r = _vec(reference, "reference")
    if r.shape != o.shape:
        raise BioworldError(f"reference has {r.shape[0]} genes; expected {o.shape[0]} like obs")
    idx = _gene_index(genes, o)
    return _pearson(p[idx] - r[idx], o[idx] - r[idx])


def discrimination(pred_deltas: Mapping[str, Any], obs_deltas: Mapping[str, Any]) -> dict[str, float]:
    """How well each prediction picks out its own perturbation among all observed ones.

    For each label ``l`` in ``pred_deltas`` (it must also be in ``obs_deltas``), the L1 distance
    ``d_j = sum_g |pred_l,g - obs_j,g|`` to every observed delta ``j`` of ``obs_deltas`` (``n``
    candidates) is computed; the rank ``r`` of the true ``j = l`` is the number of candidates
    strictly closer plus half the number of other candidates at the same distance. The score is
    ``1 - r / (n - 1)``: 1 = the true perturbation is the closest, 0 = the farthest, 0.5 = chance.

    Returns
    -------
    ``{label: score}`` for the labels of ``pred_deltas``.
    """
    cand = list(obs_deltas)
    if len(cand) < 2:
        raise BioworldError(
            f"discrimination needs at least 2 observed perturbations to rank against; got {len(cand)}"
        )
    missing = [lab for lab in pred_deltas if lab not in obs_deltas]
    if missing:
        raise BioworldError(
            f"predicted labels {missing[:5]} have no observed delta; expected every predicted label among "
            f"the observed ones ({cand[:5]}…)"
        )
    O = np.stack([_vec(obs_deltas[c], f"obs_deltas[{c!r}]") for c in cand])  # [n, G]
    pos = {c: i for i, c in enumerate(cand)}
    out: dict[str, float] = {}
    for lab, pv in pred_deltas.items():
        p = _vec(pv, f"pred_deltas[{lab!r}]")
        if p.shape[0] != O.shape[1]:
            raise BioworldError(f"pred_deltas[{lab!r}] has {p.shape[0]} genes; expected {O.shape[1]}")
        d = np.abs(O - p).sum(1)
        i = pos[lab]
        closer = float((d < d[i]).sum())
        ties = float((d == d[i]).sum() - 1)
        out[lab] = 1.0 - (closer + 0.5 * ties) / (len(cand) - 1)
    return out


def energy_distance(a_cells: Any, b_cells: Any, *, max_cells: int = 2000, seed: int = 0) -> float:
    """Energy distance between two cell populations ``[n_a, G]`` and ``[n_b, G]``.

    ``2 E||a - b|| - E||a - a'|| - E||b - b'||`` with Euclidean distances, all pairs (V-statistic,
    self-pairs included in the within terms). Populations larger than ``max_cells`` are
    subsampled without replacement with ``seed``. 0 for identical populations, larger = further apart.
    """
    a = np.asarray(a_cells, dtype=np.float64)
    b = np.asarray(b_cells, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise BioworldError(
            f"energy_distance got shapes {a.shape} and {b.shape}; expected two non-empty [cells, G] arrays "
            "over the same genes"
        )
    rng = np.random.default_rng(seed)
    if len(a) > max_cells:
        a = a[rng.choice(len(a), max_cells, replace=False)]
    if len(b) > max_cells:
        b = b[rng.choice(len(b), max_cells, replace=False)]

    def mean_dist(x: np.ndarray, y: np.ndarray) -> float:
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
        return float(np.sqrt(np.clip(sq, 0.0, None)).mean())

    return float(2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b))


def score_deltas(
    pred_deltas: Mapping[str, Any],
    obs_deltas: Mapping[str, Any],
    *,
    k: int = 20,
    reference: Any = None,
    candidates: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
) -> "Any":
    """All profile metrics for every predicted label, as a tidy DataFrame.

    Parameters
    ----------
    pred_deltas, obs_deltas
        ``{label: [G] delta}``; every predicted label must be observed.
    k
        Top-k DE genes for ``mse_top{k}``, ``pearson_top{k}``, ``direction_top{k}``.
    reference
        ``[G]`` mean observed delta over all perturbations for ``centred_pearson`` (skipped if None).
    candidates
        Observed deltas to rank against for ``discrimination`` (default: ``obs_deltas``).
    metrics
        Subset of metric names to keep (default: all).

    Returns
    -------
    DataFrame with columns ``perturbation, metric, value``.
    """
    import pandas as pd

    rows: list[tuple[str, str, float]] = []
    disc = discrimination(pred_deltas, candidates if candidates is not None else obs_deltas) \
        if len(candidates if candidates is not None else obs_deltas) >= 2 else {}
    for lab, p in pred_deltas.items():
        if lab not in obs_deltas:
            raise BioworldError(f"predicted label {lab!r} has no observed delta to score against")
        o = obs_deltas[lab]
        rows += [
            (lab, f"mse_top{k}", mse_top_de(p, o, k)),
            (lab, "pearson_all", pearson_delta(p, o)),
            (lab, f"pearson_top{k}", pearson_delta(p, o, k)),
            (lab, f"direction_top{k}", direction_accuracy(p, o, k)),
        ]
        if lab in disc:
            rows.append((lab, "discrimination", disc[lab]))
        if reference is not None:
            rows.append((lab, "centred_pearson", centred_pearson(p, o, reference)))
    df = pd.DataFrame(rows, columns=["perturbation", "metric", "value"])
    if metrics is not None:
        df = df[df["metric"].isin(list(metrics))].reset_index(drop=True)
    return df
