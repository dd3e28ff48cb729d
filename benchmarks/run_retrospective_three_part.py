"""A three-part priority (model, undirected proximity, directed signed influence), rescored from saved tables (issue 14).

Declared before the fresh runs in ``benchmarks/results/retrospective/three_part/DECLARATION.md``: the priority
becomes the equal-weight log-odds of three evidence sources, ``sigmoid((logit(model_pct) + logit(prior_pct) +
logit(directed_pct)) / 3)``, with ``directed_pct`` the mid-rank percentile within the kind (genes, compounds) of the
candidate's signed influence on the goal's readout through the directed regulation graph
(:func:`run_retrospective_directed_prior.signed_influence`, stop 26's; 0.5 without one). Each fold's saved table
is rescored exactly (no training; the run's own priority is reproduced first, as a check), beside the run's
baselines, for every run given (``--run RUN_DIR TABLES_DIR``, repeatable: a folder with the run's ``items.csv`` and
the folder of that run's saved tables; a table is read only from its own run's folder).

    python benchmarks/run_retrospective_three_part.py --run RUN_DIR TABLES_DIR [--run ...] --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT, THREE = "WorldModel (default)", "WorldModel (three-part priority)"
DIRECTED_ALONE = "Directed signed prior alone"


def percentile_by_kind(raw: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of ``raw`` within each kind (genes, compounds); NaN (no value) and other kinds: 0.5."""
    from bioworld.query._priority import NO_INFORMATION, rank_pct

    out = np.full(len(raw), NO_INFORMATION)
    for k in ("gene", "compound"):
        idx = np.flatnonzero(kinds == k)
        if len(idx):
            pct = rank_pct(raw[idx])
            out[idx] = np.where(np.isfinite(pct), pct, NO_INFORMATION)
    return out


def three_part(model_pct: np.ndarray, prior_pct: np.ndarray, directed_pct: np.ndarray) -> np.ndarray:
    """``sigmoid((logit m + logit p + logit d) / 3)``, each part NaN -> 0.5 (no information)."""
    from scipy.special import expit, logit

    parts = [np.clip(np.nan_to_num(np.asarray(x, np.float64), nan=0.5), 1e-9, 1 - 1e-9)
             for x in (model_pct, prior_pct, directed_pct)]
    return expit(sum(logit(x) for x in parts) / 3.0)


def rescore(run: Path, cands: Path, V, D, R, graph, targets) -> list[dict]:
    items = pd.read_csv(run / "items.csv")
    rows: list[dict] = []
    for ds in items["dataset"].unique():
        part_items = items[items["dataset"] == ds]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folds = V.load_folds(part_items, cands, rule="auto")
        goal = R.GOALS[ds]
        influence = D.signed_influence(R._goal_genes(goal)[1], graph)
        sign = 1.0 if goal.startswith("down:") else -1.0
        for key, (f, part) in folds.items():
            m, p, pr = f.columns("logodds")
            d = percentile_by_kind(D.raw_prior(f.table, influence, sign, targets), f.table["kind"].to_numpy())
            for method, s in ((DEFAULT, pr), (THREE, three_part(m, p, d)), (DIRECTED_ALONE, d)):
                rows += V._rows(f, part, key, method, s)
        rows += part_items[part_items["method"].isin([R.NETWORK, R.PATHWAY, R.RANDOM])][list(R.ITEM_COLUMNS)].to_dict("records")
    return rows


def summary(D, R, items: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per dataset and method: mean +- sd over seeds of each metric and their mean (``mean3``; stop 26's table),
    with the seeds it covers."""
    table = D.summary(R, items, k)
    seeds = {key: ",".join(str(s) for s in sorted(part["seed"].unique()))
             for key, part in items.groupby(["dataset", "method"], sort=False)}
    table.insert(2, "seeds", [seeds[(ds, m)] for ds, m in zip(table["dataset"], table["method"])])
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, nargs=2, action="append", required=True, metavar=("RUN_DIR", "TABLES_DIR"),
                   help="a run folder (items.csv) and the folder of its saved candidate tables (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run_retrospective_directed_prior as D
    import run_retrospective_variants as V

    from bioworld.eval import retrospective as R

    t0, load = time.perf_counter(), os.getloadavg()
    graph, targets = D.graph_and_targets()
    rows: list[dict] = []
    for run, cands in a.run:
        rows += rescore(run, cands, V, D, R, graph, targets)
    items = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    items.to_csv(a.out / "items.csv", index=False)
    table = summary(D, R, items, R.RetroSettings().k)
    table.to_csv(a.out / "summary.csv", index=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"{time.perf_counter() - t0:.1f} s, load {load[0]:.2f} at start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
