"""The simulator's ground truth must be causally right, match its own sampled data, and be exact."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.sparse as sp

from bioworld.data import SimulationResult, simulate
from bioworld.errors import BioworldError, UnknownPerturbationError

# Small but structured world: 6 pathways, seed 1 gives roots, a depth-2 chain and unrelated branches.
SMALL = dict(
    n_pathways=6,
    edge_prob=0.4,
    n_other_genes=10,
    n_cells_per_condition=150,
    n_control_cells=600,
    doubles=10,
    n_truth_draws=4000,
    seed=1,
)
EXACT = 1e-9  # "unchanged" in the truth: common random numbers make it bit-identical
KO_COMPOSITION = 0.01  # a knocked-out driver's rate shifts the CP10k composition of all genes a bit


@pytest.fixture(scope="module")
def sim() -> SimulationResult:
    return simulate(**SMALL)


def _log_cp10k(adata) -> np.ndarray:
    x = adata.X.toarray().astype(np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


@pytest.fixture(scope="module")
def sampled_delta(sim) -> dict[str, np.ndarray]:
    """Per perturbation: mean log1p(CP10k) of its cells minus that of the control cells ``[G]``."""
    x = _log_cp10k(sim.adata)
    labels = sim.adata.obs["perturbation"].to_numpy()
    ctrl = x[labels == "control"].mean(axis=0)
    return {lab: x[labels == lab].mean(axis=0) - ctrl for lab in np.unique(labels) if lab != "control"}


def _unrelated(sim: SimulationResult, pathway: str) -> list[str]:
    """Pathways that are neither ``pathway`` nor one of its descendants."""
    reach = sim.descendants(pathway) | {pathway}
    return [p for p in sim.pathways if p not in reach]


def _signed_score(sim: SimulationResult, delta, pathway: str) -> float:
    """Mean over the pathway's footprint genes of sign * delta (up when the activity goes up)."""
    genes = sim.footprint_genes(pathway)
    cols = [sim.adata.var_names.get_loc(g) for g in genes]
    signs = sim.adata.var["sign"].to_numpy()[cols]
    return float(np.mean(np.asarray(delta)[cols] * signs))


# --- structure ----------------------------------------------------------------------------------
def test_schema(sim):
    a = sim.adata
    n_conditions = 1 + 6 * 3 + 10 + 6
    assert a.n_obs == 600 + (n_conditions - 1) * 150
    assert a.n_vars == 6 * 12 + 10
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    assert set(a.var["role"]) == {"driver", "footprint", "other"}
    assert a.var_names[0] == "P1_DRV1" and "P6_FP9" in a.var_names and "OTHER10" in a.var_names
    assert (a.var.loc[a.var["role"] == "other", "pathway"] == "").all()
    assert a.obsm["sim_activity"].shape == (a.n_obs, 6)
    assert sim.pathways == [f"SIM_P{k}" for k in range(1, 7)]
    for p in sim.pathways:
        assert sim.gmt[p] == sim.driver_genes(p) + sim.footprint_genes(p)
        assert len(sim.driver_genes(p)) == 3 and len(sim.gmt[p]) == 12
        assert (a.var.loc[sim.gmt[p], "pathway"] == p).all()
    # replicates spread evenly over every condition
    counts = a.obs.groupby(["perturbation", "replicate"], observed=True).size().unstack()
    assert (counts["rep1"] - counts["rep2"]).abs().max() <= 1


def test_counts_are_nonnegative_integers(sim):
    data = sim.adata.X.data
    assert data.min() >= 0
    np.testing.assert_array_equal(data, np.round(data))
    assert sim.adata.X.sum() > 0


def test_dag_is_topological_and_graph_queries_agree(sim):
    order = {p: i for i, p in enumerate(sim.pathways)}
    assert sim.dag, "seed 1 should give a non-empty DAG"
    for parent, child, weight in sim.dag:
        assert order[parent] < order[child]
        assert 0.6 <= abs(weight) <= 1.2
    for a, b in itertools.permutations(sim.pathways, 2):
        assert (b in sim.descendants(a)) == (a in sim.ancestors(b))
    # the test world is deep enough to exercise propagation beyond direct children
    assert any(sim.descendants(p) - sim.children(p) for p in sim.pathways)
    with pytest.raises(UnknownPerturbationError, match="SIM_P1"):
        sim.descendants("SIM_PP1")


def test_truth_covers_every_single_pair_and_silence(sim):
    td, te = sim.truth_delta, sim.truth_entity_delta
    drivers = [g for p in sim.pathways for g in sim.driver_genes(p)]
    n_pairs = 15 * 3 * 3  # C(6, 2) pathway pairs x 3 x 3 drivers
    assert len(td) == 1 + len(drivers) + n_pairs + 6
    assert list(td.columns) == list(sim.adata.var_names)
    assert list(te.columns) == sim.pathways
    assert (td.index == te.index).all()
    assert set(drivers) <= set(td.index)
    assert {f"silence:{p}" for p in sim.pathways} <= set(td.index)
    assert "P1_DRV1+P2_DRV3" in td.index and "P1_DRV1+P1_DRV2" not in td.index
    assert np.abs(td.loc["control"]).max() == 0 and np.abs(te.loc["control"]).max() == 0
    # everything sampled has truth; the rest is held-out truth
    sampled = set(sim.adata.obs["perturbation"].astype(str))
    assert sampled <= set(td.index)
    assert set(sim.held_out) == set(td.index) - sampled
    assert len(sim.held_out) == n_pairs - 10


# --- causal truth -------------------------------------------------------------------------------
def test_knockout_moves_descendants_not_ancestors_or_unrelated(sim):
    te, td = sim.truth_entity_delta, sim.truth_delta
    for p in sim.pathways:
        for gene in sim.driver_genes(p):
            assert te.loc[gene, p] < -0.1  # its own pathway loses activity
            for child in sim.children(p):
                assert abs(te.loc[gene, child]) > 0.02
            for q in _unrelated(sim, p):  # ancestors and unrelated pathways: exactly unchanged
                assert abs(te.loc[gene, q]) < EXACT
                assert np.abs(td.loc[gene, sim.footprint_genes(q)]).max() < KO_COMPOSITION
            assert td.loc[gene, gene] < -2.0  # the knocked-out gene itself is ~gone


def test_silence_moves_descendants_and_leaves_non_descendants_exactly(sim):
    te, td = sim.truth_entity_delta, sim.truth_delta
    drivers = [g for q in sim.pathways for g in sim.driver_genes(q)]
    others = list(sim.adata.var_names[sim.adata.var["role"] == "other"])
    for p in sim.pathways:
        label = f"silence:{p}"
        assert te.loc[label, p] < -0.3  # held at activity 0 from ~0.5
        assert np.abs(td.loc[label, sim.footprint_genes(p)]).max() > 0.5
        assert _signed_score(sim, td.loc[label], p) < -0.3
        for child in sim.children(p):
            assert abs(te.loc[label, child]) > 0.05
        for q in _unrelated(sim, p):
            assert abs(te.loc[label, q]) < EXACT
            assert np.abs(td.loc[label, sim.footprint_genes(q)]).max() < 1e-6
        # silencing touches no driver and, footprint mass being conserved, no other gene
        assert np.abs(td.loc[label, drivers + others]).max() < 1e-6


def test_double_knockouts_are_not_additive(sim):
    te = sim.truth_entity_delta
    pairs = [lab for lab in te.index if "+" in lab]
    gaps, unrelated_gaps = [], []
    for lab in pairs:
        a, b = lab.split("+")
        gap = np.abs(te.loc[lab] - te.loc[a] - te.loc[b]).max()
        gaps.append(gap)
        pa, pb = sim.pathway_of(a), sim.pathway_of(b)
        reach_a, reach_b = sim.descendants(pa) | {pa}, sim.descendants(pb) | {pb}
        if not reach_a & reach_b:
            unrelated_gaps.append(gap)
    assert max(gaps) > 0.02  # the sigmoid makes converging effects non-additive
    # knockouts whose effects never meet add up exactly at the activity level
    assert unrelated_gaps and max(unrelated_gaps) < EXACT
    td = sim.truth_delta
    gene_gaps = [np.abs(td.loc[lab] - td.loc[lab.split("+")[0]] - td.loc[lab.split("+")[1]]).max() for lab in pairs]
    assert max(gene_gaps) > 0.02


def test_truth_matches_brute_force_recomputation():
    """The fast truth path (reuse of control rows) equals a full recomputation per intervention."""
    from bioworld.data import _simulate as module

    kw = dict(n_pathways=4, edge_prob=0.6, n_other_genes=5, n_truth_draws=500, seed=7)
    res = simulate(**kw, n_cells_per_condition=2, n_control_cells=2, doubles=0)
    model_ss, _, _, truth_ss = np.random.SeedSequence(7).spawn(4)
    model = module._build_model(
        np.random.default_rng(model_ss),
        n_pathways=4,
        genes_per_pathway=12,
        n_drivers=3,
        n_other_genes=5,
        n_replicates=2,
        edge_prob=0.6,
    )
    noise = module._Noise.draw(np.random.default_rng(truth_ss), 500, model)

    def full(iv):
        act, r = module._activities(model, noise, iv)
        rate = module._rates(model, noise, act, r)
        return np.log1p(1e4 * rate / rate.sum(axis=0)).mean(axis=1), act.mean(axis=1)

    expr0, act0 = full(module._Intervention())
    for label in ["P2_DRV1", "P1_DRV3+P4_DRV2", "silence:SIM_P1", "silence:SIM_P3"]:
        if label.startswith("silence:"):
            iv = module._Intervention(silenced=(label.removeprefix("silence:"),))
        else:
            iv = module._Intervention(knockouts=tuple(label.split("+")))
        assert iv.label == label
        expr, act = full(iv)
        np.testing.assert_allclose(res.truth_delta.loc[label], expr - expr0, atol=1e-5)
        np.testing.assert_allclose(res.truth_entity_delta.loc[label], act - act0, atol=1e-12)


# --- sampled data agrees with the truth ---------------------------------------------------------
def test_sampled_data_follows_truth(sim, sampled_delta):
    td = sim.truth_delta
    for label, delta in sampled_delta.items():
        assert np.corrcoef(delta, td.loc[label])[0, 1] > 0.9, label


def test_sampled_knockout_and_silence_are_causal(sim, sampled_delta):
    for label, delta in sampled_delta.items():
        if "+" in label:
            continue
        target = label.removeprefix("silence:") if label.startswith("silence:") else sim.pathway_of(label)
        own = _signed_score(sim, delta, target)
        assert own < -0.2, label  # truth: -0.3 .. -0.9
        assert abs(own - _signed_score(sim, sim.truth_delta.loc[label], target)) < 0.1, label
        for q in _unrelated(sim, target):  # sampling noise of a score: sd ~0.03
            assert abs(_signed_score(sim, delta, q)) < 0.12, (label, q)
    # the per-cell activities stored with the data agree too
    act = sim.adata.obsm["sim_activity"]
    labels = sim.adata.obs["perturbation"].to_numpy()
    ctrl = act[labels == "control"].mean(axis=0)
    for label in ["P1_DRV1", "silence:SIM_P2"]:
        observed = act[labels == label].mean(axis=0) - ctrl
        np.testing.assert_allclose(observed, sim.truth_entity_delta.loc[label], atol=0.05)


# --- reproducibility, files, errors -------------------------------------------------------------
def test_same_seed_same_data_and_other_seed_differs(sim):
    again = simulate(**SMALL)
    assert (again.adata.X != sim.adata.X).nnz == 0
    assert (again.adata.obs == sim.adata.obs).all().all()
    assert again.dag == sim.dag
    np.testing.assert_array_equal(again.truth_delta.to_numpy(), sim.truth_delta.to_numpy())
    other = simulate(**{**SMALL, "seed": 2, "n_truth_draws": 500})
    assert other.dag != sim.dag or not np.allclose(other.truth_entity_delta, sim.truth_entity_delta)


def test_write_round_trips(sim, tmp_path):
    out = sim.write(tmp_path / "sim")
    for name in ["train.h5ad", "pathways.gmt", "truth_delta.csv", "truth_entity_delta.csv", "dag.json"]:
        assert (out / name).is_file()
    lines = (out / "pathways.gmt").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        fields = line.split("\t")
        assert len(fields) >= 3 and fields[0] in sim.gmt and fields[2:] == sim.gmt[fields[0]]
    dag = json.loads((out / "dag.json").read_text())
    assert [(e["parent"], e["child"], e["weight"]) for e in dag["edges"]] == sim.dag

    back = SimulationResult.read(out)
    assert (back.adata.X != sim.adata.X).nnz == 0
    assert list(back.adata.obs["perturbation"]) == list(sim.adata.obs["perturbation"])
    np.testing.assert_allclose(back.truth_delta.to_numpy(), sim.truth_delta.to_numpy(), rtol=0, atol=1e-12)
    assert list(back.truth_delta.index) == list(sim.truth_delta.index)
    np.testing.assert_allclose(back.truth_entity_delta.to_numpy(), sim.truth_entity_delta.to_numpy(), atol=1e-12)
    assert back.gmt == sim.gmt and back.dag == sim.dag
    assert back.descendants("SIM_P1") == sim.descendants("SIM_P1")
    assert back.params["seed"] == 1


def test_read_reports_missing_files(tmp_path):
    with pytest.raises(BioworldError, match="dag.json"):
        SimulationResult.read(tmp_path)


def test_explicit_design_and_package_export():
    import bioworld.data

    res = bioworld.data.simulate(
        n_pathways=3,
        n_other_genes=2,
        singles=["P1_DRV1"],
        doubles=[("P3_DRV1", "P1_DRV2")],
        silence=["SIM_P2"],
        n_cells_per_condition=4,
        n_control_cells=6,
        n_replicates=3,
        n_truth_draws=50,
    )
    cats = list(res.adata.obs["perturbation"].cat.categories)
    assert cats == ["control", "P1_DRV1", "P1_DRV2+P3_DRV1", "silence:SIM_P2"]
    assert res.adata.n_obs == 6 + 3 * 4
    assert set(res.adata.obs["replicate"]) == {"rep1", "rep2", "rep3"}
    # a module-level call works whichever of module/function the package attribute resolves to
    assert callable(bioworld.data.simulate)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(singles=["P1_DRV9"]), UnknownPerturbationError, "P1_DRV1"),
        (dict(silence=["SIM_P9"]), UnknownPerturbationError, "unknown pathway"),
        (dict(doubles=[("P1_DRV1", "P1_DRV2")]), BioworldError, "same pathway"),
        (dict(doubles=[("P1_DRV1",)]), BioworldError, "pair of driver genes"),
        (dict(doubles=10_000), BioworldError, "driver pairs"),
        (dict(genes_per_pathway=3), BioworldError, "genes_per_pathway"),
        (dict(edge_prob=1.5), BioworldError, "edge_prob"),
        (dict(singles="some"), BioworldError, "'all'"),
        (dict(singles=["P1_DRV1", "P1_DRV1"]), BioworldError, "more than once"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate(n_pathways=3, n_truth_draws=10, n_cells_per_condition=2, n_control_cells=2, **kwargs)
