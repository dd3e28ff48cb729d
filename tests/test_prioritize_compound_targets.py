"""Issue 14: a genetic model (no compound features) ranks compounds as the loss of their known targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioworld.actions import parse_action
from bioworld.errors import BioworldError
from bioworld.knowledge import CompoundKnowledge

torch.set_num_threads(1)

#: Hand-made compounds on the small simulation's genes (the bundled table's targets are human genes).
TABLE = {"cpd-one": ["P2_DRV1"], "cpd-readout": ["P1_DRV1", "JAK1"], "cpd-wide": ["JAK1", "JAK2", "JAK3", "TYK2"],
         "cpd-broad": ["JAK1", "JAK2", "JAK3", "TYK2", "STAT1", "STAT2", "STAT3", "IRF1", "IRF9"],
         "cpd-off-table": ["NOTAGENE123"], "cpd-none": []}


def test_compounds_are_scored_as_the_loss_of_their_targets(tiny_trained, cells, knowledge):
    names = [*TABLE, "not-a-compound-xyz"]
    # 12 cells <= screen_cells: every row is exact, so equal actions give equal scores
    res = tiny_trained.prioritize(cells, "down:SIM_P1", genes=sorted({*tiny_trained.space.genetic_targets(), "P1_DRV1"}),
                                  compounds=names, pairs=False, n_boot=5, readout_share=0.05)
    t = res.table.set_index("intervention")
    comp = t[t["kind"] == "compound"]
    assert set(comp.index) == {"cpd-one", "cpd-readout", "cpd-wide"}
    assert not comp["seen"].any() and comp["drugs"].eq("").all()
    space = tiny_trained.space
    one = comp.loc["cpd-one"]
    assert one["action"] == space.parse("ko:P2_DRV1").label
    assert "cpd-one: as the inhibition of its target P2_DRV1 (ko:P2_DRV1)" in one["evidence"]
    gene = t[(t["kind"] == "gene") & (t["action"] == one["action"])]
    assert len(gene) == 1 and gene["seen"].iloc[0]  # the same knockout, trained on
    assert one["score"] == pytest.approx(float(gene["score"].iloc[0]), rel=1e-5, abs=1e-6)
    # more targets than the model combines (2): scored additively, every target in the action
    wide = comp.loc["cpd-wide"]
    assert {p.target for p in space.parse(wide["action"]).components} == {"JAK1", "JAK2", "JAK3", "TYK2"}
    assert np.isfinite(wide["score"]) and "JAK1, JAK2, JAK3, TYK2" in wide["evidence"]
    # the guard: the knockout of P1_DRV1 (a SIM_P1 readout gene) is flagged by the static rule, the compound
    # hitting it is not (it acts on the protein); it is flagged only when the model's predicted readout change
    # runs mostly through its targets' own transcripts (the stand-in knockout's artefact)
    assert t.loc[space.parse("ko:P1_DRV1").label, "flag"] == "readout"
    assert 0 < comp.loc["cpd-readout", "own_share"] and comp.loc["cpd-one", "own_share"] == 0
    assert ((comp["flag"] == "readout") == (comp["own_share"] >= 0.5)).all()
    assert not comp["flag_reason"].str.contains("directly sets").any()
    assert comp.loc[comp["flag"] == "readout", "flag_reason"].str.contains("compound's targets: ").all()
    # nothing dropped silently: each compound not scored is counted with its reason
    skipped = res.provenance["compounds_not_scored"]
    assert skipped == {"more than 8 representable targets (a broad inhibitor)": ["cpd-broad"],
                       "no representable target": ["cpd-off-table"], "no known target": ["cpd-none"],
                       "not in the bundled compound knowledge": ["not-a-compound-xyz"]}
    assert len(comp) + sum(len(v) for v in skipped.values()) == len(names)
    assert res.provenance["compounds_not_scored_text"].startswith("4 compounds not scored: ")


def test_every_bundled_compound_is_a_row_or_counted(tiny_trained, cells):
    res = tiny_trained.prioritize(cells, "down:SIM_P1", max_genes=0, pairs=False, n_boot=5)
    t = res.table
    ck = CompoundKnowledge.bundled()
    n_rows = int((t["kind"] == "compound").sum())
    skipped = res.provenance["compounds_not_scored"]
    assert n_rows > 100
    assert len(skipped["no known target"]) == sum(1 for k in ck.keys if not ck.targets(k))
    comp = t[t["kind"] == "compound"]
    assert comp["evidence"].str.contains("as the inhibition of its target").all()
    assert comp["model_pct"].between(0, 1).all() and comp["prior_pct"].between(0, 1).all()
    # one row per distinct action: no two compound rows run the same knockouts (the bundled table has such
    # compounds on this model's genes, so rows stand for several), and every scored compound is still a row
    # or named in the same_action column of the one row that stands for it
    acts = [frozenset(tiny_trained.space.parse(a).components) for a in comp["action"]]
    assert len(set(acts)) == len(acts) and comp["n_same_action"].sum() > 0
    named = list(comp["intervention"]) + [n for v in comp["same_action"] if v for n in v.split(", ")]
    assert len(named) == len(set(named)) == n_rows + int(comp["n_same_action"].sum())
    assert n_rows + int(comp["n_same_action"].sum()) + sum(len(v) for v in skipped.values()) == len(ck.keys)
    assert set(named) == {ck.name(k) for k in ck.keys} - {n for v in skipped.values() for n in v}
    merged = res.provenance["compounds_same_action"]
    assert sum(len(v) for v in merged.values()) == int(comp["n_same_action"].sum())
    for row in comp[comp["n_same_action"] > 0].itertuples():
        assert merged[row.intervention] == row.same_action.split(", ")
        assert all(n in row.evidence for n in row.same_action.split(", "))
    # pairs are not duplicated through a compound either: no two pair rows run the same action
    pair_acts = [frozenset(tiny_trained.space.parse(a).components) for a in t.loc[t["kind"] == "pair", "action"]]
    assert len(set(pair_acts)) == len(pair_acts)


def test_pairs_with_a_compound_join_the_actions_and_skip_shared_targets(tiny_trained, cells, knowledge):
    res = tiny_trained.prioritize(cells, "down:SIM_P1", genes=["P2_DRV1", "P3_DRV1"],
                                  compounds=["cpd-one", "cpd-wide"], n_boot=5, gene_pairs_top=8)
    t = res.table.set_index("intervention")
    pairs = t[(t["kind"] == "pair") & ~t.index.str.startswith("silence:")]
    space = tiny_trained.space
    got = set(pairs.index)
    # 4 singles: 6 pairs less the one that would knock out P2_DRV1 twice (cpd-one is its knockout)
    assert len(got) == 5 and not any({"P2_DRV1", "cpd-one"} <= set(lab.split("+")) for lab in got)
    for lab in got:
        parts = lab.split("+")
        want = set().union(*({str(p) for p in space.parse(t.loc[s, "action"]).components} for s in parts))
        assert {str(p) for p in space.parse(t.loc[lab, "action"]).components} == want
        if {"cpd-one", "cpd-wide"} & set(parts):
            assert not t.loc[lab, "seen"] and "as the inhibition of its target" in t.loc[lab, "evidence"]


def test_inhibition_kind_follows_the_screen():
    from bioworld.query._candidates import inhibition_kind

    class Space:
        parse = staticmethod(parse_action)

    assert inhibition_kind(Space(), ["kd:A", "kd:B", "ko:C", "control"]) == "kd"
    assert inhibition_kind(Space(), ["A", "B", "control"]) == "ko"  # a bare gene is a knockout


def test_a_wider_table_only_on_request(tiny_trained):
    space = tiny_trained.space
    three = parse_action("ko:JAK1+ko:JAK2+ko:TYK2")
    with pytest.raises(BioworldError, match="at most 2"):
        space.check(three)
    space.check(three, width=3)
    assert space.encode([three], width=3).kind.shape == (1, 3)
    assert space.encode([parse_action("ko:JAK1")]).kind.shape == (1, 2)


def test_compound_display_names():
    ck = CompoundKnowledge.bundled()
    assert ck.name("abexinostat") == "Abexinostat"  # 'Abexinostat (PCI-24781)' without its bracketed synonym
    assert ck.name("ruxolitinib") == "ruxolitinib"
    assert ck.name("no-such-key") == "no-such-key"
    assert all(not any(c in ck.name(k) for c in '+@:"') for k in ck.keys)


def test_the_report_says_how_compounds_were_scored(tiny_trained, cells, knowledge, tmp_path):
    from bioworld.report import write_report

    res = tiny_trained.prioritize(cells, "down:SIM_P1", compounds=["cpd-one", "cpd-none"], max_genes=0, pairs=False,
                                  n_boot=5)
    html = write_report(res, tmp_path, model=tiny_trained).read_text()
    assert "scored as the loss" in html and "1 compound not scored: 1 no known target (e.g. cpd-none)" in html


def test_counterfactuals_of_a_compound_row_carry_its_name(tiny_trained, cells):
    from bioworld.query._anndata import relabel_interventions

    act = tiny_trained.space.parse("ko:JAK1+ko:P2_DRV1").label
    cf = relabel_interventions(tiny_trained.counterfactual(cells[:3].copy(), [act, "P3_DRV1"]), {act: "cpd-x"})
    assert list(cf.obs["bw_intervention"].cat.categories) == ["cpd-x", "P3_DRV1"]
    assert set(cf.uns["bioworld"]["entity_effects"]) == {"cpd-x", "P3_DRV1"}
    assert cf.obs_names[0].startswith("cpd-x|") and cf.obs_names.is_unique


#: Compounds with the same representable targets (in another order, or with a target the model lacks) are one
#: action: one row, named by the compound with the fewest unrepresentable targets (then the name).
SAME = {"cpd-b": ["JAK2", "JAK1"], "cpd-a": ["JAK1", "JAK2"], "cpd-c": ["JAK1", "NOTAGENE123", "JAK2"],
        "cpd-d": ["JAK1", "JAK2", "TYK2"], "cpd-one": ["P2_DRV1"]}


@pytest.fixture()
def same_knowledge(monkeypatch):
    ck = CompoundKnowledge.bundled().with_targets(SAME)
    monkeypatch.setattr("bioworld.query._candidates._compound_knowledge", lambda: ck)
    return ck


def test_merge_same_action_keeps_every_compound():
    from bioworld.query._candidates import TargetCompound, merge_same_action

    def tc(name, targets, missing=()):
        return TargetCompound(name, parse_action("+".join(f"ko:{g}" for g in targets)), tuple(targets), missing)

    rows = merge_same_action([tc("Zeta", ["A", "B"]), tc("beta", ["C"]), tc("alpha", ["B", "A"], ("X",)),
                              tc("Gamma", ["A", "B"]), tc("delta", ["C", "D"])])
    assert [r.name for r in rows] == ["Gamma", "beta", "delta"]  # the order of each action's first compound
    assert [o.name for o in rows[0].same_action] == ["Zeta", "alpha"]  # no missing target first, then the name
    assert rows[0].names() == ("Gamma", "Zeta", "alpha") and rows[1].names() == ("beta",)
    assert "for 2 more compounds with these representable targets: Zeta, alpha (+1 target the model cannot " \
           "represent)" in rows[0].evidence()
    again = merge_same_action([*rows, tc("aa", ["A", "B"])])  # a row that stands for others is unpacked
    assert again[0].names() == ("aa", "Gamma", "Zeta", "alpha") and not any(o.same_action for o in again[0].same_action)
    assert merge_same_action([]) == []


def test_compounds_of_one_action_are_one_row(tiny_trained, cells, same_knowledge, tmp_path):
    import pandas as pd

    from bioworld.query._candidates import target_compounds
    from bioworld.report import write_report

    space = tiny_trained.space
    unmerged, _ = target_compounds(space, [], list(SAME), merge=False)  # no labels: knockouts
    assert len(unmerged) == 5 and len({frozenset(t.action.components) for t in unmerged}) == 3
    res = tiny_trained.prioritize(cells, "down:SIM_P1", genes=["P3_DRV1"], compounds=list(SAME), n_boot=5,
                                  gene_pairs_top=8, entities=[])
    t = res.table.set_index("intervention")
    comp = t[t["kind"] == "compound"]
    assert set(comp.index) == {"cpd-a", "cpd-d", "cpd-one"}
    row = comp.loc["cpd-a"]
    assert row["same_action"] == "cpd-b, cpd-c" and row["n_same_action"] == 2
    assert "cpd-b, cpd-c (+1 target the model cannot represent)" in row["evidence"]
    assert (comp.drop("cpd-a")["same_action"] == "").all() and (comp.drop("cpd-a")["n_same_action"] == 0).all()
    assert res.provenance["compounds_same_action"] == {"cpd-a": ["cpd-b", "cpd-c"]}
    # pairs: every single is paired (4 singles: 6 pairs less cpd-a+cpd-d, which share targets), none through a
    # merged compound, none duplicated
    pairs = t[t["kind"] == "pair"]
    assert len(pairs) == 5 and not pairs.index.str.contains("cpd-b|cpd-c").any()
    assert len({frozenset(space.parse(a).components) for a in pairs["action"]}) == len(pairs)
    with_a = pairs[pairs.index.str.contains("cpd-a", regex=False)]
    assert len(with_a) == 2 and (with_a["same_action"] == "cpd-b (as cpd-a), cpd-c (as cpd-a)").all()
    assert (pairs.drop(with_a.index)["n_same_action"] == 0).all() and (with_a["n_same_action"] == 2).all()
    # nothing silently dropped: the CSV keeps its columns and names every compound; the report names the
    # merged ones under their row and in the methods
    html = write_report(res, tmp_path, model=tiny_trained).read_text().replace("<wbr>", "")
    csv = pd.read_csv(tmp_path / "ranked_interventions.csv", keep_default_na=False)
    assert {"rank", "intervention", "kind", "score", "flag", "seen", "evidence", "same_action"} <= set(csv.columns)
    text = " ".join(csv["intervention"]) + " " + " ".join(csv["same_action"])
    assert all(name in text for name in SAME)
    assert "+2 compounds scored as the same action (same targets): cpd-b, cpd-c" in html
    assert "2 compounds are scored as the same action (the same representable targets) as another compound and " \
           "share its row (column same_action): cpd-a (with cpd-b, cpd-c)" in html
