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
        "find_benchmark_summary": ".html",
        "goal_in_words": ".html",
        "BENCHMARK_SUMMARY": ".html",
    },
)

__all__ = ["BENCHMARK_SUMMARY", "find_benchmark_summary", "goal_in_words", "load_accuracy", "write_report"]
