"""The planner's ``network_path`` evidence: shortest signed directed paths into the goal's readout."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bioworld.actions import parse_action
from bioworld.knowledge import network as N
from bioworld.query._candidates import Readout
from bioworld.query._paths import path_columns

EDGES = [("A", "R1", 1), ("B", "R1", -1), ("C", "A", 1), ("R1", "R2", 1), ("R2", "X", 1), ("D", "X", 1),
         ("R3", "Y", 1), ("Y", "R3", 1), ("F", "G", -1), ("G", "R2", -1), ("F", "H", 1), ("H", "R1", 1),
         ("", "R1", 1), ("A", "", 1)]


def _net():
    return N.signed_graph(EDGES)


def test_signed_graph_drops_empty_names():
    genes, m = _net()
    assert "" not in genes and m.nnz == len(EDGES) - 2


def test_shortest_signed_paths_lead_into_the_readout():
    paths = N.directed_paths({"R1", "R2", "R3"}, _net())
    assert paths["A"] == (["A", "R1"], [1])
    assert paths["B"] == (["B", "R1"], [-1])  # a repressor
    assert paths["C"] == (["C", "A", "R1"], [1, 1])
    assert paths["R1"] == (["R1", "R2"], [1])  # a readout gene's path leads to another readout gene
    assert "R3" not in paths  # its only way back is to itself: no path
    assert "R2" not in paths and "D" not in paths and "X" not in paths  # no directed path into the readout
    assert paths["F"] == (["F", "G", "R2"], [-1, -1])  # two routes of length 2: the first next gene (G < H)
    short = N.directed_paths({"R1", "R2", "R3"}, _net(), max_len=1)
    assert "C" not in short and short["A"] == (["A", "R1"], [1])
    assert set(N.directed_paths({"R1", "R2"}, _net(), sources=["C", "Q"])) == {"C"}  # only the sources asked
    genes, m = _net()
    unsorted = m.copy()
    unsorted.indices[unsorted.indptr[0]:unsorted.indptr[1]] = unsorted.indices[unsorted.indptr[0]:unsorted.indptr[1]][::-1]
    unsorted.data[unsorted.indptr[0]:unsorted.indptr[1]] = unsorted.data[unsorted.indptr[0]:unsorted.indptr[1]][::-1]
    unsorted.has_sorted_indices = False
    assert N.directed_paths({"R1", "R2", "R3"}, (genes, unsorted)) == N.directed_paths({"R1", "R2", "R3"}, _net())


def test_path_columns_text_and_what_removal_does(monkeypatch):
    monkeypatch.setattr(N, "regulation_network", _net)
    # R2's readout weight is negative: removing an activator of R2 raises the readout score
    space = SimpleNamespace(entities=[SimpleNamespace(name="GOAL", genes=("R1", "R2"), weights=(1.0, -1.0))])
    readout = Readout("GOAL", ["R1", "R2"], np.array([1.0, -1.0]), {"GOAL": frozenset({"R1", "R2"})})
    labels = ["A", "B", "act:A", "R1", "C+B", "drug@10", "silence:GOAL", "D", "A+B"]
    acts = [parse_action(lab) for lab in labels]
    targets = {"drug": ["D", "C", "A"]}.get
    texts, effects = path_columns(acts, space, readout, lambda name: targets(name, []),
                                  as_compound=[lab == "A+B" for lab in labels])
    got = dict(zip(labels, zip(texts, effects)))
    assert got["A"] == ("A → R1", "lowers")
    assert got["B"] == ("B ⊣ R1", "raises")  # removing a repressor of the readout raises it
    assert got["act:A"] == ("A → R1", "raises")  # an activation goes the other way
    assert got["R1"] == ("R1 → R2", "raises")  # R2 counts against the readout
    assert got["C+B"] == ("B ⊣ R1; C → A → R1", "raises; lowers")  # a pair: each part (components sorted)
    assert got["drug@10"] == ("via A: A → R1", "lowers")  # a compound: its closest target
    assert got["A+B"] == ("via A: A → R1", "lowers")  # a compound scored as its targets' loss
    assert got["silence:GOAL"] == ("", "") and got["D"] == ("", "")
    none = Readout(None, ["R1"], None, {})
    assert path_columns(acts, space, none, lambda name: []) == ([""] * len(acts), [""] * len(acts))


def test_report_cell_reads_path_and_effect():
    from bioworld.report.html import _path_text

    assert _path_text({"network_path": "A → R1; B ⊣ R1", "path_effect": "lowers; raises"}) == \
        "A → R1 (removal lowers the readout); B ⊣ R1 (removal raises the readout)"
    assert _path_text({"network_path": "", "path_effect": ""}) == "" and _path_text({}) == ""


def test_report_lists_the_planners_own_knowledge_with_licences():
    from bioworld.report.html import _planner_knowledge

    rows = {r["name"]: r for r in _planner_knowledge(["string", "omnipath", "dorothea", "compound_targets"], {"dorothea"})}
    assert set(rows) == {"string", "omnipath", "compound_targets"}  # what the model's list shows is not repeated
    assert rows["string"]["licence"].startswith("CC BY 4.0") and rows["omnipath"]["source"].startswith("planner: ")
    assert rows["compound_targets"]["licence"].endswith("non-commercial use only")


def test_planner_table_carries_the_paths(tiny_trained, small_sim, monkeypatch):
    goal = tiny_trained.entity_names[0]
    member = next(g for g, w in zip(tiny_trained.genes, tiny_trained.membership[0]) if w)
    outside = next(g for g in tiny_trained.space.genetic_targets() if g != member)
    monkeypatch.setattr(N, "regulation_network", lambda: N.signed_graph([(outside, "HUB", -1), ("HUB", member, 1)]))
    a = small_sim.adata
    cells = a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:20]].copy()
    res = tiny_trained.prioritize(cells, f"down:{goal}", genes=[outside], compounds=[], pairs=False, n_boot=5)
    assert res.provenance["knowledge_read"] == ["string", "omnipath", "dorothea"]  # no compound candidates
    t = res.table.set_index("intervention")
    assert t.loc[outside, "network_path"] == f"{outside} ⊣ HUB → {member}"
    assert t.loc[outside, "path_effect"] == "raises"
    assert (t.loc[t["kind"] == "entity", "network_path"] == "").all()


@pytest.mark.parametrize(("gene", "sign"), [("STAT1", 1), ("IFNGR1", 1), ("SOCS1", -1)])
def test_bundled_regulation_network_reads_interferon_regulators(gene, sign):
    from bioworld.entities import default_entities

    ifng = next(e for e in default_entities().entities if e.name == "HALLMARK_INTERFERON_GAMMA_RESPONSE")
    path, signs = N.directed_paths(set(ifng.genes), sources=[gene])[gene]
    assert path[0] == gene and path[-1] in set(ifng.genes) and int(np.prod(signs)) == sign
