"""Issue 14: the tautology guard, candidates beyond the trained targets, evidence per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioworld.actions import parse_action
from bioworld.errors import BioworldError
from bioworld.query._candidates import Readout, readout_flags

torch.set_num_threads(1)


def _readout() -> Readout:
    panel = [f"g{i}" for i in range(10)]
    members = {"GOAL": frozenset(panel[:4]), "SYN": frozenset(panel[:3] + panel[8:9]),  # 3 of GOAL's 4 genes
               "HALF": frozenset(panel[2:4] + panel[4:8]),  # 2 shared of 6: Jaccard 0.25, 50% of GOAL's genes
               "FAR": frozenset(panel[3:4] + panel[4:9])}  # 1 shared of 6: Jaccard 1/9, 25% / 17%
    w = np.array([5.0, 1.0, 1.0, 1.0] + [0.0] * 6)  # g0 carries 5/8 of the readout
    return Readout("GOAL", panel, w, members)


def test_guard_flags_the_readout_and_its_synonyms_only():
    labels = ["silence:GOAL", "silence:SYN", "silence:HALF", "silence:FAR", "ko:g0", "ko:g1", "ko:g5",
              "ko:g1+ko:g2", "silence:FAR+ko:g5", "silence:FAR+silence:GOAL", "drugX@1"]
    flags, reasons = readout_flags([parse_action(lab) for lab in labels], _readout(), overlap=0.5, readout_share=0.2)
    got = dict(zip(labels, flags))
    assert {lab for lab, f in got.items() if f} == {"silence:GOAL", "silence:SYN", "silence:HALF", "ko:g0",
                                                     "ko:g1+ko:g2", "silence:FAR+silence:GOAL"}
    assert set(flags) == {"readout", ""}
    why = dict(zip(labels, reasons))
    assert "goal entity GOAL itself" in why["silence:GOAL"] and "Jaccard 0.60" in why["silence:SYN"]
    assert "50% of GOAL's genes" in why["silence:HALF"] and "62%" in why["ko:g0"]
    # a silence whose genes carry enough of the readout is flagged too (FAR sets g3: 1/8 = 12.5%)
    flags, reasons = readout_flags([parse_action("silence:FAR"), parse_action("silence:FAR+ko:g1")], _readout(),
                                   readout_share=0.2)
    assert flags == ["", "readout"] and "g1, g3" in reasons[1] and "25%" in reasons[1]
    assert readout_flags([parse_action("silence:FAR")], _readout(), readout_share=0.1)[0] == ["readout"]
    assert why["silence:FAR"] == "" and why["ko:g5"] == ""
    # a pair of readout genes is judged on their shares together (1/8 + 1/8 = 25% >= 20%, 1/8 alone is not)
    assert "g1, g2" in why["ko:g1+ko:g2"] and "25%" in why["ko:g1+ko:g2"]
    flags, _ = readout_flags([parse_action("ko:g1+ko:g2"), parse_action("ko:g1")], _readout(), readout_share=0.2)
    assert flags == ["readout", ""]
    # toward:control has no single readout entity: nothing is flagged
    none = Readout(None, _readout().panel, None, _readout().members)
    assert readout_flags([parse_action("silence:GOAL")], none) == ([""], [""])


@pytest.fixture(scope="module")
def cells(small_sim):
    a = small_sim.adata
    return a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:40]].copy()


@pytest.fixture(scope="module")
def ranked(tiny_trained, cells):
    goal = tiny_trained.entity_names[0]
    # readout_share 0.05: the knockouts of the goal entity's own genes (1/12 of its readout each) are flagged
    return goal, tiny_trained.prioritize(cells, f"down:{goal}", n_boot=20, max_genes=60, readout_share=0.05)


def test_flagged_tautologies_rank_after_every_upstream_candidate(ranked, tiny_trained):
    goal, res = ranked
    t = res.table
    members = {g for g, w in zip(tiny_trained.genes, tiny_trained.membership[0]) if w}
    flagged = t["flag"] == "readout"
    assert set(t["flag"]) == {"readout", ""}
    # every candidate acting on the readout is flagged, with its reason
    # (column action: what the row ran; a compound of this genetic model is the knockout of its targets)
    own = t["action"].map(lambda lab: f"silence:{goal}" in lab or
                          any(p.kind == "ko" and p.target in members for p in tiny_trained.parse(lab).components))
    assert (flagged == own).all()
    assert (t.loc[flagged, "flag_reason"].str.len() > 0).all() and (t.loc[~flagged, "flag_reason"] == "").all()
    # ranked apart: no flagged row above an unflagged one, so the top 10 holds none
    first_flag = int(np.flatnonzero(flagged.to_numpy())[0])
    assert not flagged.iloc[first_flag:].eq(False).any() and not flagged.head(10).any()
    assert res.provenance["n_flagged"] == int(flagged.sum())


def test_candidates_reach_beyond_the_trained_genes_with_evidence(ranked, tiny_trained):
    _, res = ranked
    t = res.table
    assert set(t["kind"]) <= {"gene", "compound", "entity", "pair"}
    trained_genes = set(tiny_trained.space.genetic_targets())
    genes = t[t["kind"] == "gene"]
    assert len(genes) == 60 and trained_genes <= set(genes["intervention"])
    unseen = genes[~genes["seen"]]
    assert len(unseen) >= 60 - len(trained_genes) and not (set(unseen["intervention"]) & set(tiny_trained.train_labels))
    assert unseen["evidence"].str.contains("nearest measured").all()
    assert t.loc[t["seen"], "evidence"].str.startswith("measured").all()
    assert t.loc[t["kind"] == "entity", "evidence"].str.contains("panel genes set off").all()
    # every row's evidence is filled in
    assert (t["evidence"].str.len() > 0).all()


def test_max_genes_and_dose_are_checked(tiny_trained, cells):
    goal = f"down:{tiny_trained.entity_names[0]}"
    small = tiny_trained.prioritize(cells, goal, n_boot=5, max_genes=0, pairs=False)
    assert set(small.table.loc[small.table["kind"] == "gene", "intervention"]) == set(tiny_trained.space.genetic_targets())
    with pytest.raises(BioworldError, match="max_genes"):
        tiny_trained.prioritize(cells, goal, max_genes=-1)
    with pytest.raises(BioworldError, match="dose"):
        tiny_trained.prioritize(cells, goal, dose=float("nan"))


def test_gene_table_names_that_are_not_labels_are_never_candidates(tiny_trained, monkeypatch):
    import bioworld.query._candidates as C
    from bioworld.query._candidates import _knockout_label, gene_candidates, unlabelled_genes
    from bioworld.query._planner import Goal

    monkeypatch.setattr(C, "MIN_SHARED_PANEL", 0.0)  # the whole table, though the simulator's names are no one's

    space = tiny_trained.space
    assert _knockout_label(space, "JAK1") and not _knockout_label(space, "TP73:DELTA")
    assert not _knockout_label(space, "A+B") and not _knockout_label(space, "X@1")
    goal = Goal.parse(f"down:{tiny_trained.entity_names[0]}", entity_names=tiny_trained.entity_names)
    every = gene_candidates(space, Readout.of(goal, tiny_trained.engine, tiny_trained.genes),
                            trained=sorted(tiny_trained.engine.trained), max_genes=None)
    assert all(_knockout_label(space, g) for g in every)
    # every table name is a candidate, or counted as not writable as a label, or has no features
    assert len(every) + unlabelled_genes(space) <= len(space.genes.genes)
    assert len(every) > 1000


def test_knockouts_that_move_the_readout_through_their_own_transcript_are_flagged(tiny_trained, cells):
    goal = tiny_trained.entity_names[0]
    members = {g for g, w in zip(tiny_trained.genes, tiny_trained.membership[0]) if w}
    t = tiny_trained.prioritize(cells, f"down:{goal}", n_boot=5, max_genes=30).table  # readout_share 0.1
    own = t[t["flag_reason"].str.contains("own transcript", regex=False)]
    assert len(own) > 0 and (own["flag"] == "readout").all()
    for lab in own["action"]:  # only knockouts of the readout's own genes
        assert {p.target for p in tiny_trained.parse(lab).components if p.kind == "ko"} & members
    assert not (t["flag"].head(10) == "readout").any()
    # own_share: the share of the predicted readout change carried by the knocked-out genes' own transcripts
    assert (own["own_share"] >= 0.5).all()
    no_readout_gene = [not ({p.target for p in tiny_trained.parse(lab).components} & members)
                       for lab in t["action"]]
    assert (t.loc[no_readout_gene, "own_share"] == 0).all()


def test_compound_aliases_are_one_candidate():
    from bioworld.query._candidates import dedupe_compounds

    kept, merged = dedupe_compounds(["dactolisib", "NVP-BEZ235", "vemurafenib", "my-cpd"], seen={"NVP-BEZ235"})
    assert kept == ["NVP-BEZ235", "my-cpd", "vemurafenib"] and merged == {"NVP-BEZ235": ["dactolisib"]}
    # without a trained name, the one with a structure wins, then the key itself
    kept, _ = dedupe_compounds(["dactolisib", "NVP-BEZ235"], smiles={"NVP-BEZ235"})
    assert kept == ["NVP-BEZ235"]
    kept, _ = dedupe_compounds(["NVP-BEZ235", "dactolisib"])
    assert kept == ["dactolisib"]
    kept, merged = dedupe_compounds(["a1", "a2", "b"], key=lambda n: n[0])
    assert kept == ["a1", "b"] and merged == {"a1": ["a2"]}


def test_pairs_that_add_nothing_name_their_single_and_gene_deltas_are_kept(ranked, tiny_trained):
    _, res = ranked
    t = res.table.set_index("intervention")
    pairs = t[t["kind"] == "pair"]
    assert len(pairs)
    n_checked = 0
    for lab, r in pairs.iterrows():
        parts = lab.split("+") if all(s in t.index for s in lab.split("+")) else \
            [tiny_trained.space.parse(str(p)).label for p in tiny_trained.space.parse(lab).components]
        assert all(s in t.index for s in parts), (lab, parts)
        best = max((t.loc[s] for s in parts), key=lambda x: x["score"])
        n_checked += 1
        if r["collapsed_into"]:
            assert r["collapsed_into"] == best.name and r["score"] <= best["score_hi"]
        else:
            assert r["score"] > best["score_hi"]
    assert n_checked == len(pairs)
    assert (t.loc[t["kind"] != "pair", "collapsed_into"] == "").all()
    assert res.provenance["n_pairs_collapsed"] == int((t["collapsed_into"] != "").sum())
    gd = res.gene_delta
    assert list(gd.columns) == list(tiny_trained.genes) and 0 < len(gd) <= 30 and np.isfinite(gd.to_numpy()).all()
    assert set(gd.index) <= set(t.index[(t["flag"] == "") & (t["collapsed_into"] == "")])
    assert np.abs(gd.to_numpy()).max() > 0


def test_a_panel_the_bundled_gene_sets_do_not_name_gets_only_its_own_genes(tiny_trained):
    """The simulator's gene names are in none of the bundled gene sets: the default gene candidates are its targets
    and panel genes (with a warning that says so), not the sets' 18,000 human genes; a human panel keeps them."""
    from bioworld.data import DataWarning
    from bioworld.query._candidates import _in_namespace, gene_candidates
    from bioworld.query._planner import Goal

    space = tiny_trained.space
    goal = Goal.parse(f"down:{tiny_trained.entity_names[0]}", entity_names=tiny_trained.entity_names)
    with pytest.warns(DataWarning, match=r"name 0 of the panel's \d+ genes") as caught:
        every = gene_candidates(space, Readout.of(goal, tiny_trained.engine, tiny_trained.genes),
                                trained=sorted(tiny_trained.engine.trained), max_genes=None)
    assert caught[0].filename == __file__  # the warning points at the caller's line, not inside bioworld
    assert set(every) <= set(tiny_trained.genes) | set(space.genetic_targets())
    assert len(set(every) - set(space.genetic_targets())) > 0  # the panel's other genes are candidates
    human = ["STAT1", "JAK2", "IRF1", "IFNGR1", "CD274", "SYNTHETIC1"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert _in_namespace(["MEP1A", "TP53", "STAT2"], human) == ["MEP1A", "TP53", "STAT2"]


def test_goal_on_an_unknown_entity_lists_entities_and_matches_case():
    """'down:jak-stat' on a model with 'JAK-STAT' said 'close matches: none' (difflib is case-sensitive) and sent a
    CLI user to bioworld.json for the names."""
    from bioworld.query._planner import Goal

    names = ["HALLMARK_APOPTOSIS", "JAK-STAT", "MAPK"]
    with pytest.raises(BioworldError) as err:
        Goal.parse("down:jak-stat", entity_names=names)
    msg = str(err.value)
    assert "close matches: ['JAK-STAT']" in msg and "e.g. down:JAK-STAT" in msg and "'MAPK'" in msg
    assert "bioworld.json" not in msg
