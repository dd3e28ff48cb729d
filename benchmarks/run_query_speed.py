"""Per-cell counterfactual throughput of the query engine (cell x interventions per second).

A model on the bundled Papalexi screen (default entities, briefly trained: throughput does not
depend on how well it fits) answers ``--interventions`` knockouts and silences on ``--cells``
control cells with ``WorldModel.counterfactual``; the script prints cell x interventions / s for
each repeat, wall and per CPU-second of the process (``time.process_time``, all its threads), with
the machine load (``uptime``) before and after, and writes the figures to
``benchmarks/results/speed/query_speed.json`` (``--out``). The query engine answers row blocks on
``TrainConfig.query_threads()`` threads: the model's ``num_threads`` (``--threads`` at training,
``--query-threads`` for the queries), or every core when it is 0 (the default). Uses only the public
API, so the same script measures an older checkout (``PYTHONPATH=/path/to/old/checkout``).

    python benchmarks/run_query_speed.py [--cells 1000] [--interventions 40] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "speed" / "query_speed.json"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _git_head(checkout: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h %s"],
                             capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        out = ""
    return out[:120] or "unknown checkout"


def _measure(wm, ctrl, specs) -> dict:
    """One ``counterfactual`` call: wall and process CPU seconds, rates and the load around it."""
    load_before = _uptime()
    t0, c0 = time.perf_counter(), time.process_time()
    out = wm.counterfactual(ctrl, specs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(ctrl) * len(specs)
    assert out.n_obs == n
    return {"wall_s": wall, "cell_interventions_per_s": n / wall, "cpu_s": cpu, "cell_interventions_per_cpu_s": n / cpu,
            "uptime_before": load_before, "uptime_after": _uptime()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--interventions", type=int, default=40, help="half gene knockouts, half entity silences")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="training steps of the measured model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = the model's automatic choice)")
    p.add_argument("--query-threads", type=int, nargs="+", default=None,
                   help="threads of the queries (the model's num_threads, which every query pins), interleaved "
                        "within each repeat (e.g. 1 2: both see the same load); default: the model's own choice "
                        "(TrainConfig.query_threads: every core unless num_threads is set)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--note", default="", help="what was measured (code, machine state), stored in the result file")
    a = p.parse_args(argv)

    import bioworld as bw

    adata = bw.data.load_papalexi()
    cfg = {"max_steps": a.steps, "seed": 0, "warmup_steps": 5, "num_threads": a.threads}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(adata, perturbation_key="perturbation", control="control", config=cfg)
        wm.train(progress=False)
    ctrl = adata[np.flatnonzero(adata.obs["perturbation"].astype(str).to_numpy() == "control")[: a.cells]].copy()
    genes = sorted({p.target for lab in wm.train_labels for p in wm.parse(lab).components if p.kind == "ko"})
    k = a.interventions // 2
    specs = [f"ko:{g}" for g in genes[:k]] + [f"silence:{e}" for e in wm.entity_names[: a.interventions - min(k, len(genes))]]
    wm.counterfactual(ctrl[:5], specs[:2])  # warm-up (caches, first-call overheads)
    import torch

    runs = []
    for r in range(a.repeats):
        for threads in a.query_threads or [wm.train_config.query_threads()]:
            wm.train_config = replace(wm.train_config, num_threads=threads)  # queries pin the model's setting
            runs.append(_measure(wm, ctrl, specs))
            runs[-1]["query_threads"] = threads
            print(f"repeat {r}, {threads} thread(s): {len(ctrl)} cells x {len(specs)} interventions in {runs[-1]['wall_s']:.2f} s"
                  f" = {runs[-1]['cell_interventions_per_s']:,.0f} cell·interventions/s ({runs[-1]['cpu_s']:.2f} CPU-s = "
                  f"{runs[-1]['cell_interventions_per_cpu_s']:,.0f} per CPU-s)")
            print(f"  load before: {runs[-1]['uptime_before']}\n  load after:  {runs[-1]['uptime_after']}")
    result = {
        "what": "WorldModel.counterfactual throughput on bundled Papalexi control cells (default entities)",
        "bioworld": bw.__version__, "checkout": str(Path(bw.__file__).resolve().parents[1]),
        "n_cells": len(ctrl), "n_interventions": len(specs), "n_entities": len(wm.entity_names), "n_genes": len(wm.genes),
        "interventions": specs, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
        "best_cell_interventions_per_s": max(x["cell_interventions_per_s"] for x in runs),
        "best_cell_interventions_per_cpu_s": max(x["cell_interventions_per_cpu_s"] for x in runs),
        "best_by_query_threads": {str(t): max(x["cell_interventions_per_s"] for x in runs if x["query_threads"] == t)
                                  for t in sorted({x["query_threads"] for x in runs})},
        "code": a.note or _git_head(Path(bw.__file__).resolve().parents[1]), "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"best: {result['best_cell_interventions_per_s']:,.0f} cell·interventions/s, "
          f"{result['best_cell_interventions_per_cpu_s']:,.0f} per CPU-s "
          f"({result['torch_threads']} torch thread(s), {os.cpu_count()} cores); written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
