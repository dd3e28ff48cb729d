"""Local entity attention (JEPAConfig.slot_block): the same function as dense attention over the allowed keys,
masking and the do-operation keep working, slot order deterministic, old checkpoints stay dense."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bioworld.model.jepa import _Attention, slot_order


def _reference(att: _Attention, x: torch.Tensor, pad: torch.Tensor | None, w: int, E: int) -> torch.Tensor:
    """Dense attention of every token over an explicit key set: slot blocks (cyclic neighbours), a pooled key, extras."""
    B, T, C = x.shape
    h = att.h
    q, k, v = att.qkv(x).view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4)
    pad = torch.zeros(B, T, dtype=torch.bool) if pad is None else pad
    vis = (~pad[:, :E]).float()
    wt = vis / vis.sum(1, keepdim=True).clamp_min(1.0)
    kp = torch.einsum("bhec,be->bhc", k[:, :, :E], wt)[:, :, None]
    vp = torch.einsum("bhec,be->bhc", v[:, :, :E], wt)[:, :, None]
    keys, vals = torch.cat([k, kp], 2), torch.cat([v, vp], 2)  # [B, h, T + 1, c]
    nb = math.ceil(E / w)
    allow = torch.zeros(T, T + 1, dtype=torch.bool)
    for i in range(E):
        bi = i // w
        for j in range(E):
            if (j // w - bi) % nb in (0, 1, nb - 1):
                allow[i, j] = True
        allow[i, T] = True  # pooled
        allow[i, E:T] = True  # extra tokens
    allow[E:, :T] = True  # extras: dense
    mask = allow[None, None] & torch.cat([~pad, torch.ones(B, 1, dtype=torch.bool)], 1)[:, None, None, :]
    mask[:, :, E:, T] = False  # extras do not see the pooled key
    y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
    return att.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize(("E", "X", "w"), [(40, 0, 8), (37, 2, 8), (50, 1, 16)])
def test_local_attention_is_dense_attention_over_its_keys(E, X, w):
    torch.manual_seed(0)
    att = _Attention(16, 4, 0.0)
    x = torch.randn(3, E + X, 16)
    pad = torch.zeros(3, E + X, dtype=torch.bool)
    pad[1, 3:20] = True  # hidden context slots
    pad[2, : E - 1] = True  # all slots but one hidden: rows stay finite (the pooled key)
    if X:
        pad[0, E + X - 1] = True  # a padded component
    for p in (None, pad):
        got = att(x, p, local=(w, E))
        assert torch.isfinite(got).all()
        ref = _reference(att, x, p, w, E)
        rows = torch.ones(3, E + X, dtype=torch.bool) if p is None else ~p
        torch.testing.assert_close(got[rows], ref[rows], rtol=1e-5, atol=1e-5)


def test_hidden_slots_do_not_leak_into_visible_ones():
    torch.manual_seed(0)
    att = _Attention(16, 2, 0.0)
    E = 48
    x = torch.randn(2, E + 1, 16)
    pad = torch.zeros(2, E + 1, dtype=torch.bool)
    pad[:, 5:9] = True
    y = att(x, pad, local=(8, E))
    x2 = x.clone()
    x2[:, 6] += 10.0
    y2 = att(x2, pad, local=(8, E))
    vis = ~pad[0]
    assert (y2[:, vis] - y[:, vis]).abs().max() == 0
    assert (y2[:, 6] - y[:, 6]).abs().max() > 0  # its own output does change (it is a query)


def test_slot_order_puts_overlapping_slots_together_and_is_deterministic():
    G = 60
    m = torch.zeros(12, G)
    # three families of 4 overlapping sets, interleaved in index order
    for i in range(12):
        fam = i % 3
        m[i, fam * 20: fam * 20 + 10 + i // 3] = 1.0
    order = slot_order(m)
    assert sorted(order.tolist()) == list(range(12))
    fams = [int(i) % 3 for i in order]
    assert sum(a != b for a, b in zip(fams, fams[1:])) == 2  # each family contiguous
    assert torch.equal(order, slot_order(m.clone()))


def _tiny_jepa(E: int, block: int, dense_max: int):
    from bioworld.model import JEPA, JEPAConfig

    torch.manual_seed(0)
    G = 30
    member = (torch.rand(E, G) < 0.2).float()
    cfg = JEPAConfig(n_genes=G, n_entities=E, gene_feature_dim=4, slot_block=block, dense_max_slots=dense_max)
    return JEPA(cfg, member), cfg


def test_config_switches_local_attention_by_slot_count():
    from bioworld.errors import BioworldError
    from bioworld.model import JEPAConfig

    m, cfg = _tiny_jepa(60, 8, 32)
    assert cfg.sparse_slots and m.encoder.order.numel() == 60 and m.target_encoder.order.numel() == 60
    assert "encoder.order" not in m.state_dict()  # rebuilt from the membership, not stored
    m2, cfg2 = _tiny_jepa(60, 8, 128)
    assert not cfg2.sparse_slots and m2.encoder.local() is None
    assert not JEPAConfig(n_genes=3, n_entities=600, gene_feature_dim=1, slot_block=0).sparse_slots
    d = cfg.to_dict()
    del d["slot_block"]  # a checkpoint written before local attention: it attended densely
    assert JEPAConfig.from_dict(d).slot_block == 0
    with pytest.raises(BioworldError, match="slot_block"):
        JEPAConfig(n_genes=3, n_entities=6, gene_feature_dim=1, slot_block=-1)


def test_masking_and_do_operation_on_local_attention():
    from bioworld.actions._contract import ActionBatch, Kind

    m, cfg = _tiny_jepa(60, 8, 32)
    torch.nn.init.normal_(m.predictor.head.weight, std=0.1)  # zero at init ("no change"): make changes visible
    m.eval()
    B, E, D = 4, 60, cfg.latent_dim
    x = torch.randn(B, cfg.n_genes)
    ctx = torch.ones(B, E, dtype=torch.bool)
    ctx[:, 10:30] = False
    z = m.encode(x, ctx)
    assert z.shape == (B, E, D) and torch.isfinite(z).all()
    A = 2
    act = ActionBatch(kind=torch.full((B, A), Kind.PAD, dtype=torch.long), strength=torch.ones(B, A),
                      gene_feat=torch.zeros(B, A, 4), cmp_feat=torch.zeros(B, A, 0), log_dose=torch.zeros(B, A),
                      entity_idx=torch.full((B, A), -1), touch=torch.zeros(B, A, E), target_gene=torch.full((B, A), -1),
                      bank_idx=torch.full((B, A), -1), cmp_idx=torch.full((B, A), -1))
    act.kind[:, 0] = Kind.SILENCE
    act.entity_idx[:, 0] = 3
    act.touch[:, 0, 3] = 1.0
    slots = torch.zeros(B, E, dtype=torch.bool)
    slots[:, 3] = True
    values = torch.randn(B, E, D)
    z_next = m.next(z, act, context_mask=ctx, clamp=(slots, values))
    assert torch.isfinite(z_next).all()
    torch.testing.assert_close(z_next[:, 3], values[:, 3])  # do(slot := value) holds
    # the clamped value propagates to other slots (through blocks and the pooled key)
    z_alt = m.next(z, act, context_mask=ctx, clamp=(slots, values + 1.0))
    assert (z_alt[:, 40] - z_next[:, 40]).abs().max() > 0


def test_world_model_with_local_attention_trains_saves_and_loads(small_sim, tmp_path, monkeypatch):
    import warnings

    import numpy as np

    import bioworld as bw
    from bioworld.entities import Entity, EntitySet

    rng = np.random.default_rng(0)
    genes = [str(g) for g in small_sim.adata.var_names]
    sets = dict(small_sim.gmt)
    while len(sets) < 40:
        sets[f"RANDOM_{len(sets)}"] = [genes[i] for i in rng.choice(len(genes), 8, replace=False)]
    ents = EntitySet([Entity(n, tuple(g), tuple(1.0 for _ in g), "test") for n, g in sets.items()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(small_sim.adata.copy(), entities=ents, replicate_key="replicate", nmf_programs=0,
                           knowledge=False, config={"max_steps": 3, "warmup_steps": 1},
                           model_config={"slot_block": 4, "dense_max_slots": 0})
        wm.train(progress=False)
    assert wm.model_config.sparse_slots and wm.module.encoder.order.numel() == len(wm.entity_names)
    labels = [lab for lab in small_sim.adata.obs["perturbation"].astype(str).unique() if lab != "control"][:3]
    labels.append(f"silence:{next(iter(small_sim.gmt))}")
    before = wm.predict(labels).layers["delta"]
    wm.save(tmp_path / "m")
    loaded = bw.WorldModel.load(tmp_path / "m")
    assert loaded.model_config.slot_block == 4
    np.testing.assert_array_equal(loaded.predict(labels).layers["delta"], before)
    # the query engine runs fewer rows per pass when there are many slots (memory ~ rows x slots); same answers
    import bioworld.query.engine as engine

    assert loaded.engine.rows_per_pass == engine.ROWS_PER_PASS  # up to 128 slots: unchanged
    monkeypatch.setattr(engine, "SLOT_ROWS_PER_PASS", 7 * 128)
    assert loaded.engine.rows_per_pass == 7
    np.testing.assert_allclose(loaded.predict(labels).layers["delta"], before, rtol=1e-5, atol=1e-6)
