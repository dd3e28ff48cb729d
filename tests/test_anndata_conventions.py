"""AnnData conventions of query answers: annotations kept, one key per quantity, named entity shifts,
and every returned AnnData written and read back with plain ``write_h5ad`` / ``read_h5ad``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bioworld as bw


@pytest.fixture(scope="module")
def annotated(small_sim):
    """Control cells annotated as a scanpy user would: cell types, a numeric score, a UMAP, a PCA table."""
    a = small_sim.adata
    cells = a[a.obs["perturbation"] == "control"][:12].copy()
    rng = np.random.default_rng(0)
    cells.obs["cell_type"] = pd.Categorical(["mono", "macro"] * 6)
    cells.obs["score"] = rng.normal(size=cells.n_obs)
    cells.obsm["X_umap"] = rng.normal(size=(cells.n_obs, 2)).astype(np.float32)
    cells.obsm["pcs"] = pd.DataFrame(rng.normal(size=(cells.n_obs, 3)), index=cells.obs_names, columns=["a", "b", "c"])
    return cells


def _round_trip(adata, path):
    adata.write_h5ad(path)  # plain anndata, no bioworld helper
    return ad.read_h5ad(path)


def test_counterfactual_keeps_obs_and_obsm_and_round_trips(tiny_trained, annotated, tmp_path):
    specs = [f"silence:{tiny_trained.entity_names[0]}", "P1_DRV1"]
    cf = tiny_trained.counterfactual(annotated, specs)
    n = annotated.n_obs
    assert cf.n_obs == 2 * n
    # the cells' annotations, tiled per intervention (intervention-major)
    assert list(cf.obs["cell_type"]) == list(annotated.obs["cell_type"]) * 2
    np.testing.assert_array_equal(cf.obs["score"].to_numpy(), np.tile(annotated.obs["score"].to_numpy(), 2))
    np.testing.assert_array_equal(cf.obsm["X_umap"][n:], annotated.obsm["X_umap"])
    assert list(cf.obsm["pcs"].columns) == ["a", "b", "c"] and (cf.obsm["pcs"].index == cf.obs_names).all()
    assert list(cf.obs["bw_intervention"].cat.categories) == specs
    assert list(cf.obs["bw_cell"][:n]) == list(annotated.obs_names)
    # one key per quantity
    assert set(cf.layers) == {"delta"}
    # entity shifts: a named table
    shift = cf.obsm["bw_entity_shift"]
    assert isinstance(shift, pd.DataFrame) and list(shift.columns) == list(tiny_trained.entity_names)
    eff = cf.uns["bioworld"]["entity_effects"][specs[1]]
    assert list(eff.columns) == ["entity", "shift", "share"]
    top = shift[cf.obs["bw_intervention"].to_numpy() == specs[1]].mean(0).idxmax()
    assert eff["entity"].iloc[0] == top
    back = _round_trip(cf, tmp_path / "cf.h5ad")
    assert list(back.obs["cell_type"]) == list(cf.obs["cell_type"])
    np.testing.assert_array_equal(back.layers["delta"], cf.layers["delta"])
    assert list(back.obsm["bw_entity_shift"].columns) == list(tiny_trained.entity_names)
    pd.testing.assert_frame_equal(back.uns["bioworld"]["entity_effects"][specs[1]], eff, check_index_type=False)


def test_predict_round_trips(tiny_trained, tmp_path):
    pred = tiny_trained.predict(["control", "P1_DRV1"])
    back = _round_trip(pred, tmp_path / "p.h5ad")
    np.testing.assert_array_equal(back.layers["delta"], pred.layers["delta"])
    assert list(back.obs_names) == ["control", "P1_DRV1"]


def test_ensemble_predict_and_counterfactual_share_keys_and_round_trip(small_sim, annotated, tmp_path):
    from _helpers import sim_entities

    ens = bw.Ensemble.train(small_sim.adata.copy(), seeds=[0, 1], entities=sim_entities(small_sim),
                            replicate_key="replicate", nmf_programs=0, progress=False,
                            config={"max_steps": 3, "warmup_steps": 1})
    pred = ens.predict(["P1_DRV1"])
    cf = ens.counterfactual(annotated, ["P1_DRV1"])
    assert "delta_sd" in pred.layers and "delta_sd" in cf.layers
    assert not any(k.startswith("bw_") for k in list(pred.layers) + list(cf.layers))
    assert list(cf.obs["cell_type"]) == list(annotated.obs["cell_type"])
    assert isinstance(cf.obsm["bw_entity_shift"], pd.DataFrame)
    for name, a in (("pred", pred), ("cf", cf)):
        back = _round_trip(a, tmp_path / f"{name}.h5ad")
        np.testing.assert_array_equal(back.layers["delta_sd"], a.layers["delta_sd"])


def test_counterfactual_keeps_scanpys_category_colours_of_kept_columns(tiny_trained, annotated, tmp_path):
    """uns['cell_type_colors'] (scanpy's colours of obs['cell_type']) was dropped with the rest of uns, so
    sc.pl.umap(cf, color='cell_type') recoloured the cell types; other uns entries describe the given cells only."""
    cells = annotated.copy()
    cells.uns["cell_type_colors"] = ["#1b9e77", "#d95f02"]
    cells.uns["gone_colors"] = ["#000000"]  # no such obs column: not carried
    cells.uns["neighbors"] = {"params": {"n_neighbors": 5}}
    cf = tiny_trained.counterfactual(cells, ["P1_DRV1"])
    assert list(cf.uns["cell_type_colors"]) == ["#1b9e77", "#d95f02"]
    assert list(cf.obs["cell_type"].cat.categories) == list(cells.obs["cell_type"].cat.categories)
    assert "gone_colors" not in cf.uns and "neighbors" not in cf.uns
    back = _round_trip(cf, tmp_path / "cf.h5ad")
    assert list(back.uns["cell_type_colors"]) == ["#1b9e77", "#d95f02"]
