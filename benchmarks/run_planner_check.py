"""Planner speed and ranking quality: the fast ``WorldModel.prioritize`` against exhaustive scoring.

    python benchmarks/run_planner_check.py                          # trains a 300-step Papalexi model first
    python benchmarks/run_planner_check.py --model /tmp/planner_model
    python benchmarks/run_planner_check.py --model DIR --screen 8 16 32 --refine 10 20 30
    python benchmarks/run_planner_check.py --model DIR --goal toward:control --reference ref_toward.csv

The exhaustive reference scores every candidate on every cell (``screen_cells`` >= cells, so
there are no prototypes and no refinement: every row is exact). Each fast configuration
(``screen_cells`` prototypes x ``refine_top``) is then compared with it on the candidates both
scored:

- ``top10_overlap``: shared interventions among the two top-10s (out of 10);
- ``spearman_all``: Spearman correlation of the fast table's scores with the exact scores;
- ``spearman_screen``: the same for the screened-only rows (how good the prototype estimate is);
- ``max_abs_err_refined``: largest |fast - exact| score over the rows the fast path refined
  (these are computed exactly, so this is float rounding);
- ``best_agrees``: whether both put the same intervention first.

Prints one line per configuration, plus the machine's load average. ``--out FILE.csv`` also writes
the rows. One torch thread (the package default for queries on this machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = "down:HALLMARK_INTERFERON_GAMMA_RESPONSE"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(fast: pd.DataFrame, exact: pd.DataFrame, n_cells: int, k: int = 10) -> dict:
    """Agreement of a fast prioritisation table with the exhaustive one (see the module docstring)."""
    ex = exact.set_index("intervention")["score"]
    f = fast.set_index("intervention")
    common = f.index.intersection(ex.index)
    refined = f.index[(f["n_cells"] == n_cells).to_numpy()].intersection(ex.index)
    screened = common.difference(refined)
    top_f = list(fast["intervention"][:k])
    top_e = list(exact["intervention"][:k])
    return {
        "n_candidates": len(fast), "n_common": len(common), "n_refined": int((f["n_cells"] == n_cells).sum()),
        f"top{k}_overlap": len(set(top_f) & set(top_e)),
        "best_agrees": bool(top_f[0] == top_e[0]),
        "spearman_all": _spearman(f.loc[common, "score"].to_numpy(), ex[common].to_numpy()),
        "spearman_screen": _spearman(f.loc[screened, "score"].to_numpy(), ex[screened].to_numpy()) if len(screened) > 2 else float("nan"),
        "max_abs_err_refined": float(np.abs(f.loc[refined, "score"].to_numpy() - ex[refined].to_numpy()).max()) if len(refined) else float("nan"),
        "exact_top_missed": ", ".join(sorted(set(top_e) - set(top_f))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="trained model folder (default: train Papalexi for --steps and use that)")
    ap.add_argument("--steps", type=int, default=300, help="training steps when no --model is given")
    ap.add_argument("--cells", type=int, default=1000, help="control cells to start from (seeded sample)")
    ap.add_argument("--goal", default=GOAL)
    ap.add_argument("--screen", type=int, nargs="+", default=[16], help="screen_cells (prototype counts) to try")
    ap.add_argument("--refine", type=int, nargs="+", default=[30], help="refine_top values to try")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (the minimum is reported)")
    ap.add_argument("--out", help="also write the rows to this CSV")
    ap.add_argument("--reference", help="CSV of the exhaustive table: read it if it exists (same model, cells and "
                                        "goal!), else compute it and write it there")
    a = ap.parse_args()

    warnings.simplefilter("ignore")
    import torch

    import bioworld as bw

    torch.set_num_threads(1)
    adata = bw.data.load_papalexi()
    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            wm = bw.WorldModel.load(a.model)
        else:
            wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control")
            wm.train(progress=False, max_steps=a.steps)
            wm.save(os.path.join(tmp, "model"))
    ctrl = adata[adata.obs["perturbation"].astype(str) == "control"]
    rng = np.random.default_rng(0)
    cells = ctrl[np.sort(rng.choice(ctrl.n_obs, min(a.cells, ctrl.n_obs), replace=False))].copy()
    n = cells.n_obs

    if a.reference and Path(a.reference).is_file():
        ref_table = pd.read_csv(a.reference)
        print(f"exhaustive reference read from {a.reference}")
        rows = []
    else:
        print(f"exhaustive reference: every candidate on all {n} cells (load {_load()}) ...", flush=True)
        t = time.perf_counter()
        ref = wm.prioritize(cells, a.goal, screen_cells=n, max_cells=n)
        ex_s = time.perf_counter() - t
        ref_table = ref.table
        print(f"  {ref.provenance['n_candidates']} candidates, {ex_s:.1f} s, best {ref_table['intervention'].iloc[0]} "
              f"(load {_load()})", flush=True)
        if a.reference:
            ref_table.to_csv(a.reference, index=False)
        rows = [{"config": "exhaustive", "screen_cells": n, "refine_top": 0, "cells": n,
                 "candidates": ref.provenance["n_candidates"], "wall_s": ex_s, "load": _load()}]
    for k in a.screen:
        for r in a.refine:
            walls = []
            for _ in range(a.repeats):
                load = _load()
                t = time.perf_counter()
                res = wm.prioritize(cells, a.goal, screen_cells=k, refine_top=r, max_cells=n)
                walls.append(time.perf_counter() - t)
            row = {"config": "fast", "screen_cells": k, "refine_top": r, "cells": n,
                   "candidates": res.provenance["n_candidates"], "wall_s": min(walls), "load": load,
                   **compare(res.table, ref_table, n)}
            rows.append(row)
            print(f"screen_cells={k:3d} refine_top={r:3d}: {row['wall_s']:6.2f} s for {row['candidates']} candidates x "
                  f"{n} cells | top10 overlap {row['top10_overlap']}/10, best agrees {row['best_agrees']}, "
                  f"Spearman all {row['spearman_all']:.3f} / screened-only {row['spearman_screen']:.3f}, "
                  f"refined rows max |err| {row['max_abs_err_refined']:.1e} ({row['n_refined']} refined) "
                  f"| load {load}" + (f" | missed: {row['exact_top_missed']}" if row["exact_top_missed"] else ""),
                  flush=True)
    if a.out:
        pd.DataFrame(rows).to_csv(a.out, index=False)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
