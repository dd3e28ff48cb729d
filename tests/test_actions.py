"""Tests for bioworld.actions: grammar, vocabulary, gene and compound features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bioworld.actions import (
    CONTROL,
    Action,
    ActionVocabulary,
    CompoundFeaturizer,
    GeneFeaturizer,
    Perturbation,
    compound_key,
    load_smiles_table,
    parse_action,
    parse_actions,
    smiles_for,
)
from bioworld.errors import BioworldError, CheckpointError, PerturbationParseError, UnknownPerturbationError

DATA = Path(__file__).resolve().parents[1] / "bioworld" / "_data" / "compounds"


# ------------------------------------------------------------------------------------- grammar
@pytest.mark.parametrize(
    "label, canonical",
    [
        ("STAT1", "STAT1"),
        ("ko:STAT1", "STAT1"),
        ("KO:STAT1", "STAT1"),
        ("STAT1+IFNGR1", "IFNGR1+STAT1"),
        ("kd:STAT1:0.5", "kd:STAT1:0.5"),
        ("Kd:STAT1:1.0", "kd:STAT1"),
        ("act:MYC", "act:MYC"),
        ("vemurafenib@3.33", "vemurafenib@3.33"),
        ("vemurafenib@10.0", "vemurafenib@10"),
        ("silence:HALLMARK_INTERFERON_GAMMA_RESPONSE", "silence:HALLMARK_INTERFERON_GAMMA_RESPONSE"),
        ("silence:GO:0006954", "silence:GO:0006954"),
        ('silence:"Ca2+-pathway"', 'silence:"Ca2+-pathway"'),
        ("kd:B:0.3+ko:A", "A+kd:B:0.3"),
        ("STAT1+ctrl", "STAT1"),
        ("ctrl+STAT1", "STAT1"),
        ("HLA-DRA+C10orf11+RP11-228B15.4", "C10orf11+HLA-DRA+RP11-228B15.4"),
        ("AKT-inhibitor-1-2@0.04", "AKT-inhibitor-1-2@0.04"),
        ("BRD-K20696416@1e-05", "BRD-K20696416@1e-05"),
        ("Glesatinib?(MGCD265)@1", "Glesatinib?(MGCD265)@1"),
        ("x@1e20", "x@1e20"),
        ("ko:CTRL", "ko:CTRL"),
        ('"HOXA@"', 'ko:"HOXA@"'),
        ("control", "control"),
        ("ctrl", "control"),
        ("non-targeting", "control"),
        ("DMSO", "control"),
    ],
)
def test_parse_canonical_and_round_trip(label, canonical):
    action = parse_action(label)
    assert action.label == canonical
    assert str(action) == canonical
    assert parse_action(canonical) == action


def test_perturbation_str_and_action_properties():
    assert str(Perturbation("ko", "STAT1")) == "ko:STAT1"
    assert str(Perturbation("kd", "STAT1", 0.5)) == "kd:STAT1:0.5"
    assert str(Perturbation("act", "X")) == "act:X"
    assert str(Perturbation("compound", "vemurafenib", dose=3.33)) == "vemurafenib@3.33"
    assert str(Perturbation("silence", "HALLMARK_X")) == "silence:HALLMARK_X"
    a = parse_action("silence:P+kd:B:0.3+drug@2+A")
    assert a.genes == ("A", "B") and a.compounds == ("drug",) and a.entities == ("P",)
    assert len(a) == 4 and not a.is_control
    assert a.label == "A+drug@2+kd:B:0.3+silence:P"
    assert [p.kind for p in a] == ["ko", "compound", "kd", "silence"]
    assert CONTROL.is_control and len(CONTROL) == 0 and CONTROL.label == "control"
    assert parse_action("control") is CONTROL or parse_action("control") == CONTROL


def test_component_order_does_not_matter_and_actions_hash():
    a = Action((Perturbation("ko", "B"), Perturbation("ko", "A")))
    b = Action((Perturbation("ko", "A"), Perturbation("ko", "B")))
    assert a == b and hash(a) == hash(b) and a.label == "A+B"
    assert len({parse_action("A+B"), parse_action("B+A")}) == 1


def test_kd_default_strength_is_one():
    assert parse_action("kd:A") == Action((Perturbation("kd", "A"),))
    assert parse_action("kd:A").components[0].strength == 1.0


def test_custom_control_labels_and_action_passthrough():
    assert parse_action("NT", control_labels=("NT",)).is_control
    assert not parse_action("NT").is_control  # gene NT under the defaults
    a = parse_action("A+B")
    assert parse_action(a) is a


def _err(label, **kw) -> str:
    with pytest.raises(PerturbationParseError) as info:
        parse_action(label, **kw)
    return str(info.value)


@pytest.mark.parametrize(
    "label, must_contain",
    [
        ("", ["empty perturbation label", "control"]),
        ("   ", ["whitespace-only"]),
        ("STAT1 ", ["leading/trailing whitespace", "str.strip()", "'STAT1'"]),
        (" STAT1", ["leading/trailing whitespace"]),
        ("A + B", ["whitespace around", "'A+B'"]),
        ("A++B", ["empty component", "'A+B'"]),
        ("+A", ["empty component"]),
        ("A+", ["empty component"]),
        ("A+A", ["twice", "duplicate"]),
        ("ko:A+kd:A:0.5", ["perturbed twice", "'kd:A:0.5'"]),
        ("x@1+x@2", ["compound 'x' perturbed twice"]),
        ("control+A", ["control label 'control' inside", "'A'"]),
        ("DMSO+x@1", ["control label 'DMSO' inside"]),
        ("ctrl+ctrl", ["more than once"]),
        ("Control", ["only by case", "ko:Control"]),
        ("kd:A:0", ["strength 0", "(0, 1]"]),
        ("kd:A:1.5", ["strength 1.5", "(0, 1]", "ko:A"]),
        ("kd:A:-0.5", ["negative strength"]),
        ("kd:A:abc", ["not a number"]),
        ("kd:A:", ["empty strength"]),
        ("kd:A:0.5:1", ["too many ':'"]),
        ("ko:A:0.5", ["only on knockdowns", "kd:A:0.5"]),
        ("act:A:2", ["only on knockdowns", "act:A"]),
        ("x@-1", ["negative dose"]),
        ("x@abc", ["not a number"]),
        ("x@nan", ["not a number"]),
        ("x@1uM", ["unit suffix 'uM'", "x@1", "data's"]),
        ("x@10 nM", ["unit suffix 'nM'", "x@0.01 when the data's doses are in µM"]),  # was: 'e.g. x@10'
        ("x@10ug/ml", ["unit suffix 'ug/ml'", "e.g. x@10"]),
        ("x@1µM", ["unit suffix 'µM'"]),
        ("x@", ["empty dose"]),
        ("@1", ["without a compound name"]),
        ("a:b@1", ["':' in compound name", '"a:b"@1']),
        ("knockout:A", ["unknown prefix 'knockout:'", "ko:A"]),
        ("kdd:A", ["unknown prefix", "'kd:A'"]),
        ("crispra:A", ["unknown prefix", "'act:A'"]),
        ("GO:0006954", ["unknown prefix", "silence:GO:0006954"]),
        ("ko:", ["empty gene name"]),
        ("silence:", ["empty entity name"]),
        ("ko:A@1", ["'@' in the gene name"]),
        ("STAT1 KO", ["whitespace inside gene name"]),
        ('ko:"A', ["unbalanced double quote"]),
        ('ko:A"B"', ["'\"' inside the name"]),
        ("A\tB", ["whitespace inside gene name"]),
    ],
)
def test_parse_errors_say_what_and_how(label, must_contain):
    message = _err(label)
    for fragment in must_contain:
        assert fragment in message, (fragment, message)
    assert "expected" in message and "Fix:" in message  # found / expected / fix shape


@pytest.mark.parametrize("value", [None, 3.0, float("nan"), b"STAT1"])
def test_non_string_labels(value):
    assert "expected a string" in _err(value)


def test_perturbation_validation():
    with pytest.raises(PerturbationParseError, match="kind"):
        Perturbation("knockout", "A")  # type: ignore[arg-type]
    with pytest.raises(PerturbationParseError, match="without a dose"):
        Perturbation("compound", "x")
    with pytest.raises(PerturbationParseError, match="dose only on compounds"):
        Perturbation("ko", "A", dose=1.0)
    with pytest.raises(PerturbationParseError, match="finite"):
        Perturbation("compound", "x", dose=float("inf"))
    with pytest.raises(PerturbationParseError, match="whitespace"):
        Perturbation("ko", " A")
    with pytest.raises(PerturbationParseError, match="Perturbation objects"):
        Action(("A",))  # type: ignore[arg-type]
    assert Perturbation("compound", "x", dose=-0.0).dose == 0.0


def test_parse_actions_caches_and_collects_errors():
    labels = ["A", "B+A", "A", "control", "x@1"]
    out = parse_actions(labels)
    assert [a.label for a in out] == ["A", "A+B", "A", "control", "x@1"]
    assert out[0] is out[2]
    with pytest.raises(PerturbationParseError) as info:
        parse_actions(["A", "A++B", "x@-1", "A++B"])
    msg = str(info.value)
    assert msg.startswith("2 perturbation label(s) do not parse") and "'A++B'" in msg and "'x@-1'" in msg


# ---- property tests
_NAME = st.text(
    alphabet=st.characters(blacklist_characters='"', blacklist_categories=("Cc", "Cs")), min_size=1, max_size=10
).filter(lambda s: s == s.strip())
_SYMBOL = st.from_regex(r"[A-Z][A-Z0-9]{0,5}(-[A-Z0-9]{1,3})?(\.[0-9])?", fullmatch=True)
_TARGET = st.one_of(_SYMBOL, _NAME)
_STRENGTH = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)
_DOSE = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)

_PERTURBATION = st.one_of(
    st.builds(Perturbation, st.just("ko"), _TARGET),
    st.builds(Perturbation, st.just("kd"), _TARGET, _STRENGTH),
    st.builds(Perturbation, st.just("act"), _TARGET),
    st.builds(lambda t, d: Perturbation("compound", t, dose=d), _TARGET, _DOSE),
    st.builds(Perturbation, st.just("silence"), _TARGET),
)
_ACTION = st.lists(
    _PERTURBATION, max_size=4, unique_by=lambda p: ("gene" if p.is_gene else p.kind, p.target)
).map(lambda ps: Action(tuple(ps)))


@settings(max_examples=300, deadline=None)
@given(_ACTION)
def test_property_label_round_trip(action):
    assert parse_action(action.label) == action
    for p in action.components:
        assert parse_action(str(p)) == Action((p,))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=20), st.text(alphabet='ko:d@+. "ctrlAB1-e\tµM', max_size=20)))
def test_property_random_text_only_raises_parse_errors(text):
    try:
        action = parse_action(text)
    except PerturbationParseError:
        return
    assert parse_action(action.label) == action


# ------------------------------------------------------------------------------------ vocabulary
def test_vocabulary_check_and_close_matches():
    vocab = ActionVocabulary(["STAT1", "STAT2", "IRF1"], ["vemurafenib"], ["HALLMARK_P53_PATHWAY"])
    vocab.check("STAT1+IRF1")
    vocab.check("vemurafenib@1+silence:HALLMARK_P53_PATHWAY")
    assert vocab.knows("STAT2") and not vocab.knows("STAT3")
    assert "STAT1" in vocab and "STAT3" not in vocab
    with pytest.raises(UnknownPerturbationError) as info:
        vocab.check("stat1+STAT11")
    msg = str(info.value)
    assert "unknown gene 'stat1'; close matches: STAT1" in msg
    assert "unknown gene 'STAT11'" in msg and "STAT1" in msg and "expected" in msg.lower()
    with pytest.raises(UnknownPerturbationError, match="close matches: vemurafenib"):
        vocab.check("Vemurafenib@1")
    with pytest.raises(UnknownPerturbationError, match="unknown entity 'HALLMARK_P53'"):
        vocab.check("silence:HALLMARK_P53")
    assert vocab.unknown("A+STAT1") == [("gene", "A")]
    with pytest.raises(UnknownPerturbationError, match="knows no compounds"):
        ActionVocabulary(["A"]).check("x@1")


def test_vocabulary_round_trip_and_from_actions():
    vocab = ActionVocabulary.from_actions(["A+B", "x@1", "silence:P", "control"])
    assert vocab.genes == ("A", "B") and vocab.compounds == ("x",) and vocab.entities == ("P",)
    assert ActionVocabulary.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    with pytest.raises(CheckpointError, match="version"):
        ActionVocabulary.from_dict({"version": 99})
    with pytest.raises(BioworldError, match="single string"):
        ActionVocabulary("STAT1")


# -------------------------------------------------------------------------------- gene features
@dataclass(frozen=True)
class _Ent:
    name: str
    genes: tuple[str, ...]
    weights: tuple[float, ...]
    source: str


def _ent(name, genes, source="toy", weights=None):
    return _Ent(name, tuple(genes), tuple(weights or [1.0] * len(genes)), source)


@pytest.fixture(scope="module")
def toy_sets():
    pathways = [
        _ent("IFN", ["STAT1", "STAT2", "IRF1", "IRF9", "JAK1"]),
        _ent("IFN_LATE", ["STAT1", "IRF1", "GBP1", "ISG15"]),
        _ent("LIPID", ["APOA1", "APOB", "ALB", "LDLR"]),
        _ent("LIPID2", ["APOA1", "APOB", "PCSK9"]),
        _ent("CYCLE", ["CDK1", "CCNB1", "MKI67", "TOP2A"]),
        _ent("WEIGHTED", ["CDK1", "CCNB1", "APOB"], "progeny", [2.0, 1.0, -0.5]),
    ]
    extra = [
        _ent("REGULON_STAT1", ["IRF1", "GBP1", "ISG15", "CXCL10"], "dorothea", [1.0, 1.0, 1.0, -1.0]),
        _ent("GO:0006955 immune response", ["CXCL10", "GBP1", "IFITM1"], "go"),
    ]
    return pathways, extra


def test_gene_featurizer_geometry(toy_sets):
    pathways, extra = toy_sets
    f = GeneFeaturizer(pathways, [extra], dim=4)
    x = f.features(["STAT2", "IRF9", "APOA1", "APOB", "CXCL10"])
    assert x.shape == (5, 4) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # same pathway beats unrelated
    assert sim[2, 3] > sim[2, 0] + 0.2
    assert f.knows("CXCL10") and f.knows("IFITM1")  # only in the extra sets: still has features
    assert not f.knows("NOTAGENE")
    assert f.features("STAT1").shape == (1, 4)


def test_gene_featurizer_deterministic_and_pads(toy_sets):
    pathways, extra = toy_sets
    a = GeneFeaturizer(pathways, [extra], dim=5, seed=0).features(["STAT1", "CDK1"])
    b = GeneFeaturizer(list(reversed(pathways)), [extra], dim=5, seed=0).features(["STAT1", "CDK1"])
    np.testing.assert_array_equal(a, b)
    wide = GeneFeaturizer(pathways[:2], dim=16)  # rank < dim: zero-padded, still unit rows
    assert wide.features(["STAT1"]).shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(wide.features(wide.genes), axis=1), 1.0, rtol=1e-5)


def test_gene_featurizer_regulon_tf_and_explain(toy_sets):
    pathways, extra = toy_sets
    f = GeneFeaturizer(pathways, [extra], dim=6)
    explained = f.explain("STAT1")
    assert "IFN [toy]" in explained and "TF of REGULON_STAT1 [dorothea]" in explained
    assert "CXCL10" in f.genes
    assert "REGULON_STAT1 [dorothea] (weight -1)" in f.explain("CXCL10")
    assert f.explain("CDK1") == ["CYCLE [toy]", "WEIGHTED [progeny] (weight 2)"]
    # a TF with no set of its own still gets features through its regulon
    g = GeneFeaturizer([_ent("REGULON_TFX", ["T1", "T2", "T3"], "dorothea"), _ent("OTHER", ["O1", "O2"])], dim=3)
    x = g.features(["TFX", "T1", "O1"])
    assert x[0] @ x[1] > x[0] @ x[2]


def test_gene_featurizer_unknown_gene_and_errors(toy_sets):
    pathways, extra = toy_sets
    f = GeneFeaturizer(pathways, [extra], dim=4)
    with pytest.raises(UnknownPerturbationError) as info:
        f.features(["STAT1", "stat2", "NOTAGENE"])
    msg = str(info.value)
    assert "'stat2' (close: STAT2" in msg and "'NOTAGENE'" in msg and "expected genes" in msg
    with pytest.raises(BioworldError, match="positive int"):
        GeneFeaturizer(pathways, dim=0)
    with pytest.raises(BioworldError, match="one weight per gene"):
        GeneFeaturizer([_Ent("BAD", ("A", "B"), (1.0,), "x")])
    with pytest.raises(BioworldError, match="no genes"):
        GeneFeaturizer([])


def test_gene_featurizer_state_round_trip(toy_sets):
    pathways, extra = toy_sets
    f = GeneFeaturizer(pathways, [extra], dim=4)
    g = GeneFeaturizer.from_dict(json.loads(json.dumps(f.to_dict())))
    np.testing.assert_array_equal(f.features(f.genes), g.features(g.genes))
    assert g.explain("STAT1") == f.explain("STAT1") and g.dim == 4
    h = GeneFeaturizer.from_dict(json.loads(json.dumps(f.to_dict(include_membership=False))))
    np.testing.assert_array_equal(f.features(["IRF1"]), h.features(["IRF1"]))
    with pytest.raises(BioworldError, match="include_membership=False"):
        h.explain("STAT1")
    with pytest.raises(CheckpointError, match="version"):
        GeneFeaturizer.from_dict({"version": 0})


def test_gene_featurizer_accepts_entity_sets():
    from bioworld.entities import Entity, EntitySet

    hall = EntitySet([Entity("P1", ("A", "B", "C"), (1.0, 1.0, 1.0), "toy"),
                      Entity("P2", ("C", "D", "E"), (1.0, 1.0, 1.0), "toy")])
    reg = EntitySet([Entity("REGULON_A", ("D", "E", "F"), (1.0, -1.0, 1.0), "dorothea")])
    f = GeneFeaturizer(hall, [reg], dim=3)
    assert f.knows("F") and "TF of REGULON_A [dorothea]" in f.explain("A")


# ---------------------------------------------------------------------------- compound features
SMILES = {
    "ethanol": "CCO",
    "propanol": "CCCO",
    "benzene": "c1ccccc1",
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "broken": "C1CC(",
}


def test_compound_features_and_tanimoto():
    c = CompoundFeaturizer(SMILES)
    f = c.features("aspirin", 10.0)
    assert f.shape == (1025,) and f.dtype == np.float32 and c.dim == 1025
    assert set(np.unique(f[:-1])) <= {0.0, 1.0} and f[:-1].sum() > 0
    assert f[-1] == pytest.approx(np.log10(10.0 + 1e-3))
    assert c.features("aspirin", 0)[-1] == pytest.approx(-3.0)
    np.testing.assert_array_equal(f, CompoundFeaturizer(SMILES).features("aspirin", 10.0))
    assert c.tanimoto("aspirin", "aspirin") == 1.0
    assert c.tanimoto("ethanol", "propanol") > c.tanimoto("ethanol", "benzene")
    with pytest.raises(BioworldError, match=">= 0"):
        c.features("aspirin", -1.0)


def test_compound_errors_name_the_compound():
    c = CompoundFeaturizer(SMILES)
    with pytest.raises(BioworldError, match="malformed SMILES for compound 'broken'"):
        c.features("broken", 1.0)
    with pytest.raises(UnknownPerturbationError, match="close: aspirin"):
        c.features("Aspirin", 1.0)
    with pytest.raises(BioworldError, match="1 compound"):
        c.validate()
    c.validate(["ethanol", "aspirin"])
    with pytest.raises(BioworldError, match="mapping"):
        CompoundFeaturizer("CCO")  # type: ignore[arg-type]
    d = CompoundFeaturizer.from_dict(json.loads(json.dumps(c.to_dict())))
    np.testing.assert_array_equal(d.features("benzene", 1.0), c.features("benzene", 1.0))


def test_bundled_smiles_tables():
    lincs = load_smiles_table(DATA / "lincs_drugs_smiles.csv", kind="lincs")
    sciplex = load_smiles_table(DATA / "sciplex_trapnell_drugs_smiles.csv", kind="sciplex")
    assert len(lincs) == 17_775 and len(sciplex) == 188
    assert load_smiles_table(DATA / "lincs_drugs_smiles.csv") == lincs  # kind="auto"
    assert load_smiles_table(DATA / "sciplex_trapnell_drugs_smiles.csv") == sciplex
    assert all(not k.startswith(" ") and not v.startswith(" ") for k, v in list(lincs.items())[:50])
    assert compound_key("BRD-K76908866-001-06-8") == "BRD-K76908866"
    assert compound_key("DMSO") == "DMSO"
    assert "BRD-K76908866" in lincs and sciplex["control"] == "CS(C)=O"
    named = smiles_for({"neratinib": "BRD-K85606544-001-08-3"}, lincs)
    feats = CompoundFeaturizer(named).features("neratinib", 3.33)
    assert feats.shape == (1025,)
    with pytest.raises(UnknownPerturbationError, match="no SMILES"):
        smiles_for({"mystery": "BRD-X00000000-000"}, lincs)
    with pytest.raises(BioworldError, match="kind"):
        load_smiles_table(DATA / "lincs_drugs_smiles.csv", kind="chembl")  # type: ignore[arg-type]


def test_smiles_table_conflicts(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,CCO,x\na,CCCO,y\n")
    with pytest.raises(BioworldError, match="two SMILES"):
        load_smiles_table(p, kind="sciplex")
    (tmp_path / "one.csv").write_text("just-one-column\n")
    with pytest.raises(BioworldError, match="1 column"):
        load_smiles_table(tmp_path / "one.csv")
    with pytest.raises(BioworldError, match="does not exist"):
        load_smiles_table(tmp_path / "missing.csv", kind="sciplex")
