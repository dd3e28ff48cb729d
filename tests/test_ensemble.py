"""Seed ensembles and calibrated prediction intervals (bw.Ensemble, bioworld.query._uncertainty)."""

from __future__ import annotations

import numpy as np
import pytest

import bioworld as bw
from bioworld.errors import BioworldError, CheckpointError
from bioworld.query._uncertainty import Calibration, conformal_quantile, coverage, gene_scale, normal_quantile


def test_conformal_intervals_cover_fresh_exchangeable_residuals_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    G = 40
    spread = rng.uniform(0.05, 2.0, G)  # genes differ in how much perturbations move them
    train = rng.normal(size=(300, G)) * spread
    calib = rng.normal(size=(200, G)) * spread * 0.7  # held-out errors, same per-gene shape
    cal = Calibration.fit(calib, train, levels=(0.8, 0.9))
    fresh = rng.normal(size=(2000, G)) * spread * 0.7
    for level in (0.8, 0.9):
        hw = cal.half_width(level)
        got = coverage(fresh, np.broadcast_to(-hw, fresh.shape), np.broadcast_to(hw, fresh.shape))
        assert abs(got - level) < 0.03, (level, got)
    # a wrong (too small) scale model is still calibrated marginally: q grows to compensate
    q_small = conformal_quantile(calib, gene_scale(train) * 0.1, 0.9)
    assert q_small == pytest.approx(10 * cal.quantiles["0.9"], rel=1e-9)


def test_conformal_quantile_finite_sample_rule_and_bad_input():
    r = np.arange(1.0, 11.0)[:, None]  # 10 perturbations, one gene, |r| = 1..10
    # ceil((10 + 1) * 0.8) / 10 = 0.9 -> the 'higher' 0.9 quantile of 1..10 is 10
    assert conformal_quantile(r, np.ones(1), 0.8) == 10.0
    assert conformal_quantile(r, np.ones(1), 0.5) == 7.0  # ceil(5.5) / 10 = 0.6 -> 7
    assert normal_quantile(0.9) == pytest.approx(1.6449, abs=1e-4)
    with pytest.raises(BioworldError, match="strictly between 0 and 1"):
        conformal_quantile(r, np.ones(1), 1.0)
    with pytest.raises(BioworldError, match="NaN"):
        conformal_quantile(np.array([[np.nan], [1.0]]), np.ones(1), 0.9)
    with pytest.raises(BioworldError, match="positive"):
        conformal_quantile(r, np.zeros(1), 0.9)
    s = gene_scale(np.array([[1.0, 0.0, 2.0], [-1.0, 0.0, 2.0]]))
    assert s[1] > 0 and s[0] == pytest.approx(1.0) and s[2] == pytest.approx(2.0)  # unmoved gene gets a floor
    with pytest.raises(BioworldError, match="no calibration at level"):
        Calibration.fit(r, r, levels=(0.9,)).half_width(0.8)


@pytest.fixture(scope="module")
def ensemble(small_sim):
    from _helpers import sim_entities

    kwargs = dict(entities=sim_entities(small_sim), replicate_key="replicate", nmf_programs=0,
                  config={"max_steps": 6, "warmup_steps": 1})
    ens = bw.Ensemble.train(small_sim.adata.copy(), n_members=2, progress=False, **kwargs)
    return ens, kwargs


def test_ensemble_predicts_mean_of_members_with_flagged_uncalibrated_intervals(ensemble):
    ens, _ = ensemble
    labs = ["P1_DRV1", "control"] if "P1_DRV1" in ens.members[0].actions else [ens.members[0].train_labels[1], "control"]
    out = ens.predict(labs, level=0.9)
    d = np.stack([np.asarray(m.predict(labs).layers["delta"]) for m in ens.members])
    np.testing.assert_allclose(out.layers["delta"], d.mean(0), atol=1e-6)
    np.testing.assert_allclose(out.layers["delta_sd"], d.std(0, ddof=1), atol=1e-6)
    assert (out.layers["delta_lo"] <= out.layers["delta"] + 1e-7).all() and (out.layers["delta"] <= out.layers["delta_hi"] + 1e-7).all()
    info = out.uns["bioworld"]["interval"]
    assert info["calibrated"] is False and "Uncalibrated" in info["method"]
    z = normal_quantile(0.9)
    np.testing.assert_allclose(out.layers["delta_hi"] - out.layers["delta"], z * out.layers["delta_sd"], atol=1e-5)
    assert list(out.obs_names) == labs and bool(out.obs["bw_seen"].iloc[0])


def test_calibrate_then_intervals_are_the_conformal_widths_and_survive_save_load(ensemble, small_sim, tmp_path):
    ens, kwargs = ensemble
    cal = ens.calibrate(small_sim.adata.copy(), n_folds=2, levels=(0.9,), progress=False, **kwargs)
    assert cal.n_perturbations == len([lab for lab in ens.members[0].train_labels if lab != "control"])
    assert cal.quantiles["0.9"] > 0
    labs = [ens.members[0].train_labels[1]]
    out = ens.predict(labs, level=0.9)
    assert out.uns["bioworld"]["interval"]["calibrated"] is True
    np.testing.assert_allclose(out.layers["delta_hi"][0] - out.layers["delta"][0], cal.half_width(0.9), rtol=1e-5)
    ens.save(tmp_path / "ens")
    back = bw.Ensemble.load(tmp_path / "ens")
    assert back.calibration.quantiles == cal.quantiles
    again = back.predict(labs, level=0.9)
    np.testing.assert_allclose(again.layers["delta_lo"], out.layers["delta_lo"], atol=1e-6)
    with pytest.raises(BioworldError, match="no calibration at level"):
        back.predict(labs, level=0.8)
    # population effects of a counterfactual come with intervals too
    cells = small_sim.adata[small_sim.adata.obs["perturbation"] == "control"][:10].copy()
    cf = back.counterfactual(cells, labs)
    pop = cf.uns["bioworld"]["population"][labs[0]]
    np.testing.assert_allclose(pop["mean"], np.asarray(cf.layers["delta"]).mean(0), atol=1e-5)
    assert (pop["lo"] <= pop["mean"]).all() and (pop["mean"] <= pop["hi"]).all()


def test_ensemble_refuses_mismatched_members_and_corrupt_folders(ensemble, small_sim, tmp_path):
    from _helpers import sim_entities

    ens, _ = ensemble
    with pytest.raises(BioworldError, match="at least 2 members"):
        bw.Ensemble(ens.members[:1])
    other = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                          nmf_programs=0, holdout=[ens.members[0].train_labels[1]], config={"max_steps": 2, "warmup_steps": 1})
    other.train(progress=False)
    with pytest.raises(BioworldError, match="training labels"):
        bw.Ensemble([ens.members[0], other])
    with pytest.raises(CheckpointError, match="holds no ensemble.json"):
        bw.Ensemble.load(tmp_path)
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        bw.Ensemble.load(tmp_path)


def test_calibrate_mistakes_say_what_was_found_and_what_to_do(ensemble, small_sim):
    """calibrate on a file path crashed with AttributeError; genes in another order, a wrong members_per_fold or a
    missing perturbation column said neither what was found nor the fix. All are refused before any training."""
    ens, _ = ensemble
    a = small_sim.adata
    reordered = a[:, list(a.var_names)[::-1]].copy()
    renamed = a.copy()
    renamed.obs = renamed.obs.rename(columns={"perturbation": "gene"})
    cases = [
        (lambda: ens.calibrate("train.h5ad"), r"adata is a str; expected the AnnData.*Fix: read it first"),
        (lambda: ens.calibrate(reordered), r"genes in another order.*Fix: pass the data the members were trained on: "
                                           r"adata\[:, ens.members\[0\].var_names\]"),
        (lambda: ens.calibrate(a, members_per_fold=0), r"members_per_fold=0; expected a whole number from 1 to 2"),
        (lambda: ens.calibrate(a, members_per_fold=1.5), r"members_per_fold=1.5"),
        (lambda: ens.calibrate(a, levels=()), r"levels is empty.*Fix:"),
        (lambda: ens.calibrate(renamed), r"has no column 'perturbation'.*found \[.*'gene'.*Fix:"),
    ]
    for call, match in cases:
        with pytest.raises(BioworldError, match=match) as e:
            call()
        assert "expected" in str(e.value) and "Fix:" in str(e.value), str(e.value)
