"""Atlas context transfer by low-rank completion of context-specific responses (issue 11).

Same split and score as ``benchmarks/run_atlas.py`` (``bioworld.eval.atlas``). From the training signatures only:
``R[c, t] = Z[c, t] - mean_t`` (the row's deviation from its context's mean), ``m_c`` = the mean of ``R`` over the
perturbation's training rows, ``E = R - m_c`` (how the perturbation departs from its usual deviation in this context).
``E[c, t] ~ a_c^T B_t`` with ``a_c`` in R^k per perturbation key and ``B_t`` in R^{k x G} per context, fitted by
alternating ridge least squares (``lam`` on both factors, rows of ``E`` scaled by ``1 / sqrt(G)``). A withheld
``(c, t)`` is predicted as ``mean_t + m_c + a_c^T B_t``; ``k = 0`` is the residual transfer of
``run_atlas_weighted_baseline.py``.

``--on val`` screens on the validation split of ``benchmarks/screen_atlas.py`` (drawn from the benchmark's training
signatures only); ``--on test`` scores the benchmark's withheld signatures. Prints one line per (seed, design) and a
table (mean +- sd over seeds) with the machine load.

    python benchmarks/run_atlas_lowrank.py --on val --seeds 0 1 --ranks 5 10 20 40 --lams 1 10 100
    python benchmarks/run_atlas_lowrank.py --on test --seeds 0 1 2 --ranks K --lams L
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def _groups(idx: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """``label -> rows of idx with it`` (ascending row order inside each group)."""
    order = idx[np.argsort(labels[idx], kind="stable")]
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return {int(labels[g[0]]): g for g in np.split(order, cuts) if len(g)}


def lowrank_fit(E: np.ndarray, key: np.ndarray, ctx: np.ndarray, rows: np.ndarray, k: int, lam: float,
                sweeps: int = 20, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Ridge ALS of ``E[rows] ~ A[key] B[ctx]``: ``({key: a [k]}, {context: B [k, G]})``."""
    rng = np.random.default_rng(seed)
    by_key, by_ctx = _groups(rows, key), _groups(rows, ctx)
    A = {c: rng.normal(scale=0.1, size=k) for c in by_key}
    B: dict[int, np.ndarray] = {}
    eye = lam * np.eye(k)
    for _ in range(sweeps):
        for t, r in by_ctx.items():  # B_t = (A_S^T A_S + lam)^-1 A_S^T E_S
            As = np.stack([A[int(c)] for c in key[r]])
            B[t] = np.linalg.solve(As.T @ As + eye, As.T @ E[r])
        BB = {t: b @ b.T for t, b in B.items()}
        proj = np.zeros((len(E), k))
        for t, r in by_ctx.items():
            proj[r] = E[r] @ B[t].T
        for c, r in by_key.items():  # a_c = (sum B_t B_t^T + lam)^-1 sum B_t e_i
            lhs = eye + sum(BB[int(t)] for t in ctx[r])
            rhs = proj[r].sum(0)
            A[c] = np.linalg.solve(lhs, rhs)
    return A, B


def predictions(Z: np.ndarray, key: np.ndarray, ctx: np.ndarray, train: np.ndarray, test: np.ndarray,
                designs: list[tuple[int, float]], seed: int) -> dict[str, np.ndarray]:
    """``design name -> [n_test, G]`` predictions from the training rows only."""
    n_ctx = int(ctx.max()) + 1
    G = Z.shape[1]
    cm = np.zeros((n_ctx, G))
    for t, r in _groups(train, ctx).items():
        cm[t] = Z[r].mean(0)
    R = Z - cm[ctx]
    m = {c: R[r].mean(0) for c, r in _groups(train, key).items()}
    base = np.stack([cm[ctx[i]] + m.get(int(key[i]), 0.0) for i in test])
    out = {"Residual transfer (k 0)": base}
    E = np.zeros_like(Z)
    E[train] = (R[train] - np.stack([m[int(key[i])] for i in train])) / np.sqrt(G)
    for k, lam in designs:
        A, B = lowrank_fit(E, key, ctx, train, k, lam, seed=seed)
        lr = np.stack([A[int(key[i])] @ B[int(ctx[i])] if int(key[i]) in A and int(ctx[i]) in B else np.zeros(G)
                       for i in test]) * np.sqrt(G)
        out[f"Low-rank completion (k {k}, lam {lam:g})"] = base + lr
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--on", choices=["val", "test"], default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ranks", type=int, nargs="+", default=[5, 10, 20, 40])
    ap.add_argument("--lams", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--with-model", type=int, default=0, metavar="STEPS",
                    help="also train the AtlasModel (PretrainConfig defaults, STEPS steps) on the same rows and score "
                         "it and its blends with each completion: (1 - w) z(model) + w z(completion), w in --weights")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    a = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from screen_atlas import validation_split

    from bioworld.eval.atlas import atlas_split, score_signatures
    from bioworld.knowledge import load_atlas, zscore_rows
    from bioworld.train.pretrain import _Inputs

    t0, load0 = time.perf_counter(), os.getloadavg()
    atlas = load_atlas()
    obs = atlas.obs
    key = obs["key"].astype("category").cat.codes.to_numpy()
    ctx = obs["context"].astype("category").cat.codes.to_numpy()
    Z = zscore_rows(atlas.X).astype(np.float64)
    designs = [(k, lam) for k in a.ranks for lam in a.lams]
    scores: dict[str, list[float]] = {}
    for seed in a.seeds:
        train, test = atlas_split(atlas, seed=seed)
        if a.on == "val":
            train, test = validation_split(atlas, train, seed)
        inputs = _Inputs(atlas, train, atlas.basis(64, rows=train, seed=seed))
        zc, _, zk, _ = inputs.for_rows(test)
        preds = {"CompoundPlusContext": zscore_rows(zc) + zk}
        preds.update(predictions(Z, key, ctx, train, test, designs, seed))
        if a.with_model:
            import warnings

            from bioworld.knowledge import KnowledgeBase, KnowledgeConfig, SignatureAtlas
            from bioworld.train.pretrain import PretrainConfig, pretrain_atlas

            warnings.simplefilter("ignore")
            seen = SignatureAtlas(atlas.X[train], atlas.obs.iloc[train].reset_index(drop=True), atlas.genes)
            kb = KnowledgeBase(KnowledgeConfig(seed=seed), atlas=seen)
            t1 = time.perf_counter()
            model = pretrain_atlas(atlas=atlas, train_rows=train, knowledge=kb,
                                   config=PretrainConfig(seed=seed, steps=a.with_model), progress=False)
            zm = zscore_rows(model.predict_rows(test))
            print(f"AtlasModel ({a.with_model} steps) trained in {time.perf_counter() - t1:.0f} s", flush=True)
            for name in [n for n in preds if n.startswith("Low-rank")]:
                zl = zscore_rows(preds[name])
                for w in a.weights:
                    preds[f"AtlasModel + {w:g} x {name}"] = (1 - w) * zm + w * zl
            preds[f"AtlasModel ({a.with_model} steps)"] = zm
        observed = atlas.X[test]
        for name, p in preds.items():
            scores.setdefault(name, []).append(float(score_signatures(p, observed)["spearman"].mean()))
            print(f"{a.on} seed {seed} {name}: {scores[name][-1]:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    best = np.mean(scores["CompoundPlusContext"])
    print(f"\n{a.on} split, seeds {a.seeds}\n\n| method | Spearman (mean +- sd over seeds) | vs CompoundPlusContext |"
          "\n|---|---:|---:|")
    for name, v in scores.items():
        sd = np.std(v, ddof=1) if len(v) > 1 else 0.0
        print(f"| {name} | {np.mean(v):.4f} +- {sd:.4f} | {np.mean(v) - best:+.4f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s; load average {load0[0]:.1f} at start / {os.getloadavg()[0]:.1f} at end "
          "(2 shared cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
