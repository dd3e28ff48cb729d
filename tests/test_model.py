"""The pure torch JEPA: shapes (incl. batch size 1), EMA, losses, cis effect, predictor init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioworld.actions import ActionArrays, Kind
from bioworld.data.collate import EntityMaskCollator, MaskingConfig, TransitionSampler
from bioworld.model import JEPA, JEPAConfig
from bioworld.model.jepa import ActionBatch, JEPABatch, energy_distance

G, E, F, A = 30, 6, 8, 2


def _module(seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    M = (rng.random((E, G)) < 0.3).astype(np.float32)
    M[np.arange(E), np.arange(E)] = 1.0  # every entity has at least one gene
    cfg = JEPAConfig(n_genes=G, n_entities=E, gene_feature_dim=F, latent_dim=16, token_dim=4, n_heads=2)
    return JEPA(cfg, torch.from_numpy(M))


def _actions(B, gene=None):
    kind = torch.zeros(B, A, dtype=torch.long)
    kind[:, 0] = Kind.KO
    return ActionBatch(
        kind=kind, strength=torch.ones(B, A), gene_feat=torch.randn(B, A, F), cmp_feat=torch.zeros(B, A, 0),
        log_dose=torch.zeros(B, A), entity_idx=torch.full((B, A), -1), touch=torch.rand(B, A, E),
        target_gene=torch.full((B, A), -1 if gene is None else gene, dtype=torch.long),
        bank_idx=torch.full((B, A), -1, dtype=torch.long), cmp_idx=torch.full((B, A), -1, dtype=torch.long),
    )


@pytest.mark.parametrize("B", [1, 5])
def test_shapes(B):
    m = _module()
    x = torch.randn(B, G)
    z = m.encode(x)
    assert z.shape == (B, E, 16)
    assert m.encode_target(x).shape == (B, E, 16)
    zn = m.next(z, _actions(B))
    assert zn.shape == (B, E, 16)
    assert m.readout(zn).shape == (B, G)
    assert m.readout_scores(zn).shape == (B, E)


def test_predictor_starts_as_identity_on_visible_slots():
    m = _module()
    z = m.encode(torch.randn(4, G))
    assert torch.allclose(m.next(z, _actions(4)), z)
    ctx = torch.ones(4, E, dtype=torch.bool)
    ctx[:, 0] = False
    out = m.next(z, _actions(4), context_mask=ctx)
    assert torch.allclose(out[:, 1:], z[:, 1:]) and torch.allclose(out[:, 0], torch.zeros_like(out[:, 0]))


def test_clamp_sets_slot_value():
    m = _module()
    z = m.encode(torch.randn(3, G))
    slots = torch.zeros(3, E, dtype=torch.bool)
    slots[:, 2] = True
    values = torch.randn(3, E, 16)
    out = m.next(z, _actions(3), clamp=(slots, values))
    assert torch.allclose(out[:, 2], values[:, 2])


def test_ema_update_moves_target_towards_online():
    m = _module()
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target_encoder.parameters()]
    m.ema_update(0.9)
    for b, t, o in zip(before, m.target_encoder.parameters(), m.encoder.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    assert not any(p.requires_grad for p in m.target_encoder.parameters())


def test_cis_effect_is_multiplicative_on_the_target_column_only():
    m = _module()
    with torch.no_grad():
        m.cis_effect[Kind.KO] = float(np.log(0.25 / 0.75)) / 10.0  # keep 25 % of the transcript
    x = torch.zeros(2, G)
    x[0, 7], x[1, 7] = float(np.log1p(8.0)), 0.0  # 8 molecules vs none (gene_mean 0, sd 1)
    out = m.cis(_actions(2, gene=7), x)
    assert out[0, 7].item() == pytest.approx(np.log1p(2.0) - np.log1p(8.0), abs=1e-5)
    assert out[1, 7].item() == pytest.approx(0.0, abs=1e-7)  # nothing to knock out
    assert float(out.abs().sum()) == pytest.approx(abs(out[0, 7].item()), abs=1e-6)
    assert float(m.cis(_actions(2), x).abs().sum()) == 0.0  # target not on the panel


def _two_group_batch(B: int = 8) -> JEPABatch:
    """Two transition groups of 3 cells and 2 self pairs; the first two slots hidden from the context."""
    ctx = torch.ones(B, E, dtype=torch.bool)
    ctx[:, :2] = False
    return JEPABatch(x_src=torch.randn(B, G), x_tgt=torch.randn(B, G), action=_actions(B), context_mask=ctx,
                     target_mask=~ctx, gene_mask=torch.zeros(B, G, dtype=torch.bool),
                     group=torch.tensor([0, 0, 0, 1, 1, 1, -1, -1]))


def test_loss_terms_finite_and_gradients_reach_encoder_not_target():
    m = _module()
    batch = _two_group_batch()
    out = m.loss(batch)
    assert set(out.terms) >= {"latent", "expr", "energy", "recon", "variance", "covariance"}
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.total.backward()
    assert m.encoder.gene_proj.grad is not None and m.encoder.gene_proj.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.target_encoder.parameters())


def test_energy_distance_zero_for_identical_sets_and_positive_for_shifted():
    a = torch.randn(50, 4)
    assert float(energy_distance(a, a)) == pytest.approx(0.0, abs=1e-5)
    assert float(energy_distance(a, a + 3.0)) > 1.0


def test_group_mean_effect_term_scores_the_mean_change_not_cell_noise():
    from bioworld.model.jepa import LossWeights, _group_terms

    g = torch.randn(40, G)
    group = torch.tensor([0] * 20 + [1] * 10 + [-1] * 10)
    # cells scattered around the right group means: no mean-effect error, whatever the cell noise
    pred = g.clone()
    pred[:20] = g[:20] + torch.randn(20, G)
    pred[:20] += g[:20].mean(0) - pred[:20].mean(0)
    pred[20:30] = g[20:30].flip(0)  # same cells in another order: same mean
    _, effect = _group_terms(pred, g, group, with_effect=True)
    assert float(effect) == pytest.approx(0.0, abs=1e-10)
    # a shift of group 1's mean by 0.5 on every gene: (0 + 0.25) / 2 groups; control rows (-1) never count
    shifted = pred.clone()
    shifted[20:30] += 0.5
    shifted[30:] += 100.0
    _, effect = _group_terms(shifted, g, group, with_effect=True)
    assert float(effect) == pytest.approx(0.125, rel=1e-5)
    assert float(_group_terms(shifted, g, group, with_effect=False)[1]) == 0.0
    # a group of 2 distinct wells drawn 6 times each: its mean averages out little noise -> weight 2/4
    wells = torch.randn(2, G).repeat(6, 1)
    _, few = _group_terms(wells + 0.5, wells, torch.zeros(12, dtype=torch.long), with_effect=True)
    assert float(few) == pytest.approx(0.25 * 2 / 4, rel=1e-5)
    # in the loss: its weight adds exactly weight x term to the total
    m = _module()
    batch = _two_group_batch()
    off, on = m.loss(batch, LossWeights(effect=0.0)), m.loss(batch, LossWeights(effect=2.0))
    assert float(on.terms["effect"]) > 0 and float(off.terms["effect"]) == 0.0
    assert float(on.total - off.total) == pytest.approx(2.0 * float(on.terms["effect"]), rel=1e-4)


def _table(n_actions, rng):
    kind = np.zeros((n_actions, A), np.int64)
    kind[1:, 0] = Kind.KO
    touch = np.zeros((n_actions, A, E), np.float32)
    touch[1:, 0, 1] = 1.0
    return ActionArrays(kind=kind, strength=np.ones((n_actions, A), np.float32),
                        gene_feat=rng.normal(size=(n_actions, A, F)).astype(np.float32),
                        cmp_feat=np.zeros((n_actions, A, 0), np.float32), log_dose=np.zeros((n_actions, A), np.float32),
                        entity_idx=np.full((n_actions, A), -1), touch=touch, target_gene=np.full((n_actions, A), -1),
                        bank_idx=np.full((n_actions, A), -1), cmp_idx=np.full((n_actions, A), -1))


def test_collator_entity_masking_hides_whole_slots_and_structured_hides_touched():
    rng = np.random.default_rng(0)
    col = EntityMaskCollator(E, G, MaskingConfig(mode="entity", structured_prob=1.0, transition_ratio=(0.0, 0.0)))
    touch = np.zeros((4, E), np.float32)
    touch[:2, 1] = 1.0
    out = col(touch, np.array([False, False, True, True]), rng)
    ctx, tgt = out["context_mask"].numpy(), out["target_mask"].numpy()
    assert not ctx[0, 1] and not ctx[1, 1]  # touched slot hidden in perturbation pairs
    assert ctx[0].sum() == E - 1
    assert tgt[:2].all()  # perturbation pairs score every slot
    assert (tgt[2:] == ~ctx[2:]).all() and (~ctx[2:]).sum(1).min() >= 1  # self pairs score hidden slots
    assert not out["gene_mask"].numpy().any()
    gene = EntityMaskCollator(E, G, MaskingConfig(mode="gene"))(touch, np.array([True] * 4), rng)
    assert gene["context_mask"].numpy().all() and gene["gene_mask"].numpy().any()


def test_sampler_pairs_controls_within_replicate_and_respects_holdout():
    rng = np.random.default_rng(0)
    N = 200
    X = rng.normal(size=(N, G)).astype(np.float32)
    rows = np.repeat([0, 1, 2, 3], 50)
    rep = np.tile([0, 1], 100)
    s = TransitionSampler(X, rows, 0, rep, _table(4, rng), [1, 2], EntityMaskCollator(E, G, MaskingConfig()),
                          groups_per_batch=3, cells_per_group=5, self_pairs=4)
    for _ in range(5):
        b = s.sample(rng)
        kinds = b["action"].kind[:, 0].numpy()
        # action row 3 is held out: its cells never appear as targets
        tgt = b["x_tgt"].numpy()
        held = X[rows == 3]
        assert not any(np.allclose(t, h) for t in tgt for h in held)
        assert b["x_src"].shape == b["x_tgt"].shape == (19, G)
        assert (kinds[-4:] == 0).all()  # self pairs carry the control action


def test_retrieval_excludes_own_row_and_mixes_neighbours():
    from bioworld.model.jepa import ActionEncoder

    cfg = JEPAConfig(n_genes=G, n_entities=E, gene_feature_dim=3, latent_dim=4, n_heads=2, gene_bank_size=3,
                     retrieval_temperature=0.01)
    enc = ActionEncoder(cfg)
    with torch.no_grad():
        enc.bank_feat.copy_(torch.eye(3))
        enc.bank_emb.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4))
    feat = torch.tensor([[[1.0, 0.9, 0.0]]])
    # an unseen target close to bank rows 0 and 1 -> mostly row 0
    assert torch.allclose(enc.retrieve(feat, torch.tensor([[-1]])), enc.bank_emb[0], atol=1e-2)
    # the same target *is* bank row 0 -> its own row is excluded, row 1 (the next most similar) wins
    assert torch.allclose(enc.retrieve(feat, torch.tensor([[0]])), enc.bank_emb[1], atol=1e-2)


def test_a_trained_compound_dose_adds_its_own_embedding_and_an_untrained_one_reads_its_features_only():
    from bioworld.model.jepa import ActionEncoder

    base = dict(n_genes=G, n_entities=E, gene_feature_dim=3, compound_feature_dim=5, latent_dim=4, n_heads=2)
    torch.manual_seed(0)
    plain = ActionEncoder(JEPAConfig(**base))
    torch.manual_seed(0)
    enc = ActionEncoder(JEPAConfig(**base, compound_bank_size=2))
    # zero at init and no random draws: the other weights are those of an encoder without the bank
    assert torch.equal(enc.cmp_own, torch.zeros(2, 4)) and not hasattr(plain, "cmp_own")
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in plain.state_dict().items())
    with torch.no_grad():
        enc.cmp_own.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]]))
    n = 3
    act = ActionBatch(
        kind=torch.tensor([[Kind.COMPOUND, Kind.PAD]] * n), strength=torch.ones(n, 2), gene_feat=torch.zeros(n, 2, 3),
        cmp_feat=torch.randn(1, 2, 5).expand(n, 2, 5).clone(), log_dose=torch.zeros(n, 2),
        entity_idx=torch.full((n, 2), -1), touch=torch.zeros(n, 2, E), target_gene=torch.full((n, 2), -1),
        bank_idx=torch.full((n, 2), -1), cmp_idx=torch.tensor([[1, -1], [-1, -1], [0, -1]]))
    enc.eval()
    u = enc(act)
    # the same features and dose: a trained compound-dose differs from an untrained one by its own row times
    # compound_embedding_scale exactly
    k = enc.cfg.compound_embedding_scale
    assert k == 10.0
    assert torch.allclose(u[0, 0] - u[1, 0], k * enc.cmp_own[1]) and torch.allclose(u[2, 0] - u[1, 0], k * enc.cmp_own[0])
    assert torch.allclose(u[1], plain.eval()(act)[1])  # untrained: the fingerprint / knowledge path only
    enc.train()
    torch.manual_seed(1)
    drops = [bool(torch.allclose(enc(act)[0, 0], u[1, 0])) for _ in range(40)]
    assert 5 < sum(drops) < 35  # dropped about own_embedding_dropout of the time while training
    act.cmp_feat.zero_()  # no features at all: the own embedding is all there is, never dropped
    assert all(not torch.allclose(enc(act)[0, 0], enc(act)[1, 0]) for _ in range(20))


def test_a_group_smaller_than_cells_per_group_is_drawn_fewer_times():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, G)).astype(np.float32)
    rows = np.array([0] * 30 + [1] + [2] * 2 + [3] * 7)  # control 30 cells, groups of 1, 2 and 7 cells
    coll = EntityMaskCollator(E, G, MaskingConfig())

    def drawn(share):
        s = TransitionSampler(X, rows, 0, np.zeros(40, np.int64), _table(4, np.random.default_rng(0)), [1, 2, 3], coll,
                              groups_per_batch=4, cells_per_group=12, self_pairs=2, small_group_share=share)
        b = s.sample(np.random.default_rng(1))
        kinds = b["action"].kind[:, 0].numpy()
        group = b["group"].numpy()
        return {int(rows[np.flatnonzero((X == b["x_tgt"][np.flatnonzero(group == g)[0]].numpy()).all(1))[0]]):
                int((group == g).sum()) for g in np.unique(group[group >= 0])}, len(kinds)

    half, n_half = drawn(0.5)
    # max(cells, 6) draws below 12 cells; self pairs shrink in proportion (2 x 31 / 48 -> 1)
    assert half == {0: 12, 1: 6, 2: 6, 3: 7} and n_half == 31 + 1
    full, n_full = drawn(1.0)
    assert full == {0: 12, 1: 12, 2: 12, 3: 12} and n_full == 48 + 2


def test_do_transitions_clamp_touched_slots_and_withhold_the_action():
    rng = np.random.default_rng(0)
    N = 200
    X = rng.normal(size=(N, G)).astype(np.float32)
    rows = np.repeat([0, 1, 2, 3], 50)
    rep = np.tile([0, 1], 100)
    coll = EntityMaskCollator(E, G, MaskingConfig())
    kw = dict(groups_per_batch=3, cells_per_group=5, self_pairs=4)
    plain = TransitionSampler(X, rows, 0, rep, _table(4, rng), [1, 2, 3], coll, **kw)
    assert "clamp_mask" not in plain.sample(np.random.default_rng(1))  # off by default: streams unchanged
    s = TransitionSampler(X, rows, 0, rep, _table(4, np.random.default_rng(0)), [1, 2, 3], coll, clamp_prob=1.0, **kw)
    b = s.sample(np.random.default_rng(1))
    cm = b["clamp_mask"].numpy()
    is_self = b["group"].numpy() < 0
    # perturbation pairs became do()-transitions on the touched slot (1) only; self pairs and the
    # control group (touches nothing) never
    assert cm[:, 1].sum() >= 5 and not cm[:, [0, 2, 3, 4, 5]].any() and not cm[is_self].any()
    cell = [int(np.flatnonzero((X == t).all(1))[0]) for t in b["x_tgt"].numpy()]
    perturbed = rows[cell] != 0
    assert (cm[:, 1] == (perturbed & ~is_self)).all()
    assert (b["action"].kind[:, 0].numpy() == 0).all()  # the action is withheld (control)
    # the clamped slot carries the target latent exactly and is not scored by the latent loss
    m = _module()
    batch = JEPABatch(x_src=b["x_src"], x_tgt=b["x_tgt"], action=b["action"],
                      context_mask=b["context_mask"], target_mask=b["target_mask"], gene_mask=b["gene_mask"],
                      group=b["group"], clamp_mask=b["clamp_mask"])
    out = m.loss(batch)
    assert torch.isfinite(out.total)
    with torch.no_grad():
        z_tgt = m.encode_target(batch.x_tgt)
        z_hat = m.next(m.encode(batch.x_src), batch.action, clamp=(batch.clamp_mask, z_tgt))
    c = torch.from_numpy(cm[:, 1])
    torch.testing.assert_close(z_hat[c, 1], z_tgt[c, 1])


def test_combinations_start_additive_in_latent_slots_and_the_interaction_term_departs():
    m = _module()
    torch.nn.init.normal_(m.predictor.head.weight, std=0.3)  # a predictor that moves latents
    B = 3
    z = m.encode(torch.randn(B, G))
    ab = _actions(B)
    ab.kind[:, 1] = Kind.KO
    ab.gene_feat[:, 1] = torch.randn(B, F)
    only = []
    for j in range(2):
        a = ActionBatch(**{k: getattr(ab, k).clone() for k in ab.__dataclass_fields__})
        a.kind[:, 1 - j] = 0
        a.touch[:, 1 - j] = 0
        only.append(a)
    ctrl = ActionBatch(**{k: getattr(ab, k).clone() for k in ab.__dataclass_fields__})
    ctrl.kind[:] = 0
    ctrl.touch[:] = 0
    with torch.no_grad():
        base = m.next(z, ctrl)
        za, zb, zab = m.next(z, only[0]), m.next(z, only[1]), m.next(z, ab)
        assert (za - base).abs().max() > 1e-2 and (zb - base).abs().max() > 1e-2
        assert torch.allclose(zab, base + (za - base) + (zb - base), atol=1e-5)  # additive by construction
        torch.nn.init.normal_(m.predictor.interaction_head.weight, std=0.3)  # a learned interaction
        zab2 = m.next(z, ab)
        assert (zab2 - zab).abs().max() > 1e-2
        assert torch.allclose(m.next(z, only[0]), za)  # singles never use the interaction term
        m.cfg = m.cfg.__class__(**{**m.cfg.to_dict(), "additive_combinations": False})
        assert not torch.allclose(m.next(z, ab), base + (za - base) + (zb - base), atol=1e-3)  # joint pass only


def test_target_latents_encode_distinct_rows_once_with_the_same_answer(monkeypatch):
    """A plate batch (one well drawn many times, a few control wells) is encoded on its distinct rows only;
    the latents match a per-row pass. Batches of mostly distinct cells keep the one full pass."""
    from bioworld.model.jepa import TARGET_DISTINCT_SHARE

    m = _module()
    wells, ctrl = torch.randn(2, G), torch.randn(3, G)
    x_tgt = torch.cat([wells.repeat_interleave(6, 0), ctrl[[0, 1, 2, 0]]])  # 12 transitions + 4 self pairs
    x_src = torch.cat([ctrl[torch.arange(12) % 3], ctrl[[0, 1, 2, 0]]])
    seen = []
    real = m.encode_target
    monkeypatch.setattr(m, "encode_target", lambda x: seen.append(x.shape[0]) or real(x))
    z_tgt, z_src = m._target_latents(x_tgt, x_src)
    assert seen == [5]  # 2 wells + 3 control wells, not 16 targets + 12 sources
    assert torch.allclose(z_tgt, real(x_tgt), atol=1e-5) and torch.allclose(z_src, real(x_src), atol=1e-5)
    seen.clear()
    x_tgt, x_src = torch.randn(16, G), torch.randn(16, G)
    x_src[12:] = x_tgt[12:]  # self pairs reuse the target's encoding
    x_tgt[1] = x_tgt[0]  # one repeat: 27 distinct of 28 rows > TARGET_DISTINCT_SHARE
    assert 27 > TARGET_DISTINCT_SHARE * 28
    z_tgt, z_src = m._target_latents(x_tgt, x_src)
    assert seen == [28]
    full = real(torch.cat([x_tgt, x_src[:12]]))
    assert torch.equal(z_tgt, full[:16]) and torch.equal(z_src[:12], full[16:]) and torch.equal(z_src[12:], full[12:16])
