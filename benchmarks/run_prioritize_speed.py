"""Wall time of a genome-wide prioritisation (issue 14): every candidate kind x 1,000 cells.

A model on a bundled dataset (Papalexi: genetic; L1000: compounds), briefly trained (wall time does
not depend on how well it fits), with the default knowledge layer, ranks ``--max-genes`` gene
knockouts (the data's targets + the genes of the knowledge gene table closest to the goal entity),
every compound the model resolves at ``--dose`` (compound models), every entity silence, and pairs
among the best, on ``--cells`` starting cells. Prints the candidates by kind, the wall and CPU time of
``WorldModel.prioritize`` (CPU / query threads bounds the wall time on idle cores from below) and the
machine load (``uptime``) before and after, the top rows with
their flag / seen / evidence / drugs, and writes the figures to
``benchmarks/results/speed/prioritize_speed_<data>.json``.

    python benchmarks/run_prioritize_speed.py [--data papalexi|l1000] [--cells 1000] [--max-genes 5000]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "speed"
GOALS = {"papalexi": "down:HALLMARK_INTERFERON_GAMMA_RESPONSE", "l1000": "down:MAPK"}
#: How each bundled dataset is read (L1000: log2 wells, compounds with doses).
DATA_KW = {"papalexi": {}, "l1000": dict(perturbation_key="perturbation", control="control", input="log",
                                         dose_key="pert_dose", compound_id_key="pert_id", min_cells_per_group=1)}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(GOALS), default="papalexi")
    p.add_argument("--goal", default=None, help="default: %s" % GOALS)
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--max-genes", type=int, default=5000)
    p.add_argument("--dose", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=20, help="training steps of the measured model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = the model's automatic choice)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)

    import bioworld as bw

    t0 = time.perf_counter()
    adata = bw.data.load_papalexi() if a.data == "papalexi" else bw.data.load_l1000()
    cfg = {"max_steps": a.steps, "seed": 0, "warmup_steps": 5, "num_threads": a.threads}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(adata, config=cfg, **DATA_KW[a.data])
        wm.train(progress=False)
    build_s = time.perf_counter() - t0
    goal = a.goal or GOALS[a.data]
    if goal.split(":", 1)[1] not in wm.entity_names:
        goal = f"down:{wm.entity_names[0]}"
    ctrl = np.flatnonzero(adata.obs["perturbation"].astype(str).to_numpy() == wm.control)
    if len(ctrl) < a.cells:  # L1000: fewer control wells than --cells; start from every well instead
        ctrl = np.arange(adata.n_obs)
    cells = adata[ctrl[: a.cells]].copy()
    load_before = _uptime()
    t, cpu0 = time.perf_counter(), time.process_time()
    res = wm.prioritize(cells, goal, max_genes=a.max_genes, dose=a.dose)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu0
    load_after = _uptime()
    threads = wm.train_config.query_threads()  # the engine's workers (each at one torch thread)
    tab = res.table
    kinds = {k: int(v) for k, v in tab["kind"].value_counts().items()}
    print(f"data {a.data}, goal {goal}, model built + trained {a.steps} steps in {build_s:.0f} s")
    print(f"candidates {len(tab):,} ({kinds}) x {res.provenance['n_cells_used']:,} cells: "
          f"prioritize wall {wall:.1f} s (CPU {cpu:.1f} s on {threads} query threads: the wall time on that many "
          f"idle cores is at least CPU / threads = {cpu / threads:.1f} s); refined {res.provenance['n_refined']} on all cells")
    print(f"flagged 'readout': {res.provenance['n_flagged']}; unseen in top 10: {int((~tab['seen'].head(10)).sum())}")
    if res.provenance.get("compounds_not_scored_text"):
        print(res.provenance["compounds_not_scored_text"])
    print(f"load before: {load_before}\nload after:  {load_after}")
    cols = ["rank", "intervention", "kind", "score", "flag", "seen", "evidence", "drugs"]
    with np.printoptions(linewidth=200):
        print(tab[cols].head(12).to_string(max_colwidth=70))
        print(tab.loc[tab["flag"] != "", ["rank", "intervention", "flag_reason"]].head(6).to_string(max_colwidth=110))
        lab = tab[(tab["flag"] == "") & ~tab["intervention"].str.contains("silence:", regex=False)]
        print("the report's main table (genes, compounds, their pairs; unflagged):")
        print(lab[cols].head(10).to_string(max_colwidth=70))
    out = a.out or OUT / f"prioritize_speed_{a.data}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = {"data": a.data, "goal": goal, "cells": res.provenance["n_cells_used"], "candidates": len(tab),
           "by_kind": kinds, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "query_threads": threads,
           "n_flagged": res.provenance["n_flagged"],
           "compounds_not_scored": {k: len(v) for k, v in res.provenance.get("compounds_not_scored", {}).items()},
           "top10": tab["intervention"].head(10).tolist(), "top10_unseen": int((~tab["seen"].head(10)).sum()),
           "report_top10": lab["intervention"].head(10).tolist(),
           "report_top10_unseen": int((~lab["seen"].head(10)).sum()),
           "report_top10_kinds": {k: int(v) for k, v in lab["kind"].head(10).value_counts().items()},
           "load_before": load_before, "load_after": load_after, "threads": a.threads, "steps": a.steps,
           "machine": platform.platform()}
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
