"""Atlas benchmark ablations: the retrieval shuffle and the unseen-compound split."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def atlas():
    from bioworld.knowledge import load_atlas

    return load_atlas()


def test_retrieval_donors_are_a_derangement_of_the_compounds():
    from bioworld.train.pretrain import retrieval_donors

    keys = ["cmp:a", "cmp:b", "cmp:c", "kd:X", "cmp:d", "kd:Y"]
    donor = retrieval_donors(keys, seed=0)
    cmp = [i for i, k in enumerate(keys) if k.startswith("cmp:")]
    assert sorted(donor[cmp]) == cmp  # a permutation of the compounds
    assert all(donor[i] != i for i in cmp)  # nobody keeps their own signatures
    assert donor[3] == 3 and donor[5] == 5  # knockdowns untouched
    np.testing.assert_array_equal(donor, retrieval_donors(keys, seed=0))
    assert not np.array_equal(donor, retrieval_donors(keys, seed=1)) or len(cmp) < 3


def test_retrieval_shuffle_gives_a_row_another_compounds_signature_mean(atlas):
    from bioworld.eval.atlas import atlas_split
    from bioworld.knowledge import zscore_rows
    from bioworld.train.pretrain import _Inputs

    train, test = atlas_split(atlas, frac=0.1, seed=0)
    basis = atlas.basis(8, rows=train, seed=0)
    shuf = _Inputs(atlas, train, basis, retrieval_seed=0)
    rows = np.concatenate([test[:3], train[atlas.obs["kind"].iloc[train].to_numpy() == "compound"][:3]])
    zc, has_c, zk, _ = shuf.for_rows(rows)
    keys, ctx = atlas.obs["key"].to_numpy(), atlas.obs["context"].to_numpy()
    in_train = np.zeros(len(keys), bool)
    in_train[train] = True
    for i, r in enumerate(rows):
        d = shuf.keys[shuf.donor[shuf.key_id[r]]]
        assert d != keys[r] and d.startswith("cmp:")
        donor_rows = np.flatnonzero(in_train & (keys == d))
        assert has_c[i] == float(len(donor_rows) > 0)
        expect = zscore_rows(shuf.Z[donor_rows].mean(axis=0)) if len(donor_rows) else np.zeros_like(zc[i])
        np.testing.assert_allclose(zc[i], expect, atol=1e-5)
        own_rows = np.flatnonzero(in_train & (keys == keys[r]) & (np.arange(len(keys)) != r))
        assert np.corrcoef(zc[i], zscore_rows(shuf.Z[own_rows].mean(axis=0)))[0, 1] < 0.99  # not its own mean
        ctx_rows = np.flatnonzero(in_train & (ctx == ctx[r]) & (np.arange(len(keys)) != r))
        np.testing.assert_allclose(zk[i], zscore_rows(shuf.Z[ctx_rows].mean(axis=0)), atol=1e-5)  # untouched


@pytest.mark.slow  # ~20 s on the shared 2-core machine
def test_shuffled_retrieval_survives_save_and_load(atlas, tmp_path):
    from bioworld.eval.atlas import atlas_split
    from bioworld.train.pretrain import AtlasModel, PretrainConfig, pretrain_atlas

    train, test = atlas_split(atlas, frac=0.05, seed=0)
    cfg = PretrainConfig(steps=2, batch_size=16, basis_dim=8, use_knowledge=False, shuffle_retrieval=True, seed=2)
    model = pretrain_atlas(atlas=atlas, train_rows=train, config=cfg, progress=False)
    cmp = np.array([k.startswith("cmp:") for k in model.inputs.keys])
    assert (model.inputs.donor[cmp] != np.flatnonzero(cmp)).all()
    loaded = AtlasModel.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.inputs.donor, model.inputs.donor)
    np.testing.assert_array_equal(model.predict_rows(test[:4]), loaded.predict_rows(test[:4]))


def test_unseen_compound_split_leaves_no_signature_of_a_withheld_compound_in_training(atlas):
    from bioworld.eval.atlas import unseen_compound_split
    from bioworld.train.pretrain import _Inputs

    train, test = unseen_compound_split(atlas, frac=0.1, seed=0)
    obs = atlas.obs
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(obs)
    assert (obs["kind"].iloc[test] == "compound").all()
    held = set(obs["key"].iloc[test])
    assert held.isdisjoint(set(obs["key"].iloc[train]))
    n_cmp = obs.loc[obs["kind"] == "compound", "key"].nunique()
    assert len(held) == round(0.1 * n_cmp)
    _, has_c, _, zn = _Inputs(atlas, train, atlas.basis(8, rows=train, seed=0)).for_rows(test[:20])
    assert (has_c == 0).all() and not zn.any()  # nothing of the compound reaches the retrieval inputs
    assert not np.array_equal(test, unseen_compound_split(atlas, frac=0.1, seed=1)[1])


def test_run_atlas_transfer_refuses_an_unknown_split():
    from bioworld.eval.atlas import run_atlas_transfer

    with pytest.raises(ValueError, match="split='cells'"):
        run_atlas_transfer(seeds=[0], split="cells", variants=[], baselines=False)


def test_redrawn_retrieval_gives_another_compound_afresh_on_every_call(atlas):
    from bioworld.eval.atlas import atlas_split
    from bioworld.errors import BioworldError
    from bioworld.train.pretrain import PretrainConfig, _Inputs

    with pytest.raises(BioworldError, match="needs shuffle_retrieval"):
        PretrainConfig(redraw_retrieval=True)
    train, test = atlas_split(atlas, frac=0.1, seed=0)
    shuf = _Inputs(atlas, train, atlas.basis(8, rows=train, seed=0), retrieval_seed=0, redraw=True)
    rows = np.repeat(test[:1], 40)  # one row asked 40 times
    zc1 = shuf.for_rows(rows)[0]
    zc2 = shuf.for_rows(rows)[0]
    keys = atlas.obs["key"].to_numpy()
    own = np.flatnonzero(np.isin(np.arange(len(keys)), train) & (keys == keys[test[0]]))
    from bioworld.knowledge import zscore_rows

    own_mean = zscore_rows(shuf.Z[own].mean(axis=0))
    assert all(np.corrcoef(z, own_mean)[0, 1] < 0.99 for z in zc1)  # never the compound's own mean
    assert len({z.tobytes() for z in zc1}) > 10  # a different compound on most of the 40 draws
    assert not np.array_equal(zc1, zc2)  # and afresh on the next call
