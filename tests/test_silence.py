"""silence: as a do-operation along each entity's activity axis; routing of trained vs untrained silences."""

from __future__ import annotations

import numpy as np
import pytest

import bioworld as bw
from bioworld.query import ActivityAxes, inactive_inputs


def test_activity_axes_orient_unsigned_sets_and_keep_signed_weights():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 1))
    # entity 0 (unsigned set): genes 0 and 2 rise with the activity, gene 1 is repressed by it
    X = np.hstack([a + 0.1 * rng.normal(size=(400, 1)), -a + 0.1 * rng.normal(size=(400, 1)), a,
                   rng.normal(size=(400, 2))]).astype(np.float32)
    M = np.zeros((2, 5), np.float32)
    M[0, :3] = 1.0
    M[1, 3:] = [2.0, -1.0]  # signed weights: used as they are
    ax = ActivityAxes.fit(X, M, quantile=0.01)
    assert ax.axis[0, 0] > 0 and ax.axis[0, 2] > 0 and ax.axis[0, 1] < 0
    np.testing.assert_allclose(ax.axis[1, 3:], np.array([2.0, -1.0]) / np.sqrt(5.0), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ax.axis, axis=1), 1.0, rtol=1e-6)
    off = inactive_inputs(X, ax, 0)
    d = (off - X).mean(0)
    assert d[0] < -1 and d[2] < -1 and d[1] > 1  # activated members fall, the repressed one rises
    np.testing.assert_array_equal(off[:, 3:], X[:, 3:])  # genes outside the entity untouched
    # every cell ends at the inactive level (1st percentile of the reference projections)
    np.testing.assert_allclose(off @ ax.axis[0], np.quantile(X @ ax.axis[0], 0.01), atol=1e-4)


def test_unsigned_set_without_a_dominant_direction_moves_every_member_down_alike():
    rng = np.random.default_rng(1)
    # 6 members that barely co-vary (as the Hallmark IFN-gamma genes among Papalexi control cells):
    # their first principal component is a near-random direction, so it must not be the axis
    X = rng.normal(size=(500, 6)).astype(np.float32)
    M = np.ones((1, 6), np.float32)
    ax = ActivityAxes.fit(X, M, quantile=0.01)
    np.testing.assert_allclose(ax.axis[0], np.full(6, 1 / np.sqrt(6)), rtol=1e-6)
    # ... but a member that is clearly anti-correlated with the others still rises when the set is off
    a = rng.normal(size=(500, 1))
    Y = np.hstack([0.2 * a + rng.normal(size=(500, 5)), -0.5 * a + rng.normal(size=(500, 1))]).astype(np.float32)
    ay = ActivityAxes.fit(Y, M, quantile=0.01)
    s = np.linalg.svd(Y - Y.mean(0), compute_uv=False)
    assert s[0] ** 2 < 1.5 * s[1] ** 2  # no dominant PC: the sign rule decides
    np.testing.assert_allclose(ay.axis[0], np.array([1, 1, 1, 1, 1, -1]) / np.sqrt(6), rtol=1e-6)


def test_trained_silence_is_the_learned_action_untrained_is_a_do_operation(small_sim):
    from _helpers import sim_entities

    labels = list(small_sim.adata.obs["perturbation"].cat.categories)
    sil = sorted(lab for lab in labels if lab.startswith("silence:"))
    held = sil[0]
    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                       holdout=[held], nmf_programs=0, config={"max_steps": 3, "warmup_steps": 1})
    wm.train(progress=False)
    acts = [wm.parse(held), wm.parse(sil[1])]
    clamp = wm.engine.candidates(acts).clamp
    assert np.flatnonzero(clamp[0]).tolist() == [wm.entity_names.index(held[len("silence:"):])]
    assert not clamp[1].any()
    # the do-operation answer moves the silenced slot the most
    cf = wm.counterfactual(small_sim.adata[small_sim.adata.obs["perturbation"] == "control"][:30].copy(), [held])
    effects = cf.uns["bioworld"]["entity_effects"][held]
    assert effects["entity"].iloc[0] == held[len("silence:"):]


def test_do_operation_adds_what_the_other_slots_read_from_the_moved_genes(tiny_trained, small_sim):
    import torch

    from bioworld.query import Candidates
    from bioworld.query._counterfactual import silence_terms

    wm, m = tiny_trained, tiny_trained.module
    eng = wm.engine
    x = wm.reference[:25]
    with torch.no_grad():
        z = m.encode(torch.from_numpy(x))
        # only slot 0 differs -> nothing to add beyond the clamp
        z_only = z.clone()
        z_only[:, 0] += 1.0
        xt = torch.from_numpy(x)
        t0 = silence_terms(m, z, z_only, 0, xt, xt)
        assert float(t0.dz.abs().max()) == 0.0 and float(t0.dx.abs().max()) == 0.0
        xi = inactive_inputs(x, eng.axes, 1)
        zi = m.encode(torch.from_numpy(xi))
        t = silence_terms(m, z, zi, 1, xt, torch.from_numpy(xi))
        assert float(t.dz[:, 1].abs().max()) == 0.0  # the clamped slot itself is not double counted
        members = eng.axes.axis[1] != 0
        np.testing.assert_array_equal(t.pinned.numpy(), members)  # the do() touches exactly the members
        assert float(t.dz.abs().max()) > 0.0  # the encoder reads the other slots in context
    clamp = np.zeros((2, len(wm.entity_names)), bool)
    clamp[0, 1] = True
    cache = eng.encode(x)
    r = eng.run(cache, Candidates(["do1", "control"], wm.space.encode(["control", "control"]), clamp))
    with torch.no_grad():
        slots = torch.zeros(len(x), len(wm.entity_names), dtype=torch.bool)
        slots[:, 1] = True
        a = wm.space.encode(["control"]).take(np.zeros(len(x), dtype=np.int64))
        xb = torch.from_numpy(x)
        clamped = m.expression_from(m.next(z, a, clamp=(slots, zi)), a, xb, m.encode_target(xb)).numpy()
    x_base = cache.x_base.numpy()
    np.testing.assert_allclose(r.x_pred[0][:, ~members], (clamped + t.dx.numpy())[:, ~members], atol=1e-5)
    np.testing.assert_allclose(x_base, r.x_pred[1], atol=1e-6)
    # the intervened genes are set by the do(), not predicted: their change is exactly the move
    np.testing.assert_allclose((r.x_pred[0] - x_base)[:, members], (xi - x)[:, members], atol=1e-5)


def test_intervention_template_slope_scale_and_noise_shrinkage():
    import pytest

    from bioworld.errors import BioworldError
    from bioworld.query._counterfactual import intervention_template

    axis = np.array([1.0, 0.0, 0.0, 0.0])  # the entity is gene 0
    # two interventions moved the entity by -1 and -2; gene 1 follows at 0.5 per unit, gene 2 is noise
    # within its sampling error, gene 3 follows at -1 but its means are too noisy to tell
    effects = np.array([[-1.0, -0.5, 0.01, 1.0], [-2.0, -1.0, -0.01, 2.0]])
    noise = np.array([[1e-4, 1e-4, 1e-2, 100.0], [1e-4, 1e-4, 1e-2, 100.0]])
    move = np.array([-3.0, 0.0, 0.0, 0.0])
    r = intervention_template(axis, move, effects, noise)
    # slope of gene 1 = (1*0.5 + 2*1) / 5 = 0.5, se^2 = (1 + 4) * 1e-4 / 25: shrink ~1 -> 0.5 * -3
    assert r[1] == pytest.approx(-1.5, rel=1e-3)
    assert r[2] == 0.0  # slope (-0.01+0.02)/5 = 0.002, se^2 = 0.002 >> 0.002^2: shrunk to 0
    assert r[3] == 0.0  # slope -1, se^2 = 500/25 = 20 > 1: shrunk to 0
    assert r[0] == pytest.approx(-3.0, rel=1e-3)  # the entity's own axis gene: slope 1
    # without noise the slope is exact; without interventions nothing moves
    np.testing.assert_allclose(intervention_template(axis, move, effects, np.zeros_like(noise))[3], 3.0)
    np.testing.assert_array_equal(intervention_template(axis, move, np.zeros((0, 4)), np.zeros((0, 4))), 0.0)
    with pytest.raises(BioworldError, match="Fix"):
        intervention_template(axis, move, effects, noise[:, :3])


def test_intervention_template_delta_on_the_simulator():

    from bioworld.eval.causal import intervention_template_delta, leak_ratio

    sim, parent, lab, wm = _sim_with_held_out_silence({"max_steps": 1, "checkpoint_every": 0, "num_threads": 1})
    d = intervention_template_delta(wm, parent)  # no training needed
    genes = list(wm.genes)
    truth = sim.truth_delta.loc[lab, genes].to_numpy()
    desc = sorted(sim.descendants(parent))
    desc_genes = [genes.index(g) for p in desc for g in sim.gmt[p]]
    assert np.corrcoef(d, truth)[0, 1] > 0.8
    assert np.abs(d[desc_genes]).mean() > 0.3 * np.abs(truth[desc_genes]).mean()  # it propagates
    assert leak_ratio(d, genes, sim.gmt, parent, desc)["leak_ratio"] < 0.2
    assert all(d[genes.index(g)] == 0.0 for g in genes if g.startswith("OTHER")) or \
        np.abs(d[[genes.index(g) for g in genes if g.startswith("OTHER")]]).mean() < 0.1 * np.abs(d).max()


def test_validate_head_leave_one_out_weight_and_scores_hand_computed():
    from bioworld.query._response import validate_head

    axis = np.array([1.0, 0.0, 0.0, 0.0])  # the entity is gene 0; genes 1-3 are scored
    move = np.array([-3.0, 0.0, 0.0, 0.0])
    effects = np.array([[-1.0, 1.0, -1.0, 0.0], [-2.0, 3.0, -1.0, 0.0]])  # moved the entity by -1 and -2
    noise = np.zeros_like(effects)  # exact slopes, no shrinkage
    latent = np.array([-3.0, -1.0, 1.0, 0.0])
    w, v_head, v_lat = validate_head(axis, move, effects, noise, latent)
    # leave out 1: slope of 2 = [-1.5, 0.5, 0] per unit, predicts [1.5, -0.5, 0] for 1 (observed [1, -1, 0]);
    # leave out 2: slope of 1 = [-1, 1, 0], predicts [2, -2, 0] for 2 (observed [3, -1, 0])
    assert w == pytest.approx((2.0 + 8.0) / (2.5 + 8.0))
    assert v_head == pytest.approx(2.0 * np.sqrt(3.0 / 13.0))  # both Pearsons are 0.9608
    assert v_lat == pytest.approx((-1.0 - 2.0 * np.sqrt(3.0 / 13.0)) / 2.0)  # the latent pattern is reversed
    # fewer than two acting perturbations: nothing to validate on
    assert validate_head(axis, move, effects[:1], noise[:1], latent) == (0.0, 0.0, 0.0)
    # predictions orthogonal to what was observed: the weight is clipped at 0
    w0, _, _ = validate_head(axis, move, np.array([[-1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0]]), noise, latent)
    assert w0 == 0.0


def _with_heads(wm, heads: dict[str, np.ndarray]):
    wm.silence_heads = heads
    wm._engine = None
    return wm


def test_engine_answers_a_silence_with_its_head_per_cell(tiny_trained, small_sim):
    import torch

    from bioworld.query import Candidates

    wm = tiny_trained
    x = wm.reference[:20]
    e = 1
    members = wm.engine.axes.axis[e] != 0
    slope = np.where(members, 0.0, np.random.default_rng(0).normal(size=len(wm.genes))).astype(np.float32)
    clamp = np.zeros((1, len(wm.entity_names)), bool)
    clamp[0, e] = True
    do = Candidates(["do1"], wm.space.encode(["control"]), clamp)
    latent = wm.engine.run(wm.engine.encode(x), do).x_pred[0]
    try:
        eng = _with_heads(wm, {wm.entity_names[e]: slope}).engine
        cache = eng.encode(x)
        r = eng.run(cache, do)
        x_base = cache.x_base.numpy()
        moved = eng.axes.inactive(x, e)
        s = (moved - x) @ eng.axes.axis[e]  # each cell's own move along the activity axis
        want = np.where(members, moved - x, s[:, None] * slope[None])
        np.testing.assert_allclose(r.x_pred[0] - x_base, want, atol=1e-5)
        assert np.abs(r.x_pred[0] - latent)[:, ~members].max() > 1e-3  # not the latent path's answer
        # the latent shifts are how the encoder reads the answer's cells against the unperturbed prediction
        with torch.no_grad():
            read = wm.module.encode(torch.from_numpy(r.x_pred[0])) - wm.module.encode(cache.x_base)
        np.testing.assert_allclose(r.shift[0], read.norm(dim=-1).numpy() / eng.slot_scale, atol=1e-4)
        assert r.shift[0][:, e].min() > 0.0
    finally:
        _with_heads(wm, {})


def test_untrained_silence_with_a_head_agrees_in_predict_counterfactual_and_prioritize(small_sim):
    from _helpers import sim_entities

    labels = list(small_sim.adata.obs["perturbation"].cat.categories)
    held = sorted(lab for lab in labels if lab.startswith("silence:"))[0]
    ent = held[len("silence:"):]
    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                       holdout=[held], nmf_programs=0, config={"max_steps": 3, "warmup_steps": 1})
    wm.train(progress=False)
    e = wm.entity_names.index(ent)
    members = wm.engine.axes.axis[e] != 0
    slope = np.where(members, 0.0, np.linspace(-1, 1, len(wm.genes))).astype(np.float32)
    _with_heads(wm, {ent: slope})
    cells = small_sim.adata[small_sim.adata.obs["perturbation"] == "control"][:10].copy()
    cf = wm.counterfactual(cells, [held])
    pred = wm.predict([held], cells=cells)
    np.testing.assert_allclose(pred.layers["delta"][0], cf.layers["delta"].mean(0), atol=1e-5)
    other = wm.entity_names[(e + 1) % len(wm.entity_names)]
    pr = wm.prioritize(cells, f"down:{other}", entities=[ent], genes=[], compounds=[], pairs=False, n_boot=10)
    w = wm.module.encoder.score_w[wm.entity_names.index(other)].detach().numpy()
    np.testing.assert_allclose(pr.per_cell_scores[held], -((np.asarray(cf.layers["delta"]) / wm.sd) @ w), atol=1e-4)
    # the head's answer, on the model's scale
    x = wm._cells_to_std(cells)
    s = (wm.engine.axes.inactive(x, e) - x) @ wm.engine.axes.axis[e]
    np.testing.assert_allclose(cf.layers["delta"][:, ~members], (s[:, None] * slope[None] * wm.sd)[:, ~members],
                               atol=1e-4)


def test_fit_silence_heads_on_a_simulation_and_through_the_checkpoint(tmp_path):
    import json

    from bioworld.errors import CheckpointError

    sim, parent, lab, wm = _sim_with_held_out_silence({"max_steps": 3, "warmup_steps": 1, "checkpoint_every": 0},
                                                      train=True)
    rows = {r["entity"]: r for r in wm.meta["silence_heads"]}
    assert set(rows) == {parent}  # only the untrained silence; every other silence is a learned action
    drivers = [g for g in sim.gmt[parent] if str(g) in set(wm.train_labels)]
    assert rows[parent]["n_acting"] == len(drivers) >= 2  # the knockouts of its members act on it
    assert rows[parent]["used"] and 0.5 < rows[parent]["weight"] <= 1.0  # a 3-step latent model validates worse
    genes = list(wm.genes)
    truth = sim.truth_delta.loc[lab, genes].to_numpy()
    d = wm.predict([lab]).layers["delta"][0]
    assert np.corrcoef(d, truth)[0, 1] > 0.85
    wm.save(tmp_path / "m")
    back = bw.WorldModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.silence_heads[parent], wm.silence_heads[parent])
    np.testing.assert_allclose(back.predict([lab]).layers["delta"][0], d, atol=1e-5)
    meta = json.loads((tmp_path / "m" / "bioworld.json").read_text())
    meta["silence_head_entities"] = []
    (tmp_path / "m" / "bioworld.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="silence_head"):
        bw.WorldModel.load(tmp_path / "m")


def _sim_with_held_out_silence(config: dict, *, train: bool = False):
    """A small simulated screen (4 pathways, edge 0.9) with the silence of a pathway that has
    descendants held out: ``(sim, parent, label, model)``, the model trained when ``train``."""
    import warnings

    from bioworld.data import simulate
    from bioworld.eval.benchmark import _sim_entities

    sim = simulate(seed=0, n_pathways=4, genes_per_pathway=8, n_other_genes=6, n_cells_per_condition=80,
                   n_control_cells=300, doubles=0, n_truth_draws=2000, edge_prob=0.9)
    parent = next(p for p in sim.pathways if sim.descendants(p))
    lab = f"silence:{parent}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(sim.adata, entities=_sim_entities(sim.gmt), replicate_key="replicate", nmf_programs=0,
                           holdout=[lab], config=config)
        if train:
            wm.train(progress=False)
    return sim, parent, lab, wm
