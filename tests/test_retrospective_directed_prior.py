"""benchmarks/run_retrospective_directed_prior.py: the signed regulation graph, the influence and the raw prior."""

from __future__ import annotations

import numpy as np
import pandas as pd

from _helpers import benchmark_script
from bioworld.knowledge.network import signed_graph


def _graph(mod):
    # A activates R1 (a readout gene); B represses R1; C activates A (two hops up); D only regulates X (no readout)
    return signed_graph([("A", "R1", 1), ("B", "R1", -1), ("C", "A", 1), ("D", "X", 1),
                                 ("A", "R1", 1), ("E", "R1", 1), ("E", "R1", -1), ("R1", "R1", 1)])


def test_graph_sums_parallel_signs_and_drops_cancelled_and_self_edges():
    genes, m = _graph(None)
    pos = {g: i for i, g in enumerate(genes)}
    assert m[pos["A"], pos["R1"]] == 1.0  # two +1 edges: clipped to 1
    assert m[pos["B"], pos["R1"]] == -1.0
    assert pos["E"] not in set(m.tocoo().row)  # +1 and -1 cancel: no edge left
    assert m[pos["R1"], pos["R1"]] == 0.0


def test_influence_is_signed_directed_and_damped():
    mod = benchmark_script("run_retrospective_directed_prior")
    infl = mod.signed_influence({"R1": 1.0, "R2": 1.0}, _graph(mod), hops=3, damping=0.5)
    assert infl["A"] == 1.0  # one hop to R1, which carries all the weight on the graph (R2 is off it)
    assert infl["B"] == -1.0  # a repressor of the readout: negative
    assert infl["C"] == 0.5  # two hops, damped once
    assert infl["D"] == 0.0  # regulates nothing in the readout
    assert "R1" not in infl and "X" not in infl  # no out-edge: no prior (own membership does not count)


def test_raw_prior_signs_by_goal_and_takes_a_compounds_best_target():
    mod = benchmark_script("run_retrospective_directed_prior")
    infl = mod.signed_influence({"R1": 1.0}, _graph(mod))
    table = pd.DataFrame({"intervention": ["A", "B", "R1", "drug@10", "other@10"],
                          "kind": ["gene", "gene", "gene", "compound", "compound"]})
    targets = {"drug": ["B", "A", "ZZZ"], "other": ["ZZZ"]}.get
    down = mod.raw_prior(table, infl, 1.0, targets)
    np.testing.assert_allclose(down[:2], [1.0, -1.0])
    assert np.isnan(down[2]) and np.isnan(down[4])  # off the graph's sources / no target on it
    assert down[3] == 1.0  # the best of its targets for a down goal (A)
    up = mod.raw_prior(table, infl, -1.0, targets)
    assert up[1] == 1.0 and up[3] == 1.0  # for an up goal removing the repressor B is what helps
