"""bw.WorldModel on a small simulation: predict contract, save/load, determinism, refusals."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest

import bioworld as bw
from bioworld.errors import CheckpointError, DataValidationError, PerturbationParseError, UnknownPerturbationError


def test_predict_contract(tiny_trained):
    labels = ["P1_DRV1", "control", "P2_DRV1+P3_DRV2"]
    pred = tiny_trained.predict(labels)
    assert list(pred.obs_names) == labels
    assert list(pred.var_names) == tiny_trained.var_names
    assert np.allclose(pred[pred.obs_names == "control"].layers["delta"], 0.0)
    assert np.isfinite(pred.X).all()
    # every row's delta is against the same predicted control (the control row's X)
    ctrl = pred[pred.obs_names == "control"].X[0]
    np.testing.assert_allclose(pred.X - pred.layers["delta"], np.tile(ctrl, (len(labels), 1)), atol=1e-5)
    # X is on the model's (log1p CP10k) scale, not the standardised one: the predicted control follows
    # the control cells' mean expression gene by gene
    assert np.corrcoef(ctrl, tiny_trained.mu)[0, 1] > 0.9


def test_predict_refuses_unknown_and_malformed(tiny_trained):
    with pytest.raises(UnknownPerturbationError, match="NOTAGENE"):
        tiny_trained.predict(["NOTAGENE"])
    with pytest.raises(PerturbationParseError):
        tiny_trained.predict([" P1_DRV1"])
    with pytest.raises(UnknownPerturbationError, match="SIM_P99"):
        tiny_trained.predict(["silence:SIM_P99"])


def test_save_load_roundtrip_identical(tiny_trained, tmp_path):
    tiny_trained.save(tmp_path / "m")
    wm2 = bw.WorldModel.load(tmp_path / "m")
    labels = ["P1_DRV1", "P2_DRV2"]
    assert np.array_equal(tiny_trained.predict(labels).X, wm2.predict(labels).X)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["README.md", "bioworld.json", "model.safetensors"]  # + the model card; no pickles, no temp files


def test_tampered_checkpoints_are_refused(tiny_trained, tmp_path):
    d = tmp_path / "m"
    tiny_trained.save(d)
    w = d / "model.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-10] ^= 0xFF
    w.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        bw.WorldModel.load(d)
    tiny_trained.save(d)
    meta = json.loads((d / "bioworld.json").read_text())
    ent0 = meta["entities"]["entities"][0]
    ent0["weights"] = [2.0] + list(ent0["weights"][1:])  # valid definitions, different from training
    from bioworld.train.checkpoint import meta_digest

    (d / "bioworld.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="edited after it was written"):  # bioworld.json records its own hash
        bw.WorldModel.load(d)
    meta["meta_sha256"] = meta_digest(meta)  # a thorough edit: the deeper checks still refuse it
    (d / "bioworld.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="hash"):
        bw.WorldModel.load(d)
    ent0["genes"] = ent0["genes"][:-1]  # inconsistent definitions
    meta["meta_sha256"] = meta_digest(meta)
    (d / "bioworld.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid definitions"):
        bw.WorldModel.load(d)
    tiny_trained.save(d)
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError):
        bw.WorldModel.load(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        bw.WorldModel.load(tmp_path / "nope")


def test_same_seed_same_predictions_different_seed_differs(small_sim):
    from _helpers import sim_entities

    def run(seed):
        wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                           nmf_programs=0, config={"max_steps": 15, "seed": seed, "warmup_steps": 2})
        wm.train(progress=False)
        return wm.predict(["P1_DRV1", "P3_DRV2"]).X

    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_counterfactual_contract_and_panel_checks(tiny_trained, small_sim):
    cells = small_sim.adata[small_sim.adata.obs["perturbation"] == "control"][:7].copy()
    cf = tiny_trained.counterfactual(cells, ["silence:SIM_P1", "P2_DRV1"])
    assert cf.n_obs == 14
    assert list(cf.obs["bw_intervention"].unique()) == ["silence:SIM_P1", "P2_DRV1"]
    assert cf.layers["delta"].shape == cf.shape
    eff = cf.uns["bioworld"]["entity_effects"]["silence:SIM_P1"]  # DataFrame entity, shift, share
    assert set(eff["entity"]) == set(tiny_trained.entity_names)
    assert list(eff["shift"]) == sorted(eff["shift"], reverse=True)
    # same genes in another order -> reordered, same answer
    rev = cells[:, cells.var_names[::-1]].copy()
    cf2 = tiny_trained.counterfactual(rev, ["P2_DRV1"])
    assert np.allclose(cf2.X, cf[cf.obs["bw_intervention"] == "P2_DRV1"].X, atol=1e-5)
    with pytest.raises(DataValidationError, match="different gene panel"):
        tiny_trained.counterfactual(cells[:, 1:].copy(), ["P2_DRV1"])


def test_entity_latents_shape(tiny_trained, small_sim):
    z = tiny_trained.get_entity_latents(small_sim.adata[:5].copy())
    assert z.shape == (5, len(tiny_trained.entity_names), tiny_trained.model_config.latent_dim)


def test_holdout_cells_are_never_sampled_for_training(small_sim, monkeypatch):
    """The sampler train() builds never draws a held-out cell as a training target."""
    import bioworld.train as bwtrain
    from _helpers import sim_entities

    holdout = sorted(lab for lab in small_sim.adata.obs["perturbation"].unique() if lab != "control")[:2]
    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                       holdout=holdout, nmf_programs=0, config={"max_steps": 5, "seed": 0, "warmup_steps": 1})
    captured = {}

    class Stop(Exception):
        pass

    def spy_fit(module, sampler, cfg, **kw):
        captured["sampler"] = sampler
        raise Stop

    monkeypatch.setattr(bwtrain, "fit", spy_fit)
    with pytest.raises(Stop):
        wm.train(progress=False)
    held = np.isin(wm._labels, holdout)
    held_rows = {r.tobytes() for r in wm._X[held]}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        seen |= {r.tobytes() for r in captured["sampler"].sample(rng)["x_tgt"].numpy()}
    assert not seen & held_rows  # no held-out cell is ever a training target
    assert seen - {r.tobytes() for r in wm._X[wm._labels == wm.control]}  # (perturbed training cells are)


def test_unknown_holdout_label_is_refused(small_sim):
    from _helpers import sim_entities

    with pytest.raises(DataValidationError, match="holdout"):
        bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), holdout=["NOPE"], nmf_programs=0)


def test_loading_a_model_from_another_bioworld_version_states_both(tiny_trained, tmp_path):
    from bioworld.train.checkpoint import META

    d = tiny_trained.save(tmp_path / "m")
    meta = json.loads((d / META).read_text())
    meta["bioworld_version"] = "0.0.1"
    from bioworld.train.checkpoint import meta_digest

    meta["meta_sha256"] = meta_digest(meta)  # as that version would have written it
    (d / META).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"written by bioworld 0\.0\.1 and is loaded by bioworld " + bw.__version__.replace(".", r"\.")):
        bw.WorldModel.load(d)


def test_collapse_monitor_stops_training_with_a_clear_message(small_sim):
    from _helpers import sim_entities

    from bioworld.errors import TrainingError

    # a threshold above any real spread makes every step look collapsed: the monitor must stop
    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                       nmf_programs=0, config={"max_steps": 20, "collapse_std": 1e6, "collapse_patience": 3,
                                               "warmup_steps": 2})
    with pytest.raises(TrainingError, match=r"latent collapse at step 3: .* for 3 steps"):
        wm.train(progress=False)
    # a normal threshold trains through the same steps
    wm.train(progress=False, collapse_std=1e-3, max_steps=5)
    assert wm.train_result.steps == 5


def test_predict_is_the_population_mean_of_counterfactual(tiny_trained, small_sim):
    cells = small_sim.adata[small_sim.adata.obs["perturbation"] == "control"][:20].copy()
    specs = ["silence:SIM_P2", "P1_DRV1"]
    pred = tiny_trained.predict(specs, cells=cells)
    cf = tiny_trained.counterfactual(cells, specs)
    for s in specs:
        rows = cf[cf.obs["bw_intervention"] == s]
        assert np.allclose(pred[s].X.ravel(), rows.X.mean(0), atol=1e-5)
        assert np.allclose(pred[s].layers["delta"].ravel(), rows.layers["delta"].mean(0), atol=1e-5)


def test_training_fit_reports_how_well_training_effects_are_reproduced(tiny_trained):
    wm = tiny_trained
    fit = wm.training_fit(max_perturbations=5)
    assert list(fit.columns) == ["perturbation", "n_cells", "observed_norm_top20", "pearson_top20", "magnitude_ratio_top20"]
    assert len(fit) == 5 and set(fit["perturbation"]) <= set(wm.train_labels) and "control" not in set(fit["perturbation"])
    assert (fit["n_cells"].diff().dropna() <= 0).all()  # most cells first
    # the first row recomputed from the data and predict(): observed vs predicted on the 20 most moved genes
    lab = fit["perturbation"].iloc[0]
    obs = (wm._X[wm._labels == lab].mean(0) - wm._X[wm._labels == wm.control].mean(0)).astype(np.float64) * wm.sd
    top = np.argsort(-np.abs(obs), kind="stable")[:20]
    pred = np.asarray(wm.predict([lab]).layers["delta"][0], dtype=np.float64)
    row = fit.iloc[0]
    assert row["observed_norm_top20"] == pytest.approx(np.linalg.norm(obs[top]), rel=1e-5)
    assert row["magnitude_ratio_top20"] == pytest.approx(np.linalg.norm(pred[top]) / np.linalg.norm(obs[top]), rel=1e-5)
    assert row["pearson_top20"] == pytest.approx(np.corrcoef(obs[top], pred[top])[0, 1], abs=1e-6)
    summary = wm.meta["training_fit"]  # stored after train(), saved with the model
    assert summary["n_perturbations"] == min(64, len(wm.train_labels) - 1)
    assert summary["strong_effects"] and 0 <= summary["strong_median_magnitude_ratio"]


def test_training_fit_needs_the_training_data(tiny_trained, tmp_path):
    import pytest

    from bioworld.errors import BioworldError

    tiny_trained.save(tmp_path / "m")
    back = bw.WorldModel.load(tmp_path / "m")
    assert back.meta["training_fit"] == tiny_trained.meta["training_fit"]
    with pytest.raises(BioworldError, match="needs the training data in memory"):
        back.training_fit()


def test_training_targets_in_no_entity_are_learned_unseen_ones_without_knowledge_refused():
    """A screen where 2 targets are in no pathway: they are trained (own embedding from the observed
    effect) and predicted; an unseen gene without any knowledge is refused with the reason."""
    from _helpers import small_simulation

    from bioworld.entities import Entity, EntitySet

    sim = small_simulation(seed=1)
    drop = {"P1_DRV1", "P3_DRV1"}
    ents = EntitySet([Entity(n, tuple(g for g in genes if g not in drop), tuple(1.0 for g in genes if g not in drop), "sim")
                      for n, genes in sim.gmt.items()])
    wm = bw.WorldModel(sim.adata.copy(), entities=ents, replicate_key="replicate", nmf_programs=0,
                       config={"max_steps": 120, "seed": 0, "warmup_steps": 10})
    assert drop <= set(wm.gene_bank) and not any(wm.gene_features.knows(g) for g in drop)
    assert any("learned from their observed effect alone" in f for f in wm.findings)
    wm.train(progress=False)
    fit = wm.training_fit().set_index("perturbation")
    for g in drop:  # learned: the prediction follows the observed training effect
        assert fit.loc[g, "pearson_top20"] > 0.6, fit.loc[g]
        assert fit.loc[g, "magnitude_ratio_top20"] > 0.2, fit.loc[g]
    pred = wm.predict(sorted(drop) + ["P1_DRV1+P2_DRV2"])
    assert np.isfinite(pred.X).all() and np.abs(pred.layers["delta"]).max() > 0
    with pytest.raises(UnknownPerturbationError, match="was not a training target and is in no entity"):
        wm.predict(["NOTAGENE"])


def test_training_is_sized_to_the_data_and_stops_early_on_held_in_cells(small_sim, monkeypatch):
    from bioworld.train import validation as V

    # steps: epochs over the perturbed training cells, clamped
    assert V.auto_steps(14_000, 96, epochs=3, min_steps=150, cap=800) == 438
    assert V.auto_steps(341, 96, epochs=3, min_steps=150, cap=800) == 150
    assert V.auto_steps(10**6, 96, epochs=3, min_steps=150, cap=800) == 800
    # many groups with few samples each (a plate of wells): sized by the draws per group
    assert V.auto_steps(341, 96, epochs=3, min_steps=150, cap=800, n_groups=300, groups_per_batch=8,
                        group_visits=10) == 375
    assert V.auto_steps(14_000, 96, epochs=3, min_steps=150, cap=800, n_groups=20, groups_per_batch=8,
                        group_visits=10) == 438  # few groups: the cells decide
    # held-in cells: a share of each perturbation with enough cells, none from small ones
    rows = np.repeat([0, 1, 2], [40, 30, 5])
    val = V.split_held_in(rows, [1, 2], fraction=0.1, min_cells=20, seed=0)
    assert val[rows == 1].sum() == 3 and not val[rows == 0].any() and not val[rows == 2].any()
    assert np.array_equal(val, V.split_held_in(rows, [1, 2], fraction=0.1, min_cells=20, seed=0))

    calls, states = [], []

    def flat(module):  # validation error never improves after the first pass -> stop after `patience` more
        calls.append(1)
        states.append({k: v.clone() for k, v in module.state_dict().items()})
        return 1.0

    monkeypatch.setattr(V.HeldInValidation, "__call__", lambda self, module: flat(module))
    from _helpers import sim_entities

    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate", nmf_programs=0,
                       config={"seed": 0, "min_steps": 20, "eval_every": 5, "patience": 1, "early_stop_after": 0.0})
    assert wm.train_config.max_steps == 0  # default: sized to the data
    wm.train(progress=False)
    # calls before min_steps (5, 10, 15) never compete for the best weights: best at step 20, then one
    # pass without improvement (patience 1) stops it before the sized end
    assert wm.train_result.steps == 25 and len(calls) == 5  # sized to 30 steps here
    # by default no early stop before 3/4 of the sized steps (Papalexi seeds stopped at 200 of 442 and failed)
    late = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                         nmf_programs=0, config={"seed": 0, "min_steps": 20, "eval_every": 5, "patience": 3,
                                                 "step_cap": 80, "auto_epochs": 100.0})
    calls.clear()
    late.train(progress=False)
    assert late.train_result.steps == 75  # sized 80 (many epochs, capped): best from 0.75 * 80 on, then patience
    got = wm.module.state_dict()
    assert all(torch.equal(got[k], states[3][k]) for k in got)  # the best pass at the floor is kept, not step 5's
    assert not all(torch.equal(got[k], states[0][k]) for k in got)
    exact = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                          nmf_programs=0, config={"seed": 0, "max_steps": 30, "eval_every": 5, "patience": 1})
    calls.clear()
    exact.train(progress=False)
    assert exact.train_result.steps == 30 and not calls  # an explicit max_steps: exactly that, no early stop


def test_combinations_are_anchored_on_the_observed_single_effects(tiny_trained, tmp_path):
    wm = tiny_trained
    pair = next(lab for lab in wm.train_labels if "+" in lab)
    a, b = pair.split("+")
    anchored = wm.predict([pair, a, b]).layers["delta"]
    effects = wm.single_effects
    try:
        wm.single_effects, wm._engine = {}, None
        raw = wm.predict([pair, a, b]).layers["delta"]  # the model alone
    finally:
        wm.single_effects, wm._engine = effects, None
    assert np.allclose(anchored[1:], raw[1:])  # singles stay the model's own answer
    obs = {lab: row * wm.sd for lab, row in effects.values()}
    wm.module.use_interaction = False
    try:
        plain = wm.predict([pair]).layers["delta"][0]  # anchored, additive latent slots: exactly additive
    finally:
        wm.module.use_interaction = True
    assert np.allclose(plain, obs[a] + obs[b], atol=1e-4)
    assert np.allclose(anchored[0], obs[a] + obs[b] + (raw[0] - _raw_plain(wm, pair)), atol=1e-4)
    assert not np.allclose(anchored[0], raw[0], atol=1e-3)
    wm.save(tmp_path / "m")
    back = bw.WorldModel.load(tmp_path / "m")
    assert np.allclose(back.predict([pair]).layers["delta"], anchored[:1], atol=1e-6)


def test_untrained_combinations_get_the_shrunk_mean_departure_of_the_trained_ones(tiny_trained, tmp_path):
    wm = tiny_trained
    held = next(lab for lab in wm.holdout if "+" in lab)
    trained = [lab for lab in wm.train_labels if "+" in lab]
    assert trained and wm.meta["combination_prior_n"] == len(trained)
    # the prior from the data, independently of the code under test
    X, labels = wm._data.X, wm._data.labels
    ctrl = X[labels == wm.control].mean(0)
    obs = {lab: X[labels == lab].mean(0) - ctrl for lab in set(labels)}
    dep = np.mean([obs[lab] - sum(obs[c] for c in lab.split("+")) for lab in trained], axis=0)
    n = len(trained)
    assert np.allclose(wm.combination_prior, dep * n / (n + 1), atol=1e-5)
    a, b = held.split("+")
    got = wm.predict([held]).layers["delta"][0]
    assert np.allclose(got, (obs[a] + obs[b] + dep * n / (n + 1)) * wm.sd, atol=1e-4)  # not the learned term
    # a trained combination keeps its learned interaction term (test above), and the prior survives save/load
    wm.save(tmp_path / "m")
    back = bw.WorldModel.load(tmp_path / "m")
    assert np.allclose(back.combination_prior, wm.combination_prior)
    assert np.allclose(back.predict([held]).layers["delta"][0], got, atol=1e-6)
    prior, wm.combination_prior, wm._engine = wm.combination_prior, None, None
    try:  # without a prior: the learned term, so the answer differs
        assert not np.allclose(wm.predict([held]).layers["delta"][0], got, atol=1e-4)
    finally:
        wm.combination_prior, wm._engine = prior, None


def _raw_plain(wm, label):
    """The model's own mean change for ``label`` with the interaction term off, not anchored."""
    effects, wm.single_effects, wm._engine = wm.single_effects, {}, None
    wm.module.use_interaction = False
    try:
        return wm.predict([label]).layers["delta"][0]
    finally:
        wm.single_effects, wm._engine = effects, None
        wm.module.use_interaction = True
