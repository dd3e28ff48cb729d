"""Atlas module, pretraining, checkpoints and the context-transfer split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bioworld.errors import BioworldError, CheckpointError, UnknownPerturbationError
from bioworld.model.atlas import AtlasBatch, AtlasConfig, AtlasNet, row_pearson


def _batch(B: int, G: int, F: int, seed: int = 0) -> AtlasBatch:
    g = torch.Generator().manual_seed(seed)
    return AtlasBatch(torch.randn(B, G, generator=g), torch.ones(B), torch.randn(B, G, generator=g),
                      torch.randn(B, G, generator=g), torch.arange(B) % 3, torch.randn(B, F, generator=g))


@pytest.mark.parametrize("B", [1, 5])
def test_atlas_net_starts_at_compound_plus_context(B):
    cfg = AtlasConfig(n_genes=40, n_contexts=3, knowledge_dim=7, basis_dim=8)
    net = AtlasNet(cfg, torch.randn(40, 8)).eval()
    b = _batch(B, 40, 7)
    out = net(b)
    assert out.shape == (B, 40)
    torch.testing.assert_close(out, b.zc + b.zk)  # zero-initialised head: the baseline is the start
    b.has_c[:] = 0
    torch.testing.assert_close(net(b), b.zk)  # no signature elsewhere: zc and zn are not used


def test_atlas_net_unseen_context_and_no_knowledge():
    cfg = AtlasConfig(n_genes=20, n_contexts=2, knowledge_dim=0, basis_dim=4)
    net = AtlasNet(cfg)
    b = _batch(3, 20, 0)
    b.ctx[:] = -1
    loss = net.loss(b, torch.randn(3, 20))
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="basis has shape"):
        AtlasNet(cfg, torch.randn(5, 4))


def test_row_pearson():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    b = torch.tensor([[2.0, 4.0, 6.5], [3.0, 2.0, 1.0]])
    r = row_pearson(a, b)
    assert r[0] > 0.99 and r[1] < -0.99


# ------------------------------------------------------------------------------ pretraining
@pytest.fixture(scope="module")
def small_model():
    from bioworld.eval.atlas import atlas_split
    from bioworld.knowledge import load_atlas
    from bioworld.train.pretrain import PretrainConfig, pretrain_atlas

    atlas = load_atlas()
    train, test = atlas_split(atlas, frac=0.05, seed=0)
    cfg = PretrainConfig(steps=25, batch_size=32, use_knowledge=False, seed=3)
    return pretrain_atlas(atlas=atlas, train_rows=train, config=cfg, progress=False), test


def test_pretraining_is_deterministic_and_learns(small_model):
    from bioworld.knowledge import load_atlas
    from bioworld.train.pretrain import pretrain_atlas

    model, test = small_model
    atlas = load_atlas()
    again = pretrain_atlas(atlas=atlas, train_rows=np.setdiff1d(np.arange(len(atlas.obs)), test),
                           config=model.config, progress=False)
    np.testing.assert_array_equal(model.predict_rows(test[:5]), again.predict_rows(test[:5]))
    assert model.meta["final_loss"] < 0.9  # 1 - Pearson: well below "no relation" after 25 steps


def test_atlas_model_save_load_roundtrip_and_tamper(small_model, tmp_path):
    from bioworld.train.pretrain import AtlasModel

    model, test = small_model
    model.save(tmp_path / "m")
    loaded = AtlasModel.load(tmp_path / "m")
    np.testing.assert_array_equal(model.predict_rows(test[:4]), loaded.predict_rows(test[:4]))
    p1 = model.predict(["cmp:trametinib", "kd:MYC"], "A498")
    np.testing.assert_array_equal(p1, loaded.predict(["cmp:trametinib", "kd:MYC"], "A498"))
    assert p1.shape == (2, len(model.genes))
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m" / "atlas.json").stat().st_mode & 0o777 == 0o666 & ~umask
    w = tmp_path / "m" / "atlas.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-3] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="changed after saving"):
        AtlasModel.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds no atlas model"):
        AtlasModel.load(tmp_path / "nothing")


def test_atlas_predict_refuses_unknown_context(small_model):
    model, _ = small_model
    with pytest.raises(UnknownPerturbationError, match="context 'Nowhere' is not in the atlas"):
        model.predict(["cmp:trametinib"], "Nowhere")


def test_pretrain_config_validated():
    from bioworld.train.pretrain import PretrainConfig

    with pytest.raises(BioworldError, match="steps"):
        PretrainConfig(steps=0)
    with pytest.raises(BioworldError, match="drop_signature"):
        PretrainConfig(drop_signature=1.5)


def test_atlas_split_withholds_only_multi_context_compounds():
    from bioworld.eval.atlas import atlas_split
    from bioworld.knowledge import load_atlas

    atlas = load_atlas()
    train, test = atlas_split(atlas, frac=0.1, seed=1)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(atlas.obs)
    obs = atlas.obs
    assert (obs["kind"].iloc[test] == "compound").all()
    # every withheld compound is still measured in some training context (transfer, not unseen)
    assert set(obs["key"].iloc[test]) <= set(obs["key"].iloc[train])
    assert not np.array_equal(test, atlas_split(atlas, frac=0.1, seed=2)[1])


def test_scores_use_the_observed_extremes():
    from bioworld.eval.atlas import score_signatures

    y = np.array([[2.0, 1.0, 0.0, 0.0, -1.0, -2.0]])
    perfect = score_signatures(np.array([[5.0, 4.0, 9.0, -9.0, 1.0, 0.0]]), y)
    assert perfect["spearman"].iloc[0] == pytest.approx(1.0)  # order of the ranked genes only
    assert perfect["pearson"].iloc[0] < 0.9  # the unranked genes count for Pearson
    json.dumps(perfect.to_dict())


# ------------------------------------------------------------------------------------ CLI
def test_cli_pretrain_writes_a_loadable_model_and_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from bioworld.cli import app
    from bioworld.train.pretrain import AtlasModel

    runner = CliRunner()
    out = tmp_path / "atlas"
    r = runner.invoke(app, ["pretrain", "--out", str(out), "--steps", "2", "--seed", "1", "--no-knowledge", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "pretrained on" in r.output and (out / "atlas.json").is_file()
    m = AtlasModel.load(out)
    assert m.config.seed == 1 and m.config.steps == 2 and not m.config.use_knowledge
    again = runner.invoke(app, ["pretrain", "--out", str(out), "--steps", "2", "--no-knowledge", "--quiet"])
    assert again.exit_code == 2 and "already holds an atlas model" in again.output and "--overwrite" in again.output
    bad = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "b"), "--steps", "0", "--quiet"])
    assert bad.exit_code == 2 and "--steps 0" in bad.output
    neg = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "c"), "--seed", "-1", "--quiet"])
    assert neg.exit_code == 2 and "--seed -1" in neg.output
