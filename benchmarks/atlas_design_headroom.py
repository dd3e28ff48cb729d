"""Headroom of retrieval inputs for atlas context transfer, with no training (issue #11).

    python benchmarks/atlas_design_headroom.py [--seeds 0 1] [--out CSV]

On the validation split of :mod:`benchmarks.screen_atlas` (drawn from the benchmark's training signatures
only), scores fixed, untrained sums of the module's inputs: ``zc + zk`` (CompoundPlusContext), ``+ a * zn``
(look-alikes' signatures in the context, several K / temperatures) and ``+ a * zr`` (their residual,
:meth:`bioworld.train.pretrain._Inputs.residuals`). Spearman as the benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "atlas" / "design_headroom.csv")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import pandas as pd

    import bioworld.train.pretrain as pre
    from bioworld.eval.atlas import atlas_split, score_signatures
    from bioworld.knowledge import load_atlas
    from screen_atlas import validation_split

    atlas = load_atlas()
    rows = []
    k0, t0 = pre.NEIGHBOUR_K, pre.NEIGHBOUR_T
    try:
        for seed in args.seeds:
            train, _ = atlas_split(atlas, seed=seed)
            fit, val = validation_split(atlas, train, seed)
            inp = pre._Inputs(atlas, fit, atlas.basis(64, rows=fit, seed=seed), residual=True)
            obs = atlas.X[val]

            def score(name, pred, seed=seed):
                rows.append({"predictor": name, "seed": seed, "spearman": score_signatures(pred, obs).spearman.mean()})
                print(f"seed {seed} {name}: {rows[-1]['spearman']:.4f}", flush=True)

            for k, t in [(20, 0.1), (5, 0.1), (50, 0.1), (20, 0.03), (20, 0.3)]:
                pre.NEIGHBOUR_K, pre.NEIGHBOUR_T = k, t
                zc, has_c, zk, zn = inp.for_rows(val)
                zr = inp.residuals(zc, has_c, zk, inp.key_id[val], inp.ctx_id[val])
                if (k, t) == (20, 0.1):
                    score("zc + zk (CompoundPlusContext)", zc + zk)
                for a in (0.5, 1.0):
                    score(f"zc + zk + {a} zn (K {k}, T {t})", zc + zk + a * zn)
                    score(f"zc + zk + {a} zr (K {k}, T {t})", zc + zk + a * zr)
                    score(f"zc + zk + zn + {a} zr (K {k}, T {t})", zc + zk + zn + a * zr)
    finally:
        pre.NEIGHBOUR_K, pre.NEIGHBOUR_T = k0, t0
    df = pd.DataFrame(rows).assign(load=round(os.getloadavg()[0], 1))
    df.to_csv(args.out, index=False)
    print(df.groupby("predictor").spearman.mean().sort_values(ascending=False).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
