"""Prediction intervals for perturbation effects: seed-ensemble spread and split-conformal calibration.

Pure numpy; no model, no AnnData. Shapes: ``P`` perturbations, ``G`` genes.

Two sources of uncertainty are kept apart:

* *Model variance*: how much models trained with different seeds disagree (``ensemble_sd``). It is
  cheap but blind to the error every member shares (on Papalexi most of the held-out error is
  shared bias: each member predicts a near-average response for an unseen target).
* *Held-out error*: how far predictions of perturbations a model never saw fall from what was then
  observed. :func:`conformal_quantile` turns held-out residuals into an interval half-width per
  gene, ``q * gene_scale[g]``, that covers a fresh perturbation's observed delta with probability
  about ``level`` (split-conformal, pooled over genes after scaling each gene by its spread across
  the training perturbations). The guarantee is marginal over perturbations *and genes*: genes
  a perturbation moves most (its top DE genes) are covered less often. ``benchmarks/run_uncertainty.py``
  measures both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bioworld.errors import BioworldError

_SCALE_FLOOR = 1e-3  # gene_scale floor, relative to the median gene's scale (genes no perturbation moves)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise BioworldError(f"interval level={level!r}; expected a probability strictly between 0 and 1 (e.g. 0.9)")
    return level


def _matrix(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.size == 0:
        raise BioworldError(f"{what} has shape {np.shape(x)}; expected a non-empty [perturbations, genes] array")
    if not np.isfinite(a).all():
        raise BioworldError(f"{what} holds {int((~np.isfinite(a)).sum())} NaN/inf values; expected finite numbers")
    return a


def gene_scale(train_deltas: Any) -> np.ndarray:
    """``[G]`` spread of each gene's delta across training perturbations (RMS about 0), floored.

    The floor (``_SCALE_FLOOR`` x the median gene's scale) keeps genes that no training
    perturbation moved from getting a zero-width interval.
    """
    d = _matrix(train_deltas, "train_deltas")
    s = np.sqrt((d**2).mean(0))
    med = float(np.median(s)) if np.median(s) > 0 else float(s.max() if s.max() > 0 else 1.0)
    return np.maximum(s, _SCALE_FLOOR * med)


def conformal_quantile(residuals: Any, scale: Any, level: float) -> float:
    """Split-conformal quantile of ``|residual| / scale`` for intervals ``pred ± q * scale``.

    ``residuals`` ``[P, G]`` are held-out errors (observed minus predicted delta of perturbations the
    predicting model did not see); the ``n = P * G`` scores are pooled over genes and the
    ``ceil((n + 1) * level) / n`` empirical quantile is taken (split-conformal with each
    (perturbation, gene) as a unit, so coverage is marginal over both). Counting perturbations
    instead (``n = P``) would be the strict correction for genes that move together, but with the
    15 calibration targets of a Papalexi fold it asks for the maximum at level 0.9.
    """
    level = _check_level(level)
    r = _matrix(residuals, "residuals")
    s = np.asarray(scale, dtype=np.float64)
    if s.shape != (r.shape[1],) or not (s > 0).all():
        raise BioworldError(f"scale has shape {s.shape} (min {s.min() if s.size else 'n/a'}); expected [{r.shape[1]}] positive values")
    scores = (np.abs(r) / s[None]).ravel()
    n = scores.size
    adj = min(1.0, np.ceil((n + 1) * level) / n)
    return float(np.quantile(scores, adj, method="higher"))


def normal_quantile(level: float) -> float:
    """Two-sided standard-normal quantile ``z`` with ``P(|Z| <= z) = level``."""
    from statistics import NormalDist

    return float(NormalDist().inv_cdf(0.5 + _check_level(level) / 2))


def coverage(observed: Any, lo: Any, hi: Any, genes: np.ndarray | None = None) -> float:
    """Share of observed values inside ``[lo, hi]`` (over ``genes`` columns when given)."""
    o, a, b = (np.asarray(v, dtype=np.float64) for v in (observed, lo, hi))
    if not (o.shape == a.shape == b.shape):
        raise BioworldError(f"observed {o.shape}, lo {a.shape}, hi {b.shape}: expected equal shapes")
    inside = (o >= a) & (o <= b)
    if genes is not None:
        inside = inside[..., genes]
    return float(inside.mean())


@dataclass
class Calibration:
    """What :func:`conformal_quantile` learned from held-out residuals; stored as JSON with an ensemble."""

    gene_scale: np.ndarray  # [G]
    quantiles: dict[str, float]  # str(level) -> q
    n_perturbations: int  # held-out perturbations the residuals came from
    method: str = "split-conformal, leave-perturbations-out residuals scaled per gene"
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, residuals: Any, train_deltas: Any, levels: tuple[float, ...] = (0.8, 0.9, 0.95),
            **details: Any) -> "Calibration":
        scale = gene_scale(train_deltas)
        r = _matrix(residuals, "residuals")
        if r.shape[1] != scale.shape[0]:
            raise BioworldError(f"residuals have {r.shape[1]} genes but train_deltas {scale.shape[0]}; expected the same panel")
        q = {str(float(lv)): conformal_quantile(r, scale, lv) for lv in levels}
        return cls(gene_scale=scale, quantiles=q, n_perturbations=int(r.shape[0]), details=dict(details))

    def half_width(self, level: float) -> np.ndarray:
        """``[G]`` interval half-width at ``level`` (one of the fitted levels)."""
        key = str(float(_check_level(level)))
        if key not in self.quantiles:
            raise BioworldError(f"no calibration at level {level}; fitted levels: {sorted(float(k) for k in self.quantiles)}."
                                " Recalibrate with that level in `levels`.")
        return self.quantiles[key] * self.gene_scale

    def to_dict(self) -> dict[str, Any]:
        return {"gene_scale": [float(v) for v in self.gene_scale], "quantiles": dict(self.quantiles),
                "n_perturbations": self.n_perturbations, "method": self.method, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        try:
            return cls(gene_scale=np.asarray(d["gene_scale"], dtype=np.float64),
                       quantiles={str(k): float(v) for k, v in d["quantiles"].items()},
                       n_perturbations=int(d["n_perturbations"]), method=str(d.get("method", "")),
                       details=dict(d.get("details", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise BioworldError(f"calibration record is malformed ({e!r}); expected the dict written by Calibration.to_dict") from None
