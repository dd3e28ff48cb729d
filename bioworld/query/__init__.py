"""Queries on a trained world model: one engine under predict, counterfactuals and target
prioritisation (no training state)."""

from bioworld.query._design import STRATEGIES, design, select
from bioworld.query._counterfactual import ActivityAxes, explain_shifts, inactive_inputs
from bioworld.query._planner import Goal, PrioritizationResult, bootstrap_interval, prioritize
from bioworld.query._uncertainty import Calibration, conformal_quantile, coverage, gene_scale
from bioworld.query.engine import Candidates, CellCache, Engine, RunResult

__all__ = [
    "Candidates", "CellCache", "Engine", "RunResult",
    "Goal", "PrioritizationResult", "bootstrap_interval", "explain_shifts", "prioritize",
    "ActivityAxes", "inactive_inputs",
    "Calibration", "conformal_quantile", "coverage", "gene_scale",
    "STRATEGIES", "design", "select",
]
