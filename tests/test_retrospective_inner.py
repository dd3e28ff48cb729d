"""The inner held-out reliability rule of the retrospective (benchmarks/run_retrospective_inner.py, h14e):
its weight formula, that the outer fold's held-out labels never reach an inner model or an inner item, and
that the variants script applies the weight to the outer table."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _helpers import benchmark_script

from bioworld.eval import retrospective as R

inner_mod = benchmark_script("run_retrospective_inner")


def test_reliability_weight_known_answers():
    o = np.arange(10.0)
    # model ranks the held-out items perfectly, prior not at all: w = (1 + 1/3) / (1 + 0 + 2/3) = 0.8
    partial = np.array([2, 0, 5, 1, 3, 8, 4, 9, 6, 7])  # Spearman 0.733 with o
    w, r_m, r_p, n = inner_mod.reliability_weight(o / 10, np.full(10, 0.5), o)
    assert (n, r_m, r_p) == (10, pytest.approx(1.0), 0.0) and w == pytest.approx(0.8)
    # prior perfect, model backwards (floored at 0): w = (0 + 1/3) / (0 + 1 + 2/3) = 0.2
    w, r_m, r_p, _ = inner_mod.reliability_weight(-o, o, o)
    assert r_m == pytest.approx(-1.0) and r_p == pytest.approx(1.0) and w == pytest.approx(0.2)
    # both perfect or both useless: equal weights, the default 0.5
    assert inner_mod.reliability_weight(o, o, o)[0] == pytest.approx(0.5)
    assert inner_mod.reliability_weight(-o, -o, o)[0] == pytest.approx(0.5)
    # thin evidence stays near 0.5 (n = 4: s0 = 0.577) and fewer than 3 items or NaNs give no information
    assert inner_mod.reliability_weight([1, 2, 3, 4], [2, 2, 2, 2], [1, 2, 3, 4])[0] == pytest.approx(
        (1 + 3 ** -0.5) / (1 + 2 * 3 ** -0.5))
    assert inner_mod.reliability_weight([1, 2], [2, 1], [1, 2])[0] == 0.5
    assert inner_mod.reliability_weight([np.nan, 1, 2, 3], [1, 1, 1, 1], [1, 2, 3, np.nan])[3] == 2
    w_mid, r_mid = inner_mod.reliability_weight(partial, o, o)[:2]
    assert r_mid == pytest.approx(0.7333, abs=1e-3)
    assert w_mid == pytest.approx((0.7333 + 1 / 3) / (1.7333 + 2 / 3), abs=1e-3)  # worse than the prior: < 0.5


def _papalexi_like(n_genes: int = 8) -> SimpleNamespace:
    genes = [f"G{i}" for i in range(n_genes)]
    labels = np.array(["control"] * 4 + [g for g in genes for _ in range(3)])
    return SimpleNamespace(dataset="papalexi", goal="down:X", labels=labels, singles={g: g for g in genes},
                           towards={g: float(i) for i, g in enumerate(genes)}, inner=2,
                           settings=R.RetroSettings(seeds=(0, 1), folds=2))


def _l1000_like(n: int = 9) -> SimpleNamespace:
    acts = {f"C{i}@{d:g}": R._parse(f"C{i}@{d:g}") for i in range(n) for d in (1.0, 10.0)}
    comps = sorted({a.components[0].target for a in acts.values()})
    return SimpleNamespace(dataset="l1000", goal="down:X", labels=np.array(["control", *acts]), acts=acts,
                           compounds=comps, at_dose={c: f"{c}@10" for c in comps},
                           towards={lab: float(i) for i, lab in enumerate(acts)}, inner=3,
                           settings=R.RetroSettings(seeds=(0, 2), folds=3))


@pytest.mark.parametrize("make", [_papalexi_like, _l1000_like])
def test_inner_groups_split_the_training_targets_only(make):
    d = make()
    seen = []
    for seed, fold, outer, groups in inner_mod.outer_folds(d):
        assert len(groups) == d.inner
        outer_t = {p.target for lab in outer for p in R._parse(lab).components}
        group_t = [{p.target for lab in g for p in R._parse(lab).components} for g in groups]
        train_t = {p.target for lab in d.labels if lab != "control" for p in R._parse(lab).components} - outer_t
        assert not any(outer_t & g for g in group_t)  # no outer held-out target in any inner group
        assert set().union(*group_t) == train_t and sum(map(len, group_t)) == len(train_t)  # a partition
        seen.append((seed, fold))
    assert len(seen) == len(d.settings.seeds) * d.settings.folds


def test_run_never_trains_on_or_scores_the_outer_held_out(tmp_path, monkeypatch):
    d = _papalexi_like()
    calls = []

    def fake_rank(d_, holdout, seed):
        calls.append((seed, set(holdout)))
        genes = sorted(set(d_.labels) - {"control"})
        table = pd.DataFrame({"intervention": genes, "kind": "gene", "seen": [g not in holdout for g in genes],
                              "model_pct": np.linspace(0.1, 0.9, len(genes)), "prior_pct": 0.5, "score": 1.0,
                              "own_share": 0.0})
        wm = SimpleNamespace(engine=SimpleNamespace(space=SimpleNamespace(parse=lambda s: SimpleNamespace(
            label=s.split(":")[-1]))))
        return wm, table

    monkeypatch.setattr(inner_mod, "rank_without", fake_rank)
    log: list[str] = []
    inner_mod.run(d, tmp_path, log)
    out = pd.read_csv(tmp_path / "inner.csv")
    for seed, fold, outer, groups in inner_mod.outer_folds(d):
        mine = out[(out["seed"] == seed) & (out["fold"] == fold)]
        assert not set(mine["item"]) & set(outer)  # no outer held-out item scored
        assert sorted(mine["item"]) == sorted(lab for g in groups for lab in g)  # every training item, once
        for g in groups:
            assert (seed, set(outer) | set(g)) in calls  # trained without both
    assert len(calls) == len(d.settings.seeds) * d.settings.folds * d.inner
    # model_pct rises with the towards-change in every fold here, the prior is flat: w > 0.5 everywhere
    assert all(v[0] > 0.5 for v in inner_mod.fold_weights(out).values()) and len(log) == 4
    inner_mod.run(d, tmp_path, log)  # a finished fold is not run again
    assert len(calls) == 8 and len(pd.read_csv(tmp_path / "inner.csv")) == len(out)


def test_variants_apply_the_inner_weight_to_the_outer_table(tmp_path, monkeypatch):
    variants = benchmark_script("run_retrospective_variants")
    # outer table: 4 unseen genes; the model puts the held-out hit H last, the prior first
    table = pd.DataFrame({"intervention": ["H", "A", "B", "C"], "kind": "gene", "seen": False})
    m = np.array([0.125, 0.375, 0.625, 0.875])
    p = np.array([0.875, 0.625, 0.125, 0.375])
    fold = SimpleNamespace(table=table, keep=np.ones(4, bool), columns=lambda how: (m, p, None))
    part = pd.DataFrame({"item": ["H"], "observed": [-1.0], "hit": [True]})
    key = ("papalexi", 0, 0)
    o = np.arange(6.0)
    for name, model_pct, prior_pct, want in (("trusted", o, 0 * o, "model"), ("distrusted", -o, o, "prior")):
        pd.DataFrame({"dataset": "papalexi", "seed": 0, "fold": 0, "towards": o, "model_pct": model_pct,
                      "prior_pct": prior_pct}).to_csv(tmp_path / "inner.csv", index=False)
        rows, weights = variants.inner_rows({key: (fold, part)}, tmp_path)
        w = weights[key][0]
        s0 = 5 ** -0.5  # 6 items
        assert w == pytest.approx((1 + s0) / (1 + 2 * s0) if want == "model" else s0 / (1 + 2 * s0))
        (row,) = rows
        assert row["method"] == variants.INNER and row["item"] == "H"
        # the model's weight decides whether H (model last, prior first) rises above the middle
        assert (row["percentile"] > 0.5) == (want == "prior"), name
    pd.DataFrame({"dataset": "papalexi", "seed": 1, "fold": 0, "towards": o, "model_pct": o,
                  "prior_pct": o}).to_csv(tmp_path / "inner.csv", index=False)
    with pytest.raises(SystemExit, match="no inner items"):
        variants.inner_rows({key: (fold, part)}, tmp_path)
