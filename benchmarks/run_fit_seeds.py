"""Does every seed learn? The training-fit check over seeds at default settings, one row per run.

    python benchmarks/run_fit_seeds.py                                   # 10 seeds x papalexi, l1000, simulator
    python benchmarks/run_fit_seeds.py --datasets l1000 --seeds 0,1 --steps 200 --no-write   # a quick look
    python benchmarks/run_fit_seeds.py --from-logs a.log b.log   # the table from runs split over processes

Each run builds the model as ``bioworld train DATA`` does (the bundled data, the loader's register
keywords; the simulator: ``bw.data.simulate(seed=0)`` with its pathway GMT as entities), trains once
with the default TrainConfig except ``seed`` (and ``max_steps`` when given), and records
``WorldModel.meta['training_fit']``: the median magnitude ratio (predicted / observed norm on the
top-20 genes) of the strong training effects, which the fit check requires to be >= WEAK_FIT_RATIO,
the median Pearson over training perturbations, the optimiser steps actually run (early stopping),
the training wall time (optimiser loop) and the machine load (``os.getloadavg``) at the start of
each run. Writes ``benchmarks/results/fit_seeds/FIT_SEEDS.md`` and ``fit_seeds.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "fit_seeds"


_SIM: list = []


def _md(df) -> str:
    """A pandas frame as a markdown table (no optional dependency)."""
    cols = [str(c) for c in df.columns]
    rows = [["" if v != v else str(v) for v in r] for r in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows])


def build(name: str, cfg: dict):
    import bioworld as bw

    if name == "simulator":
        from bioworld.entities import Entity, EntitySet

        if not _SIM:  # one simulated screen for every seed
            _SIM.append(bw.data.simulate(seed=0))
        sim = _SIM[0]
        ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "simulator") for n, g in sim.gmt.items()])
        return bw.WorldModel(sim.adata.copy(), entities=ents, replicate_key="replicate", nmf_programs=0, config=cfg)
    from bioworld.cli import DEFAULT_SMILES, _load_data, _register_kwargs
    from bioworld.data import bundled_path

    adata, _ = _load_data(name)
    kw = _register_kwargs(adata, {})
    smiles = str(bundled_path(DEFAULT_SMILES)) if kw.get("compound_id_key") else None
    return bw.WorldModel(adata, smiles=smiles, config=cfg, **kw)


def main() -> None:
    import pandas as pd

    from bioworld._world_model import WEAK_FIT_RATIO

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="papalexi,l1000,simulator")
    ap.add_argument("--seeds", default=",".join(str(s) for s in range(10)))
    ap.add_argument("--steps", type=int, default=None, help="max_steps (default: the TrainConfig default)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--config", default="{}", help="JSON TrainConfig fields laid over the defaults (an ablation)")
    ap.add_argument("--from-logs", nargs="+", default=None, metavar="LOG",
                    help="no training: write the table from the rows that runs split over processes printed to these "
                         "logs (or an earlier fit_seeds.csv); a later file's row of the same dataset and seed wins")
    ap.add_argument("--out", default=str(OUT), help="folder for FIT_SEEDS.md and fit_seeds.csv")
    ap.add_argument("--note", default="", help="a line written under the command (e.g. where merged runs came from)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.from_logs:
        write(pd.DataFrame(rows_from_logs(args.from_logs)), WEAK_FIT_RATIO, out, args.note)
        return
    rows = []
    runs = [(name, int(seed)) for seed in args.seeds.split(",") for name in args.datasets.split(",")]
    for name, seed in runs:  # seed by seed over the datasets, so an interrupted sweep covers every dataset
        cfg = {**json.loads(args.config), "seed": seed, "num_threads": 1}
        if args.steps is not None:
            cfg["max_steps"] = args.steps
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        wm = build(name, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wm.train(progress=False)
        fit = wm.meta["training_fit"]
        row = {"dataset": name, "seed": seed, "steps": wm.train_result.steps,
               "strong_ratio": round(fit["strong_median_magnitude_ratio"], 3),
               "passes": fit["strong_median_magnitude_ratio"] >= WEAK_FIT_RATIO,
               "median_pearson": round(fit["median_pearson_top20"], 3),
               "strong_effects": " ".join(fit["strong_effects"][:4]),
               "train_wall_s": round(wm.train_result.wall_s, 1),
               "total_wall_s": round(time.perf_counter() - t0, 1), "load1_start": round(load, 2)}
        rows.append(row)
        print(row, flush=True)
        if not args.no_write:  # after every run, so an interrupted sweep keeps what it measured
            write(pd.DataFrame(rows), WEAK_FIT_RATIO, out, args.note)


def rows_from_logs(paths: list[str]) -> list[dict]:
    """The run rows (one printed dict per line) of run logs, one per (dataset, seed): a later log's row wins."""
    import ast

    import pandas as pd

    rows: dict[tuple, dict] = {}
    for path in paths:
        if path.endswith(".csv"):
            found = pd.read_csv(path, keep_default_na=False).to_dict("records")
        else:
            found = [ast.literal_eval(line) for line in Path(path).read_text().splitlines() if line.startswith("{'dataset'")]
        for row in found:
            rows[(row["dataset"], int(row["seed"]))] = row
    if not rows:
        raise SystemExit(f"no run rows in {paths}")
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["seed"]))


def write(df, weak: float, out: Path = OUT, note: str = "") -> None:
    summary = df.groupby("dataset").agg(passed=("passes", "sum"), runs=("passes", "size"),
                                        min_ratio=("strong_ratio", "min"), median_ratio=("strong_ratio", "median"),
                                        median_pearson=("median_pearson", "median"), steps=("steps", "median"),
                                        train_wall_s=("train_wall_s", "median"), load=("load1_start", "median")).round(3)
    print(summary.to_string())
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "fit_seeds.csv", index=False)
    argv = sys.argv[1:]
    if "--note" in argv:  # the note is written as its own line
        i = argv.index("--note")
        argv = argv[:i] + argv[i + 2:]
    cmd = "python benchmarks/run_fit_seeds.py " + " ".join(argv)
    text = [
        "# Training-fit check over seeds (default settings)", "",
        f"Command: `{cmd.strip()}` (1 torch thread, 2 shared CPU cores; load = 1-min load average at each run's start).",
        f"A run passes when its strong training effects come back at >= {weak} of their observed size "
        "(median magnitude ratio on the top-20 genes, `WorldModel.training_fit`).", "",
        *([note, ""] if note else []),
        "## Summary", "", _md(summary.reset_index()), "",
        "## Runs", "", _md(df), "",
    ]
    (out / "FIT_SEEDS.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
