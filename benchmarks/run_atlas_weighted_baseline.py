"""A stronger non-neural baseline for atlas context transfer: the compound's responses elsewhere, weighted by
how alike the contexts respond.

Same split and score as ``benchmarks/run_atlas.py`` (``bioworld.eval.atlas``: 10% of the compound signatures whose
compound has >= 3 contexts withheld per seed; Spearman over each observed signature's ranked genes). Per withheld
signature of compound ``c`` in context ``t``, from the training signatures only:

- ``CompoundPlusContext``: the registered best baseline (z-scored mean of c elsewhere + t's mean);
- ``Residual transfer``: t's mean + the mean over c's other contexts ``s`` of ``Z[c, s] - mean_s`` (c's own
  deviation from each context's mean, carried to t);
- ``Context-weighted residual transfer (beta)``: the same mean with weights ``exp(beta * sim(t, s))``, where
  ``sim(t, s)`` is the mean correlation, over the training compounds measured in both, of a compound's deviations
  in t and in s (how alike the two contexts respond beyond their means).

Prints the table (mean +- sd over seeds) and the machine load. Nothing here is a bioworld method: it measures how
much of the atlas model's margin a simple estimator already has.

    python benchmarks/run_atlas_weighted_baseline.py [--seeds 0 1 2] [--betas 5 20 50]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def context_similarity(R: np.ndarray, ctx: np.ndarray, key: np.ndarray, rows: np.ndarray, n_ctx: int) -> np.ndarray:
    """``[K, K]``: mean correlation of the same compound's deviations ``R`` between two contexts, over ``rows``."""
    unit = R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-9)
    total, count = np.zeros((n_ctx, n_ctx)), np.zeros((n_ctx, n_ctx))
    order = rows[np.argsort(key[rows], kind="stable")]
    for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        if len(group) < 2:
            continue
        a = ctx[group]
        ii, jj = np.meshgrid(a, a, indexing="ij")
        np.add.at(total, (ii, jj), unit[group] @ unit[group].T)
        np.add.at(count, (ii, jj), 1.0)
    np.fill_diagonal(total, 0.0)
    np.fill_diagonal(count, 0.0)
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0)


def transfer(R: np.ndarray, cm: np.ndarray, sim: np.ndarray, ctx: np.ndarray, key: np.ndarray, train: np.ndarray,
             test: np.ndarray, beta: float) -> np.ndarray:
    """Predictions ``[n_test, G]``: the test row's context mean + the (weighted) mean of its compound's training
    deviations in other contexts (the context mean alone where it has none)."""
    by_key: dict[int, np.ndarray] = {}
    order = train[np.argsort(key[train], kind="stable")]
    for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        by_key[int(key[group[0]])] = group
    out = np.empty((len(test), R.shape[1]))
    for n, i in enumerate(test):
        src = by_key.get(int(key[i]), np.zeros(0, int))
        src = src[src != i]
        out[n] = cm[ctx[i]]
        if len(src):
            w = np.exp(beta * sim[ctx[i], ctx[src]])
            out[n] += (w / w.sum()) @ R[src]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--betas", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    a = ap.parse_args(argv)

    from bioworld.eval.atlas import atlas_split, score_signatures
    from bioworld.knowledge import load_atlas, zscore_rows
    from bioworld.train.pretrain import _Inputs

    t0, load0 = time.perf_counter(), os.getloadavg()
    atlas = load_atlas()
    obs = atlas.obs
    key = obs["key"].astype("category").cat.codes.to_numpy()
    ctx = obs["context"].astype("category").cat.codes.to_numpy()
    n_ctx = int(ctx.max()) + 1
    Z = zscore_rows(atlas.X).astype(np.float64)
    comp = obs["kind"].to_numpy() == "compound"
    scores: dict[str, list[float]] = {}
    for seed in a.seeds:
        train, test = atlas_split(atlas, seed=seed)
        inputs = _Inputs(atlas, train, atlas.basis(64, rows=train, seed=seed))
        zc, _, zk, _ = inputs.for_rows(test)
        cm = np.stack([Z[train[ctx[train] == k]].mean(0) if np.any(ctx[train] == k) else np.zeros(Z.shape[1])
                       for k in range(n_ctx)])
        R = Z - cm[ctx]
        rows = train[comp[train]]
        sim = context_similarity(R, ctx, key, rows, n_ctx)
        observed = atlas.X[test]
        preds = {"CompoundPlusContext": zscore_rows(zc) + zk,
                 "Residual transfer": transfer(R, cm, sim, ctx, key, rows, test, 0.0)}
        for beta in a.betas:
            preds[f"Context-weighted residual transfer (beta {beta:g})"] = transfer(R, cm, sim, ctx, key, rows, test, beta)
        for name, p in preds.items():
            scores.setdefault(name, []).append(float(score_signatures(p, observed)["spearman"].mean()))
        print(f"seed {seed}: " + ", ".join(f"{n} {v[-1]:.4f}" for n, v in scores.items()), flush=True)
    best = np.mean(scores["CompoundPlusContext"])
    print("\n| method | Spearman (mean +- sd over seeds) | vs CompoundPlusContext |\n|---|---:|---:|")
    for name, v in scores.items():
        print(f"| {name} | {np.mean(v):.3f} +- {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f} | {np.mean(v) - best:+.3f} |")
    print(f"\nseeds {a.seeds}; {time.perf_counter() - t0:.0f} s; load average {load0[0]:.1f} at start / "
          f"{os.getloadavg()[0]:.1f} at end (2 shared cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
