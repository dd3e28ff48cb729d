"""bioworld.report: plots and a self-contained HTML report of a prioritisation.

>>> from bioworld.report import write_report
>>> res = wm.prioritize(cells, "down:HALLMARK_INTERFERON_GAMMA_RESPONSE")     # doctest: +SKIP
>>> write_report(res, "report_dir", counterfactuals=wm.counterfactual(cells, ["STAT1"]),
...              model=wm)                                                     # doctest: +SKIP
PosixPath('report_dir/report.html')

Plots (each returns a matplotlib Figure) live in :mod:`bioworld.report.plots`; matplotlib is
imported on first use only.
"""

from bioworld._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "write_report": ".html",
        "load_accuracy": ".html",
        "model_accuracy": ".html",
        "goal_in_words": ".html",
        "write_model_card": ".card",
        "model_card": ".card",
    },
)

__all__ = ["goal_in_words", "load_accuracy", "model_accuracy", "model_card", "write_model_card", "write_report"]
