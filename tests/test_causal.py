"""bioworld.eval.causal: leak ratio and the no-propagation baselines on hand-made inputs, and a tiny
smoke run of the simulator check (numbers are not asserted: only the shape of the output)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bioworld.entities import Entity
from bioworld.errors import BioworldError
from bioworld.eval.causal import (
    COLUMNS,
    SIM_SHAPES,
    footprint_delta,
    leak_ratio,
    members_only_delta,
    model_gene_sets,
    run_simulator_causal,
    score_silence,
)

GENES = ["a1", "a2", "b1", "b2", "c1", "c2", "o1", "o2"]
GMT = {"A": ["a1", "a2"], "B": ["b1", "b2"], "C": ["c1", "c2"]}  # A -> B; C unrelated


def test_leak_ratio_hand_computed():
    d = np.array([2.0, -2.0, 1.0, -1.0, 0.3, -0.3, 0.15, 0.0])
    out = leak_ratio(d, GENES, GMT, "A", ["B"])
    # affected = a1,a2,b1,b2: mean |d| = 1.5; non-descendants = c1,c2: 0.3; other = o1,o2: 0.075
    assert out["leak_ratio"] == pytest.approx(0.3 / 1.5)
    assert out["leak_ratio_other"] == pytest.approx(0.075 / 1.5)


def test_leak_ratio_zero_for_a_clean_effect_and_series_input():
    d = pd.Series([1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0], index=GENES)[::-1]  # order must not matter
    out = leak_ratio(d, GENES, GMT, "A", ["B"])
    assert out == {"leak_ratio": 0.0, "leak_ratio_other": 0.0}


def test_leak_ratio_counts_descendants_as_affected():
    d = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    # affected = a1,a2,b1,b2: mean |d| = 0.5; non-descendants c1,c2: 1.0
    assert leak_ratio(d, GENES, GMT, "A", ["B"])["leak_ratio"] == pytest.approx(2.0)
    assert leak_ratio(d, GENES, GMT, "A", ["B", "C"])["leak_ratio"] != leak_ratio(d, GENES, GMT, "A", ["B"])["leak_ratio"]


def test_leak_ratio_nan_when_undefined_and_errors():
    assert np.isnan(leak_ratio(np.zeros(8), GENES, GMT, "A", ["B"])["leak_ratio"])
    assert np.isnan(leak_ratio(np.ones(8), GENES, GMT, "A", ["B", "C"])["leak_ratio"])  # nothing outside
    with pytest.raises(BioworldError):
        leak_ratio(np.ones(8), GENES, GMT, "Z", [])
    with pytest.raises(BioworldError):
        leak_ratio(np.ones(7), GENES, GMT, "A", [])


def test_members_only_delta_moves_members_to_low_quantile():
    X = np.tile(np.arange(5.0)[:, None], (1, len(GENES)))  # every gene 0..4 over 5 cells, mean 2
    out = members_only_delta(X, GENES, GMT["B"], quantile=0.25)  # quantile 0.25 of 0..4 = 1
    assert out[GENES.index("b1")] == pytest.approx(-1.0)
    assert out[GENES.index("b2")] == pytest.approx(-1.0)
    assert np.count_nonzero(out) == 2
    with pytest.raises(BioworldError):
        members_only_delta(X[:, :3], GENES, GMT["B"])


def test_footprint_delta_is_minus_weights_on_panel_genes():
    e = Entity("P", ("b1", "zz", "a2"), (2.0, 5.0, -0.5), "progeny")
    out = footprint_delta(e, GENES)
    expected = np.zeros(len(GENES))
    expected[GENES.index("b1")], expected[GENES.index("a2")] = -2.0, 0.5
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(footprint_delta({"b1": 2.0}, GENES, scale=3.0)[GENES.index("b1")], -6.0)
    with pytest.raises(BioworldError):
        footprint_delta(["b1"], GENES)


def test_score_silence_top_genes_skip_zero_targets():
    t = np.array([3.0, -2.0, 1.0, 0.0, 0.0])
    s = score_silence(t * 2, t, k=50)
    assert s["pearson_all"] == pytest.approx(1.0) and s["pearson_top50"] == pytest.approx(1.0)
    assert s["direction_top50"] == 1.0  # only the 3 nonzero genes are ranked


def test_simulator_causal_smoke():
    df = run_simulator_causal(
        seeds=[0], steps=3, n_holdout=1, n_cf_cells=16, variants=("partial", "none"),
        sim_kwargs=dict(n_pathways=3, genes_per_pathway=5, n_other_genes=6, n_cells_per_condition=20,
                        n_control_cells=40, doubles=0, n_truth_draws=100),
    )
    assert list(df.columns) == COLUMNS
    assert set(df.variant) == {"partial", "none"}
    assert set(df["shape"]) == {"default"}
    assert {"WorldModel predict", "WorldModel counterfactual", "WorldModel predict (latent path)", "MembersOnly",
            "MeanOfTrain", "Truth", "InterventionTemplate"} <= set(df.method)
    assert len(df[(df.variant == "none") & (df.method == "Truth")]) == 3  # every silence held out
    truth = df[df.method == "Truth"]
    assert np.allclose(truth.pearson_all, 1.0)


SMALL = dict(n_pathways=3, genes_per_pathway=5, n_other_genes=6, n_cells_per_condition=20, n_control_cells=40,
             doubles=0, n_truth_draws=100)


def test_model_gene_sets_hides_knocked_out_drivers():
    from bioworld.data import simulate

    sim = simulate(seed=0, **SMALL)
    same, none = model_gene_sets(sim, 0, seed=0)
    assert same == sim.gmt and none == []
    sets, hidden = model_gene_sets(sim, 2, seed=0)
    assert len(hidden) == 2 and hidden == sorted(hidden)
    roles = dict(zip(sim.adata.var_names, sim.adata.var["role"]))
    assert all(roles[g] == "driver" for g in hidden)
    kept = {g for genes in sets.values() for g in genes}
    assert not kept & set(hidden)  # outside every gene set the model gets
    assert kept | set(hidden) == {g for genes in sim.gmt.values() for g in genes}
    assert model_gene_sets(sim, 2, seed=0) == (sets, hidden)  # seeded
    assert model_gene_sets(sim, 2, seed=1)[1] != hidden or model_gene_sets(sim, 2, seed=2)[1] != hidden
    with pytest.raises(BioworldError, match="hidden_targets"):
        model_gene_sets(sim, 100, seed=0)


def test_simulator_causal_hidden_targets_and_half_holdout():
    df = run_simulator_causal(seeds=[0], steps=3, n_holdout=None, n_cf_cells=16, variants=("partial",),
                              sim_kwargs=dict(SMALL, n_pathways=4), hidden_targets=2, shape="outside", train=False)
    assert not df.method.str.startswith("WorldModel").any()  # train=False: only rows without a trained network
    assert {"InterventionTemplate", "MembersOnly", "Truth"} <= set(df.method)
    truth = df[df.method == "Truth"]
    assert len(truth) == 2  # half of the 4 silences
    assert set(df["shape"]) == {"outside"}
    assert set(SIM_SHAPES) >= {"default", "wide", "deep", "outside"}
    assert SIM_SHAPES["outside"][1] > 0 and SIM_SHAPES["default"] == ({}, 0)


def test_shapes_report_means_over_seeds_and_verdict(tmp_path):
    from _helpers import benchmark_script

    rc = benchmark_script("run_causal")
    rows = []
    for shape, (p0, p1, leak) in {"default": (0.95, 0.93, 0.05), "wide": (0.8, 0.6, 0.3)}.items():
        for seed, p in ((0, p0), (1, p1)):
            for lab in ("silence:A", "silence:B"):
                rows.append(dict(shape=shape, seed=seed, method="WorldModel predict", target=lab, pearson_all=p,
                                 pearson_desc=np.nan, leak_ratio=leak, leak_ratio_other=0.0, load1=1.0,
                                 wall_s=10.0, command="cmd"))
    for shape in ("default", "wide"):
        pd.DataFrame([r for r in rows if r["shape"] == shape]).to_csv(tmp_path / f"shapes_{shape}.csv", index=False)
    text = rc.write_shapes_report(tmp_path).read_text()
    assert "| default | WorldModel predict | 0.940 ± 0.014 |" in text
    assert "| wide | WorldModel predict | 0.700 ± 0.141 |" in text
    assert "`default`: WorldModel predict Pearson 0.940, leak ratio 0.050 vs target >= 0.9 / <= 0.1 (2 seeds): **MET**" in text
    assert "`wide`: WorldModel predict Pearson 0.700, leak ratio 0.300 vs target >= 0.9 / <= 0.1 (2 seeds): **NOT MET**" in text
