"""``bw.tl`` (latents, cell-eval export) and ``bw.pl`` (predicted vs observed, latent UMAP, effect bars)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bioworld as bw  # noqa: E402
from bioworld.errors import BioworldError  # noqa: E402


@pytest.fixture(scope="module")
def cells(small_sim):
    a = small_sim.adata
    return a[a.obs["perturbation"] == "control"][:40].copy()


@pytest.fixture(scope="module")
def test_data(small_sim):
    """Held-out cells: same simulated screen, other cell draws; 3 perturbations + controls."""
    from _helpers import small_simulation

    a = small_simulation(seed=0, cells_seed=11).adata
    keep = a.obs["perturbation"].astype(str).isin(["control", "P1_DRV1", "P2_DRV1", "P3_DRV2"]).to_numpy()
    return a[keep].copy()


# ------------------------------------------------------------------------------------------ tl
def test_latents_in_obsm_with_key_added_and_copy(tiny_trained, cells, tmp_path):
    a = cells.copy()
    assert bw.tl.latents(a, model=tiny_trained) is None
    z = tiny_trained.get_entity_latents(cells)
    E, D = z.shape[1:]
    np.testing.assert_allclose(a.obsm["X_bw"], z.reshape(len(z), -1), rtol=1e-6)
    assert a.uns["bioworld"]["X_bw"]["entity_names"] == list(tiny_trained.entity_names)
    b = bw.tl.latents(cells, model=tiny_trained, key_added="X_lat", copy=True)
    assert "X_lat" in b.obsm and "X_lat" not in cells.obsm and b.obsm["X_lat"].shape == (cells.n_obs, E * D)
    a.write_h5ad(tmp_path / "lat.h5ad")
    back = ad.read_h5ad(tmp_path / "lat.h5ad")
    np.testing.assert_array_equal(back.obsm["X_bw"], a.obsm["X_bw"])


def _check_cell_eval_layout(pred, real, pert_col="target_gene", control="non-targeting"):
    assert list(pred.var_names) == list(real.var_names)
    assert pred.X.dtype == np.float32 and real.X.dtype == np.float32 and np.isfinite(pred.X).all()
    cp = pred.obs[pert_col].astype(str).value_counts().sort_index()
    cr = real.obs[pert_col].astype(str).value_counts().sort_index()
    assert cp.equals(cr) and control in cp.index
    assert pred.obs_names.is_unique and real.obs_names.is_unique


def test_to_cell_eval_layout_and_round_trip(tiny_trained, test_data, tmp_path):
    pred, real = bw.tl.to_cell_eval(tiny_trained, test_data, out_dir=tmp_path)
    _check_cell_eval_layout(pred, real)
    assert set(real.obs["target_gene"].astype(str)) == {"non-targeting", "P1_DRV1", "P2_DRV1", "P3_DRV2"}
    # real = the observed cells on the model's scale (log1p CP10k of the counts)
    from bioworld.data import normalize, register

    t = test_data.copy()
    reg = register(t, input="counts")
    X = normalize(t, reg)
    first = real.obs_names[0]
    np.testing.assert_allclose(real.X[0], X[list(t.obs_names).index(first)], rtol=1e-5)
    # control groups are the same cells in both; predictions differ from them
    ctrl = (pred.obs["target_gene"] == "non-targeting").to_numpy()
    np.testing.assert_array_equal(pred.X[ctrl], real.X[(real.obs["target_gene"] == "non-targeting").to_numpy()])
    for kind, a in (("pred", pred), ("real", real)):
        back = ad.read_h5ad(tmp_path / f"{kind}.h5ad")
        np.testing.assert_array_equal(back.X, a.X)
        assert back.uns["bioworld"]["cell_eval"]["kind"] == kind


def test_to_cell_eval_with_fewer_controls_than_perturbed_cells_warns_nothing(tiny_trained, test_data):
    """Controls drawn with replacement used to reach counterfactual with repeated cell names (its warning)."""
    import warnings

    labels = test_data.obs["perturbation"].astype(str).to_numpy()
    few = test_data[(labels != "control") | (np.cumsum(labels == "control") <= 5)].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", bw.data.DataWarning)
        warnings.filterwarnings("error", message=".*not unique")  # anndata's, on a view of repeated cells
        pred, _ = bw.tl.to_cell_eval(tiny_trained, few)
    assert (pred.obs["target_gene"].astype(str) == "non-targeting").sum() == 5 and pred.obs_names.is_unique


def test_to_cell_eval_is_read_by_cell_eval(tiny_trained, test_data, tmp_path):
    cell_eval = pytest.importorskip("cell_eval")
    pred, real = bw.tl.to_cell_eval(tiny_trained, test_data, pert_col="target", control_pert="non-targeting")
    ev = cell_eval.MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert="non-targeting", pert_col="target",
                                    num_threads=1, outdir=str(tmp_path / "ce"), skip_de=True)
    results, _ = ev.compute(profile="anndata", write_csv=False, skip_metrics=["clustering_agreement"])
    got = dict(zip(results["perturbation"].to_list(), results["pearson_delta"].to_list()))
    assert set(got) == {"P1_DRV1", "P2_DRV1", "P3_DRV2"}, results
    # cell-eval read our layout as meant: its pearson_delta is the Pearson of the mean deltas vs control
    lab = "P1_DRV1"

    def mean_delta(a):
        g = a.obs["target"].astype(str).to_numpy()
        return np.asarray(a.X[g == lab]).mean(0) - np.asarray(a.X[g == "non-targeting"]).mean(0)

    expected = np.corrcoef(mean_delta(pred), mean_delta(real))[0, 1]
    assert got[lab] == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------------ pl
def test_predicted_vs_observed_draws_each_label_with_its_r(tiny_trained):
    labels = ["P1_DRV1", "P2_DRV1"]
    pred = tiny_trained.predict(labels)
    rng = np.random.default_rng(0)
    obs = {lab: np.asarray(pred.layers["delta"][i]) + rng.normal(0, 0.05, pred.n_vars) for i, lab in enumerate(labels)}
    fig, ax = plt.subplots()
    assert bw.pl.predicted_vs_observed(pred, obs, ax=ax) is ax
    assert len(ax.collections) == 2
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    r0 = np.corrcoef(np.asarray(pred.layers["delta"][0]), obs["P1_DRV1"])[0, 1]
    assert texts[0] == f"P1_DRV1 (r = {r0:.2f})"
    ax2 = bw.pl.predicted_vs_observed(pred, obs, labels=["P2_DRV1"], top_k=10)
    assert ax2.collections[0].get_offsets().shape == (10, 2)
    with pytest.raises(BioworldError, match="not in both"):
        bw.pl.predicted_vs_observed(pred, obs, labels=["NOPE"])
    plt.close("all")


def test_predicted_vs_observed_matches_genes_by_name(tiny_trained):
    """An observed table with its genes in another order (or more genes) was scattered column by column against
    the predicted genes: wrong pairs, a wrong r, no error."""
    import pandas as pd

    pred = tiny_trained.predict(["P1_DRV1"])
    delta = pd.DataFrame(np.asarray(pred.layers["delta"]), index=pred.obs_names, columns=pred.var_names)
    reversed_genes = delta[list(pred.var_names[::-1])]
    ax = bw.pl.predicted_vs_observed(pred, reversed_genes)
    assert ax.get_legend().get_texts()[0].get_text() == "P1_DRV1 (r = 1.00)"
    shuffled = reversed_genes.assign(EXTRA=1.0)  # and one gene more
    ax = bw.pl.predicted_vs_observed(pred, shuffled)
    assert ax.get_legend().get_texts()[0].get_text() == "P1_DRV1 (r = 1.00)"
    obs_ad = ad.AnnData(shuffled.to_numpy(), obs=pd.DataFrame(index=shuffled.index), var=pd.DataFrame(index=shuffled.columns))
    obs_ad.layers["delta"] = obs_ad.X.copy()
    ax = bw.pl.predicted_vs_observed(pred, obs_ad)
    assert ax.get_legend().get_texts()[0].get_text() == "P1_DRV1 (r = 1.00)"
    with pytest.raises(BioworldError, match=r"no label in common; predicted has \['P1_DRV1'\], observed has \['X'\]"):
        bw.pl.predicted_vs_observed(pred, {"X": np.zeros(pred.n_vars)})
    with pytest.raises(BioworldError, match="share no gene name"):
        bw.pl.predicted_vs_observed(pred, delta.set_axis([f"g{i}" for i in range(pred.n_vars)], axis=1))
    plt.close("all")


def test_latent_umap_scanpy_neighbours(tiny_trained, small_sim):
    a = small_sim.adata[::8].copy()
    fig, ax = plt.subplots()
    assert bw.pl.latent_umap(a, model=tiny_trained, color="perturbation", ax=ax) is ax
    assert a.obsm["X_bw_umap"].shape == (a.n_obs, 2) and "X_bw" in a.obsm
    assert len(ax.get_legend().get_texts()) == a.obs["perturbation"].nunique()
    with pytest.raises(BioworldError, match="no obsm"):
        bw.pl.latent_umap(small_sim.adata[:10].copy())
    plt.close("all")


def test_effect_bars_predict_and_counterfactual(tiny_trained, cells):
    pred = tiny_trained.predict(["P1_DRV1"])
    fig, ax = plt.subplots()
    bw.pl.effect_bars(pred, "P1_DRV1", n_genes=5, ax=ax)
    widths = sorted(abs(p.get_width()) for p in ax.patches)
    top = sorted(np.sort(np.abs(np.asarray(pred.layers["delta"][0])))[-5:])
    np.testing.assert_allclose(widths, top, rtol=1e-5)
    cf = tiny_trained.counterfactual(cells[:10].copy(), ["P2_DRV1"])
    ax2 = bw.pl.effect_bars(cf, "P2_DRV1", n_genes=4)
    d = np.asarray(cf.layers["delta"]).mean(0)
    np.testing.assert_allclose(sorted(abs(p.get_width()) for p in ax2.patches), sorted(np.sort(np.abs(d))[-4:]),
                               rtol=1e-5)
    with pytest.raises(BioworldError, match="no rows"):
        bw.pl.effect_bars(cf, "P9_DRV9")
    # the axis names the scale of the deltas (it said only 'model scale')
    assert ax.get_xlabel() == f"predicted delta ({pred.uns['bioworld']['scale']})" and "log1p" in ax.get_xlabel()
    plt.close("all")


# ---------------------------------------------------------------------------------- enrichment
def _fake_prediction():
    """A predict-like AnnData over 4 Hallmark sets' genes where only IFN-gamma response genes go up."""
    from bioworld.entities import load_bundled

    sets = {e.name: list(e.genes) for e in load_bundled("hallmark")}
    names = ["HALLMARK_INTERFERON_GAMMA_RESPONSE", "HALLMARK_HYPOXIA", "HALLMARK_MYC_TARGETS_V1", "HALLMARK_APOPTOSIS"]
    genes = list(dict.fromkeys(g for n in names for g in sets[n]))
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.1, len(genes))
    up = np.isin(genes, sets[names[0]])
    delta[up] += 1.0
    a = ad.AnnData(X=delta[None].astype(np.float32), var=__import__("pandas").DataFrame(index=genes))
    a.obs_names = ["DRUG@1"]
    a.layers["delta"] = a.X.copy()
    return a


def test_enrichment_finds_the_moved_pathway_and_is_seeded():
    a = _fake_prediction()
    res = bw.tl.enrichment(a, "DRUG@1", permutations=200, seed=1)
    assert list(res.columns) == ["term", "nes", "pval", "fdr", "n_genes", "lead_genes"]
    top = res.iloc[0]
    assert top["term"] == "HALLMARK_INTERFERON_GAMMA_RESPONSE" and top["nes"] > 0 and top["fdr"] < 0.05
    assert res.attrs["gene_sets"] == "bundled hallmark"
    again = bw.tl.enrichment(a, "DRUG@1", permutations=200, seed=1)
    assert res.equals(again)
    # sets with too few genes on the panel are not tested
    assert bw.tl.enrichment(a[:, :3].copy(), "DRUG@1", permutations=50).empty
    with pytest.raises(BioworldError, match="not a row"):
        bw.tl.enrichment(a, "NOPE")


def test_enrichment_with_tied_genes_reports_them_instead_of_logging(capfd):
    import logging

    a = _fake_prediction()
    a.layers["delta"][0, ::3] = 0.0  # a third of the genes unchanged: tied values
    res = bw.tl.enrichment(a, "DRUG@1", permutations=50, seed=0)
    assert res.iloc[0]["term"] == "HALLMARK_INTERFERON_GAMMA_RESPONSE"
    assert res.attrs["tied_share"] == pytest.approx(np.mean(a.layers["delta"][0] == 0.0), abs=0.01)
    assert "Duplicated values" not in capfd.readouterr().err  # gseapy's own console handler stayed quiet
    assert logging.root.manager.disable == logging.NOTSET  # logging is left as it was


# ------------------------------------------------------------------------------ backed / odd inputs
def test_latents_on_a_backed_file_copy_and_subset(tiny_trained, cells, tmp_path):
    """A backed file (bw.data.open_backed): copy=True used to crash inside anndata (backed objects cannot .copy()),
    and a subset of one crashed when obsm was written into the view."""
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    try:
        out = bw.tl.latents(backed, model=tiny_trained, copy=True)
        assert not out.isbacked and "X_bw" not in backed.obsm
        z = tiny_trained.get_entity_latents(cells)
        np.testing.assert_allclose(out.obsm["X_bw"], z.reshape(len(z), -1), rtol=1e-5)
        sub = bw.tl.latents(backed[:5], model=tiny_trained, copy=True)
        assert sub.n_obs == 5 and sub.obsm["X_bw"].shape[0] == 5
        with pytest.raises(BioworldError, match="view.*Fix: pass copy=True"):
            bw.tl.latents(backed[:5], model=tiny_trained)
        with pytest.raises(BioworldError, match=r"view.*Fix: load the subset first: adata\[...\].to_memory\(\)"):
            bw.pl.latent_umap(backed[:8], model=tiny_trained)  # latents' fix named copy=, which latent_umap lacks
    finally:
        backed.file.close()
    with_latents = bw.tl.latents(cells, model=tiny_trained, copy=True)
    with_latents.write_h5ad(tmp_path / "lat.h5ad")
    backed = ad.read_h5ad(tmp_path / "lat.h5ad", backed="r")
    try:
        with pytest.raises(BioworldError, match=r"view.*Fix: load the subset first"):
            bw.pl.latent_umap(backed[:8])  # was a raw anndata ValueError writing obsm['X_bw_umap'] into the view
    finally:
        backed.file.close()


def test_to_cell_eval_reads_a_backed_file_and_refuses_a_path(tiny_trained, test_data, tmp_path):
    test_data.write_h5ad(tmp_path / "test.h5ad")
    backed = ad.read_h5ad(tmp_path / "test.h5ad", backed="r")
    try:
        pred, real = bw.tl.to_cell_eval(tiny_trained, backed)  # used to crash: backed AnnData cannot .copy()
        pred0, real0 = bw.tl.to_cell_eval(tiny_trained, test_data)
        np.testing.assert_array_equal(real.X, real0.X)
        np.testing.assert_array_equal(pred.X, pred0.X)
    finally:
        backed.file.close()
    with pytest.raises(BioworldError, match="real is a str.*Fix: read the file first"):
        bw.tl.to_cell_eval(tiny_trained, str(tmp_path / "test.h5ad"))


def test_enrichment_refuses_bad_options_and_names_the_bundled_collection():
    """permutations=0 used to crash inside gseapy (KeyError 'NOM p-val'); a misspelt bundled name was read as a file
    of an 'unknown type' with no hint of the bundled names."""
    a = _fake_prediction()
    for kw, msg in (({"permutations": 0}, "permutations=0; expected a whole number >= 1"),
                    ({"permutations": 1.5}, "permutations=1.5"),
                    ({"min_size": 0}, "min_size=0"),
                    ({"min_size": 50, "max_size": 10}, "min_size=50 is above max_size=10")):
        with pytest.raises(BioworldError, match=msg) as e:
            bw.tl.enrichment(a, "DRUG@1", **kw)
        assert "Fix:" in str(e.value)
    with pytest.raises(BioworldError, match=r"gene_sets 'halmark' is neither a bundled collection nor a file.*"
                                            r"close matches: 'hallmark'.*Fix: gene_sets='hallmark'"):
        bw.tl.enrichment(a, "DRUG@1", gene_sets="halmark")


def test_pl_tl_mistakes_say_what_to_do(tiny_trained, cells):
    """Each user mistake in bw.pl / bw.tl says what was found, what was expected and a 'Fix:' (several said only the
    first two)."""
    pred = tiny_trained.predict(["P1_DRV1"])
    cf = tiny_trained.counterfactual(cells[:6].copy(), ["P2_DRV1"])
    cases = [
        (lambda: bw.pl.effect_bars(pred, "P9_DRV9"), "is not a row of adata"),
        (lambda: bw.pl.effect_bars(cf, "P9_DRV9"), "no rows with obs"),
        (lambda: bw.tl.enrichment(pred, "P9_DRV9"), "is not a row of adata"),
        (lambda: bw.tl.enrichment(cf, "P9_DRV9"), r"no rows with obs.*found \['P2_DRV1'\]"),
        (lambda: bw.tl.enrichment(pred, "P1_DRV1", gene_sets=3), "gene_sets is a int"),
        (lambda: bw.pl.predicted_vs_observed(pred, [1, 2]), "observed is a list"),
        (lambda: bw.pl.predicted_vs_observed(pred, pred, layer="nope"), r"no layers\['nope'\]"),
        (lambda: bw.pl.predicted_vs_observed(pred, {"P1_DRV1": np.zeros(3)}), "predicted has .* genes and observed 3"),
        (lambda: bw.pl.latent_umap(cells[:10].copy(), model=tiny_trained, color="nope"), "not an obs column"),
        (lambda: bw.pl.latent_umap(cells[:3].copy(), model=tiny_trained), "expected at least 4"),
        (lambda: bw.tl.latents(cells[:3].copy(), model=tiny_trained, key_added=""), "key_added=''"),
        (lambda: bw.pl.effect_bars(pred, "P1_DRV1", n_genes=0), "n_genes=0"),  # drew an empty plot
        (lambda: bw.pl.effect_bars(pred, "P1_DRV1", n_genes=-3), "n_genes=-3"),
        (lambda: bw.pl.predicted_vs_observed(pred, pred, top_k=0), "top_k=0"),  # plotted every gene
        (lambda: bw.pl.predicted_vs_observed(pred, pred, top_k=-1), "top_k=-1"),
    ]
    for call, found in cases:
        with pytest.raises(BioworldError, match=found) as e:
            call()
        assert "expected" in str(e.value) and "Fix:" in str(e.value), str(e.value)
    plt.close("all")


def test_predicted_vs_observed_takes_mean_deltas_result_as_its_docstring_suggests(tiny_trained, test_data):
    """The docstring points to mean_deltas for the observed deltas; passing its result ((deltas, control mean))
    was refused as 'observed is a tuple'."""
    from dataclasses import replace

    from bioworld.data import normalize, register
    from bioworld.eval.benchmark import mean_deltas

    t = test_data[:, list(tiny_trained.var_names)].copy()
    reg = register(t, input="counts", inplace=False)
    X = normalize(t, replace(reg, n_genes=t.n_vars, n_cells=t.n_obs))
    observed = mean_deltas(X, t.obs["perturbation"].astype(str).to_numpy(), "control")
    pred = tiny_trained.predict(["P1_DRV1", "P2_DRV1"])
    ax = bw.pl.predicted_vs_observed(pred, observed)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    r = np.corrcoef(np.asarray(pred.layers["delta"][0], dtype=np.float64), observed[0]["P1_DRV1"])[0, 1]
    assert texts[0] == f"P1_DRV1 (r = {r:.2f})" and len(texts) == 2
    plt.close("all")
