"""bioworld.eval: metrics, baselines and benchmark runners.

Every claim about the world model is measured against simple baselines on held-out
perturbations (`NoChange`, `MeanOfTrain`, `LinearEmbedding`, `Additive`, `NearestCompound`) and
against the split-half noise ceiling.

>>> from bioworld.eval import pearson_delta, MeanOfTrain
>>> from bioworld.eval.benchmark import run_papalexi_lto          # doctest: +SKIP
>>> df = run_papalexi_lto(n_folds=2, seeds=[0], steps=150)         # doctest: +SKIP
"""

from bioworld._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # metrics
        "METRIC_DEFINITIONS": ".metrics",
        "top_de_genes": ".metrics",
        "mse_top_de": ".metrics",
        "pearson_delta": ".metrics",
        "direction_accuracy": ".metrics",
        "discrimination": ".metrics",
        "centred_pearson": ".metrics",
        "energy_distance": ".metrics",
        "score_deltas": ".metrics",
        # baselines + ceiling
        "Baseline": ".baselines",
        "FitContext": ".baselines",
        "NoChange": ".baselines",
        "MeanOfTrain": ".baselines",
        "LinearEmbedding": ".baselines",
        "Additive": ".baselines",
        "NearestCompound": ".baselines",
        "TargetEmbedding": ".baselines",
        "knowledge_embedding": ".baselines",
        "split_half_deltas": ".baselines",
        "split_half_ceiling": ".baselines",
        # benchmark runners
        "run_papalexi_lto": ".benchmark",
        "run_l1000": ".benchmark",
        "run_simulator": ".benchmark",
        "summarize": ".benchmark",
        # one model on held-out data
        "evaluate": "._evaluate",
        "load_evaluation": "._evaluate",
        "format_evaluation": "._evaluate",
    },
)
