"""The knowledge layer: compounds by name, networks, atlas, one feature space, shuffles for ablations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from bioworld.errors import BioworldError, DataValidationError, UnknownPerturbationError
from bioworld.knowledge import (
    SOURCES,
    CompoundKnowledge,
    KnowledgeBase,
    KnowledgeConfig,
    load_atlas,
    load_omnipath,
    load_string,
    network_embedding,
    normalize_compound_name,
    rank_scores,
)


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase()


# ------------------------------------------------------------------------------------ compounds
@pytest.mark.parametrize("name, key", [
    ("Trametinib (GSK1120212)", "trametinib"),
    ("PD-0325901", "pd0325901"),
    ("Tofacitinib citrate", "tofacitinib"),
    ("Almonertinib mesylate", "almonertinib"),
    ("g(+)-JQ1", "jq1"),
])
def test_normalize_compound_name_follows_the_atlas_rules(name, key):
    assert normalize_compound_name(name) == key


def test_compound_names_resolve_to_keys_and_targets():
    ck = CompoundKnowledge.bundled()
    assert ck.resolve("NVP-BEZ235") == "dactolisib"  # merged alias, not derivable by normalisation
    assert ck.resolve("PLX-4720") == "plx4720"
    assert set(ck.targets("trametinib")) == {"MAP2K1", "MAP2K2"}
    assert "ruxolitinib" in ck.compounds_targeting("JAK2")
    assert ck.resolve("not-a-drug-xyz", strict=False) is None
    with pytest.raises(UnknownPerturbationError, match="close matches.*--compound-targets"):
        ck.resolve("trametinibb")


def test_user_target_table_adds_compounds(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("compound\ttarget_gene\nMyDrug-1\tJAK2\nMyDrug-1\tTYK2\n")
    ck = CompoundKnowledge.bundled().with_targets(table)
    assert ck.targets("MyDrug-1") == ["JAK2", "TYK2"]
    assert ck.targets("trametinib")  # bundled compounds kept
    bad = tmp_path / "bad.tsv"
    bad.write_text("drug\tgene\nX\tY\n")
    with pytest.raises(DataValidationError, match="expected 'compound' and 'target_gene'"):
        CompoundKnowledge.bundled().with_targets(bad)


def test_shuffled_targets_permute_links_but_keep_set_sizes():
    ck = CompoundKnowledge.bundled()
    sh = ck.shuffled(0)
    keys = [k for k in ck.keys if ck.targets(k)]
    sizes = sorted(len(ck.targets(k)) for k in keys)
    assert sorted(len(sh.targets(k)) for k in keys) == sizes
    changed = sum(set(ck.targets(k)) != set(sh.targets(k)) for k in keys)
    assert changed > 0.8 * len(keys)
    # the mechanism label moves with its target set: the same labels, on other compounds
    assert sorted(sh.moa(k) for k in keys) == sorted(ck.moa(k) for k in keys)
    labelled = [k for k in keys if ck.moa(k)]
    assert sum(sh.moa(k) != ck.moa(k) for k in labelled) > 0.5 * len(labelled)


def test_every_source_has_a_licence():
    assert {"signature_atlas", "compound_targets", "string", "omnipath"} <= set(SOURCES)
    assert all(s.licence for s in SOURCES.values())
    assert SOURCES["compound_targets"].non_commercial


# ------------------------------------------------------------------------------------- networks
def test_networks_load_with_expected_shape():
    genes, w = load_string()
    assert len(genes) == 12393 and (w != w.T).nnz == 0 and w.max() <= 1.0
    g2, m = load_omnipath()
    assert set(np.unique(m.data)) <= {-1.0, 0.0, 1.0} and len(g2) > 6000


@pytest.mark.parametrize("node, members", [
    ("STAT1", ["STAT1"]),
    ("CHUK_IKBKB_IKBKG", ["CHUK", "IKBKB", "IKBKG"]),
    ("C4B_2", ["C4B_2"]),  # one HGNC symbol (C4B copy 2), not the complex {C4B, "2"}
    ("_C2_C4A_C4B_2", ["C2", "C4A", "C4B_2"]),  # a leading "_" adds no empty member
    ("BARD1_BRCA1_CHEBI:49883_TOPBP1", ["BARD1", "BRCA1", "TOPBP1"]),  # metabolite members are not genes
    ("CHEBI:16038_CHEBI:28494", []),
    ("2", []),
])
def test_complex_members(node, members):
    from bioworld.knowledge.network import complex_members

    assert complex_members(node) == members


def test_omnipath_graphs_hold_only_gene_nodes():
    """The first parse split every name on "_": an empty-named node joined 72 genes of unrelated complexes into
    a hub of the joint network, and "2" / ChEBI ids became genes (a perturbation labelled "2" looked known)."""
    from bioworld.knowledge.network import complex_members, joint_network, regulation_network, signed_embedding

    genes, m = load_omnipath()
    assert "C4B_2" in genes and not {"", "2", "C4B"} & set(genes)
    assert not [g for g in genes if g.startswith("CHEBI:")]
    assert all(complex_members(g) == [g] for g in joint_network()[0])
    assert not {"", "2", "C4B", "CHEBI:16038"} & set(regulation_network()[0])
    v1, _ = load_omnipath(complexes="v1")  # the parse the shipped feature table was computed on
    assert {"", "2"} <= set(v1)
    emb = signed_embedding(32)
    assert "" in emb.genes and not emb.knows("") and not emb.knows("2") and emb.knows("STAT1")
    assert not emb.lookup(["2"])[1].any()
    with pytest.raises(ValueError, match="complexes"):
        load_omnipath(complexes="split")


def test_shipped_signed_embedding_is_reproduced_by_the_code():
    from bioworld.knowledge.network import _shipped, compute_signed_embedding

    shipped, fresh = _shipped("omnipath", 32, 0), compute_signed_embedding(32, seed=0)
    assert shipped.genes == fresh.genes
    np.testing.assert_allclose(shipped.table, fresh.table, atol=1e-6)


def test_network_embedding_places_partners_close_and_shuffle_breaks_it():
    emb = network_embedding(64)
    v, known = emb.lookup(["IFNGR1", "JAK2", "ALB", "NOT_A_GENE"])
    assert known.tolist() == [True, True, True, False]
    assert not v[3].any()
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # IFNGR1 signals through JAK2; albumin is elsewhere
    sh = emb.shuffled(0)
    vs, _ = sh.lookup(["IFNGR1", "JAK2"])
    assert not np.allclose(vs, v[:2])


# ---------------------------------------------------------------------------------------- atlas
def test_atlas_loads_with_keys_and_contexts():
    atlas = load_atlas()
    assert atlas.X.shape == (6385, len(atlas.genes)) and len(atlas.genes) > 5000
    assert {"cmp:trametinib", "kd:MYC"} & set(atlas.keys)
    assert {"A498", "myeloid", "K562"} <= set(atlas.contexts)
    assert atlas.key_of("Trametinib") == "cmp:trametinib"
    with pytest.raises(UnknownPerturbationError, match="not in the atlas"):
        atlas.check_context("A499x")


def test_atlas_rows_by_key_read_an_index_equal_to_the_scan_and_zscores_are_shared():
    from bioworld.knowledge.atlas import SignatureAtlas, zscore_rows

    atlas = load_atlas()
    fresh = SignatureAtlas(atlas.X, atlas.obs, atlas.genes)  # no index built yet
    keys = atlas.obs["key"].to_numpy()
    for key in ["cmp:trametinib", "kd:MYC", keys[0], keys[-1], "kd:NO_SUCH_GENE_ZZ"]:
        scan = np.flatnonzero(keys == key)
        got = fresh.rows(key=key)
        np.testing.assert_array_equal(got, scan)
        assert got.dtype.kind == "i"
    ctx = atlas.obs["context"].iloc[0]
    np.testing.assert_array_equal(fresh.rows(key=keys[0], context=ctx),
                                  np.flatnonzero((keys == keys[0]) & (atlas.obs["context"].to_numpy() == ctx)))
    # one z-scored copy: the basis and the mean signatures read the same bits as a fresh computation
    np.testing.assert_array_equal(fresh.zscored(), zscore_rows(atlas.X))
    assert fresh.zscored() is fresh.zscored() and fresh.shuffled(0)._z is fresh._z


def test_rank_scores_is_the_atlas_transform():
    v = np.array([5.0, 1.0, 3.0, -2.0, 0.0, 4.0])
    out = rank_scores(v, n_ranked=6, k=2)
    n = 6
    expected = np.zeros(6)
    expected[0] = ndtri(1 - 0.5 / n)  # rank 0
    expected[5] = ndtri(1 - 1.5 / n)  # rank 1
    expected[3] = ndtri(1 - 5.5 / n)  # last
    expected[4] = ndtri(1 - 4.5 / n)  # second to last
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert (rank_scores(v, n_ranked=6, k=2, up_only=True) >= 0).all()


def test_shuffled_atlas_moves_signatures_between_perturbations():
    atlas = load_atlas()
    sh = atlas.shuffled(0)
    assert (sh.obs["key"] != atlas.obs["key"]).mean() > 0.8
    assert sorted(sh.obs["key"].unique()) == sorted(atlas.obs["key"].unique())


# --------------------------------------------------------------------------------- feature space
def test_genes_and_compounds_share_one_feature_space(kb):
    g, gk = kb.gene_features(["MAP2K1", "MAP2K2", "NOT_A_GENE"])
    c, ck = kb.compound_features(["trametinib"])
    assert g.shape[1] == c.shape[1] == kb.dim
    assert gk[2].sum() == 0 and not g[2].any()  # no knowledge: visibly unknown, not a silent look-alike
    cfg = kb.config
    a = cfg.network_dim
    # a MEK inhibitor's network block is the mean of its targets' (MAP2K1, MAP2K2), renormalised
    mean = g[:2, :a].mean(0)
    np.testing.assert_allclose(c[0, :a] / np.linalg.norm(c[0, :a]), mean / np.linalg.norm(mean), atol=1e-5)
    assert ck[0].all()


def test_knowledge_shuffles_change_what_they_name(kb):
    a = kb.config.network_dim
    sh = KnowledgeBase(KnowledgeConfig(shuffle=("targets",)))
    assert sh.compounds.targets("trametinib") != kb.compounds.targets("trametinib")
    g1, _ = kb.gene_features(["STAT1"])
    g2, _ = sh.gene_features(["STAT1"])
    np.testing.assert_array_equal(g1[:, :a], g2[:, :a])  # network untouched by a target shuffle
    shn = KnowledgeBase(KnowledgeConfig(shuffle=("network",)))
    g3, _ = shn.gene_features(["STAT1"])
    assert not np.allclose(g1[:, :a], g3[:, :a])


def test_knowledge_config_is_validated():
    with pytest.raises(BioworldError, match="shuffle"):
        KnowledgeConfig(shuffle=("everything",))
    with pytest.raises(BioworldError, match="network_dim"):
        KnowledgeConfig(network_dim=0)
    assert KnowledgeConfig.from_dict(KnowledgeConfig(shuffle=("targets",)).to_dict()) == KnowledgeConfig(shuffle=("targets",))
