"""Knowledge retrieval in the atlas module: related perturbations' signatures in the query's context."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def atlas():
    from bioworld.knowledge import load_atlas

    return load_atlas()


@pytest.fixture(scope="module")
def kb():
    from bioworld.knowledge import KnowledgeBase

    return KnowledgeBase()


def test_key_relations_are_jaccard_of_targets_plus_same_mechanism(kb):
    ck = kb.compounds
    with_t = [k for k in ck.keys if len(ck.targets(k)) >= 1 and ck.moa(k)]
    a = with_t[0]
    gene = ck.targets(a)[0]
    others = [k for k in ck.compounds_targeting(gene) if k != a][:3]
    keys = [f"cmp:{a}", *(f"cmp:{k}" for k in others), f"kd:{gene}", "kd:NOT_A_GENE_XYZ"]
    rel = kb.key_relations(keys, keys)
    assert rel.shape == (len(keys), len(keys))
    assert np.all(np.diag(rel) == 0)  # never related to itself
    for j, k in enumerate(others, start=1):
        ta, tb = set(ck.targets(a)), set(ck.targets(k))
        same = float(ck.moa(a).strip().lower() == ck.moa(k).strip().lower())
        assert rel[0, j] == pytest.approx(len(ta & tb) / len(ta | tb) + same, abs=1e-6)
        assert rel[0, j] > 0  # they share ``gene``
    assert rel[0, len(others) + 1] == pytest.approx(1 / len(ck.targets(a)), abs=1e-6)  # its target's knockdown
    assert np.all(rel[-1] == 0) and np.all(rel[:, -1] == 0)  # an unknown gene relates to nothing


def test_key_relations_follow_the_shuffled_targets_ablation(kb):
    from bioworld.knowledge import KnowledgeBase, KnowledgeConfig

    keys = [f"cmp:{k}" for k in kb.compounds.keys if kb.compounds.targets(k)][:200]
    sh = KnowledgeBase(KnowledgeConfig(shuffle=("targets",)), atlas=kb.atlas)
    a, b = kb.key_relations(keys, keys), sh.key_relations(keys, keys)
    assert (a > 0).sum() > 0 and not np.array_equal(a > 0, b > 0)


def test_related_input_is_the_relation_weighted_mean_in_the_context(atlas, kb):
    from bioworld.eval.atlas import unseen_compound_split
    from bioworld.knowledge import zscore_rows
    from bioworld.train.pretrain import _Inputs

    train, test = unseen_compound_split(atlas, frac=0.1, seed=0)
    inputs = _Inputs(atlas, train, atlas.basis(8, rows=train, seed=0))
    rel = kb.key_relations(inputs.keys, inputs.keys)
    rows = test[:40]
    zt, has_t = inputs.related(rel[inputs.key_id[rows]], inputs.ctx_id[rows])
    in_train = np.zeros(len(atlas.obs), bool)
    in_train[train] = True
    assert has_t.sum() > 0 and (has_t == 0).sum() >= 0
    for i, r in enumerate(rows):
        cand = np.flatnonzero(in_train & (inputs.ctx_id == inputs.ctx_id[r]))
        w = rel[inputs.key_id[r], inputs.key_id[cand]]
        assert w[inputs.key_id[cand] == inputs.key_id[r]].sum() == 0  # its own key carries no weight
        if w.sum() == 0:
            assert has_t[i] == 0 and not zt[i].any()
        else:
            np.testing.assert_allclose(zt[i], zscore_rows(w @ inputs.Z[cand] / w.sum()), atol=1e-4)


def test_knowledge_retrieval_needs_knowledge():
    from bioworld.errors import BioworldError
    from bioworld.train.pretrain import PretrainConfig

    with pytest.raises(BioworldError, match="needs use_knowledge=True"):
        PretrainConfig(knowledge_retrieval=True, use_knowledge=False)


@pytest.mark.slow  # ~30 s on the shared 2-core machine
def test_knowledge_retrieval_model_survives_save_and_load_and_predicts_new_names(atlas, tmp_path):
    from bioworld.eval.atlas import unseen_compound_split
    from bioworld.train.pretrain import AtlasModel, PretrainConfig, pretrain_atlas

    train, test = unseen_compound_split(atlas, frac=0.1, seed=0)
    cfg = PretrainConfig(steps=3, batch_size=16, basis_dim=8, knowledge_retrieval=True, seed=1)
    model = pretrain_atlas(atlas=atlas, train_rows=train, config=cfg, progress=False)
    assert model.module.cfg.knowledge_retrieval and model.inputs.relations.shape == (len(model.inputs.keys),) * 2
    loaded = AtlasModel.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(model.predict_rows(test[:4]), loaded.predict_rows(test[:4]))
    ctx = atlas.obs["context"].iloc[test[0]]
    key = atlas.obs["key"].iloc[test[0]]
    np.testing.assert_allclose(loaded.predict([key], ctx), model.predict([key], ctx), atol=1e-6)
    # a compound the atlas never measured, by a key the model does not have: relations from the knowledge
    ck = model._kb().compounds
    new = next(k for k in ck.keys if ck.targets(k) and f"cmp:{k}" not in set(model.inputs.keys))
    assert np.isfinite(loaded.predict([f"cmp:{new}"], ctx)).all()


def test_blind_features_leave_out_the_perturbations_own_signatures(kb):
    atlas_keys = set(kb.atlas.obs["key"])
    ck = kb.compounds
    # a measured compound whose targets no other measured perturbation hits: blind, its signature block is unknown
    lone = [k[4:] for k in sorted(atlas_keys) if k.startswith("cmp:") and ck.targets(k[4:]) and not any(
        f"kd:{g}" in atlas_keys or any(f"cmp:{c}" in atlas_keys for c in ck.compounds_targeting(g) if c != k[4:])
        for g in ck.targets(k[4:]))]
    assert lone
    _, known = kb.compound_features(lone[:3])
    _, known_blind = kb.compound_features(lone[:3], blind=True)
    assert known[:, 2].all() and not known_blind[:, 2].any()
    # a knocked-down gene no measured compound targets: blind, its signature block is unknown
    genes = [k[3:] for k in sorted(atlas_keys) if k.startswith("kd:")
             and not any(f"cmp:{c}" in atlas_keys for c in ck.compounds_targeting(k[3:]))][:3]
    assert kb.gene_features(genes)[1][:, 2].all() and not kb.gene_features(genes, blind=True)[1][:, 2].any()
    # the other blocks do not depend on measurements
    f, _ = kb.compound_features(lone[:3])
    fb, _ = kb.compound_features(lone[:3], blind=True)
    n = kb.config.network_dim + kb.config.signed_dim
    np.testing.assert_array_equal(f[:, :n], fb[:, :n])


def test_cli_pretrain_knowledge_retrieval_flag(tmp_path):
    from typer.testing import CliRunner

    from bioworld.cli import app

    runner = CliRunner()
    both = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "a"), "--knowledge-retrieval", "--no-knowledge", "--quiet"])
    assert both.exit_code == 2 and "--knowledge-retrieval" in both.output and "--no-knowledge" in both.output
    assert not (tmp_path / "a" / "atlas.json").exists()


@pytest.mark.slow  # ~40 s on the shared 2-core machine
def test_cli_pretrain_knowledge_retrieval_writes_such_a_model(tmp_path):
    from typer.testing import CliRunner

    from bioworld.cli import app
    from bioworld.train.pretrain import AtlasModel

    out = tmp_path / "kr"
    r = CliRunner().invoke(app, ["pretrain", "--out", str(out), "--steps", "2", "--knowledge-retrieval", "--quiet"])
    assert r.exit_code == 0, r.output
    m = AtlasModel.load(out)
    assert m.config.knowledge_retrieval and m.config.drop_blinds_knowledge and m.module.cfg.knowledge_retrieval
