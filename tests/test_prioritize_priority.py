"""The planner's default ranking (issue #14): the model's calibrated evidence joined with a knowledge prior."""

from __future__ import annotations

import numpy as np
import pytest

from bioworld.actions import parse_action
from bioworld.query._priority import calibration_group, priority_columns, rank_pct


class _Compounds:
    """A model's compound features: which names have a structure / a knowledge row."""

    def __init__(self, structure, knowledge):
        self.structure, self.knowledge = set(structure), set(knowledge)
        self.user_targets = {}

    def knows_structure(self, name):
        return name in self.structure

    def resolve(self, name):
        return name if name in self.knowledge else None


class _Space:
    def __init__(self, compounds=None):
        self.compounds = compounds


def test_rank_pct_is_the_mid_rank_with_ties_single_and_nan():
    np.testing.assert_allclose(rank_pct(np.array([3.0, 1.0, 2.0])), [5 / 6, 1 / 6, 0.5])
    np.testing.assert_allclose(rank_pct(np.array([1.0, 1.0, 2.0])), [1 / 3, 1 / 3, 5 / 6])
    assert rank_pct(np.array([7.0]))[0] == 0.5  # one candidate: no information on where it stands
    np.testing.assert_allclose(rank_pct(np.array([2.0, 1.0])), [0.75, 0.25])  # a group of two stays off 0 and 1
    r = rank_pct(np.array([np.nan, 2.0, 1.0]))
    assert np.isnan(r[0]) and r[1] == 0.75 and r[2] == 0.25


def test_calibration_groups_separate_measured_and_how_a_compound_is_described():
    sp = _Space(_Compounds(structure={"A", "B"}, knowledge={"A", "C"}))
    g = [calibration_group(parse_action(lab), seen, sp) for lab, seen in
         [("A@1", False), ("B@1", False), ("C@1", False), ("D@1", False), ("A@1", True), ("ko:STAT1", False),
          ("ko:STAT1", True), ("silence:X", False), ("ko:STAT1+ko:IRF1", False)]]
    assert g == ["compound:structure+knowledge", "compound:structure", "compound:knowledge", "compound:name",
                 "compound:measured", "gene", "gene:measured", "entity", "pair"]


def _logodds(m, p):
    from scipy.special import expit, logit

    return expit(0.5 * logit(m) + 0.5 * logit(p))


def test_each_description_gets_one_scale_and_the_prior_joins_with_equal_weight():
    # structure-described compounds all score below knowledge-only ones (the model's scale differs by
    # description); within each group the order is kept and both groups span 0-1
    sp = _Space(_Compounds(structure={"S1", "S2", "S3"}, knowledge={"K1", "K2", "K3"}))
    labs = ["S1@1", "S2@1", "S3@1", "K1@1", "K2@1", "K3@1"]
    acts = [parse_action(lab) for lab in labs]
    score = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    prior = np.array([np.nan] * 6)  # no compound has a target on the network
    m, p, pr = priority_columns(acts, [False] * 6, score, np.zeros(6), prior, sp, has_prior=True)
    np.testing.assert_allclose(m, [1 / 6, 0.5, 5 / 6, 1 / 6, 0.5, 5 / 6])
    np.testing.assert_allclose(p, 0.5)  # no information: the middle
    np.testing.assert_allclose(pr, _logodds(m, 0.5))
    prior = np.array([0.3, 0.2, 0.1, np.nan, 0.05, 0.0])
    m, p, pr = priority_columns(acts, [False] * 6, score, np.zeros(6), prior, sp, has_prior=True)
    np.testing.assert_allclose(p, [0.9, 0.7, 0.5, 0.5, 0.3, 0.1])
    np.testing.assert_allclose(pr, _logodds(m, p))
    _, _, mean = priority_columns(acts, [False] * 6, score, np.zeros(6), prior, sp, has_prior=True, fusion="mean")
    np.testing.assert_allclose(mean, (m + p) / 2)
    # no readout entity (toward:control): the model's evidence alone
    m2, p2, pr2 = priority_columns(acts, [False] * 6, score, np.zeros(6), prior, sp, has_prior=False)
    assert np.isnan(p2).all() and np.allclose(pr2, _logodds(m2, 0.5))  # no prior: it counts as no information


def test_the_own_transcript_part_is_not_evidence_and_pairs_average_their_parts_prior():
    sp = _Space()
    labs = ["ko:A", "ko:B", "ko:C", "ko:A+ko:B", "silence:E"]
    acts = [parse_action(lab) for lab in labs]
    score = np.array([3.0, 2.0, 1.0, 4.0, 5.0])
    own = np.array([0.9, 0.0, 0.0, 0.0, 0.0])  # A's predicted change is 90% its own transcript: 0.3 upstream
    prior = np.array([0.0, 0.2, 0.1, np.nan, np.nan])
    m, p, pr = priority_columns(acts, [False] * 5, score, own, prior, sp, has_prior=True, pair_parts={3: (0, 1)})
    np.testing.assert_allclose(m[:3], [1 / 6, 5 / 6, 0.5])
    np.testing.assert_allclose(p[:3], [1 / 6, 5 / 6, 0.5])
    assert p[3] == pytest.approx(0.5)  # mean of its parts' prior percentiles
    assert np.isnan(p[4]) and pr[4] == m[4] == 0.5  # a silence: no prior (0.5); alone in its group
    assert np.argmax(pr[:3]) == 1


def test_log_odds_keeps_a_candidate_one_source_places_at_its_top():
    from bioworld.errors import BioworldError
    from bioworld.query._priority import fuse

    m, p = np.array([0.99, 0.75, 0.5, 0.3]), np.array([0.5, 0.75, 0.5, 0.7])
    lo, mean = fuse(m, p), fuse(m, p, how="mean")
    assert lo[0] > lo[1] and mean[0] < mean[1]  # top of one source vs good on both: the fusions disagree
    assert lo[2] == pytest.approx(0.5) and lo[3] == pytest.approx(_logodds(0.3, 0.7)) == pytest.approx(0.5)
    np.testing.assert_allclose(fuse(m, np.full(4, np.nan)), fuse(m, np.full(4, 0.5)))  # NaN = no information
    assert fuse(np.array([0.9]), np.array([0.5]), weight=0.0)[0] == pytest.approx(0.5)  # weight 0: the prior alone
    with pytest.raises(BioworldError, match="fusion"):
        fuse(m, p, how="max")


def test_a_kind_the_model_never_measured_carries_no_model_evidence():
    from types import SimpleNamespace

    from bioworld.query._priority import measured_kinds

    sp = _Space(_Compounds(structure=(), knowledge={"K1", "K2", "K3"}))
    sp.parse = parse_action
    assert measured_kinds(["control", "K1@1", "K2@10"], sp) == {"compound"}
    assert measured_kinds(["control", "ko:A", "ko:A+ko:B"], SimpleNamespace(parse=parse_action)) == {"gene"}
    labs = ["K1@1", "K2@1", "K3@1", "ko:A", "ko:B", "ko:C", "ko:A+K1@1"]
    acts = [parse_action(lab) for lab in labs]
    score = np.array([1.0, 2.0, 3.0, 9.0, 1.0, 5.0, 7.0])
    prior = np.array([0.1, 0.2, 0.3, 0.3, 0.2, 0.1, np.nan])
    m, p, pr = priority_columns(acts, [False] * 7, score, np.zeros(7), prior, sp, has_prior=True,
                                measured={"compound"}, pair_parts={6: (0, 3)})
    np.testing.assert_allclose(m[:3], [1 / 6, 0.5, 5 / 6])  # compounds: the model's evidence, ranked
    np.testing.assert_allclose(m[3:], 0.5)  # knockouts (and a pair holding one): no measured knockout, no evidence
    np.testing.assert_allclose(pr[3:6], _logodds(0.5, p[3:6]))  # their order is the prior's
    m_all, _, _ = priority_columns(acts, [False] * 7, score, np.zeros(7), prior, sp, has_prior=True)
    assert m_all[3] == pytest.approx(5 / 6)  # every kind measured (None): ranked by the model


def test_network_proximity_is_highest_at_the_seeds_and_absent_off_the_network():
    from scipy import sparse

    from bioworld.errors import BioworldError
    from bioworld.knowledge.network import network_proximity

    genes = ["A", "B", "C", "D", "E"]  # a chain A-B-C-D, E isolated
    a = sparse.csr_matrix(np.array([[0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0],
                                    [0, 0, 0, 0, 0]], float))
    p = network_proximity(["A"], network=(genes, a))
    assert p["A"] > p["B"] > p["C"] > p["D"] > 0 and "E" not in p
    with pytest.raises(BioworldError, match="seed genes"):
        network_proximity(["Z"], network=(genes, a))


def test_prioritize_ranks_by_priority_and_pairs_only_the_best_silences(tiny_trained, small_sim):
    a = small_sim.adata
    cells = a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:40]].copy()
    wm = tiny_trained
    goal = f"down:{wm.entity_names[0]}"
    res = wm.prioritize(cells, goal, n_boot=10, max_genes=0, gene_pairs_top=0, entity_pairs_top=3)
    t = res.table
    silences = t[t["kind"] == "entity"].sort_values(["flag", "priority"], ascending=[True, False],
                                                     key=lambda c: c != "" if c.name == "flag" else c)
    pairs = t[t["intervention"].str.count("silence:") == 2]
    assert len(pairs) == 3  # the pairs of the 3 best silences, not every pair of the model's slots
    best = set(silences["intervention"].head(3))
    assert all(set(p.split("+")) <= best for p in pairs["intervention"])
    flagged = (t["flag"] != "").to_numpy()
    assert not (flagged[:-1] & ~flagged[1:]).any()
    for part in (t[~flagged], t[flagged]):
        assert (np.diff(part["priority"].to_numpy()) <= 0).all()
    every = wm.prioritize(cells, goal, n_boot=10, max_genes=0, gene_pairs_top=0, entity_pairs_top=len(wm.entity_names))
    n = len(wm.entity_names)
    assert (every.table["intervention"].str.count("silence:") == 2).sum() == n * (n - 1) // 2


def test_prior_restarts_from_the_goal_entitys_full_gene_set_or_its_panel_genes():
    from types import SimpleNamespace

    from bioworld.query._candidates import Readout
    from bioworld.query._priority import prior_seeds

    readout = Readout("GOAL", ["A", "B"], np.ones(2), {"GOAL": frozenset({"A", "B"}), "OTHER": frozenset({"B"})})
    space = SimpleNamespace(entities=[SimpleNamespace(name="OTHER", genes=["B", "Z"]),
                                      SimpleNamespace(name="GOAL", genes=["C", "A", "B", "A"])])
    assert prior_seeds(space, readout, "entity") == ["A", "B", "C"]  # C is off the panel: still a seed
    assert prior_seeds(space, readout, "panel") == ["A", "B"]
    assert prior_seeds(SimpleNamespace(), readout, "entity") == ["A", "B"]  # no definitions kept: the panel


def _toy_graph():
    from bioworld.knowledge.network import signed_graph

    # A -> B -> R (activating), A -> E (a dead end), C -| R, D -> C; R is the readout
    return signed_graph([("A", "B", 1), ("A", "E", 1), ("B", "R", 1), ("C", "R", -1), ("D", "C", 1)])


def test_signed_influence_follows_signs_steps_and_out_degree():
    from bioworld.errors import BioworldError
    from bioworld.knowledge.network import signed_influence

    inf = signed_influence({"R": 1.0}, _toy_graph())
    assert inf["B"] == pytest.approx(1.0)  # one activating step into the readout
    assert inf["C"] == pytest.approx(-1.0)  # a repressor of the readout
    assert inf["D"] == pytest.approx(-0.5)  # two steps (damping 0.5), activating a repressor
    assert inf["A"] == pytest.approx(0.25)  # half of A's out-edges lead on (out-degree 2), two steps
    assert "R" not in inf and "E" not in inf  # no out-edge: no influence (not a silent 0)
    assert signed_influence({"R": 2.0}, _toy_graph()) == inf  # readout weights are scaled to sum |w| = 1
    assert signed_influence({"R": 1.0}, _toy_graph(), hops=1)["A"] == 0.0  # B is one step from A, R two
    with pytest.raises(BioworldError, match="none of the readout"):
        signed_influence({"NOT_ON_GRAPH": 1.0}, _toy_graph())


def test_directed_prior_signs_by_goal_and_reads_a_compounds_best_target(monkeypatch):
    from types import SimpleNamespace

    from bioworld.knowledge import network
    from bioworld.query import _priority as P
    from bioworld.query._candidates import Readout

    monkeypatch.setattr(network, "regulation_network", _toy_graph)
    monkeypatch.setattr(P, "_compound_targets", lambda name, space: {"drugBC": ["B", "C"], "drugE": ["E"]}[name])
    readout = Readout("GOAL", ["R"], np.ones(1), {"GOAL": frozenset({"R"})})
    space = SimpleNamespace(entities=[SimpleNamespace(name="GOAL", genes=["R"], weights=[1.0])])
    acts = [parse_action(x) for x in ("ko:B", "ko:C", "ko:E", "drugBC@1", "drugE@1", "silence:GOAL", "ko:B+ko:C",
                                      "ko:B+ko:C")]
    down = P.directed_prior(acts, space, readout, "down", as_compound=[False] * 7 + [True])
    np.testing.assert_allclose(down[:4], [1.0, -1.0, np.nan, 1.0])  # removing B lowers R; drugBC: its best target B
    assert np.isnan(down[4]) and np.isnan(down[5]) and np.isnan(down[6])  # no influence / a silence / a pair
    assert down[7] == pytest.approx(1.0)  # a compound written as its targets' loss: the best of them
    up = P.directed_prior(acts, space, readout, "up", as_compound=[False] * 7 + [True])
    np.testing.assert_allclose(up[:2], [-1.0, 1.0])  # to raise R, remove its repressor C
    assert up[3] == pytest.approx(1.0)  # the best target flips too (C now)
    assert np.isnan(P.directed_prior(acts, space, Readout(None, ["R"], None, {}), "toward")).all()


def test_three_part_priority_joins_the_directed_prior_with_equal_weight():
    from scipy.special import expit, logit

    from bioworld.query._priority import fuse, kind_percentiles

    kinds = np.array(["gene", "gene", "gene", "compound", "entity", "pair"], dtype=object)
    d = kind_percentiles(np.array([3.0, np.nan, 1.0, 5.0, np.nan, np.nan]), kinds, {5: (0, 2)})
    np.testing.assert_allclose(d[[0, 1, 2, 3]], [0.75, 0.5, 0.25, 0.5])  # genes ranked among genes; no value: 0.5
    assert np.isnan(d[4]) and d[5] == pytest.approx(0.5)  # a silence has none; a pair the mean of its parts'
    m, p = np.array([0.9, 0.2, 0.6]), np.array([0.3, 0.8, 0.6])
    np.testing.assert_allclose(fuse(m, p), expit(0.5 * logit(m) + 0.5 * logit(p)))  # two parts: unchanged
    np.testing.assert_allclose(fuse(m, p, directed_pct=d[:3]), expit((logit(m) + logit(p) + logit(d[:3])) / 3))
    np.testing.assert_allclose(fuse(m, p, directed_pct=d[:3], how="mean"), (m + p + d[:3]) / 3)
    acts = [parse_action(x) for x in ("ko:A", "ko:B")]
    out = priority_columns(acts, [False, False], np.array([1.0, 1.0]), np.zeros(2), np.array([0.5, 0.5]),
                           _Space(), has_prior=True, directed_pct=np.array([0.9, 0.1]))[2]
    assert out[0] > 0.5 > out[1]  # model and undirected prior tie: the directed prior decides


@pytest.mark.parametrize("spec, says", [("down", "DIRECTION:TARGET"), ("sideways:X", "direction 'sideways'"),
                                        ("toward:X", "only 'toward:control'"), ("down:HALLMARK_IFN", "close matches")])
def test_a_bad_goal_says_what_to_write_instead(spec, says):
    from bioworld.errors import BioworldError
    from bioworld.query._planner import Goal

    with pytest.raises(BioworldError, match=says) as err:
        Goal.parse(spec, entity_names=["HALLMARK_IFNG"])
    assert "Fix:" in str(err.value)
