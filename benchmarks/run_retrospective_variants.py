"""Variants of the default ranking, rescored from a retrospective run's saved candidate tables (issue 14).

A retrospective run with ``--save-candidates DIR`` keeps every fold's ranked candidates (the model's
``score``, ``own_share``, ``seen``, ``priority``, ...). ``priority`` is a fixed function of those
columns, the candidates' calibration groups and the knowledge prior
(:func:`bioworld.query._priority.priority_columns`), so each variant is rescored here exactly,
without training. The script first recomputes the run's own ``priority`` and ``model_pct`` with the
rule it ran under (rank average of ``(rank - 1) / (n - 1)`` percentiles) and stops if they differ
from the saved ones (so the groups and the prior are those of the run). Variants:

- ``as run``: the run's ranking (rank average; h14's rule);
- ``log-odds`` (the default now): mid-rank percentiles joined as weighted log-odds;
- ``rank average, mid-rank``: mid-rank percentiles, rank average (the fusion's own effect);
- ``weight fitted on the other folds``: log-odds with the model weight ``w`` in 0, 0.1, ..., 1 that
  maximises the mean of the three metrics over the *other* folds' held-out items of the same seed
  (a fold's own items never choose its weight; those folds' models did train on this fold's
  perturbations, so it is cross-fitted, not a clean inner loop);
- ``fusion chosen on the other dataset``: log-odds or rank average, whichever has the higher mean of
  the three metrics (3 seeds) on the other dataset;
- ``model weight x goal fit`` (h14d's pre-registered rule, measured and not adopted): log-odds with the
  model weight ``0.5 x f``, ``f`` the least-squares slope through the origin of the model's upstream
  predicted change (``score x (1 - own_share)``) on the observed goal change towards the goal (own
  transcript left out) over the fold's measured single perturbations of the ranked kind (their training
  data), clipped to [0, 1] (1 with fewer than 3 such rows): a model that reproduces a fraction ``f`` of
  the goal effects it was trained on gets that share of its weight;
- with ``--inner DIR`` (``benchmarks/run_retrospective_inner.py``; h14e's pre-registered rule): log-odds
  with the model weight ``w = (a_m + s0) / (a_m + a_p + 2 s0)``, ``a_m`` / ``a_p`` the Spearman
  correlation (floored at 0) of the ``model_pct`` / ``prior_pct`` of the fold's *training* perturbations,
  each scored by a model trained without it (3 inner groups), with their observed change towards the goal,
  ``s0 = 1 / sqrt(n - 1)`` over the ``n`` inner items: the model gets the share of the weight its own
  held-out predictions earn against the prior's on the same items;
- with ``--inner-tables DIR`` (``run_retrospective_inner.py --save-tables``; h14e's second pre-registered
  rule): the cross-fit bag, the ensemble rule of the member rows with the fold's inner models as the
  members (trained without the outer fold's held-out labels and a third of its training targets);
- with ``--member-runs`` (a run with ``--model-seed-offset``: each fold's model trained again with
  another seed on the same split and cells; repeat the flag for more members): each member alone
  (``second member alone``, ``member 3 alone``, ...), and the ensembles of the run's model with the
  first 1, 2, ... members (``2 members``, ``3 members``: the mean of the members' model percentiles,
  again a percentile within its group, joined with the prior by log-odds). The member run's own ``priority`` (ranked by the code now) is
  reproduced from its tables as a check. A member may cover only some of the datasets (every fold of
  each): the member rows are then those datasets' only.

Writes ``items.csv`` (the run's rows, ``WorldModel`` and its parts recomputed with the default rule,
plus one row set per variant) and ``VARIANTS.md`` into ``--out``.

    python benchmarks/run_retrospective_variants.py --runs P_DIR,L_DIR --candidates DIR --out OUT
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from bioworld.actions import parse_action
from bioworld.eval import retrospective as R
from bioworld.query import _priority as P

KIND = {"papalexi": "gene", "l1000": "compound"}
AS_RUN = "WorldModel (as run: rank average)"
MEAN_MID = "WorldModel (rank average, mid-rank percentiles)"
LOGODDS = "WorldModel (log-odds, the default)"
FITTED = "WorldModel (model weight fitted on the other folds)"
CROSS = "WorldModel (fusion chosen on the other dataset)"
ENSEMBLE = "WorldModel, 2 members (mean model percentile)"
MEMBER2 = "WorldModel, second member alone"
GOAL_FIT = "WorldModel (model weight x goal fit on its training perturbations)"
INNER = "WorldModel (model weight from its inner held-out reliability)"
BAG = "WorldModel, cross-fit bag (the fold's model + its inner models)"
WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)


def _old_pct(values: np.ndarray) -> np.ndarray:
    """The run's percentiles: ``(rank - 1) / (n - 1)``, one value 0.5, NaN stays NaN."""
    from scipy.stats import rankdata

    out = np.full(len(values), np.nan)
    ok = np.isfinite(values)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 0.5
    elif n > 1:
        out[ok] = (rankdata(values[ok], method="average") - 1.0) / (n - 1.0)
    return out


def _l1000_space() -> SimpleNamespace:
    """The compound features of the run's L1000 models (structures from the bundled LINCS table), for
    the calibration groups; built without training."""
    from bioworld._world_model import WorldModel
    from bioworld.data import bundled_path, load_l1000
    from bioworld.data._io import L1000_REGISTER_KWARGS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = WorldModel(load_l1000(), perturbation_key="perturbation", control="control", config={"seed": 0},
                        smiles=bundled_path("compounds/lincs_drugs_smiles.csv"), **L1000_REGISTER_KWARGS)
    return SimpleNamespace(compounds=wm.space.compounds)


class Fold:
    """One fold's candidate table with what every variant needs (groups, prior, upstream score)."""

    def __init__(self, table: pd.DataFrame, dataset: str, space: SimpleNamespace, prox: dict[str, float]) -> None:
        self.table, self.dataset = table, dataset
        labels = [lab if kind != "gene" else f"ko:{lab}" for lab, kind in zip(table["intervention"], table["kind"])]
        self.actions = [parse_action(lab) for lab in labels]
        self.seen = table["seen"].to_numpy(bool)
        self.score = table["score"].to_numpy(np.float64)
        self.own = table["own_share"].to_numpy(np.float64)
        self.space = space
        self.prior = _raw_prior(table, prox)
        self.keep = ((table["kind"] == KIND[dataset]) & ~table["seen"]).to_numpy()
        # the directed prior's percentiles where the run saved them (the three-part default since stop 28)
        self.directed = table["directed_pct"].to_numpy(np.float64) if "directed_pct" in table.columns else None

    def columns(self, fusion: str, weight: float = P.MODEL_WEIGHT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(model_pct, prior_pct, priority)`` by the library's two-part rule with this fusion and weight;
        ``fusion`` ``"three-part"``: the three-part default with the run's saved directed percentiles."""
        m, p, _ = P.priority_columns(self.actions, self.seen, self.score, self.own, self.prior, self.space,
                                     has_prior=True)
        if fusion == "three-part":
            if self.directed is None:
                raise SystemExit("this run's tables hold no directed_pct column (a run before the three-part default)")
            return m, p, P.fuse(m, p, directed_pct=self.directed)
        return m, p, P.fuse(m, p, weight=weight, how=fusion)

    def as_run(self) -> tuple[np.ndarray, np.ndarray]:
        """``(model_pct, priority)`` by the rule the run used; checked against the saved columns."""
        up = self.score * (1.0 - np.nan_to_num(self.own))
        groups = np.array([P.calibration_group(a, s, self.space) for a, s in zip(self.actions, self.seen)])
        m = np.full(len(up), np.nan)
        for g in dict.fromkeys(groups):
            idx = np.flatnonzero(groups == g)
            m[idx] = _old_pct(up[idx])
        p = np.full(len(up), np.nan)
        kinds = self.table["kind"].to_numpy()
        for k in ("gene", "compound"):
            idx = np.flatnonzero(kinds == k)
            pct = _old_pct(self.prior[idx])
            p[idx] = np.where(np.isfinite(pct), pct, 0.5)
        return m, 0.5 * m + 0.5 * p


def _raw_prior(table: pd.DataFrame, prox: dict[str, float]) -> np.ndarray:
    """Network proximity of each row (gene: its own; compound: its best target on the network; NaN: none),
    as :func:`bioworld.query._priority.raw_prior` computes it."""
    from bioworld.knowledge import CompoundKnowledge
    from bioworld.knowledge.network import joint_network

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


def load_folds(items: pd.DataFrame, cand_dir: Path | list[Path], *, rule: str = "as run"
               ) -> dict[tuple[str, int, int], tuple[Fold, pd.DataFrame]]:
    """Every (dataset, seed, fold) of the run: its :class:`Fold` and its held-out items (the run's rows).
    ``cand_dir``: the folder(s) of the tables (the first holding a fold's table wins). ``rule``: the
    ranking the run used, reproduced from the table as a check (``"as run"``: the rank average;
    ``"logodds"``: the code now; ``"auto"``: whichever of the two reproduces it)."""
    dirs = [cand_dir] if isinstance(cand_dir, Path) else list(cand_dir)
    spaces = {"papalexi": SimpleNamespace(compounds=None)}
    proxes: dict[str, dict[str, float]] = {}
    out = {}
    for (ds, seed, fold), part in items[items["method"] == R.MODEL].groupby(["dataset", "seed", "fold"]):
        ds = str(ds)
        if ds not in spaces:
            spaces[ds] = _l1000_space()
        if ds not in proxes:
            proxes[ds] = R.network_proximity(list(R._goal_genes(R.GOALS[ds])[1]))
        path = next((c / f"{ds}_s{seed}_f{fold}{x}" for c in dirs for x in (".csv", ".csv.gz")
                     if (c / f"{ds}_s{seed}_f{fold}{x}").exists()), dirs[0] / f"{ds}_s{seed}_f{fold}.csv")
        table = pd.read_csv(path, keep_default_na=False,
                            na_values={c: [""] for c in ("priority", "model_pct", "prior_pct", "own_share")})
        table["seen"] = table["seen"].astype(str) == "True"
        f = Fold(table, ds, spaces[ds], proxes[ds])
        bad = ""
        auto = ["as run", "logodds"] + (["three-part"] if f.directed is not None else [])
        for r in (auto if rule == "auto" else [rule]):
            bad = _not_reproduced(f, table, r)
            if not bad:
                break
        if bad:
            raise SystemExit(f"{ds} seed {seed} fold {fold}: the run's {bad} is not reproduced; groups or prior differ")
        out[(ds, int(seed), int(fold))] = (f, part)
    return out


def _not_reproduced(f: Fold, table: pd.DataFrame, rule: str) -> str:
    """The saved column (``model_pct``, ``priority``) that ``rule`` does not reproduce; "" when both are."""
    m, pr = f.as_run() if rule == "as run" else f.columns(rule)[::2]
    for name, mine, saved in (("model_pct", m, table["model_pct"]), ("priority", pr, table["priority"])):
        if not np.allclose(mine, saved.to_numpy(np.float64), atol=1e-9, equal_nan=True):
            return name
    return ""


def inner_rows(folds: dict, inner_dir: Path) -> tuple[list[dict], dict[tuple[str, int, int], tuple]]:
    """Item rows of the inner-reliability variant and each fold's ``(w, r_m, r_p, n)``
    (``run_retrospective_inner.py``'s ``inner.csv``; every fold of ``folds`` must be in it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_retrospective_inner import fold_weights

    weights = fold_weights(pd.read_csv(inner_dir / "inner.csv"))
    missing = sorted(set(folds) - set(weights))
    if missing:
        raise SystemExit(f"{inner_dir / 'inner.csv'} has no inner items for the folds {missing}")
    rows: list[dict] = []
    for key, (f, part) in folds.items():
        m, p, _ = f.columns("logodds")
        rows += _rows(f, part, key, INNER, P.fuse(m, p, weight=weights[key][0]))
    return rows, weights


def bag_rows(folds: dict, tables_dir: Path) -> tuple[list[dict], int]:
    """Item rows of the cross-fit bag and the number of inner models per fold (every fold must have the
    same number, at least one)."""
    spaces = {f.dataset: f.space for f, _ in folds.values()}
    proxes = {ds: R.network_proximity(list(R._goal_genes(R.GOALS[ds])[1])) for ds in spaces}
    members: list[dict] = []
    for key, (f, part) in folds.items():
        paths = sorted(tables_dir.glob(f"{key[0]}_s{key[1]}_f{key[2]}_i*.csv.gz"))
        if not paths or (members and len(paths) != len(members)):
            raise SystemExit(f"{tables_dir}: {len(paths)} inner tables for {key}; expected the same number (>= 1) "
                             "for every fold")
        members += [{} for _ in range(len(paths) - len(members))]
        for j, path in enumerate(paths):
            t = pd.read_csv(path, keep_default_na=False,
                            na_values={c: [""] for c in ("priority", "model_pct", "prior_pct", "own_share")})
            t["seen"] = t["seen"].astype(str) == "True"
            if set(t["intervention"]) != set(f.table["intervention"]):
                raise SystemExit(f"{path}: not the outer table's candidates")
            members[j][key] = (Fold(t, key[0], spaces[key[0]], proxes[key[0]]), part)
    rows: list[dict] = []
    for key, pr in ensemble(folds, members).items():
        rows += _rows(*folds[key], key, BAG, pr)
    return rows, len(members)


def ensemble(folds: dict, members: list[dict]) -> dict[tuple[str, int, int], np.ndarray]:
    """Priority of an ensemble per fold (the run's model and ``members``): the mean of the members' model
    percentiles, again a mid-rank percentile within its calibration group, joined with the prior by
    log-odds."""
    out = {}
    for key, (f, _) in folds.items():
        if any(key not in mem for mem in members):  # a dataset the members do not cover
            continue
        m1, p1, _ = f.columns("logodds")
        total = m1.copy()
        for mem in members:
            g = mem[key][0]
            mj = dict(zip(g.table["intervention"], g.columns("logodds")[0]))
            total += np.array([mj[lab] for lab in f.table["intervention"]])
        mean = total / (1 + len(members))
        groups = np.array([P.calibration_group(a, s, f.space) for a, s in zip(f.actions, f.seen)])
        m = np.full(len(mean), np.nan)
        for grp in dict.fromkeys(groups):
            idx = np.flatnonzero(groups == grp)
            m[idx] = P.rank_pct(mean[idx])
        out[key] = P.fuse(m, p1)
    return out


def observed_towards_goal(datasets: set[str]) -> dict[str, dict[str, float]]:
    """Per dataset: label -> observed change of the goal score towards the goal (positive = towards; the
    perturbed genes' own transcripts left out for a genetic screen), from the whole data as the runs read it
    (a fold's measured rows are its training data)."""
    from bioworld.data import load_papalexi, normalize, register

    out: dict[str, dict[str, float]] = {}
    if "papalexi" in datasets:
        adata = load_papalexi()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg = register(adata, perturbation_key="perturbation", control="control", input="counts",
                           replicate_key="bio_rep")
        labels = adata.obs["perturbation"].astype(str).to_numpy()
        var = [str(v) for v in adata.var_names]
        own = {lab: [p.target for p in parse_action(lab).components] for lab in set(labels) - {"control"}}
        weights = R._panel_weights(R._goal_genes(R.GOALS["papalexi"])[1], var)
        obs, _ = R.observed_goal_change(normalize(adata, reg), labels, "control", weights, var, exclude=own)
        out["papalexi"] = {lab: -v for lab, v in obs.items()}  # both goals are 'down'
    if "l1000" in datasets:
        out["l1000"] = {lab: -v for lab, v in R._l1000_data(R.GOALS["l1000"], True)[4].items()}
    return out


def goal_fit(f: Fold, observed: dict[str, float]) -> tuple[float, int]:
    """``(f, n)``: the slope through the origin of the upstream predicted change on the observed change
    towards the goal over the fold's ``n`` measured single rows of the ranked kind, clipped to [0, 1]; 1
    with fewer than 3 rows (see the module docstring)."""
    labels = f.table["intervention"].to_numpy()
    kinds = f.table["kind"].to_numpy()
    rows = [i for i in range(len(labels)) if f.seen[i] and kinds[i] == KIND[f.dataset]
            and len(f.actions[i].components) == 1 and labels[i] in observed]
    o = np.array([observed[labels[i]] for i in rows])
    p = f.score[rows] * (1.0 - np.nan_to_num(f.own[rows]))
    if len(rows) < 3 or not np.sum(o * o) > 0:
        return 1.0, len(rows)
    return float(np.clip(np.sum(p * o) / np.sum(o * o), 0.0, 1.0)), len(rows)


def goal_fit_rows(folds: dict) -> tuple[list[dict], dict[tuple[str, int, int], float]]:
    """Item rows of the goal-fit variant, and each fold's fit."""
    observed = observed_towards_goal({key[0] for key in folds})
    rows: list[dict] = []
    fits = {}
    for key, (f, part) in folds.items():
        fits[key] = goal_fit(f, observed[key[0]])[0]
        m, p, _ = f.columns("logodds")
        rows += _rows(f, part, key, GOAL_FIT, P.fuse(m, p, weight=P.MODEL_WEIGHT * fits[key]))
    return rows, fits


def _rows(f: Fold, part: pd.DataFrame, key: tuple[str, int, int], method: str, scores: np.ndarray) -> list[dict]:
    """Item rows of one fold for one method's scores over every row of the table (the run's hits)."""
    labels = list(f.table["intervention"][f.keep])
    held = dict(zip(part["item"], part["observed"]))
    hit = dict(zip(part["item"], part["hit"]))
    test = {lab: lab for lab in labels if lab in held}
    if len(test) != len(held):
        raise SystemExit(f"{key}: {len(held)} held-out items, {len(test)} found in the table")
    rows: list[dict] = []
    R._add_items(rows, dataset=key[0], seed=key[1], fold=key[2], method=method, labels=labels,
                 scores=np.asarray(scores)[f.keep], test=test, observed=held, threshold=0.0)
    for r in rows:  # the run's hits (its threshold), not recomputed
        r["hit"] = bool(hit[r["item"]])
    return rows


def _mean_metric(rows: list[dict], k: int) -> float:
    """Mean of the three metrics over the rows' seeds (each seed pooled over its folds)."""
    df = pd.DataFrame(rows)
    vals = [v for _, part in df.groupby("seed") for v in R.metrics_of(part["percentile"], part["hit"], k).values()]
    return float(np.nanmean(vals))


def member_names(n: int) -> list[str]:
    """Method names of the member variants with ``n`` extra members: each alone, then each ensemble size."""
    return ([MEMBER2, ENSEMBLE] if n >= 1 else []) + [m for j in range(3, n + 2) for m in (
        f"WorldModel, member {j} alone", f"WorldModel, {j} members (mean model percentile)")]


def rescore(folds: dict, k: int, members: list[dict] | None = None
            ) -> tuple[pd.DataFrame, dict[tuple[str, int, int], float], dict[str, str]]:
    """Rows of every variant; the weight each fold was given (fitted variant); the fusion each dataset got.
    ``members``: further members' folds (same splits, other training seeds): each alone, and the
    ensembles of the run's model with the first 1, 2, ... of them."""
    rows: list[dict] = []
    names = iter(member_names(len(members or [])))
    for j, mem in enumerate(members or []):
        alone, ens = next(names), next(names)
        for key, pr in ensemble(folds, members[:j + 1]).items():
            rows += _rows(*folds[key], key, ens, pr)
            rows += _rows(*mem[key], key, alone, mem[key][0].columns("logodds")[2])
    cols = {key: {h: f.columns(h) for h in P.FUSIONS} for key, (f, _) in folds.items()}
    for key, (f, part) in folds.items():
        _, as_run = f.as_run()
        m, _, pr = cols[key]["logodds"]
        flag = (f.table["flag"].astype(str) != "").to_numpy()
        ranked = -np.lexsort((-f.score, -pr, flag)).argsort().astype(np.float64)  # flagged rows last
        for method, s in ((R.MODEL, pr), (R.MODEL_RANKED, ranked), (R.PREDICTED, f.score), (R.NO_PRIOR, m),
                          (AS_RUN, as_run), (MEAN_MID, cols[key]["mean"][2]), (LOGODDS, pr)):
            rows += _rows(f, part, key, method, s)
    weights = {}
    by_w = {key: {w: _rows(f, part, key, "w", f.columns("logodds", w)[2]) for w in WEIGHTS}
            for key, (f, part) in folds.items()}
    for key, (f, part) in folds.items():
        others = [o for o in folds if o[:2] == key[:2] and o != key]
        w = max(WEIGHTS, key=lambda w: (_mean_metric([r for o in others for r in by_w[o][w]], k), -abs(w - 0.5)))
        weights[key] = float(w)
        rows += _rows(f, part, key, FITTED, f.columns("logodds", w)[2])
    chosen = {}
    datasets = sorted({key[0] for key in folds})
    for ds in datasets:
        other = [d for d in datasets if d != ds]
        score = {h: _mean_metric([r for key in folds if key[0] in other
                                  for r in _rows(*folds[key], key, h, cols[key][h][2])], k) if other else 0.0
                 for h in P.FUSIONS}
        chosen[ds] = max(P.FUSIONS, key=lambda h: (score[h], h == P.FUSION))
        for key in [key for key in folds if key[0] == ds]:
            rows += _rows(*folds[key], key, CROSS, cols[key][chosen[ds]][2])
    return pd.DataFrame(rows, columns=R.ITEM_COLUMNS), weights, chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="comma-separated run folders (each with items.csv)")
    p.add_argument("--candidates", required=True, help="the runs' --save-candidates folder(s), comma-separated "
                   "(the first holding a fold's table wins)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--k", type=int, default=R.RetroSettings().k)
    p.add_argument("--member-runs", action="append", default=[], help="a further member's run folders "
                   "(--model-seed-offset), ranked by the log-odds code: the ensemble variants; repeat for more members")
    p.add_argument("--member-candidates", action="append", default=[], type=Path,
                   help="their --save-candidates folder (once per --member-runs)")
    p.add_argument("--inner-tables", type=Path, default=None, help="run_retrospective_inner.py's --save-tables "
                   "folder: the cross-fit bag variant")
    p.add_argument("--inner", type=Path, default=None, help="run_retrospective_inner.py's --out folder (inner.csv): "
                   "the inner-reliability variant")
    a = p.parse_args(argv)
    items = pd.concat([pd.read_csv(Path(d) / "items.csv") for d in a.runs.split(",") if d.strip()], ignore_index=True)
    folds = load_folds(items, [Path(c) for c in a.candidates.split(",") if c.strip()], rule="auto")
    if len(a.member_runs) != len(a.member_candidates):
        raise SystemExit("give one --member-candidates per --member-runs")
    members = []
    for runs, cands in zip(a.member_runs, a.member_candidates):
        m_items = pd.concat([pd.read_csv(Path(d) / "items.csv") for d in runs.split(",") if d.strip()],
                            ignore_index=True)
        members.append(load_folds(m_items, cands, rule="logodds"))
        covered = {key[0] for key in members[-1]}
        if set(members[-1]) != {key for key in folds if key[0] in covered}:
            raise SystemExit(f"the member runs cover {sorted(members[-1])}; expected every fold of their datasets "
                             f"{sorted(key for key in folds if key[0] in covered)}")
    var, weights, chosen = rescore(folds, a.k, members)
    fit_rows, fits = goal_fit_rows(folds)
    var = pd.concat([var, pd.DataFrame(fit_rows, columns=R.ITEM_COLUMNS)], ignore_index=True)
    inner: dict[tuple[str, int, int], tuple] = {}
    if a.inner is not None:
        in_rows, inner = inner_rows(folds, a.inner)
        var = pd.concat([var, pd.DataFrame(in_rows, columns=R.ITEM_COLUMNS)], ignore_index=True)
    if a.inner_tables is not None:
        var = pd.concat([var, pd.DataFrame(bag_rows(folds, a.inner_tables)[0], columns=R.ITEM_COLUMNS)],
                        ignore_index=True)
    base = items[items["method"].isin([R.NETWORK, R.PATHWAY])]
    order = [R.MODEL, R.MODEL_RANKED, R.PREDICTED, R.NO_PRIOR, LOGODDS, MEAN_MID, AS_RUN, FITTED, CROSS,
             *member_names(len(members)), GOAL_FIT, INNER, BAG, R.NETWORK, R.PATHWAY]
    out_items = pd.concat([var, base], ignore_index=True)
    out_items["_o"] = out_items["method"].map({m: i for i, m in enumerate(order)})
    out_items = out_items.sort_values(["dataset", "_o", "seed", "fold"], kind="stable").drop(columns="_o")
    a.out.mkdir(parents=True, exist_ok=True)
    out_items.to_csv(a.out / "items.csv", index=False)
    summ = R.summarize_retro(out_items, k=a.k)
    w_txt = "; ".join(f"{ds} seed {s}: " + ", ".join(f"{weights[(ds, s, f)]:g}" for f in sorted(
        f for (d, ss, f) in weights if d == ds and ss == s)) for ds, s in sorted({key[:2] for key in weights}))
    lines = ["# Variants of the default ranking (rescored from the saved candidates, no training)", "",
             f"Generated by `benchmarks/run_retrospective_variants.py --runs {a.runs} --candidates {a.candidates} "
             + "".join(f"--member-runs {r} --member-candidates {c} " for r, c in zip(a.member_runs, a.member_candidates))
             + (f"--inner {a.inner} " if a.inner is not None else "")
             + (f"--inner-tables {a.inner_tables} " if a.inner_tables is not None else "") + f"--out {a.out}`.", "", (__doc__ or "").split("\n\n", 1)[1].split("Writes ``items.csv``")[0].strip(), "",
             f"Model weight fitted on the other folds, per fold: {w_txt}.", "",
             "Fusion chosen on the other dataset: " + ", ".join(f"{ds}: {h}" for ds, h in chosen.items()), "",
             "Goal fit per fold (the model weight is 0.5 x this): " + "; ".join(
                 f"{ds} seed {s}: " + ", ".join(f"{fits[(ds, s, f)]:.3f}" for f in sorted(
                     f for (d, ss, f) in fits if d == ds and ss == s)) for ds, s in sorted({key[:2] for key in fits}))
             + ".", ""]
    if inner:
        lines += ["Inner held-out reliability per fold (r_m model, r_p prior, n items -> model weight w): " + "; ".join(
            f"{ds} seed {s} fold {f}: {r_m:.3f} / {r_p:.3f}, n {n} -> {w:.3f}"
            for (ds, s, f), (w, r_m, r_p, n) in sorted(inner.items())) + ".", ""]
    for ds in dict.fromkeys(out_items["dataset"]):
        lines += [f"## {ds}", "", R.markdown_table(summ, ds), ""]
        for m in (R.MODEL, AS_RUN, FITTED, CROSS, *member_names(len(members))[1::2], GOAL_FIT,
                  *([INNER] if inner else []), *([BAG] if a.inner_tables is not None else [])):
            lines += [f"**{R.verdict(summ, ds, m)}**", ""]
    (a.out / "VARIANTS.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {a.out / 'VARIANTS.md'} and items.csv; fitted weights {weights}; fusion chosen {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
