"""Inner held-out reliability of each retrospective fold's model (issue 14, h14e's pre-registered rule).

For every outer fold of the retrospective (dataset, split seed ``s``, fold ``f``; the splits of
:mod:`bioworld.eval.retrospective`), the fold's *training* perturbation targets are dealt into
``--inner`` groups the way the outer split deals (Papalexi: ``leave_targets_out(training labels,
n_folds=K, seed=s)``; L1000: ``default_rng(s).permutation`` of the sorted training compounds,
``array_split`` into K). For each group a WorldModel is trained exactly as the outer one (same
config and steps, training seed ``s + model_seed_offset``) without the outer fold's held-out labels
*and* the group's labels, and ranks the same candidates on the same control cells as the outer run.
The group's perturbations of the judged kind (Papalexi: single knockouts; L1000: the compound at the
judged dose) are then scored as the outer evaluation scores held-out items: their ``model_pct`` and
``prior_pct`` in the inner model's table beside their observed goal change towards the goal (the
evaluation's own definition, own transcript left out). The outer fold's held-out labels never enter.

:func:`reliability_weight` turns those items into the model's weight in the log-odds fusion
(``benchmarks/run_retrospective_variants.py --inner``): ``r_m`` / ``r_p`` = Spearman of ``model_pct`` /
``prior_pct`` with the observed change over the fold's inner items, ``a = max(r, 0)``,
``s0 = 1 / sqrt(n - 1)``, ``w = (a_m + s0) / (a_m + a_p + 2 s0)``.

Writes ``inner.csv`` (one row per inner-held-out item) into ``--out``, appending fold by fold (a
fold already in the file is skipped, so an interrupted run resumes), and ``INNER.md`` (command,
load, wall time per fold, the weights). ``--save-tables DIR``: also every inner model's ranked
candidates as ``<dataset>_s<seed>_f<fold>_i<group>.csv.gz`` (the cross-fit bag of
``run_retrospective_variants.py --inner-tables``: the inner models never saw the outer fold's
held-out labels, so their predictions for them are held-out predictions too).

    python benchmarks/run_retrospective_inner.py --only papalexi,l1000 --seeds 0,1,2 --folds 4 --inner 3 --out DIR
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from bioworld.eval import retrospective as R

INNER_COLUMNS = ["dataset", "seed", "fold", "inner", "item", "candidate", "towards", "model_pct", "prior_pct",
                 "score", "own_share", "n_candidates", "wall_s"]


def reliability_weight(model_pct: np.ndarray, prior_pct: np.ndarray, towards: np.ndarray
                       ) -> tuple[float, float, float, int]:
    """``(w, r_m, r_p, n)``: the model's weight in the log-odds fusion from its inner held-out items.

    ``r_m`` / ``r_p``: Spearman correlation of the items' ``model_pct`` / ``prior_pct`` with their
    observed change towards the goal (NaN, e.g. a constant column or fewer than 3 items, counts 0);
    ``w = (max(r_m, 0) + s0) / (max(r_m, 0) + max(r_p, 0) + 2 s0)`` with ``s0 = 1 / sqrt(n - 1)``
    (the sd of a Spearman correlation under no association: thin evidence keeps ``w`` near 0.5).
    Fewer than 3 items: ``w = 0.5``."""
    from scipy.stats import spearmanr

    m, p, o = (np.asarray(x, dtype=np.float64) for x in (model_pct, prior_pct, towards))
    ok = np.isfinite(m) & np.isfinite(p) & np.isfinite(o)
    n = int(ok.sum())
    if n < 3:
        return 0.5, float("nan"), float("nan"), n

    def rho(x: np.ndarray) -> float:
        if np.ptp(x[ok]) == 0 or np.ptp(o[ok]) == 0:
            return 0.0
        r = float(spearmanr(x[ok], o[ok])[0])
        return r if np.isfinite(r) else 0.0

    r_m, r_p = rho(m), rho(p)
    s0 = 1.0 / np.sqrt(n - 1.0)
    a_m, a_p = max(r_m, 0.0), max(r_p, 0.0)
    return float((a_m + s0) / (a_m + a_p + 2.0 * s0)), r_m, r_p, n


def fold_weights(inner: pd.DataFrame) -> dict[tuple[str, int, int], tuple[float, float, float, int]]:
    """:func:`reliability_weight` of every outer fold in an ``inner.csv`` frame."""
    return {(str(ds), int(s), int(f)): reliability_weight(part["model_pct"], part["prior_pct"], part["towards"])
            for (ds, s, f), part in inner.groupby(["dataset", "seed", "fold"])}


# ------------------------------------------------------------------------------ the datasets as the runs read them
def papalexi_setup(settings: R.RetroSettings) -> SimpleNamespace:
    """Papalexi as :func:`bioworld.eval.retrospective.run_genetic_retro` reads it: data, labels, the
    single knockouts' observed change towards the goal (own transcript left out)."""
    from bioworld.data import load_papalexi, normalize, register

    goal = R.GOALS["papalexi"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = load_papalexi()
        reg = register(adata, perturbation_key="perturbation", control="control", input="counts",
                       replicate_key="bio_rep")
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    var = [str(v) for v in adata.var_names]
    acts = {lab: R._parse(lab) for lab in set(labels) - {"control"}}
    singles = {lab: a.components[0].target for lab, a in acts.items()
               if len(a.components) == 1 and a.components[0].kind == "ko"}
    targets = {lab: [p.target for p in a.components] for lab, a in acts.items()}
    goal_w = R._goal_genes(goal)[1]
    obs, _ = R.observed_goal_change(normalize(adata, reg), labels, "control", R._panel_weights(goal_w, var), var,
                                    exclude=targets)
    towards = {lab: -v for lab, v in obs.items() if lab in singles}  # 'down' goal: positive = towards it
    return SimpleNamespace(dataset="papalexi", goal=goal, adata=adata, labels=labels, singles=singles,
                           towards=towards, settings=settings)


def l1000_setup(settings: R.RetroSettings) -> SimpleNamespace:
    """The L1000 plate as :func:`bioworld.eval.retrospective.run_l1000_retro` reads it (structures read)."""
    from bioworld.data import bundled_path

    goal = R.GOALS["l1000"]
    adata, labels, kw, _, observed, _, _ = R._l1000_data(goal, True)
    acts = {lab: R._parse(lab) for lab in set(labels) - {"control"}}
    compounds = sorted({a.components[0].target for a in acts.values()})
    at_dose = {a.components[0].target: lab for lab, a in acts.items()
               if np.isclose(a.components[0].dose, settings.dose)}
    return SimpleNamespace(dataset="l1000", goal=goal, adata=adata, labels=labels, kw=kw, acts=acts,
                           compounds=compounds, at_dose=at_dose, towards={lab: -v for lab, v in observed.items()},
                           smiles=bundled_path("compounds/lincs_drugs_smiles.csv"), settings=settings)


def outer_folds(d: SimpleNamespace) -> Iterator[tuple[int, int, list[str], list[list[str]]]]:
    """``(seed, fold, outer held-out labels, inner groups' labels)`` in the runners' order."""
    from bioworld.data import leave_targets_out

    st = d.settings
    for seed in st.seeds:
        if d.dataset == "papalexi":
            for sp in leave_targets_out(d.labels, n_folds=st.folds, seed=seed):
                train = [lab for lab in sp.train if lab != "control"]
                inner = [s.test for s in leave_targets_out(train, n_folds=d.inner, seed=seed)]
                yield seed, sp.fold, list(sp.test), inner
            continue
        order = np.random.default_rng(seed).permutation(len(d.compounds))
        for fold, chunk in enumerate(np.array_split(order, st.folds)):
            held = {d.compounds[i] for i in chunk}
            outer = [lab for lab, a in d.acts.items() if a.components[0].target in held]
            train_c = [c for c in d.compounds if c not in held]
            groups = [{train_c[i] for i in ch} for ch in
                      np.array_split(np.random.default_rng(seed).permutation(len(train_c)), d.inner)]
            yield seed, fold, outer, [[lab for lab, a in d.acts.items() if a.components[0].target in g]
                                      for g in groups]


def rank_without(d: SimpleNamespace, holdout: list[str], seed: int) -> tuple[Any, pd.DataFrame]:
    """Train the fold's model without ``holdout`` and rank the outer run's candidates on its cells."""
    st = d.settings
    tseed = seed + st.model_seed_offset
    if d.dataset == "papalexi":
        wm = R._train(d.adata, holdout, tseed, st.steps, perturbation_key="perturbation", control="control",
                      replicate_key="bio_rep")
        ctrl = np.flatnonzero(d.labels == "control")
        pick = np.random.default_rng(seed).choice(ctrl, min(st.n_cells, len(ctrl)), replace=False)
        res = wm.prioritize(d.adata[np.sort(pick)].copy(), d.goal, entities=[], compounds=[],
                            max_genes=st.max_genes, pairs=False, n_boot=20, max_cells=st.n_cells)
    else:
        wm = R._train(d.adata, holdout, tseed, st.steps, smiles=d.smiles, **d.kw)
        res = wm.prioritize(d.adata[np.flatnonzero(d.labels == "control")].copy(), d.goal, genes=[], entities=[],
                            dose=st.dose, pairs=False, n_boot=20, max_cells=st.n_cells)
    return wm, res.table


def inner_items(d: SimpleNamespace, wm: Any, table: pd.DataFrame, group: list[str]) -> list[dict[str, Any]]:
    """The group's judged items in the inner model's table: candidate label, observed change towards the
    goal, ``model_pct``, ``prior_pct``, ``score``, ``own_share``."""
    kind = "gene" if d.dataset == "papalexi" else "compound"
    t = table[(table["kind"] == kind) & ~table["seen"].astype(bool)].reset_index(drop=True)
    at = {lab: i for i, lab in enumerate(t["intervention"])}
    pairs = []
    for lab in group:
        if d.dataset == "papalexi":
            if lab in d.singles and lab in d.towards:
                pairs.append((lab, wm.engine.space.parse(f"ko:{d.singles[lab]}").label))
        else:
            a = d.acts[lab].components[0]
            if d.at_dose.get(a.target) == lab and lab in d.towards:
                pairs.append((lab, wm.engine.space.parse(f"{a.target}@{d.settings.dose:g}").label))
    rows = []
    for lab, cand in pairs:
        if cand not in at:
            raise SystemExit(f"{d.dataset}: inner-held-out {lab} ({cand}) is not among the unseen candidates")
        r = t.iloc[at[cand]]
        rows.append({"item": lab, "candidate": cand, "towards": d.towards[lab], "model_pct": r["model_pct"],
                     "prior_pct": r["prior_pct"], "score": r["score"], "own_share": r.get("own_share", np.nan),
                     "n_candidates": len(t)})
    return rows


def run(d: SimpleNamespace, out: Path, log: list[str], tables: Path | None = None) -> None:
    """Every outer fold's inner models; rows appended to ``out/inner.csv`` fold by fold."""
    path = out / "inner.csv"
    done = set()
    if path.exists():
        old = pd.read_csv(path)
        done = {(str(a), int(b), int(c)) for a, b, c in old[["dataset", "seed", "fold"]].itertuples(index=False)}
    for seed, fold, outer, groups in outer_folds(d):
        if (d.dataset, seed, fold) in done:
            continue
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for j, group in enumerate(groups):
            t1 = time.perf_counter()
            wm, table = rank_without(d, sorted(set(outer) | set(group)), seed)
            if tables is not None:
                tables.mkdir(parents=True, exist_ok=True)
                table[[c for c in R.CANDIDATE_COLUMNS if c in table.columns]].to_csv(
                    tables / f"{d.dataset}_s{seed}_f{fold}_i{j}.csv.gz", index=False)
            for r in inner_items(d, wm, table, group):
                rows.append({"dataset": d.dataset, "seed": seed, "fold": fold, "inner": j, **r,
                             "wall_s": round(time.perf_counter() - t1, 1)})
        frame = pd.DataFrame(rows, columns=INNER_COLUMNS)
        frame.to_csv(path, mode="a", header=not path.exists(), index=False)
        w, r_m, r_p, n = reliability_weight(frame["model_pct"], frame["prior_pct"], frame["towards"])
        log.append(f"{d.dataset} seed {seed} fold {fold}: {len(groups)} inner models, {n} items, "
                   f"{time.perf_counter() - t0:.0f} s at load {R.loadavg()}; r_m {r_m:.3f}, r_p {r_p:.3f}, w {w:.3f}")
        print(log[-1], flush=True)


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    d0 = R.RetroSettings()
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", default="papalexi,l1000")
    p.add_argument("--seeds", default=",".join(map(str, d0.seeds)))
    p.add_argument("--folds", type=int, default=d0.folds)
    p.add_argument("--inner", type=int, default=3, help="inner groups per outer fold")
    p.add_argument("--steps", type=int, default=d0.steps)
    p.add_argument("--model-seed-offset", type=int, default=d0.model_seed_offset)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--save-tables", type=Path, default=None, help="also write every inner model's candidates here")
    a = p.parse_args(argv)
    if a.inner < 2 or a.folds < 2:
        raise SystemExit("--inner and --folds >= 2 expected")
    st = R.RetroSettings(seeds=tuple(int(s) for s in a.seeds.split(",") if s.strip()), folds=a.folds,
                         steps=a.steps, model_seed_offset=a.model_seed_offset)
    a.out.mkdir(parents=True, exist_ok=True)
    log = [f"command: `python benchmarks/run_retrospective_inner.py {shlex.join(argv)}`",
           f"start: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {R.loadavg()}"]
    setups = {"papalexi": papalexi_setup, "l1000": l1000_setup}
    for ds in [x.strip() for x in a.only.split(",") if x.strip()]:
        d = setups[ds](st)
        d.inner = a.inner
        run(d, a.out, log, a.save_tables)
    log.append(f"end: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {R.loadavg()}")
    with open(a.out / "INNER.md", "a", encoding="utf-8") as fh:
        fh.write("\n".join(["", *[f"- {x}" for x in log], ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
