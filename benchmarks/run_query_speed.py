"""Per-cell counterfactual throughput of the query engine (cell x interventions per second).

A model on the bundled Papalexi screen (default entities, briefly trained: throughput does not
depend on how well it fits) answers ``--interventions`` knockouts and silences on ``--cells``
control cells with ``WorldModel.counterfactual``; the script prints cell x interventions / s for
each repeat with the machine load (``uptime``) before and after, and writes the figures to
``benchmarks/results/speed/query_speed.json``. Uses only the public API, so the same script
measures an older checkout (``PYTHONPATH=/path/to/old/checkout``).

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
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "speed" / "query_speed.json"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--interventions", type=int, default=40, help="half gene knockouts, half entity silences")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="training steps of the measured model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = the model's automatic choice)")
    p.add_argument("--out", type=Path, default=OUT)
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
    runs = []
    for r in range(a.repeats):
        load_before = _uptime()
        t0, c0 = time.perf_counter(), time.process_time()
        out = wm.counterfactual(ctrl, specs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rate = len(ctrl) * len(specs) / wall
        runs.append({"wall_s": wall, "cell_interventions_per_s": rate, "cpu_s": cpu,
                     "cell_interventions_per_cpu_s": len(ctrl) * len(specs) / cpu,
                     "uptime_before": load_before, "uptime_after": _uptime()})
        print(f"repeat {r}: {len(ctrl)} cells x {len(specs)} interventions in {wall:.2f} s = {rate:,.0f} cell·interventions/s"
              f" ({out.n_obs:,} rows; {cpu:.2f} CPU-s = {runs[-1]['cell_interventions_per_cpu_s']:,.0f} per CPU-s)")
        print(f"  load before: {load_before}\n  load after:  {runs[-1]['uptime_after']}")
    import torch

    result = {
        "what": "WorldModel.counterfactual throughput on bundled Papalexi control cells (default entities)",
        "bioworld": bw.__version__, "checkout": str(Path(bw.__file__).resolve().parents[1]),
        "n_cells": len(ctrl), "n_interventions": len(specs), "n_entities": len(wm.entity_names), "n_genes": len(wm.genes),
        "interventions": specs, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
        "best_cell_interventions_per_s": max(x["cell_interventions_per_s"] for x in runs), "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"best: {result['best_cell_interventions_per_s']:,.0f} cell·interventions/s "
          f"({result['torch_threads']} torch thread(s), {os.cpu_count()} cores); written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
