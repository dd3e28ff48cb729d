"""Atlas design options screened for issue #11 (all off by default): the ranked-gene loss and the look-alikes'
residual input ``zr``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioworld.model.atlas import AtlasBatch, AtlasConfig, AtlasNet, masked_row_pearson, row_pearson


def test_masked_row_pearson_reads_only_the_masked_genes():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 30, generator=g), torch.randn(4, 30, generator=g)
    mask = torch.zeros(4, 30, dtype=torch.bool)
    mask[:, :12] = True
    r = masked_row_pearson(pred, target, mask)
    torch.testing.assert_close(r, row_pearson(pred[:, :12], target[:, :12]))
    wild = pred.clone()
    wild[:, 12:] = 1e3 * torch.randn(4, 18, generator=g)  # unmasked genes do not count
    torch.testing.assert_close(masked_row_pearson(wild, target, mask), r)
    torch.testing.assert_close(masked_row_pearson(pred, target, torch.ones_like(mask)), row_pearson(pred, target))


def test_ranked_loss_mixes_the_two_correlations():
    cfg = AtlasConfig(n_genes=30, n_contexts=2, knowledge_dim=0, basis_dim=4)
    net = AtlasNet(cfg).eval()
    g = torch.Generator().manual_seed(1)
    b = AtlasBatch(torch.randn(3, 30, generator=g), torch.ones(3), torch.randn(3, 30, generator=g),
                   torch.randn(3, 30, generator=g), torch.zeros(3, dtype=torch.long), torch.zeros(3, 0))
    target = torch.randn(3, 30, generator=g)
    mask = torch.rand(3, 30, generator=g) > 0.5
    pred = net(b)
    want = 1 - (0.25 * row_pearson(pred, target) + 0.75 * masked_row_pearson(pred, target, mask))
    torch.testing.assert_close(net.loss(b, target, mask, 0.75), want.mean())
    torch.testing.assert_close(net.loss(b, target), (1 - row_pearson(pred, target)).mean())
    with pytest.raises(ValueError, match="ranked-gene mask"):
        net.loss(b, target, None, 0.5)


def test_ranked_loss_bounds():
    from bioworld.errors import BioworldError
    from bioworld.train.pretrain import PretrainConfig

    with pytest.raises(BioworldError, match="ranked_loss"):
        PretrainConfig(ranked_loss=1.5)


def test_residual_input_enters_with_its_gain_and_is_required():
    cfg = AtlasConfig(n_genes=20, n_contexts=2, knowledge_dim=0, basis_dim=4, neighbour_residual=True)
    net = AtlasNet(cfg).eval()
    g = torch.Generator().manual_seed(2)
    b = AtlasBatch(torch.randn(2, 20, generator=g), torch.ones(2), torch.randn(2, 20, generator=g),
                   torch.randn(2, 20, generator=g), torch.zeros(2, dtype=torch.long), torch.zeros(2, 0),
                   zr=torch.randn(2, 20, generator=g))
    torch.testing.assert_close(net(b), b.zc + b.zk)  # zero-initialised head: starts at the baseline
    with torch.no_grad():
        net.mlp[-1].bias[net.n_gains - 1] = 0.5  # the residual's gain
    torch.testing.assert_close(net(b), b.zc + b.zk + 0.5 * b.zr)
    b.zr = None
    with pytest.raises(ValueError, match="needs zr"):
        net(b)


@pytest.fixture(scope="module")
def atlas():
    from bioworld.knowledge import load_atlas

    return load_atlas()


def test_residuals_are_look_alikes_deviations_without_the_rows_own_signature(atlas):
    from bioworld.eval.atlas import atlas_split
    from bioworld.knowledge import zscore_rows
    from bioworld.train.pretrain import NEIGHBOUR_K, _Inputs

    train, test = atlas_split(atlas, frac=0.05, seed=0)
    inp = _Inputs(atlas, train, atlas.basis(16, rows=train, seed=0), residual=True)
    rows = np.concatenate([train[:3], test[:3]])
    zc, has_c, zk, _ = inp.for_rows(rows)
    zr = inp.residuals(zc, has_c, zk, inp.key_id[rows], inp.ctx_id[rows])
    # E of a training row: its signature minus its key's z-scored mean over its other training rows
    r = train[0]
    others = train[(inp.key_id[train] == inp.key_id[r]) & (train != r)]
    np.testing.assert_allclose(inp.E[r], inp.Z[r] - zscore_rows(inp.Z[others].mean(0)), atol=1e-4)
    assert not inp.E[test].any()  # withheld rows never enter
    # by hand for one row: the top-K look-alikes in its context, softmax-weighted, minus the context mean
    i = 4
    q = zc[i] @ inp.basis
    cand = inp.ctx_rows[inp.ctx_id[rows[i]]]
    cand = cand[inp.key_id[cand] != inp.key_id[rows[i]]]
    sims = inp.key_unit[inp.key_id[cand]] @ (q / np.linalg.norm(q))
    top = np.argsort(-sims)[:NEIGHBOUR_K]
    w = np.exp((sims[top] - sims[top].max()) / 0.1)
    np.testing.assert_allclose(zr[i], (w / w.sum()) @ inp.E[cand[top]] - zk[i], atol=1e-4)
    # a training row's own signature does not reach its zr: replace it and its zr stays (its zk, zc are left-one-out)
    from bioworld.knowledge import SignatureAtlas

    X = atlas.X.copy()
    X[rows[0]] = X[rows[0]][::-1]
    other = SignatureAtlas(X, atlas.obs, atlas.genes)
    inp2 = _Inputs(other, train, inp.basis, residual=True)
    zc2, h2, zk2, _ = inp2.for_rows(rows[:1])
    np.testing.assert_allclose(zc2, zc[:1], atol=1e-5)
    zr2 = inp2.residuals(zc2, h2, zk2, inp.key_id[rows[:1]], inp.ctx_id[rows[:1]])
    np.testing.assert_allclose(zr2[0], zr[0], atol=1e-4)
    assert not np.allclose(inp2.E[rows[0]], inp.E[rows[0]])  # (while its own E did change)
    with pytest.raises(ValueError, match="residual=True"):
        _Inputs(atlas, train, inp.basis).residuals(zc, has_c, zk, inp.key_id[rows], inp.ctx_id[rows])


@pytest.mark.slow  # ~20 s on the shared 2-core machine
def test_residual_model_survives_save_and_load(atlas, tmp_path):
    from bioworld.eval.atlas import atlas_split
    from bioworld.train.pretrain import AtlasModel, PretrainConfig, pretrain_atlas

    train, test = atlas_split(atlas, frac=0.05, seed=0)
    cfg = PretrainConfig(steps=3, batch_size=16, basis_dim=8, use_knowledge=False, neighbour_residual=True,
                         ranked_loss=0.5, seed=1)
    model = pretrain_atlas(atlas=atlas, train_rows=train, config=cfg, progress=False)
    assert model.module.cfg.neighbour_residual and model.inputs.E is not None
    loaded = AtlasModel.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(model.predict_rows(test[:4]), loaded.predict_rows(test[:4]))
    ctx, key = atlas.obs["context"].iloc[test[0]], atlas.obs["key"].iloc[test[0]]
    np.testing.assert_allclose(loaded.predict([key], ctx), model.predict([key], ctx), atol=1e-6)
