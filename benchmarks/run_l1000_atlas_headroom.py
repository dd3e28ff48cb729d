"""L1000 A375, unseen compounds: do atlas signatures in other cell lines beat the per-dose mean? (no training)

    python benchmarks/run_l1000_atlas_headroom.py [--seeds 0 1 2] [--name L1000_atlas_headroom]

Same plate, wells, deltas, splits (``unseen_compounds``, 20% of the compounds with all their doses,
seeds 0-2) and top-50 Pearson as ``BENCHMARKS.md``. For a withheld compound ``c`` at dose ``d`` the
baseline is the per-dose mean of the training compounds (``MeanOfTrain``). An *atlas proxy* ``s_c``
(z-scored, over the plate genes the atlas has; 0 on the others) is added with one gain per dose that is
fitted by least squares on the *training* compounds of the split (their deltas minus the per-dose mean,
regressed on their own proxies): ``pred = mean_d + b_d * s_c``. Proxies, from the bundled atlas (which
holds no L1000 data) and the bundled compound knowledge only:

- ``own atlas signatures``: c's mean signature over every atlas context where it was measured;
- ``same-target atlas compounds``: the mean atlas signature of the *other* atlas compounds that share a
  target with c (Jaccard-weighted), i.e. knowledge retrieval for compounds the atlas never measured;
- ``same-mechanism atlas compounds``: the same through the mechanism-of-action label;
- ``own, else same-target, else same-mechanism``: the first proxy that exists;
- ablation: the last with the compound -> target (and mechanism) links shuffled among compounds;
- ``r(proxy, delta minus per-dose mean)``: the Pearson correlation, over the genes the proxy covers, of
  the proxy with what the per-dose mean misses (the compound-specific part of the response), averaged over
  the covered withheld labels: the signal a proxy carries, whatever gain it is given;
- a reference no honest predictor has (oracle): the compound's own A375 deltas at its *other* doses minus
  the plate's per-dose mean: what knowing this compound's response on this plate would buy.

Atlas signatures are centred on the atlas compound mean before use (the response every drug shares is
already in the per-dose mean). ``covered`` is the share of withheld labels with a proxy (the others
get the per-dose mean); ``discrimination`` as in ``BENCHMARKS.md`` (against every observed delta).
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
ORACLE = "oracle: own A375 deltas at the other doses (not honest)"


def _plate():
    """``(obs deltas {label: [G]}, genes, labels, compound name of each label, dose of each label)``."""
    from bioworld.actions import parse_action
    from bioworld.data import load_l1000, normalize, register
    from bioworld.data._io import L1000_REGISTER_KWARGS
    from bioworld.eval.benchmark import _l1000_smiles, mean_deltas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_l1000()
        smiles = _l1000_smiles(adata)
        names = adata.obs["pert_iname"].astype(str)
        keep = ((adata.obs["perturbation"].astype(str) == "control") | names.isin(list(smiles))).to_numpy()
        adata = adata[keep].copy()
        reg = register(adata, **L1000_REGISTER_KWARGS)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    obs, _ = mean_deltas(normalize(adata, reg), labels, "control")
    comp = {lab: (parse_action(lab).components[0].target, float(parse_action(lab).components[0].dose)) for lab in obs}
    return obs, [str(g) for g in adata.var_names], labels, comp


def _proxies(names: list[str], genes: list[str], ck) -> dict[str, dict[str, np.ndarray]]:
    """``{proxy: {compound name: [G] z-scored atlas proxy on the plate genes}}`` (absent = no proxy)."""
    from bioworld.knowledge import load_atlas, zscore_rows

    atlas = load_atlas()
    obs = atlas.obs
    Z = zscore_rows(atlas.X)
    cmp_rows = np.flatnonzero(obs["kind"].to_numpy() == "compound")
    centre = Z[cmp_rows].mean(0)
    keys = obs["key"].to_numpy()
    atlas_keys = sorted(set(keys[cmp_rows]))
    mean_of = {k: Z[cmp_rows[keys[cmp_rows] == k]].mean(0) - centre for k in atlas_keys}
    col = [atlas.gene_pos.get(g, -1) for g in genes]
    have = np.array([c >= 0 for c in col])

    def on_plate(v: np.ndarray) -> np.ndarray:
        out = np.zeros(len(genes), np.float32)
        out[have] = v[np.array(col)[have]]
        return (out - out[have].mean()) / max(out[have].std(), 1e-9) * have

    targets = {k: set(ck.targets(k[4:])) for k in atlas_keys}
    moas = {k: ck.moa(k[4:]).strip().lower() for k in atlas_keys}
    out: dict[str, dict[str, np.ndarray]] = {"own atlas signatures": {}, "same-target atlas compounds": {},
                                             "same-mechanism atlas compounds": {}}
    for n in names:
        key = ck.resolve(n, strict=False)
        own = f"cmp:{key}" if key else None
        if own in mean_of:
            out["own atlas signatures"][n] = on_plate(mean_of[own])
        t, m = set(ck.targets(n)), ck.moa(n).strip().lower()
        w = np.array([len(t & targets[k]) / len(t | targets[k]) if t and targets[k] and k != own else 0.0
                      for k in atlas_keys])
        if w.sum() > 0:
            out["same-target atlas compounds"][n] = on_plate(w @ np.stack([mean_of[k] for k in atlas_keys]) / w.sum())
        same = [k for k in atlas_keys if m and moas[k] == m and k != own]
        if same:
            out["same-mechanism atlas compounds"][n] = on_plate(np.mean([mean_of[k] for k in same], axis=0))
    first = {}
    for n in names:
        for p in ("own atlas signatures", "same-target atlas compounds", "same-mechanism atlas compounds"):
            if n in out[p]:
                first[n] = out[p][n]
                break
    out["own, else same-target, else same-mechanism"] = first
    return out


def _score(seeds: list[int]) -> pd.DataFrame:
    from bioworld.data import unseen_compounds
    from bioworld.eval.metrics import discrimination, pearson_delta, top_de_genes
    from bioworld.knowledge import CompoundKnowledge

    obs, genes, labels, comp = _plate()
    names = sorted({c for c, _ in comp.values()})
    ck = CompoundKnowledge.bundled()
    proxies = _proxies(names, genes, ck)
    shuf = _proxies(names, genes, ck.shuffled(0))
    proxies["own, else same-target, else same-mechanism (links shuffled)"] = shuf["own, else same-target, else same-mechanism"]
    proxies = {p: {lab: v[comp[lab][0]] for lab in obs if comp[lab][0] in v} for p, v in proxies.items()}
    # oracle (not honest): the compound's own A375 deltas at its other doses, minus the plate's per-dose mean
    plate_mean = {d: np.mean([obs[t] for t in obs if comp[t][1] == d], axis=0) for d in {c[1] for c in comp.values()}}
    proxies[ORACLE] = {lab: np.mean([obs[t] - plate_mean[comp[t][1]] for t in obs if comp[t][0] == comp[lab][0]
                                     and t != lab], axis=0) for lab in obs}
    rows = []
    for seed in seeds:
        sp = unseen_compounds(labels, frac=0.2, seed=seed)
        train = [t for t in sp.train if t in obs]
        test = [t for t in sp.test if t in obs]
        mean_d = {d: np.mean([obs[t] for t in train if np.isclose(comp[t][1], d, rtol=1e-6)], axis=0)
                  for d in sorted({comp[t][1] for t in train})}
        base = {t: mean_d[min(mean_d, key=lambda d: abs(np.log10(d + 1e-3) - np.log10(comp[t][1] + 1e-3)))]
                for t in train + test}
        methods = {"Per-dose mean (MeanOfTrain)": {t: base[t] for t in test}}
        for pname, prox in proxies.items():
            gain = {}
            for d in mean_d:
                fit = [t for t in train if t in prox and np.isclose(comp[t][1], d, rtol=1e-6)]
                x = np.concatenate([prox[t] for t in fit]) if fit else np.zeros(0)
                y = np.concatenate([obs[t] - base[t] for t in fit]) if fit else np.zeros(0)
                gain[d] = float(x @ y / (x @ x)) if len(x) and x @ x > 0 else 0.0
            methods[pname] = {t: base[t] + gain[min(gain, key=lambda d: abs(d - comp[t][1]))] * prox[t]
                              if t in prox else base[t] for t in test}
        for m, pred in methods.items():
            disc = discrimination(pred, obs)
            for t in test:
                top = top_de_genes(obs[t], 50)
                prox = proxies.get(m, {}).get(t)
                nz = prox != 0 if prox is not None else None
                signal = float(np.corrcoef(prox[nz], (obs[t] - base[t])[nz])[0, 1]) if prox is not None else np.nan
                rows.append({"seed": seed, "method": m, "label": t, "pearson_top50": pearson_delta(pred[t][top], obs[t][top]),
                             "discrimination": disc[t], "covered": prox is not None, "signal_r": signal})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", default="L1000_atlas_headroom")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    load, t0 = os.getloadavg(), time.perf_counter()
    df = _score(args.seeds)
    per_seed = df.groupby(["method", "seed"])[["pearson_top50", "discrimination"]].mean()
    summ = per_seed.groupby("method").agg(["mean", "std"])
    cov = df.groupby("method")["covered"].mean()
    sig = df.groupby("method")["signal_r"].mean()
    gain_cov = {}
    base = df[df["method"] == "Per-dose mean (MeanOfTrain)"].set_index(["seed", "label"])["pearson_top50"]
    for m, g in df.groupby("method"):
        g = g[g["covered"]].set_index(["seed", "label"])["pearson_top50"]
        gain_cov[m] = float((g - base.loc[g.index]).mean()) if len(g) else float("nan")
    lines = ["# L1000 A375 unseen compounds: atlas signatures elsewhere vs the per-dose mean (no training)", "",
             f"Command: `python benchmarks/run_l1000_atlas_headroom.py --seeds {' '.join(map(str, args.seeds))}`", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "| method | Pearson top-50 (mean +- sd over seeds) | discrimination | covered | Pearson gain on covered labels "
             "| r(proxy, delta minus per-dose mean) |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, r in summ.sort_values(("pearson_top50", "mean"), ascending=False).iterrows():
        lines.append(f"| {m} | {r[('pearson_top50', 'mean')]:.3f} +- {r[('pearson_top50', 'std')]:.3f} | "
                     f"{r[('discrimination', 'mean')]:.3f} | {cov[m]:.2f} | {gain_cov[m]:+.3f} | {sig[m]:+.3f} |")
    lines += ["", f"{df.groupby('seed')['label'].nunique().sum()} withheld labels over {len(args.seeds)} seeds. "
              f"Wall {time.perf_counter() - t0:.0f} s; load average {load[0]:.1f} at start / {os.getloadavg()[0]:.1f} at end."]
    out = ROOT / "benchmarks" / "results" / "atlas"
    df.to_csv(out / f"{args.name}.csv", index=False)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
