"""Unseen compounds in the atlas: does any knowledge-derived predictor beat the context mean? (no training)

    python benchmarks/run_atlas_headroom.py [--seeds 0 1 2] [--name ATLAS_knowledge_headroom]

Split: :func:`bioworld.eval.atlas.unseen_compound_split` (every signature of 10% of the compounds
withheld, per seed), as the model's unseen-compound benchmark. Each predictor sees only the training
signatures and the bundled curated knowledge. For a withheld compound ``c`` in context ``k``:

- ``ContextMean``: k's mean training signature (the baseline);
- *in context k* (``@k``): the weighted mean of the training signatures, in k, of other compounds,
  weighted by a knowledge similarity to ``c`` (shared targets: Jaccard of target sets; same mechanism
  of action; STRING neighbourhood of the targets; all knowledge feature blocks), blended with the
  context mean: ``a * z(neighbours) + (1 - a) * z(ContextMean)``;
- *anywhere* (``@any``): the same with the neighbours' mean signatures over all their training contexts;
- ``knockdowns of targets``: the mean CRISPRi knockdown signature (Replogle, any context) of c's targets,
  centred on the knockdown mean, blended the same way;
- ablations: the shared-target and mechanism predictors with compound -> (targets, mechanism) links
  shuffled among compounds; the STRING predictor with the network's gene labels shuffled; and ``any other
  compound (no knowledge)``: every training compound weighted equally (in k: the context's mean over
  compounds only, without the CRISPRi knockdowns that ContextMean also averages), which separates what
  knowledge adds from what any compound-only average adds;
- a reference that no honest predictor has (``oracle``): c's own mean signature over its other
  (withheld) contexts, blended the same way — what a perfect knowledge proxy of c could buy.

A withheld compound without support for a predictor (no target known, no neighbour in k) falls back to
the context mean, so every predictor is scored on every withheld signature; ``covered`` is the share
with support and ``gain covered`` the Spearman gain over ContextMean on those rows alone. Scores as the
atlas benchmark (Spearman over the observed signature's ranked genes). Mean +- sd over seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BLENDS = (0.25, 0.5, 0.75, 1.0)
KNN, TEMP = 10, 0.1


def _z(x: np.ndarray) -> np.ndarray:
    from bioworld.knowledge import zscore_rows

    return zscore_rows(x)


def _softmax_knn(sim: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Row-wise top-``KNN`` softmax (temperature ``TEMP``) over the columns where ``ok``; 0 elsewhere."""
    w = np.zeros_like(sim)
    for i in range(len(sim)):
        s = np.where(ok, sim[i], -np.inf)
        top = np.argsort(-s)[:KNN]
        top = top[np.isfinite(s[top])]
        if len(top):
            e = np.exp((s[top] - s[top].max()) / TEMP)
            w[i, top] = e / e.sum()
    return w


def _weights(test_keys: list[str], train_keys: list[str], seed: int, train_atlas) -> dict[str, np.ndarray]:
    """``{name: [n_test_keys, n_train_keys]}`` knowledge similarity of withheld to training compounds."""
    from bioworld.knowledge import CompoundKnowledge, KnowledgeBase, KnowledgeConfig

    ck = CompoundKnowledge.bundled()
    out: dict[str, np.ndarray] = {}
    for label, kn in (("shared targets", ck), ("shared targets (links shuffled)", ck.shuffled(seed))):
        t_test = [set(kn.targets(k[4:])) for k in test_keys]
        t_train = [set(kn.targets(k[4:])) for k in train_keys]
        out[label] = np.array([[len(a & b) / len(a | b) if a and b else 0.0 for b in t_train] for a in t_test])
    for label, kn in (("same mechanism", ck), ("same mechanism (links shuffled)", ck.shuffled(seed))):
        moa = [kn.moa(k[4:]).strip().lower() for k in test_keys], [kn.moa(k[4:]).strip().lower() for k in train_keys]
        out[label] = np.array([[float(bool(a) and a == b) for b in moa[1]] for a in moa[0]])
    out["shared targets or same mechanism"] = out["shared targets"] + out["same mechanism"]
    out["shared targets or same mechanism (links shuffled)"] = (out["shared targets (links shuffled)"]
                                                                + out["same mechanism (links shuffled)"])
    out["any other compound (no knowledge)"] = np.ones((len(test_keys), len(train_keys)))
    for label, shuffle in (("STRING of targets", ()), ("STRING of targets (labels shuffled)", ("network",)),
                           ("all knowledge blocks", ())):
        kb = KnowledgeBase(KnowledgeConfig(seed=seed, shuffle=shuffle), atlas=train_atlas)
        a, b = (0, kb.config.network_dim) if label.startswith("STRING") else (0, kb.config.dim - 3)
        fa, ka = kb.compound_features([k[4:] for k in test_keys])
        fb, kbk = kb.compound_features([k[4:] for k in train_keys])
        fa, fb = fa[:, a:b], fb[:, a:b]
        fa = fa / np.maximum(np.linalg.norm(fa, axis=1, keepdims=True), 1e-12)
        fb = fb / np.maximum(np.linalg.norm(fb, axis=1, keepdims=True), 1e-12)
        ok = (np.linalg.norm(fb, axis=1) > 0)
        w = _softmax_knn(fa @ fb.T, ok)
        w[np.linalg.norm(fa, axis=1) == 0] = 0.0
        out[label] = w
    return out


def _predictors(atlas, train: np.ndarray, test: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
    """``{name: (pred [n_test, G] before blending, supported [n_test])}`` plus the context mean."""
    from bioworld.knowledge import CompoundKnowledge, SignatureAtlas
    from bioworld.train.pretrain import _Inputs

    obs = atlas.obs
    inputs = _Inputs(atlas, train, atlas.basis(64, rows=train, seed=seed))
    _, _, zk, _ = inputs.for_rows(test)
    Z = inputs.Z
    keys = obs["key"].to_numpy()
    train_cmp = train[obs["kind"].to_numpy()[train] == "compound"]
    train_keys = sorted(set(keys[train_cmp]))
    test_keys = sorted(set(keys[test]))
    tk = {k: i for i, k in enumerate(train_keys)}
    key_mean = np.stack([Z[train_cmp[keys[train_cmp] == k]].mean(0) for k in train_keys])
    seen = SignatureAtlas(atlas.X[train], obs.iloc[train].reset_index(drop=True), atlas.genes)
    W = _weights(test_keys, train_keys, seed, seen)
    row_key = np.array([test_keys.index(k) for k in keys[test]])
    ctx = obs["context"].to_numpy()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {"ContextMean": (zk, np.ones(len(test), bool))}
    for label, w in W.items():
        for where in ("@k", "@any"):
            pred, sup = zk.copy(), np.zeros(len(test), bool)
            for i, r in enumerate(test):
                if where == "@k":
                    cand = train_cmp[ctx[train_cmp] == ctx[r]]
                    wi = w[row_key[i], [tk[k] for k in keys[cand]]] if len(cand) else np.zeros(0)
                    src = Z[cand]
                else:
                    wi, src = w[row_key[i]], key_mean
                if wi.sum() > 0:
                    pred[i], sup[i] = _z(wi @ src / wi.sum()), True
            out[f"{label} {where}"] = (pred, sup)
    # knockdowns of the compound's targets (any context), centred on the knockdown mean
    kd_rows = train[obs["kind"].to_numpy()[train] != "compound"]
    kd_centre = Z[kd_rows].mean(0)
    tg = obs["target_gene"].to_numpy()
    ck = CompoundKnowledge.bundled()
    pred, sup = zk.copy(), np.zeros(len(test), bool)
    for i, r in enumerate(test):
        rows = kd_rows[np.isin(tg[kd_rows], ck.targets(keys[r][4:]))]
        if len(rows):
            pred[i], sup[i] = _z(Z[rows].mean(0) - kd_centre), True
    out["knockdowns of targets"] = (pred, sup)
    # oracle: the compound's own mean signature over its other (withheld) contexts
    pred, sup = zk.copy(), np.zeros(len(test), bool)
    for i, r in enumerate(test):
        others = test[(keys[test] == keys[r]) & (test != r)]
        if len(others):
            pred[i], sup[i] = _z(Z[others].mean(0)), True
    out["oracle: own signatures elsewhere"] = (pred, sup)
    return out, zk


def run(seeds: list[int]) -> pd.DataFrame:
    from bioworld.eval.atlas import score_signatures, unseen_compound_split
    from bioworld.knowledge import load_atlas

    atlas = load_atlas()
    frames = []
    for seed in seeds:
        train, test = unseen_compound_split(atlas, seed=seed)
        preds, zk = _predictors(atlas, train, test, seed)
        observed = atlas.X[test]
        base = score_signatures(zk, observed)["spearman"].to_numpy()
        for name, (p, sup) in preds.items():
            for a in (BLENDS if name != "ContextMean" else (0.0,)):
                mix = a * p + (1 - a) * zk if a < 1 else p
                s = score_signatures(mix, observed)["spearman"].to_numpy()
                frames.append({"seed": seed, "predictor": name, "blend": a, "spearman": np.nanmean(s),
                               "covered": sup.mean(), "gain_covered": np.nanmean((s - base)[sup]) if sup.any() else np.nan,
                               "n": len(test)})
        print(f"seed {seed}: {len(test)} withheld signatures", flush=True)
    return pd.DataFrame(frames)


def report(df: pd.DataFrame, seeds: list[int], wall: float, load: tuple, name: str) -> str:
    g = df.groupby(["predictor", "blend"])
    t = g.agg(sp=("spearman", "mean"), sd=("spearman", "std"), cov=("covered", "mean"),
              gc=("gain_covered", "mean")).reset_index()
    base = t.loc[t["predictor"] == "ContextMean", "sp"].iloc[0]
    lines = ["# Atlas, unseen compounds: knowledge-derived predictors vs the context mean (no training)", "",
             f"Command: `python benchmarks/run_atlas_headroom.py --seeds {' '.join(map(str, seeds))}`", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "| predictor | blend a | Spearman (mean +- sd over seeds) | vs ContextMean | covered | gain on covered rows |",
             "|---|---:|---:|---:|---:|---:|"]
    for _, r in t.sort_values(["predictor", "blend"]).iterrows():
        lines.append(f"| {r['predictor']} | {r['blend']:.2f} | {r['sp']:.3f} +- {r['sd']:.3f} | {r['sp'] - base:+.3f} | "
                     f"{r['cov']:.2f} | {r['gc']:+.3f} |")
    lines += ["", f"Wall {wall:.0f} s; load average {load[0]:.1f} at start / {os.getloadavg()[0]:.1f} at end "
              f"(shared 2-core machine), 1 thread."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", default="ATLAS_knowledge_headroom")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    load, t0 = os.getloadavg(), time.perf_counter()
    df = run(args.seeds)
    out = ROOT / "benchmarks" / "results" / "atlas"
    df.to_csv(out / f"{args.name}.csv", index=False)
    text = report(df, args.seeds, time.perf_counter() - t0, load, args.name)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
