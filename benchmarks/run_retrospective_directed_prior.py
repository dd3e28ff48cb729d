"""A directed, signed knowledge prior for target prioritisation, rescored from saved retrospective tables (issue 14).

The default ranking's knowledge part (:mod:`bioworld.query._priority`) is an undirected random walk from the goal's
readout genes: it rewards a gene for being in or next to the readout, whatever the direction or sign of the link (the
demo's top 30 for ``down:HALLMARK_INTERFERON_GAMMA_RESPONSE`` holds readout effectors such as MX1 or OAS2 and negative
regulators such as SOCS1). The variant measured here replaces it by the candidate's *signed influence* on the readout
through a directed regulation graph, as declared before any number was computed
(``benchmarks/results/retrospective/directed_prior/DIRECTED_PRIOR.md``):

- graph: :func:`bioworld.knowledge.network.regulation_network`, the bundled OmniPath signed directed edges plus
  DoRothEA regulons of confidence A-C (TF -> target, sign of the mode of regulation); parallel edges' signs summed
  and clipped to [-1, 1] (0 drops the edge), no self loops;
- ``P[g, h] = sign(g -> h) / outdegree(g)``; readout vector ``w`` = the goal entity's full gene set with its weights,
  scaled to ``sum |w| = 1``; influence ``I = sum_{k=1..3} 0.5^(k-1) P^k w`` (a gene's own membership, ``k = 0``, does
  not count: only what it regulates);
- raw prior ``I`` for a ``down:`` goal, ``-I`` for ``up:`` (a knockout or an inhibitor removes the gene's activity);
  no out-edge: no prior (0.5); a compound: its best target's; everything else in the priority unchanged.

Rescored exactly from each fold's saved table (no training), beside the run's baselines. Rule: adopt the variant as
the default prior iff on both datasets the mean over seeds of the mean of the three metrics is >= the default's.

    python benchmarks/run_retrospective_directed_prior.py [--out benchmarks/results/retrospective/directed_prior]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import sparse

ROOT = Path(__file__).resolve().parents[1]
RETRO = ROOT / "benchmarks" / "results" / "retrospective"
#: dataset -> (run folder with items.csv, its saved candidate tables)
RUNS = {"papalexi": (RETRO / "run_papalexi", RETRO / "candidates"),
        "l1000": (RETRO / "l1000_157e83d" / "run_l1000", RETRO / "l1000_157e83d" / "candidates")}
HOPS, DAMPING = 3, 0.5
DEFAULT, DIRECTED = "WorldModel (default, undirected prior)", "WorldModel (directed signed prior)"
DIRECTED_ALONE, UNDIRECTED_ALONE = "Directed signed prior alone", "Undirected prior alone (the default's knowledge part)"


def signed_influence(weights: dict[str, float], graph: tuple[list[str], sparse.csr_matrix], *, hops: int = HOPS,
                     damping: float = DAMPING) -> dict[str, float]:
    """:func:`bioworld.knowledge.network.signed_influence` (this script's function, moved into the library)."""
    from bioworld.knowledge.network import signed_influence as influence

    return influence(weights, graph, hops=hops, damping=damping)


def raw_prior(table: pd.DataFrame, influence: dict[str, float], sign: float, targets) -> np.ndarray:
    """Per row: ``sign x`` the gene's influence, a compound's best target's (``targets(name)``), NaN without one."""
    out = np.full(len(table), np.nan)
    for i, (lab, kind) in enumerate(zip(table["intervention"], table["kind"])):
        if kind == "gene" and lab in influence:
            out[i] = sign * influence[lab]
        elif kind == "compound":
            vals = [sign * influence[g] for g in targets(lab.rsplit("@", 1)[0]) if g in influence]
            if vals:
                out[i] = max(vals)
    return out


def _fold_rows(V, R, folds: dict, influence: dict[str, float], sign: float, targets) -> list[dict]:
    rows: list[dict] = []
    for key, (f, part) in folds.items():
        _, p_old, pr_old = f.columns("logodds")
        old, f.prior = f.prior, raw_prior(f.table, influence, sign, targets)
        try:
            _, p_new, pr_new = f.columns("logodds")
        finally:
            f.prior = old
        for method, s in ((DEFAULT, pr_old), (DIRECTED, pr_new), (DIRECTED_ALONE, np.nan_to_num(p_new, nan=0.5)),
                          (UNDIRECTED_ALONE, np.nan_to_num(p_old, nan=0.5))):
            rows += V._rows(f, part, key, method, s)
    return rows


def graph_and_targets() -> tuple[tuple[list[str], sparse.csr_matrix], Callable[[str], list[str]]]:
    """The regulation graph and a compound -> its bundled targets lookup (none for an unknown name)."""
    from bioworld.knowledge import CompoundKnowledge
    from bioworld.knowledge.network import regulation_network

    ck = CompoundKnowledge.bundled()

    def targets(name: str) -> list[str]:
        return ck.targets(name) if ck.resolve(name, strict=False) else []

    return regulation_network(), targets


def summary(R, items: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per dataset and method: mean +- sd over seeds of each metric (each seed pooled over its folds) and the mean
    of the three means (``mean3``, the rule's number)."""
    out = []
    for (ds, method), part in items.groupby(["dataset", "method"], sort=False):
        per = [R.metrics_of(s["percentile"], s["hit"], k) for _, s in part.groupby("seed")]
        row = {"dataset": ds, "method": method}
        for m in R.METRICS:
            vals = np.array([x[m] for x in per], dtype=np.float64)
            row[m], row[m + "_sd"] = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        row["mean3"] = float(np.mean([row[m] for m in R.METRICS]))
        out.append(row)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RETRO / "directed_prior")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run_retrospective_variants as V

    from bioworld.eval import retrospective as R

    t0, load = time.perf_counter(), os.getloadavg()
    graph, targets = graph_and_targets()
    rows = []
    for ds, (run, cands) in RUNS.items():
        items = pd.read_csv(run / "items.csv")
        items = items[items["dataset"] == ds]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folds = V.load_folds(items, cands, rule="auto")
        goal = R.GOALS[ds]
        influence = signed_influence(R._goal_genes(goal)[1], graph)
        rows.append(pd.DataFrame(_fold_rows(V, R, folds, influence, 1.0 if goal.startswith("down:") else -1.0, targets)))
        rows.append(items[items["method"].isin([R.NETWORK, R.PATHWAY, R.RANDOM])][list(R.ITEM_COLUMNS)])
    table = summary(R, pd.concat(rows, ignore_index=True), R.RetroSettings().k)
    a.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out / "summary.csv", index=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    mean3 = table.set_index(["dataset", "method"])["mean3"]
    adopt = all(mean3[(ds, DIRECTED)] >= mean3[(ds, DEFAULT)] for ds in RUNS)
    print(f"rule (directed >= default on the mean of the three metrics, both datasets): "
          f"{'adopt' if adopt else 'keep the default'}; {time.perf_counter() - t0:.1f} s, load {load[0]:.2f} at start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
