"""Variants of the default ranking's knowledge prior, rescored from saved retrospective runs (issue 14).

A retrospective run with ``--save-candidates DIR`` keeps every fold's ranked candidates (the model's
``score``, ``own_share``, ``model_pct``, ``prior_pct``); ``priority`` is a fixed function of those
columns and the prior, so a variant of the prior is rescored here exactly, without training:

- ``panel``: the prior of the run (random walk with restart from the goal entity's *panel* genes);
- ``entity``: the same walk from the goal entity's *full* gene set (the network-proximity baseline's
  seeds), what :mod:`bioworld.query._priority` uses now.

Selection between them is nested (leave one seed out): for each seed, the variant with the higher
mean of the three metrics over both datasets on the *other* seeds is scored on that seed. Writes
``items.csv`` (the run's rows, the ``WorldModel`` rows replaced by the ``entity`` variant, plus one
row set per variant and the nested choice) and ``VARIANTS.md`` into ``--out``.

    python benchmarks/run_retrospective_variants.py --runs P_DIR,L_DIR --candidates DIR --out OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bioworld.eval import retrospective as R
from bioworld.query._priority import MODEL_WEIGHT, NO_INFORMATION, rank_pct

KIND = {"papalexi": "gene", "l1000": "compound"}
VARIANTS = {"panel": "WorldModel (prior from panel genes)", "entity": "WorldModel (prior from the entity's genes)"}
NESTED = "WorldModel (prior chosen leaving the seed out)"


def _entity_prior(table: pd.DataFrame, dataset: str) -> np.ndarray:
    """Raw prior of every row from the goal entity's full gene set (NaN where there is none)."""
    from bioworld.knowledge import CompoundKnowledge
    from bioworld.knowledge.network import joint_network

    _, goal_w = R._goal_genes(R.GOALS[dataset])
    prox = R.network_proximity(list(goal_w))
    on_net = set(joint_network()[0])
    ck = CompoundKnowledge.bundled()
    out = np.full(len(table), np.nan)
    for i, (lab, kind) in enumerate(zip(table["intervention"], table["kind"])):
        if kind == "gene" and lab in on_net:
            out[i] = prox.get(lab, 0.0)
        elif kind == "compound":
            name = lab.rsplit("@", 1)[0]
            t = [prox.get(g, 0.0) for g in (ck.targets(name) if ck.resolve(name, strict=False) else []) if g in on_net]
            if t:
                out[i] = max(t)
    return out


def _priorities(table: pd.DataFrame, dataset: str) -> dict[str, np.ndarray]:
    """Each variant's priority of every row (the run's model_pct; the prior percentile within the kind)."""
    model = table["model_pct"].to_numpy(np.float64)
    ent = np.full(len(table), np.nan)
    raw = _entity_prior(table, dataset)
    for k in ("gene", "compound"):
        idx = np.flatnonzero(table["kind"].to_numpy() == k)
        if len(idx):
            pct = rank_pct(raw[idx])
            ent[idx] = np.where(np.isfinite(pct), pct, NO_INFORMATION)
    out = {}
    for name, prior in (("panel", table["prior_pct"].to_numpy(np.float64)), ("entity", ent)):
        out[name] = np.where(np.isfinite(prior), MODEL_WEIGHT * model + (1 - MODEL_WEIGHT) * prior, model)
    return out


def rescore(items: pd.DataFrame, cand_dir: Path) -> pd.DataFrame:
    """Rows (``ITEM_COLUMNS``) of each variant for the held-out items of ``items``."""
    rows = []
    for (ds, seed, fold), part in items[items["method"] == R.MODEL].groupby(["dataset", "seed", "fold"]):
        path = cand_dir / f"{ds}_s{seed}_f{fold}.csv"
        table = pd.read_csv(path if path.exists() else path.with_suffix(".csv.gz"), keep_default_na=False,
                            na_values={"priority": [""], "model_pct": [""], "prior_pct": [""]})
        table["seen"] = table["seen"].astype(str) == "True"
        prios = _priorities(table, str(ds))
        keep = ((table["kind"] == KIND[str(ds)]) & ~table["seen"]).to_numpy()
        labels = list(table["intervention"][keep])
        held = dict(zip(part["item"], part["observed"]))
        hit = dict(zip(part["item"], part["hit"]))
        test = {lab: lab for lab in labels if lab in held}
        if len(test) != len(held):
            raise SystemExit(f"{ds} seed {seed} fold {fold}: {len(held)} held-out items, {len(test)} found in the table")
        for name, p in prios.items():
            start = len(rows)
            R._add_items(rows, dataset=str(ds), seed=int(seed), fold=int(fold), method=VARIANTS[name], labels=labels,
                         scores=p[keep], test=test, observed=held, threshold=0.0)
            for r in rows[start:]:  # the run's hits (its threshold), not recomputed
                r["hit"] = bool(hit[r["item"]])
    return pd.DataFrame(rows, columns=R.ITEM_COLUMNS)


def nested(var: pd.DataFrame, k: int) -> tuple[pd.DataFrame, dict[int, str]]:
    """For each seed, the variant with the higher mean metric (both datasets) on the other seeds."""
    def score(frame: pd.DataFrame) -> float:
        vals = []
        for _, part in frame.groupby(["dataset", "seed"]):
            vals += list(R.metrics_of(part["percentile"], part["hit"], k).values())
        return float(np.nanmean(vals))

    chosen, out = {}, []
    for seed in sorted(var["seed"].unique()):
        other = var[var["seed"] != seed]
        best = max(VARIANTS, key=lambda v: (score(other[other["method"] == VARIANTS[v]]), v == "entity"))
        chosen[int(seed)] = best
        pick = var[(var["seed"] == seed) & (var["method"] == VARIANTS[best])].copy()
        pick["method"] = NESTED
        out.append(pick)
    return pd.concat(out, ignore_index=True), chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="comma-separated run folders (each with items.csv)")
    p.add_argument("--candidates", required=True, type=Path, help="the runs' --save-candidates folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--k", type=int, default=R.RetroSettings().k)
    a = p.parse_args(argv)
    items = pd.concat([pd.read_csv(Path(d) / "items.csv") for d in a.runs.split(",") if d.strip()], ignore_index=True)
    var = rescore(items, a.candidates)
    nest, chosen = nested(var, a.k)
    default = var[var["method"] == VARIANTS["entity"]].copy()
    default["method"] = R.MODEL
    out_items = pd.concat([items[items["method"] != R.MODEL], default, var, nest], ignore_index=True)
    order = [R.MODEL, R.MODEL_RANKED, R.PREDICTED, R.NO_PRIOR, VARIANTS["panel"], VARIANTS["entity"], NESTED,
             R.NETWORK, R.PATHWAY]
    out_items["_o"] = out_items["method"].map({m: i for i, m in enumerate(order)})
    out_items = out_items.sort_values(["dataset", "_o", "seed", "fold"], kind="stable").drop(columns="_o")
    a.out.mkdir(parents=True, exist_ok=True)
    out_items.to_csv(a.out / "items.csv", index=False)
    summ = R.summarize_retro(out_items, k=a.k)
    lines = ["# Knowledge-prior variants of the default ranking (rescored, no training)", "",
             f"Generated by `benchmarks/run_retrospective_variants.py --runs {a.runs} --candidates {a.candidates} "
             f"--out {a.out}`.", "", (__doc__ or "").split("\n\n")[1], "",
             "Nested choice per seed (chosen on the other two seeds): "
             + ", ".join(f"seed {s}: {v}" for s, v in chosen.items()), ""]
    for ds in dict.fromkeys(out_items["dataset"]):
        lines += [f"## {ds}", "", R.markdown_table(summ, ds), ""]
        for m in (R.MODEL, VARIANTS["panel"], NESTED):
            lines += [f"**{R.verdict(summ, ds, m)}**", ""]
    (a.out / "VARIANTS.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {a.out / 'VARIANTS.md'} and items.csv; nested choice {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
