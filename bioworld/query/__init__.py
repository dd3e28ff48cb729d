"""Queries on a trained world model: counterfactuals and target prioritisation (no training state)."""

from bioworld.query._counterfactual import ActivityAxes, CounterfactualResult, explain_shifts, inactive_inputs, rollout
from bioworld.query._planner import Goal, PrioritizationResult, bootstrap_interval, score_interventions
from bioworld.query._uncertainty import Calibration, conformal_quantile, coverage, gene_scale

__all__ = [
    "CounterfactualResult", "Goal", "PrioritizationResult", "bootstrap_interval", "explain_shifts",
    "ActivityAxes", "inactive_inputs", "rollout", "score_interventions",
    "Calibration", "conformal_quantile", "coverage", "gene_scale",
]
