"""bw.design(network=): a user's directed network as the size prior of the 'error' strategy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bioworld as bw
from bioworld.errors import BioworldError
from bioworld.query._reach import component_reach, reach, read_network
from test_cli import assert_one_line_error, invoke

#: a hub: SIM_P2 regulates ten nodes, two of which regulate one more each (within 3 hops: 1 + 10 + 2)
HUB = [("SIM_P2", f"N{i}") for i in range(10)] + [("N0", "M0"), ("N1", "M1"), ("SIM_P1", "SIM_P3")]


def test_read_network_accepts_tables_files_pairs_and_mappings(tmp_path):
    want = {"A": frozenset({"B", "C"}), "B": frozenset({"C"})}
    df = pd.DataFrame({"Source": ["A", "A", "B", "C"], "Target": ["B", "C", "C", "C"]})  # C -> C: a self loop, dropped
    assert read_network(df) == want
    assert read_network([("A", "B"), ("A", "C"), ("B", "C")]) == want
    assert read_network({"A": ["B", "C"], "B": ["C"]}) == want
    df.to_csv(tmp_path / "n.csv", index=False)
    df.rename(columns={"Source": "from", "Target": "to"}).to_csv(tmp_path / "n.tsv", sep="\t", index=False)
    assert read_network(tmp_path / "n.csv") == want and read_network(str(tmp_path / "n.tsv")) == want
    with pytest.raises(BioworldError, match="expected 'source' and 'target'"):
        read_network(pd.DataFrame({"a": ["A"], "b": ["B"]}))
    with pytest.raises(BioworldError, match="empty node name"):
        read_network([("A", " ")])
    with pytest.raises(BioworldError, match="1 missing source / target"):
        read_network(pd.DataFrame({"source": ["A", None], "target": ["B", "C"]}))
    with pytest.raises(BioworldError, match="no edge between two different nodes"):
        read_network([("A", "A")])
    with pytest.raises(BioworldError, match="does not exist"):
        read_network(tmp_path / "missing.csv")
    with pytest.raises(BioworldError, match="expected a"):
        read_network(3.5)


def test_reach_counts_nodes_within_the_hops():
    net = read_network(HUB)
    assert reach(net, ["SIM_P2"]) == 13 and reach(net, ["SIM_P2"], hops=1) == 11
    assert reach(net, ["SIM_P1"]) == 2 and reach(net, ["SIM_P3"]) == 1  # a sink counts itself
    assert reach(net, ["NOT_THERE"]) == 0 and reach(net, []) == 0
    assert reach(net, ["SIM_P1", "SIM_P2"]) == 15  # union, not sum


def test_component_reach_starts_at_the_gene_its_entities_or_a_compounds_targets(tiny_trained):
    space = tiny_trained.space
    net = read_network(HUB)
    p2_gene = next(g for e in space.entities if e.name == "SIM_P2" for g in e.genes)
    comps = [space.parse(lab).components[0] for lab in ("silence:SIM_P2", p2_gene, "silence:SIM_P4", "drug@1")]
    r = component_reach(space, comps, net, compound_targets=lambda name: [p2_gene])
    assert list(r) == [13, 13, 0, 13]  # the gene's entity SIM_P2 is in the network; SIM_P4 is not


def test_expected_sizes_grow_with_reach_and_stay_put_without_a_network(tiny_trained):
    from bioworld.query._design import expected_sizes

    space = tiny_trained.space
    cands = ["P2_DRV2", "P3_DRV2", "P1_DRV2"]
    measured, sizes = ["P1_DRV1", "P4_DRV1"], [1.0, 0.8]
    plain = expected_sizes(space, cands, measured, sizes, beta=0)
    np.testing.assert_array_equal(plain, expected_sizes(space, cands, measured, sizes, beta=0, network=None))
    hub = expected_sizes(space, cands, measured, sizes, beta=0, network=HUB)
    assert hub[0] > 2 * plain[0]  # SIM_P2 reaches 13 nodes; the measured components reach 2 (P1) and none (P4)
    assert hub[0] > hub[1]  # SIM_P3 reaches only itself
    shuffled = [(b, a) for a, b in HUB]  # reversed edges: SIM_P2 now reaches only itself
    assert expected_sizes(space, cands, measured, sizes, beta=0, network=shuffled)[0] < hub[0]
    same = expected_sizes(space, cands, measured, [1.0, 1.0], beta=1)  # no spread among the measured: no crash
    assert np.all(np.isfinite(same)) and np.all(same > 0)


def test_design_reads_the_network_only_for_error(tiny_trained):
    with_net = bw.design(tiny_trained, budget=4, strategy="error", network=pd.DataFrame(HUB, columns=["source", "target"]))
    assert with_net.attrs["network_nodes"] == 15
    with pytest.raises(BioworldError, match="strategy 'information' does not read it"):
        bw.design(tiny_trained, budget=2, network=HUB)


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    from _helpers import write_tiny_cli_screen

    d = write_tiny_cli_screen(tmp_path_factory.mktemp("design_net_cli"), doubles=0)
    # nothing of SIM_P2 is measured: its candidates have no measured look-alike, so their prior decides
    result = invoke("train", d / "train.h5ad", "--out", d / "model", "--entities", d / "pathways.gmt", "--config",
                    d / "config.json", "--max-steps", 10, "--holdout", "P1_DRV1,P2_DRV1,P2_DRV2,silence:SIM_P2",
                    "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    return d


def test_cli_design_network_scales_expected_errors(cli_model, tmp_path):
    d = cli_model
    edges = tmp_path / "edges.tsv"
    edges.write_text("source\ttarget\n" + "".join(f"SIM_P2\tX{i}\n" for i in range(30)) + "SIM_P1\tY\nSIM_P3\tZ\n")
    cands = tmp_path / "c.txt"
    cands.write_text("P1_DRV1\nP2_DRV2\nP2_DRV1\n")
    runs = {}
    for name, extra in (("plain", []), ("net", ["--network", edges])):
        result = invoke("design", d / "model", "--budget", 3, "--strategy", "error", "--candidates", cands,
                        "--out", tmp_path / name, *extra)
        assert result.exit_code == 0, (result.output, result.exception)
        runs[name] = pd.read_csv(tmp_path / name / "design.csv").set_index("perturbation")["expected_info"]
    assert "reach in edges.tsv (35 nodes)" in result.stdout
    # SIM_P2's drivers reach 31 nodes, the measured components of SIM_P1 / SIM_P3 two each
    assert runs["net"]["P2_DRV2"] > 3 * runs["plain"]["P2_DRV2"] and runs["net"]["P2_DRV1"] > 3 * runs["plain"]["P2_DRV1"]
    # P1_DRV1's look-alike P1_DRV2 was measured: its own data, not the prior, decide its expected size
    assert runs["net"]["P1_DRV1"] == pytest.approx(runs["plain"]["P1_DRV1"])
    assert_one_line_error(invoke("design", d / "model", "--budget", 2, "--out", tmp_path / "x", "--network", edges),
                          "--strategy information does not read it")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nSIM_P2,X\n")
    assert_one_line_error(invoke("design", d / "model", "--budget", 2, "--strategy", "error", "--out", tmp_path / "y",
                                 "--network", bad), "expected 'source' and 'target'")
