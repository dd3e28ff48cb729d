"""Does knowledge help the world model on unseen perturbations? -> benchmarks/results/knowledge/KNOWLEDGE.md

    python benchmarks/run_knowledge.py [--only papalexi,l1000] [--seeds 0 1 2] [--folds 4] [--steps 400]

Runs the Papalexi leave-targets-out and the L1000 unseen-compound / unseen-dose benchmarks
(:mod:`bioworld.eval.benchmark`) with the world model grounded in knowledge (the default), without
knowledge, and with each kind of knowledge shuffled (compound -> target links, network gene labels,
atlas signatures), beside the baselines (MeanOfTrain, KnowledgeNeighbours, ...) and the split-half
ceiling. Prints and writes mean +- sd over seeds; reports wall time with the machine load.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = {"papalexi": ["mse_top20", "mse_rel_reduction_vs_MeanOfTrain", "discrimination", "pearson_top20"],
           "l1000": ["pearson_top50", "mse_rel_reduction_vs_MeanOfTrain", "discrimination"]}


def _table(summ, metrics):
    import pandas as pd

    rows = []
    for (split, method), g in summ.groupby(["split", "method"]):
        row = {"split": split, "method": method}
        for m in metrics:
            r = g[g["metric"] == m]
            row[m] = f"{r['mean'].iloc[0]:.3f} +- {r['sd'].iloc[0]:.3f}" if len(r) and r["mean"].notna().iloc[0] else "n/a"
        rows.append(row)
    df = pd.DataFrame(rows)
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="papalexi,l1000")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "knowledge")
    args = ap.parse_args(argv)

    from bioworld.eval.benchmark import run_l1000, run_papalexi_lto, summarize

    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for name in [x.strip() for x in args.only.split(",") if x.strip()]:
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        if name == "papalexi":
            df = run_papalexi_lto(n_folds=args.folds, seeds=args.seeds, steps=args.steps, ablations=False,
                                  knowledge_ablations=True, progress=False)
        elif name == "l1000":
            df = run_l1000(seeds=args.seeds, steps=args.steps, knowledge_ablations=True, progress=False)
        else:
            raise SystemExit(f"unknown benchmark {name!r}; expected papalexi or l1000")
        wall, load1 = time.perf_counter() - t0, os.getloadavg()[0]
        df.to_csv(args.out / f"{name}_knowledge_scores.csv", index=False)
        summ = summarize(df)
        summ.to_csv(args.out / f"{name}_knowledge_summary.csv", index=False)
        sections.append(f"## {name}\n\n{df.attrs.get('note', '')}\n\n{_table(summ, METRICS[name])}\n\n"
                        f"Wall {wall / 60:.1f} min at load {load0:.1f} -> {load1:.1f} ({platform.machine()}, "
                        f"{os.cpu_count()} cores, shared machine).")
    cmd = (f"python benchmarks/run_knowledge.py --only {args.only} --seeds {' '.join(map(str, args.seeds))} "
           f"--folds {args.folds} --steps {args.steps}")
    text = ("# Knowledge ablations on the single-cell / L1000 benchmarks\n\nCommand: `" + cmd + "`\n\n"
            "WorldModel = knowledge-grounded actions (default); [no knowledge] = gene-set features and fingerprints "
            "only (the previous design); [shuffled ...] = the same model with one kind of knowledge permuted. "
            "Mean +- sd over seeds (and folds) of per-perturbation scores.\n\n" + "\n\n".join(sections) + "\n")
    (args.out / "KNOWLEDGE.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
