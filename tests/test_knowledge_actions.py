"""World models grounded in knowledge: unseen genes and compounds by name, one action space, checkpoints."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bioworld as bw
from bioworld.errors import UnknownPerturbationError


def _papalexi_small(n_per_label: int = 40):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = bw.data.load_papalexi()
    labels = a.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == lab), min(n_per_label, (labels == lab).sum()),
                                      replace=False) for lab in sorted(set(labels))])
    return a[np.sort(keep)].copy()


@pytest.fixture(scope="module")
def gene_models():
    a = _papalexi_small()
    kw = dict(perturbation_key="perturbation", control="control", holdout=["STAT1"], config={"max_steps": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_k = bw.WorldModel(a, **kw).train(progress=False)
        without = bw.WorldModel(a, knowledge=False, **kw).train(progress=False)
    return with_k, without


def _network_only_gene(wm_with, wm_without) -> str:
    """A gene the networks know but no gene set does."""
    for g in wm_with.space.genes.genes:
        if not wm_without.space.genes.knows(g) and g.isalnum() and g.isupper():
            return g
    raise AssertionError("no network-only gene found")


def test_knowledge_widens_the_genes_a_model_can_answer_for(gene_models):
    with_k, without = gene_models
    assert with_k.space.genes.dim > without.space.genes.dim
    g = _network_only_gene(with_k, without)
    pred = with_k.predict([g])
    assert np.isfinite(pred.layers["delta"]).all()
    with pytest.raises(UnknownPerturbationError, match="cannot be predicted"):
        without.predict([g])
    with pytest.raises(UnknownPerturbationError):
        with_k.predict(["NOT_A_GENE_XYZ"])


def test_knowledge_sources_and_licences_travel_with_the_model(gene_models, tmp_path):
    with_k, _ = gene_models
    recs = with_k.meta["knowledge_sources"]
    names = {r["name"] for r in recs}
    assert {"signature_atlas", "compound_targets", "string", "omnipath"} <= names
    assert any(r["non_commercial"] for r in recs) and all(r["licence"] for r in recs)
    with_k.save(tmp_path / "m")
    loaded = bw.WorldModel.load(tmp_path / "m")
    labels = ["STAT1", "IRF1", "JAK2"]
    np.testing.assert_array_equal(with_k.predict(labels).X, loaded.predict(labels).X)
    assert loaded.meta["knowledge_config"] == with_k.meta["knowledge_config"]


def test_shuffled_network_changes_the_features_of_the_same_gene():
    a = _papalexi_small(15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bw.WorldModel(a, perturbation_key="perturbation", control="control")
        sh = bw.WorldModel(a, perturbation_key="perturbation", control="control", knowledge={"shuffle": ["network"]})
    f1 = ref.space.genes.features(["IFNGR1"])
    f2 = sh.space.genes.features(["IFNGR1"])
    assert not np.allclose(f1, f2)
    assert sh.meta["knowledge_config"]["shuffle"] == ["network"]


# ------------------------------------------------------------------------------- compounds
@pytest.fixture(scope="module")
def l1000_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = bw.data.load_l1000()
        held = [lab for lab in a.obs["perturbation"].astype(str).unique() if lab.startswith("PLX-4720@")]
        wm = bw.WorldModel(a, perturbation_key="perturbation", control="control", input="log", dose_key="pert_dose",
                           compound_id_key="pert_id", min_cells_per_group=1, holdout=held, config={"max_steps": 3})
        return wm.train(progress=False)


def test_unseen_compounds_by_name_and_by_targets(l1000_model, tmp_path):
    wm = l1000_model
    # a held-out compound of the plate, a compound never on the plate, by name only (no SMILES given)
    pred = wm.predict(["PLX-4720@10", "vemurafenib@3"])
    assert pred.n_obs == 2 and np.isfinite(pred.X).all()
    wm.save(tmp_path / "m")
    loaded = bw.WorldModel.load(tmp_path / "m")
    np.testing.assert_array_equal(pred.X, loaded.predict(["PLX-4720@10", "vemurafenib@3"]).X)
    table = tmp_path / "targets.tsv"
    table.write_text("compound\ttarget_gene\nMyMEKi\tMAP2K1\nMyMEKi\tMAP2K2\n")
    new = loaded.predict(["MyMEKi@1"], compound_targets=str(table))
    assert np.isfinite(new.X).all()
    # described like a MEK inhibitor: its features equal those given by a dict of the same targets
    same = loaded.predict(["MyMEKi@1"], compound_targets={"MyMEKi": ["MAP2K1", "MAP2K2"]})
    np.testing.assert_array_equal(new.X, same.X)
    with pytest.raises(UnknownPerturbationError, match="--compound-targets"):
        loaded.predict(["NoSuchDrugZZ@1"])
    with pytest.raises(UnknownPerturbationError, match="none of its targets"):
        loaded.predict(["Odd@1"], compound_targets={"Odd": ["NOT_A_GENE_XYZ"]})


def test_trained_compound_doses_are_predicted_with_their_own_embedding(l1000_model, tmp_path):
    import torch

    wm = l1000_model
    labels = wm.space.actions
    trained = sorted(lab for lab in wm.train_labels if lab != wm.control)
    assert wm.space.compound_bank == trained and not any(b.startswith("PLX-4720@") for b in wm.space.compound_bank)
    own = wm.module.action_encoder.cmp_own
    assert own.shape == (len(trained), wm.model_config.latent_dim) and wm.model_config.compound_bank_size == len(trained)
    seen, held = trained[0], "PLX-4720@10"
    table = wm.space.encode([labels[seen], labels[held]])
    assert table.cmp_idx[0, 0] == 0 and table.cmp_idx[1, 0] == -1
    before = wm.predict([seen, held]).X
    with torch.no_grad():
        own[0] += 1.0
    after = wm.predict([seen, held]).X
    # the seen compound-dose reads its own row; the held-out dose does not
    assert np.abs(after[0] - before[0]).max() > 1e-5  # (3 steps: the predictor head is still near its zero init)
    np.testing.assert_array_equal(after[1], before[1])
    wm.save(tmp_path / "m")
    loaded = bw.WorldModel.load(tmp_path / "m")
    assert loaded.space.compound_bank == trained
    np.testing.assert_array_equal(loaded.predict([seen, held]).X, after)
    assert loaded.model_config.compound_embedding_scale == wm.model_config.compound_embedding_scale == 10.0
    # a checkpoint written before the multiplier existed read its own rows unscaled: it loads with 1.0 (the
    # stored file is hash-checked, so the older meta is rebuilt here rather than edited on disk)
    import json

    from bioworld.model.config import JEPAConfig
    from bioworld.train.state import _stored_model_config

    cfg = json.loads((tmp_path / "m" / "bioworld.json").read_text())["model_config"]
    assert cfg["compound_embedding_scale"] == 10.0
    older = {k: v for k, v in cfg.items() if k != "compound_embedding_scale"}
    assert JEPAConfig.from_dict(_stored_model_config(older)).compound_embedding_scale == 1.0
    assert JEPAConfig.from_dict(_stored_model_config(cfg)).compound_embedding_scale == 10.0
    with torch.no_grad():
        own[0] -= 1.0


def test_a_drug_and_a_knockout_of_its_targets_share_coordinates(l1000_model):
    src = l1000_model.space.compounds
    genes = l1000_model.space.genes
    d = src.kb_dim
    tram = src.features(["trametinib"])[0, :d]
    plx = src.features(["PLX-4720"])[0, :d]
    from bioworld.actions._knowledge import _kb_part_of_gene_rows

    mek = _kb_part_of_gene_rows(genes.features(["MAP2K1", "MAP2K2"]), d).mean(0)
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    # network blocks (the first third of the knowledge body): trametinib sits with MEK, not with BRAF's drug
    n = 64
    assert cos(tram[:n], mek[:n]) > cos(plx[:n], mek[:n])


def test_a_trained_compound_without_structure_or_knowledge_is_learned_not_refused():
    from _helpers import sim_entities

    sim = bw.data.simulate(seed=0, n_cells_per_condition=20, n_control_cells=60)
    a = sim.adata.copy()
    labels = a.obs["perturbation"].astype(str).to_numpy()
    first = sorted(set(labels) - {"control"})[0]
    labels[labels == first] = "drugA@1"
    a.obs["perturbation"] = labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm = bw.WorldModel(a, perturbation_key="perturbation", control="control", entities=sim_entities(sim),
                           nmf_programs=0, config={"max_steps": 2})
    assert any("neither a SMILES nor knowledge" in f and "drugA" in f for f in wm.findings)
    wm.train(progress=False)
    assert np.isfinite(wm.predict(["drugA@1"]).X).all()  # observed: learned from its own effect
    with pytest.raises(UnknownPerturbationError, match="unknown to this model"):
        wm.predict(["drugB@1"])  # never observed, no knowledge: refused
