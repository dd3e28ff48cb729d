"""Tests for bioworld.entities: readers on the bundled files, errors, panel mapping, scores, features."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from bioworld.entities import (
    Entity,
    EntitySet,
    EntityWarning,
    PanelMap,
    combine,
    default_entities,
    entity_scores,
    gene_membership_features,
    load_bundled,
    map_to_panel,
)
from bioworld.errors import BioworldError, EntityError


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hallmark() -> EntitySet:
    return load_bundled("hallmark")


@pytest.fixture(scope="module")
def progeny() -> EntitySet:
    return load_bundled("progeny")


@pytest.fixture(scope="module")
def dorothea() -> EntitySet:
    return load_bundled("dorothea")


@pytest.fixture(scope="module")
def papalexi():
    import anndata as ad
    from bioworld.data import bundled_path

    return ad.read_h5ad(bundled_path("perturbseq/papalexi2021_thp1_ko.h5ad"))


@pytest.fixture(scope="module")
def papalexi_log(papalexi) -> np.ndarray:
    X = papalexi.X.toarray() if sp.issparse(papalexi.X) else np.asarray(papalexi.X)
    X = X[:2000].astype(np.float64)
    return np.log1p(X / X.sum(axis=1, keepdims=True).clip(min=1) * 1e4)  # [cells, G]


@pytest.fixture
def toy() -> EntitySet:
    return EntitySet(
        [
            Entity("A", ("G1", "G2", "G3"), (1.0, 1.0, 1.0), "toy"),
            Entity("B", ("G2", "G4"), (2.0, -1.0), "toy"),
        ]
    )


def _write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------- bundled readers
def test_hallmark_has_50_sets(hallmark):
    assert len(hallmark) == 50
    assert all(n.startswith("HALLMARK_") for n in hallmark.names)
    ifng = hallmark["HALLMARK_INTERFERON_GAMMA_RESPONSE"]
    assert len(ifng) == 200 and "STAT1" in ifng.genes and "IRF1" in ifng.genes
    assert set(ifng.weights) == {1.0} and ifng.source == "hallmark"
    assert "HALLMARK_INTERFERON_GAMMA_RESPONSE" in hallmark.containing("STAT1")
    genes = hallmark.genes()
    assert genes == sorted(genes) and len(genes) == len(set(genes)) > 4000


def test_progeny_has_14_pathways_of_500(progeny):
    assert len(progeny) == 14
    assert {"JAK-STAT", "NFkB", "p53", "TNFa", "WNT"} <= set(progeny.names)
    assert all(len(e) == 500 for e in progeny)
    w = np.array(progeny["p53"].weights)
    assert (w > 0).any() and (w < 0).any()  # signed footprints


def test_progeny_top_n_keeps_largest_abs_weights(progeny):
    from bioworld.data import bundled_path

    top = EntitySet.from_weight_table(bundled_path("genesets/progeny_human_top500.tsv"), top_n=100)
    assert [len(e) for e in top] == [100] * 14
    full = np.abs(np.array(progeny["JAK-STAT"].weights))
    kept = np.abs(np.array(top["JAK-STAT"].weights))
    assert kept.min() >= np.sort(full)[-100] - 1e-12
    assert set(top["JAK-STAT"].genes) <= set(progeny["JAK-STAT"].genes)


def test_dorothea_abc_counts(dorothea):
    assert len(dorothea) == 271
    assert sum(len(e) for e in dorothea) == 13223
    stat1 = dorothea["REGULON_STAT1"]
    assert stat1.source == "dorothea" and set(stat1.weights) <= {1.0, -1.0}
    assert "IRF1" in stat1.genes
    assert dorothea.names == sorted(dorothea.names)


def test_dorothea_confidence_and_min_targets():
    from bioworld.data import bundled_path

    path = bundled_path("networks/dorothea_hs_regulons.tsv.gz")
    a_only = EntitySet.from_regulons(path, confidence="A", min_targets=1)
    strict = EntitySet.from_regulons(path, confidence="A", min_targets=50)
    assert 0 < len(strict) < len(a_only) < 271
    assert all(len(e) >= 50 for e in strict)


def test_go_names_are_id_plus_term_and_unique():
    go = load_bundled("go_bp")
    assert len(go) == 6482
    assert go.names[0] == "GO:0000002 mitochondrial genome maintenance"
    assert len(set(go.names)) == len(go)
    from bioworld.data import bundled_path

    path = bundled_path("genesets/go_bp_propagated_orgHsEgDb_3.16_size10-500.gmt")
    ids = EntitySet.from_gmt(path, name_column="first")
    assert ids.names[0] == "GO:0000002"


def test_reactome_auto_uses_first_column():
    reactome = load_bundled("reactome")
    assert len(reactome) == 2504
    assert reactome.names[0] == "2-LTR-circle-formation"


def test_default_entities():
    es = default_entities()
    assert len(es) == 64
    assert es.names[:50] == load_bundled("hallmark").names
    assert {e.source for e in es} == {"hallmark", "progeny"}


def test_gmt_source_defaults_to_file_stem_and_dedups_genes(tmp_path):
    p = _write(tmp_path, "mine.gmt", "S1\tdesc\tA\tB\tA\t\n\n# comment\nS2\tna\tC\tD\tE\n")
    es = EntitySet.from_gmt(p)
    assert es.names == ["S1", "S2"] and es["S1"].genes == ("A", "B") and es["S1"].source == "mine"


def test_gmt_gz(tmp_path):
    p = tmp_path / "sets.gmt.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("S1\tdesc\tA\tB\n")
    assert EntitySet.from_gmt(p)["S1"].genes == ("A", "B")


# ---------------------------------------------------------------------------- malformed files
def test_missing_file(tmp_path):
    with pytest.raises(EntityError, match="no file"):
        EntitySet.from_gmt(tmp_path / "nope.gmt")
    with pytest.raises(EntityError, match="no file"):
        EntitySet.from_weight_table(tmp_path / "nope.tsv")
    with pytest.raises(EntityError, match="no file"):
        EntitySet.from_regulons(tmp_path / "nope.tsv")


def test_empty_files(tmp_path):
    empty = _write(tmp_path, "empty.gmt", "")
    with pytest.raises(EntityError, match="empty file"):
        EntitySet.from_gmt(empty)
    with pytest.raises(EntityError, match="no gene sets"):
        EntitySet.from_gmt(_write(tmp_path, "blank.gmt", "\n# just a comment\n"))
    with pytest.raises(EntityError, match="empty file"):
        EntitySet.from_weight_table(_write(tmp_path, "empty.tsv", ""))
    with pytest.raises(EntityError, match="no rows"):
        EntitySet.from_weight_table(_write(tmp_path, "header.tsv", "gene\tpathway\tweight\n"))


def test_gmt_short_line_reports_line_number(tmp_path):
    p = _write(tmp_path, "bad.gmt", "S1\tdesc\tA\tB\nS2 desc A B\n")
    with pytest.raises(EntityError, match=r"line 2.*expected at least 3.*tab-separated") as info:
        EntitySet.from_gmt(p)
    assert "Fix" in str(info.value)


def test_gmt_line_without_genes(tmp_path):
    with pytest.raises(EntityError, match="no genes on line 1"):
        EntitySet.from_gmt(_write(tmp_path, "nogenes.gmt", "S1\tdesc\t\t\n"))


def test_gmt_duplicated_names(tmp_path):
    p = _write(tmp_path, "dup.gmt", "S1\td\tA\nS2\td\tB\nS1\td\tC\n")
    with pytest.raises(EntityError, match=r"duplicated set names.*'S1' on lines \[1, 3\]"):
        EntitySet.from_gmt(p)


def test_weight_table_missing_columns(tmp_path):
    p = _write(tmp_path, "w.tsv", "gene\tset\tweight\nA\tP\t1\n")
    with pytest.raises(EntityError, match=r"missing \['pathway'\]"):
        EntitySet.from_weight_table(p)
    assert EntitySet.from_weight_table(p, set_col="set").names == ["P"]


def test_weight_table_non_numeric(tmp_path):
    p = _write(tmp_path, "w.tsv", "gene\tpathway\tweight\nA\tP\t1.5\nB\tP\tstrong\n")
    with pytest.raises(EntityError, match=r"non-numeric.*line 3: 'strong'"):
        EntitySet.from_weight_table(p)


def test_weight_table_duplicated_gene_in_set(tmp_path):
    p = _write(tmp_path, "w.tsv", "gene\tpathway\tweight\nA\tP\t1\nA\tP\t2\nA\tQ\t1\n")
    with pytest.raises(EntityError, match="'A' listed more than once in set 'P'"):
        EntitySet.from_weight_table(p)


def test_weight_table_csv_and_bad_top_n(tmp_path):
    p = _write(tmp_path, "w.csv", "gene,pathway,weight\nA,P,1\nB,P,-3\nC,P,2\n")
    es = EntitySet.from_weight_table(p, top_n=2)
    assert es["P"].genes == ("B", "C") and es["P"].weights == (-3.0, 2.0)  # file order kept
    with pytest.raises(EntityError, match="top_n"):
        EntitySet.from_weight_table(p, top_n=0)


def test_regulon_errors(tmp_path):
    p = _write(tmp_path, "r.tsv", "tf\tconfidence\ttarget\tmor\nT\tA\tX\t1\nT\tA\tY\t-1\n")
    with pytest.raises(EntityError, match="confidence"):
        EntitySet.from_regulons(p, confidence="AZ")
    with pytest.raises(EntityError, match="no regulon with >= 5 targets"):
        EntitySet.from_regulons(p)
    es = EntitySet.from_regulons(p, min_targets=2)
    assert es["REGULON_T"].weights == (1.0, -1.0)
    bad = _write(tmp_path, "r2.tsv", "tf\ttarget\tmor\nT\tX\t1\n")
    with pytest.raises(EntityError, match=r"missing \['confidence'\]"):
        EntitySet.from_regulons(bad)


def test_errors_are_value_errors():
    assert issubclass(EntityError, BioworldError) and issubclass(EntityError, ValueError)


# ---------------------------------------------------------------------------- EntitySet API
def test_entity_validation():
    with pytest.raises(EntityError, match="one weight per gene"):
        Entity("X", ("A", "B"), (1.0,), "t")
    with pytest.raises(EntityError, match="more than once"):
        Entity("X", ("A", "A"), (1.0, 1.0), "t")
    with pytest.raises(EntityError, match="no genes"):
        Entity("X", (), (), "t")
    with pytest.raises(EntityError, match="non-finite"):
        Entity("X", ("A",), (float("nan"),), "t")
    e = Entity("X", ["A", "B"], [1, 2], "t")
    assert e.genes == ("A", "B") and e.weights == (1.0, 2.0) and e.weight_of("B") == 2.0 and e.weight_of("Z") == 0.0
    with pytest.raises(AttributeError):
        e.name = "Y"  # frozen


def test_container_protocol(toy):
    assert toy.names == ["A", "B"] and len(toy) == 2 and [e.name for e in toy] == ["A", "B"]
    assert "A" in toy and "Z" not in toy
    assert toy.genes() == ["G1", "G2", "G3", "G4"]
    assert toy.containing("G2") == ["A", "B"] and toy.containing("nope") == []
    assert toy.subset(["B", "A"]).names == ["B", "A"]
    with pytest.raises(EntityError, match=r"no entity named 'AA'.*Did you mean"):
        toy["AA"]
    with pytest.raises(EntityError, match="duplicated entity names"):
        EntitySet([toy["A"], toy["A"]])


def test_combine_clash(toy):
    other = EntitySet([Entity("A", ("G9",), (1.0,), "other"), Entity("C", ("G1",), (1.0,), "other")])
    with pytest.raises(EntityError, match=r"more than one set: \['A'\].*on_clash='prefix'"):
        toy.combine(other)
    merged = EntitySet.combine(toy, other, on_clash="prefix")
    assert merged.names == ["toy/A", "B", "other/A", "C"]
    assert combine(toy, EntitySet([Entity("C", ("G1",), (1.0,), "x")])).names == ["A", "B", "C"]


def test_to_dict_round_trip_through_json(toy, progeny):
    for es in (toy, progeny):
        d = json.loads(json.dumps(es.to_dict()))
        back = EntitySet.from_dict(d)
        assert back == es and back.hash() == es.hash()
    with pytest.raises(EntityError, match="format"):
        EntitySet.from_dict({"entities": []})
    with pytest.raises(EntityError, match="expected keys"):
        EntitySet.from_dict({"format": "bioworld.entities/1", "entities": [{"name": "A"}]})


def test_hash_is_stable_and_sensitive(toy):
    # pinned: the canonical JSON (and thus checkpoints' entity hashes) must not drift silently
    assert toy.hash() == EntitySet.from_dict(toy.to_dict()).hash()
    assert toy.to_json().startswith('{"entities":[{"genes":["G1","G2","G3"],"name":"A","source":"toy"')
    assert toy.hash() == "330dbe32a5653e834c07b8ddea399149ff578517d6cc8b4bb1bbf76992a3b29e"
    variants = [
        EntitySet([toy["A"], Entity("B", ("G2", "G4"), (2.0, -0.5), "toy")]),  # weight
        EntitySet([toy["A"], Entity("B", ("G2", "G5"), (2.0, -1.0), "toy")]),  # gene
        EntitySet([toy["A"], Entity("B", ("G2", "G4"), (2.0, -1.0), "other")]),  # source
        EntitySet([toy["A"], Entity("C", ("G2", "G4"), (2.0, -1.0), "toy")]),  # name
        toy.subset(["B", "A"]),  # order = slot order
        toy.subset(["A"]),
    ]
    hashes = {toy.hash()} | {v.hash() for v in variants}
    assert len(hashes) == len(variants) + 1


# ---------------------------------------------------------------------------- panel mapping
def test_map_papalexi_coverage(papalexi):
    var_names = list(papalexi.var_names)
    assert len(var_names) == 299
    with pytest.warns(EntityWarning, match=r"Dropped \d+ of 64 entities") as rec:
        pm = map_to_panel(default_entities(), var_names, min_genes=3)
    assert "HALLMARK_DNA_REPAIR (0/150)" in str(rec[0].message)
    assert isinstance(pm, PanelMap)
    cov = pm.coverage
    assert list(cov.columns) == ["entity", "source", "n_genes_total", "n_genes_in_panel", "kept", "reason"]
    assert len(cov) == 64 and cov["kept"].sum() == len(pm.entity_set) == pm.membership.shape[0]
    assert (cov.loc[cov["kept"], "n_genes_in_panel"] >= 3).all()
    assert (cov.loc[~cov["kept"], "n_genes_in_panel"] < 3).all()
    assert cov.set_index("entity").loc["JAK-STAT", "kept"]
    assert cov.set_index("entity").loc["HALLMARK_INTERFERON_GAMMA_RESPONSE", "kept"]
    assert [d.name for d in pm.dropped] == cov.loc[~cov["kept"], "entity"].tolist()
    assert all("min_genes=3" in d.reason for d in pm.dropped)

    M = pm.membership
    assert M.dtype == np.float32 and M.shape == (len(pm.entity_set), 299)
    np.testing.assert_allclose(np.abs(M).max(axis=1), 1.0)
    assert ((M != 0).sum(axis=1) == cov.loc[cov["kept"], "n_genes_in_panel"].to_numpy()).all()
    hallmark_rows = [i for i, e in enumerate(pm.entity_set) if e.source == "hallmark"]
    assert set(np.unique(M[hallmark_rows])) <= {0.0, 1.0}
    progeny_rows = [i for i, e in enumerate(pm.entity_set) if e.source == "progeny"]
    assert (M[progeny_rows] < 0).any()  # signed PROGENy weights survive

    covered = set(np.array(var_names)[(M != 0).any(axis=0)])
    assert set(pm.uncovered_genes) == set(var_names) - covered
    summary = pm.summary()
    assert "kept of 64" in summary and "299 genes" in summary and "progeny: 14/14 kept" in summary


def test_map_keeps_everything_without_warning(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = map_to_panel(toy, ["G4", "G3", "G2", "G1", "X"], min_genes=2)
    assert pm.names == ["A", "B"] and pm.dropped == [] and pm.uncovered_genes == ["X"]
    np.testing.assert_array_equal(pm.membership, [[0, 1, 1, 1, 0], [-0.5, 0, 1, 0, 0]])


def test_map_no_overlap_error_explains(toy):
    with pytest.raises(EntityError, match=r"0 of 3 panel genes.*ENSG.*Ensembl") as info:
        map_to_panel(toy, ["ENSG00000115415", "ENSG00000168610", "ENSG00000096968"])
    assert "G1" in str(info.value)  # example entity ids shown
    with pytest.raises(EntityError, match=r"Case-insensitive matches.*'g1' vs 'G1'"):
        map_to_panel(toy, ["g1", "g2", "g3"])


def test_map_reports_panel_genes_that_match_only_ignoring_case(toy):
    """A panel with some genes in another case ('g3', 'g4' for G3, G4) mapped with no word about it: those
    genes were silently uncovered whenever some other gene matched (only a panel with no match at all said so)."""
    pm = map_to_panel(toy, ["G1", "G2", "g3", "g4", "X"], min_genes=2)
    assert pm.uncovered_genes == ["g3", "g4", "X"]
    assert pm.case_mismatches == [("g3", "G3"), ("g4", "G4")]
    assert "2 uncovered panel gene(s) match entity genes only ignoring case ('g3' vs 'G3', 'g4' vs 'G4')" \
        in pm.summary()
    assert map_to_panel(toy, ["G4", "G3", "G2", "G1", "X"], min_genes=2).case_mismatches == []


def test_build_slots_reports_case_mismatches_as_a_finding(toy):
    from bioworld.entities._slots import build_slots

    slots = build_slots(toy, ["G1", "G2", "g3", "g4", "X"], min_genes=2, nmf_programs=0,
                        nmf_input=lambda idx: np.zeros((4, len(idx))), seed=0)
    assert any("match entity genes only ignoring case" in f for f in slots.findings), slots.findings


def test_map_duplicated_panel_genes(toy):
    with pytest.raises(EntityError, match="duplicated panel genes"):
        map_to_panel(toy, ["G1", "G2", "G1"])


# ---------------------------------------------------------------------------- scores
def test_entity_scores_hand_made():
    es = EntitySet(
        [Entity("A", ("G1", "G2"), (1.0, 1.0), "t"), Entity("B", ("G2", "G3"), (2.0, -1.0), "t")]
    )
    pm = map_to_panel(es, ["G1", "G2", "G3"], min_genes=2)
    X = np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0], [4.0, 8.0, 12.0]])  # [cells=3, G=3]
    # each gene: mean = (0, 4, 8), population std = sqrt(8/3) * (1, 2, 3); z rows = -a, 0, +a
    a = np.sqrt(3.0 / 2.0)
    expected_a = np.array([-a, 0.0, a])  # (z1 + z2) / 2
    expected_b = np.array([-a / 3, 0.0, a / 3])  # (1 * z2 - 0.5 * z3) / 1.5
    s = entity_scores(X, pm)
    assert s.shape == (3, 2) and s.dtype == np.float32
    np.testing.assert_allclose(s[:, 0], expected_a, rtol=1e-6)
    np.testing.assert_allclose(s[:, 1], expected_b, rtol=1e-6)
    np.testing.assert_allclose(entity_scores(sp.csr_matrix(X), pm), s, rtol=1e-6, atol=1e-7)

    # explicit center/scale (e.g. control statistics)
    s2 = entity_scores(X, pm, center=np.zeros(3), scale=np.array([1.0, 2.0, 0.0]))
    np.testing.assert_allclose(s2[:, 0], (X[:, 0] + X[:, 1] / 2) / 2)
    np.testing.assert_allclose(s2[:, 1], (X[:, 1] / 2) / 1.5)  # constant gene (scale 0) -> z = 0
    with pytest.raises(EntityError, match=r"expected \[cells, 3\]"):
        entity_scores(X[:, :2], pm)
    with pytest.raises(EntityError, match="center"):
        entity_scores(X, pm, center=np.zeros(2), scale=np.ones(3))


def test_entity_scores_on_papalexi(papalexi, papalexi_log):
    with pytest.warns(EntityWarning):
        pm = map_to_panel(default_entities(), papalexi.var_names)
    s = entity_scores(papalexi_log, pm)
    assert s.shape == (papalexi_log.shape[0], len(pm.entity_set)) and np.isfinite(s).all()
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=1e-4)  # z-scored against X itself


# ---------------------------------------------------------------------------- NMF
def test_nmf_deterministic_by_seed(papalexi, papalexi_log):
    var_names = list(papalexi.var_names)
    a = EntitySet.from_nmf(papalexi_log, var_names, n_programs=5, seed=0, top_genes=20)
    b = EntitySet.from_nmf(papalexi_log, var_names, n_programs=5, seed=0, top_genes=20)
    assert a.hash() == b.hash()
    assert a.names == [f"NMF_{k}" for k in range(1, 6)]
    assert all(len(e) == 20 and e.source == "nmf" and max(e.weights) == 1.0 for e in a)
    assert all(min(e.weights) > 0 for e in a)


def test_nmf_excludes_covered_genes(papalexi, papalexi_log):
    covered = default_entities().genes()
    progs = EntitySet.from_nmf(papalexi_log, list(papalexi.var_names), n_programs=4, seed=1, exclude_genes=covered)
    assert not set(progs.genes()) & set(covered)
    assert set(progs.genes()) <= set(papalexi.var_names)


def test_nmf_rejects_negative_and_bad_shapes():
    X = np.random.default_rng(0).normal(size=(20, 8))
    with pytest.raises(EntityError, match="nonnegative"):
        EntitySet.from_nmf(X, [f"g{i}" for i in range(8)], n_programs=2)
    with pytest.raises(EntityError, match="one name per column"):
        EntitySet.from_nmf(np.abs(X), ["g0"], n_programs=2)
    with pytest.raises(EntityError, match="at least n_programs"):
        EntitySet.from_nmf(np.abs(X), [f"g{i}" for i in range(8)], n_programs=9)


# ---------------------------------------------------------------------------- gene features
def test_gene_membership_features(progeny, dorothea, hallmark):
    genes = ["STAT1", "IRF1", "NOT_A_GENE"]
    F, names = gene_membership_features(genes, [hallmark, progeny, dorothea])
    assert F.shape == (3, len(names)) and F.dtype == np.float32
    assert len(names) == 50 + 14 + 2 * 271
    col = {n: j for j, n in enumerate(names)}
    assert F[0, col["HALLMARK_INTERFERON_GAMMA_RESPONSE"]] == 1.0
    assert F[0, col["REGULON_STAT1:is_tf"]] == 1.0 and F[1, col["REGULON_STAT1:is_tf"]] == 0.0
    assert F[1, col["REGULON_STAT1"]] == dorothea["REGULON_STAT1"].weight_of("IRF1")
    assert np.abs(F[:, col["JAK-STAT"]]).max() <= 1.0
    w = progeny["JAK-STAT"].weight_of("STAT1") / max(abs(x) for x in progeny["JAK-STAT"].weights)
    assert F[0, col["JAK-STAT"]] == pytest.approx(w)
    assert not F[2].any()  # unknown gene -> all zeros
    with pytest.raises(EntityError, match="more than one set"):
        gene_membership_features(genes, [hallmark, hallmark])
    F1, names1 = gene_membership_features(["G2"], EntitySet([Entity("A", ("G2",), (1.0,), "t")]))
    assert names1 == ["A"] and F1.tolist() == [[1.0]]


def test_resolve_entities_takes_bundled_names_and_explains_a_misspelt_one(tmp_path):
    """WorldModel(adata, entities="hallmark") (the README names the bundled sets) was refused as 'entities file
    'hallmark' has an unknown type'; a misspelt name got no hint of the bundled names."""
    from bioworld.entities import load_bundled, resolve_entities

    es = resolve_entities("hallmark")
    assert [e.name for e in es] == [e.name for e in load_bundled("hallmark")]
    both = resolve_entities(["hallmark", "progeny"])
    assert len(both) == len(load_bundled("hallmark")) + len(load_bundled("progeny"))
    with pytest.raises(BioworldError, match=r"entities 'halmark' is neither a bundled collection nor a file.*"
                                            r"close matches: 'hallmark'.*Fix: entities=\['hallmark'\] "
                                            r"\(CLI: --entities hallmark\)"):
        resolve_entities("halmark")
    with pytest.raises(BioworldError, match="unknown type"):  # a file of another kind is still named as such
        (tmp_path / "sets.json").write_text("{}")
        resolve_entities(str(tmp_path / "sets.json"))
