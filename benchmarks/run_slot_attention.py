"""Accuracy of local entity attention vs dense attention (JEPAConfig.slot_block / dense_max_slots).

    python benchmarks/run_slot_attention.py --seeds 0 1 2 --steps 300
    python benchmarks/run_slot_attention.py --papalexi --papalexi-steps 150   # also Papalexi LTO (2 folds, seed 0)

The default model config attends densely up to 128 slots, so the simulator (8 slots) and Papalexi
(43 slots) train exactly as before by default. This script forces local attention on them
(``dense_max_slots=0`` and a block small enough that each slot sees only part of the others:
simulator ``slot_block=2`` = 6 of 8 slots + the pooled key; Papalexi ``slot_block=8`` = 24 of 43)
and compares with dense attention on the same seeds: the simulator's held-out ``silence:`` figures
(:func:`bioworld.eval.causal.run_simulator_causal`, variant ``none``) and, with ``--papalexi``,
leave-targets-out on Papalexi (:func:`bioworld.eval.benchmark.run_papalexi_lto`). Writes
``benchmarks/results/speed/slot_attention.csv`` and prints a Markdown table (mean ± sd over seeds x targets).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "speed"

CONFIGS = {"dense": {"slot_block": 0}, "local": {"slot_block": 2, "dense_max_slots": 0}}
PAPALEXI_LOCAL = {"slot_block": 8, "dense_max_slots": 0}
METRICS = ("pearson_all", "pearson_top50", "pearson_desc", "leak_ratio",  # simulator (causal)
           "pearson_top20", "mse_top20", "direction_top20", "discrimination", "centred_pearson")  # Papalexi LTO


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="simulator training steps per model")
    ap.add_argument("--papalexi", action="store_true", help="also Papalexi LTO (2 folds, seed 0)")
    ap.add_argument("--papalexi-steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=OUT / "slot_attention.csv")
    a = ap.parse_args(argv)
    from bioworld.eval.causal import run_simulator_causal

    frames = []
    for name, mc in CONFIGS.items():
        t = time.perf_counter()
        load = "%.2f %.2f %.2f" % os.getloadavg()
        df = run_simulator_causal(seeds=a.seeds, steps=a.steps, variants=("none",), model_config=mc)
        df = df[df["method"].isin(["WorldModel predict", "WorldModel counterfactual"])].copy()
        df["attention"], df["dataset"], df["load"] = name, "simulator", load
        print(f"simulator {name}: {time.perf_counter() - t:.0f} s (load {load})", flush=True)
        frames.append(df)
    if a.papalexi:
        import bioworld.eval.benchmark as B
        from bioworld.eval.benchmark import run_papalexi_lto

        for name, mc in (("dense", {"slot_block": 0}), ("local", PAPALEXI_LOCAL)):
            real = B._world_model  # run_papalexi_lto has no model-config argument: its one WorldModel builder gets one

            def with_model_config(*args, _mc=mc, _real=real, **kw):
                return _real(*args, model_config=_mc, **kw)

            B._world_model = with_model_config
            load = "%.2f %.2f %.2f" % os.getloadavg()
            try:
                df = run_papalexi_lto(n_folds=2, seeds=(0,), steps=a.papalexi_steps, ablations=False, progress=False)
            finally:
                B._world_model = real
            df = df[df["method"] == "WorldModel"].pivot_table(  # tidy (metric, value) rows -> one row per target
                index=["method", "perturbation", "fold", "seed"], columns="metric", values="value").reset_index()
            df["attention"], df["dataset"], df["load"] = name, "papalexi", load
            frames.append(df)
            print(f"papalexi {name} done", flush=True)
    res = pd.concat(frames, ignore_index=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    res.to_csv(a.out, index=False)
    metrics = [m for m in METRICS if m in res.columns]
    g = res.groupby(["dataset", "method", "attention"])[metrics]
    mean, sd, n = g.mean(), g.std(), g.size()
    print("| dataset | method | attention | " + " | ".join(metrics) + " | n |")
    print("|---|---|---|" + "---|" * len(metrics) + "---|")
    for idx in mean.index:
        cells = [f"{mean.loc[idx, m]:.3f} ± {sd.loc[idx, m]:.3f}" for m in metrics]
        print(f"| {' | '.join(idx)} | " + " | ".join(cells) + f" | {n.loc[idx]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
