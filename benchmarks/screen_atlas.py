"""Screen atlas-module designs on a validation split drawn from the context-transfer training signatures.

    python benchmarks/screen_atlas.py --seeds 0 1 --steps 400 --designs base ranked0.5 ... [--on test]

Per seed, the benchmark's own split (:func:`bioworld.eval.atlas.atlas_split`) is drawn; ``--on val``
(default) then withholds, *from its training signatures only*, 10% of the compound signatures whose compound
has >= 3 training contexts (rng seed ``1000 + seed``) and fits every design on the rest, so designs are chosen
without touching the benchmark's withheld signatures. ``--on test`` fits on the whole training split and
scores the withheld signatures (confirmation). A design is a set of :class:`PretrainConfig` overrides and an
ensemble size ``n`` (the z-scored predictions of ``n`` models seeded ``seed, seed + 100, ...`` averaged).
Appends one line per (design, seed) to ``--out`` (CSV) with Spearman / Pearson, baselines and seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DESIGNS: dict[str, tuple[dict, int]] = {
    "base": ({}, 1),
    "ranked0.5": ({"ranked_loss": 0.5}, 1),
    "ranked1": ({"ranked_loss": 1.0}, 1),
    "ens3": ({}, 3),
    "ens5": ({}, 5),
    "ranked0.5_ens3": ({"ranked_loss": 0.5}, 3),
    "ranked1_ens3": ({"ranked_loss": 1.0}, 3),
    "basis128": ({"basis_dim": 128}, 1),
    "hidden512": ({"hidden": 512}, 1),
    "nodrop": ({"drop_signature": 0.0}, 1),
    "lr3e-3": ({"lr": 3e-3}, 1),
    "wd1e-2": ({"weight_decay": 1e-2}, 1),
    "resid": ({"neighbour_residual": True}, 1),
    "resid_ens3": ({"neighbour_residual": True}, 3),
    "resid_basis128": ({"neighbour_residual": True, "basis_dim": 128}, 1),
    "combo": ({"neighbour_residual": True, "ranked_loss": 0.5, "basis_dim": 128}, 1),
    "combo_ens3": ({"neighbour_residual": True, "ranked_loss": 0.5, "basis_dim": 128}, 3),
    "drop0.1": ({"drop_signature": 0.1}, 1),
}


def validation_split(atlas, train: np.ndarray, seed: int, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_rows, val_rows)`` inside ``train``: ``frac`` of its compound signatures whose compound has >= 3
    contexts among the training rows."""
    obs = atlas.obs.iloc[train]
    comp = obs["kind"].to_numpy() == "compound"
    n_ctx = obs[comp].groupby("key")["context"].nunique()
    ok = comp & (obs["key"].map(n_ctx).fillna(0).to_numpy() >= 3)
    eligible = train[ok]
    rng = np.random.default_rng(1000 + seed)
    val = np.sort(rng.choice(eligible, size=int(round(frac * len(eligible))), replace=False))
    return np.setdiff1d(train, val), val


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--designs", nargs="+", default=["base"])
    ap.add_argument("--on", choices=["val", "test"], default="val")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "atlas" / "screen_designs.csv")
    args = ap.parse_args(argv)
    bad = [d for d in args.designs if d not in DESIGNS]
    if bad:
        ap.error(f"unknown design {bad[0]!r}; expected some of {list(DESIGNS)}")
    warnings.simplefilter("ignore")
    import pandas as pd

    from bioworld.eval.atlas import _baselines, atlas_split, score_signatures
    from bioworld.knowledge import KnowledgeBase, KnowledgeConfig, SignatureAtlas, load_atlas, zscore_rows
    from bioworld.train.pretrain import PretrainConfig, _Inputs, pretrain_atlas

    atlas = load_atlas()
    for seed in args.seeds:
        train, test = atlas_split(atlas, seed=seed)
        fit, ev = validation_split(atlas, train, seed) if args.on == "val" else (train, test)
        inputs = _Inputs(atlas, fit, atlas.basis(64, rows=fit, seed=seed))
        observed = atlas.X[ev]
        rows = [{"design": f"baseline:{n}", "seed": seed, **score_signatures(p, observed).mean().to_dict()}
                for n, p in _baselines(inputs, ev).items()]
        seen = SignatureAtlas(atlas.X[fit], atlas.obs.iloc[fit].reset_index(drop=True), atlas.genes)
        kb = KnowledgeBase(KnowledgeConfig(seed=seed), atlas=seen)
        cache: dict = {}
        for name in args.designs:
            over, n = DESIGNS[name]
            preds, secs = [], 0.0
            for j in range(n):
                key = (tuple(sorted(over.items())), seed + 100 * j)
                if key not in cache:
                    t = time.perf_counter()
                    cfg = PretrainConfig(seed=seed + 100 * j, steps=args.steps, **over)
                    model = pretrain_atlas(atlas=atlas, train_rows=fit, knowledge=kb, config=cfg, progress=False)
                    cache[key] = (zscore_rows(model.predict_rows(ev)), time.perf_counter() - t)
                preds.append(cache[key][0])
                secs += cache[key][1]
            s = score_signatures(np.mean(preds, axis=0), observed).mean().to_dict()
            rows.append({"design": name, "seed": seed, **s, "train_s": round(secs, 1)})
            print(f"seed {seed} {name}: spearman {s['spearman']:.4f} pearson {s['pearson']:.4f} "
                  f"({secs:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        df = pd.DataFrame(rows).assign(on=args.on, steps=args.steps, load=round(os.getloadavg()[0], 1))
        df.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)
        print(df.to_string(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
