"""Experiment design (``bw.design``, ``bioworld design``): the selection on arrays, on a trained model, and
every CLI flag on raw input."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bioworld as bw
from bioworld.errors import BioworldError, UnknownPerturbationError
from bioworld.query._design import COLUMNS, select
from test_cli import assert_one_line_error, invoke


# ------------------------------------------------------------------------------ select on arrays
def _effects(rng, M=4, G=30):
    """Candidates 0 and 1 ask the same question (same deviations), 2 a different one with less spread,
    3 is certain (all members agree)."""
    base = rng.normal(size=(4, G))
    dev_a = rng.normal(size=(M, G))
    dev_b = rng.normal(size=(M, G)) * 0.6
    e = np.repeat(base[None], M, axis=0)
    e[:, 0] += dev_a
    e[:, 1] += dev_a
    e[:, 2] += dev_b
    return e


def test_information_picks_uncertain_and_skips_the_same_question():
    e = _effects(np.random.default_rng(0))
    sel = select(e, 2, "information", scale_prior=0)
    assert sel.order[0] in (0, 1)
    assert sel.order[1] == 2  # not the twin of the first pick, though it is more uncertain than 2
    assert sel.info[0] > sel.info[1] > 0
    alone = select(e[:, [1, 2, 3]], 1, "information", scale_prior=0)
    assert alone.order[0] == 0  # the twin alone is chosen first: its uncertainty is larger than 2's


def test_information_with_one_predictor_has_no_uncertainty():
    e = _effects(np.random.default_rng(1))[:1]
    sel = select(e, 3, "information", seed=0, scale_prior=0)
    assert np.all(sel.info == 0) and len(set(sel.order)) == 3


def test_scale_prior_prefers_large_distinct_effects():
    """Members that agree can be wrong together: with the gain prior a large predicted effect is a large possible
    error, and a second large effect on the same genes adds little once the first is measured."""
    G = 40
    big = np.zeros(G)
    big[:10] = 3.0
    other = np.zeros(G)
    other[20:30] = 2.0
    small = np.full(G, 0.1)
    e = np.stack([big, big * 1.1, other, small])[None].repeat(2, 0)  # members agree exactly
    e[1, 3] += 0.05  # the small one is the only disagreement
    assert select(e, 1, "information", scale_prior=0).order[0] == 3
    sel = select(e, 2, "information")
    assert set(sel.order) == {1, 2} or set(sel.order) == {0, 2}  # one of the twins, then the distinct one


def test_discovery_is_ucb_and_needs_goal_scores():
    rng = np.random.default_rng(2)
    e = rng.normal(size=(3, 3, 10))
    g = np.array([[1.0, 0.0, 0.9], [1.0, 2.0, 0.9], [1.0, -2.0, 0.9]])  # mean 1 / 0 / 0.9, sd 0 / 2 / 0
    assert select(e, 1, "discovery", goal_scores=g, beta=1.0).order[0] == 1  # 0 + 1 x 2 beats 1
    assert select(e, 1, "discovery", goal_scores=g, beta=0.0).order[0] == 0
    with pytest.raises(BioworldError, match="needs a goal"):
        select(e, 1, "discovery")
    with pytest.raises(BioworldError, match="goal_scores have shape"):
        select(e, 1, "discovery", goal_scores=g[:2])


def test_mix_without_goal_is_information():
    e = _effects(np.random.default_rng(3))
    assert list(select(e, 3, "mix").order) == list(select(e, 3, "information").order)


def test_knowledge_is_farthest_first_from_measured():
    f = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])
    measured = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    sel = select(np.zeros((1, 4, 1)), 2, "knowledge", features=f, measured_features=measured)
    assert sel.order[0] == 2  # far from both measured
    assert sel.order[1] == 1  # then the nearest-to-measured ones; 3 equals a measured one
    with pytest.raises(BioworldError, match="needs action features"):
        select(np.zeros((1, 4, 1)), 2, "knowledge")


def test_random_is_seeded_and_budget_is_capped():
    e = np.zeros((1, 20, 1))
    a, b, c = (select(e, 20, "random", seed=s).order for s in (0, 0, 1))
    assert list(a) == list(b) and list(a) != list(c) and sorted(a) == list(range(20))
    assert len(select(e, 50, "random").order) == 20


@pytest.mark.parametrize("budget", [0, -1, 2.5, True, "3"])
def test_bad_budget_is_refused(budget):
    with pytest.raises(BioworldError, match="budget"):
        select(np.zeros((1, 3, 1)), budget, "random")


def test_unknown_strategy_is_refused():
    with pytest.raises(BioworldError, match="strategy 'best' is unknown"):
        select(np.zeros((1, 3, 1)), 1, "best")
    # a misspelt or shortened strategy gets the one meant in its fix
    with pytest.raises(BioworldError, match=r"strategy 'info' is unknown.*Fix: strategy='information'"):
        select(np.zeros((1, 3, 1)), 1, "info")
    with pytest.raises(BioworldError, match=r"Fix: strategy='discovery'"):
        select(np.zeros((1, 3, 1)), 1, "discovry")


def test_large_candidate_sets_use_principal_directions():
    rng = np.random.default_rng(4)
    e = rng.normal(size=(3, 1200, 200))  # M*G = 600 > 256 directions, C > 1024: randomised SVD
    sel = select(e, 4, "information")
    assert len(set(sel.order)) == 4 and 0 < sel.variance_kept < 1


# ------------------------------------------------------------------------------ on a trained model
def test_design_on_a_model(tiny_trained):
    table = bw.design(tiny_trained, budget=3, strategy="information")
    assert list(table.columns) == COLUMNS
    assert list(table["rank"]) == [1, 2, 3]
    measured = set(tiny_trained.train_labels)
    assert not set(table["perturbation"]) & measured
    assert "bootstrap" in table.attrs["uncertainty"]  # a single model says where its spread comes from
    assert (table["expected_info"] >= 0).all() and table["expected_goal"].isna().all()
    assert table.attrs["n_candidates"] >= 3


def test_design_given_candidates_and_goal(tiny_trained):
    held = list(tiny_trained.holdout)
    measured = [lab for lab in tiny_trained.train_labels if lab != "control"][:2]
    ent = tiny_trained.entity_names[0]
    genes = ["STAT1", "IRF1"]  # unmeasured human genes the knowledge layer describes
    table = bw.design(tiny_trained, held + measured + genes, budget=5, goal=f"down:{ent}", strategy="discovery")
    assert set(table["perturbation"]) == set(held) | set(genes)
    assert sorted(table.attrs["excluded_measured"]) == sorted(measured)
    assert table["expected_goal"].notna().all()
    assert table["strategy_score"].is_monotonic_decreasing or len(table) > 1


def test_design_refuses_bad_input(tiny_trained):
    measured = [lab for lab in tiny_trained.train_labels if lab != "control"]
    with pytest.raises(BioworldError, match="already measured"):
        bw.design(tiny_trained, measured, budget=1)
    with pytest.raises(BioworldError, match="more than once"):
        bw.design(tiny_trained, ["P1_DRV1", "P1_DRV1"], budget=1)
    with pytest.raises(BioworldError, match="is the control.*Fix: leave the control out of the candidates"):
        bw.design(tiny_trained, ["control"], budget=1)
    with pytest.raises(BioworldError, match="is empty"):
        bw.design(tiny_trained, [], budget=1)
    with pytest.raises(BioworldError, match="one string"):
        bw.design(tiny_trained, "P1_DRV1", budget=1)
    with pytest.raises(UnknownPerturbationError):
        bw.design(tiny_trained, ["NOTAGENE123"], budget=1, strategy="information")
    # every candidate the model cannot answer is named in one error, before any prediction (was: the first one)
    with pytest.raises(UnknownPerturbationError, match=r"2 of the 3 candidates not yet measured cannot be predicted"
                                                       r" by this model: 'NOTAGENE1', 'NOTAGENE2' .*--candidates"):
        bw.design(tiny_trained, [tiny_trained.holdout[0], "NOTAGENE1", "NOTAGENE2"], budget=1, strategy="random")
    with pytest.raises(BioworldError, match="needs a goal"):
        bw.design(tiny_trained, budget=1, strategy="discovery")
    with pytest.raises(BioworldError, match="goal entity"):
        bw.design(tiny_trained, budget=1, goal="down:NOPE")
    with pytest.raises(BioworldError, match="not a trained WorldModel"):
        bw.design(object(), budget=1)


# ------------------------------------------------------------------------------------- CLI flags
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny simulated screen trained through the CLI (raw files), and a 2-member ensemble of it."""
    from _helpers import write_tiny_cli_screen

    d = write_tiny_cli_screen(tmp_path_factory.mktemp("design_cli"), doubles=1)
    common = ["--entities", d / "pathways.gmt", "--config", d / "config.json", "--max-steps", 10,
              "--holdout", "P1_DRV1,P2_DRV2", "--quiet"]
    for name, extra in (("model", []), ("ens", ["--members", 2])):
        result = invoke("train", d / "train.h5ad", "--out", d / name, *common, *extra)
        assert result.exit_code == 0, (result.output, result.exception)
    return d


def _table(out):
    return pd.read_csv(out / "design.csv")


def test_cli_design_writes_csv_and_html(model_dir, tmp_path):
    out = tmp_path / "d"
    result = invoke("design", model_dir / "model", "--budget", 2, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    t = _table(out)
    assert list(t.columns) == COLUMNS and len(t) == 2
    page = (out / "design.html").read_text()
    assert "<section id='design'>" in page and t["perturbation"][0] in page
    assert "wrote" in result.stdout and result.stdout.startswith("design (information): chose 2")


def test_cli_budget(model_dir, tmp_path):
    result = invoke("design", model_dir / "model", "--budget", 3, "--out", tmp_path / "a", "--strategy", "random")
    assert result.exit_code == 0, result.output
    assert len(_table(tmp_path / "a")) == 3
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 0, "--out", tmp_path / "b"),
                          "--budget 0", ">= 1")
    result = invoke("design", model_dir / "model", "--budget", "many", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_cli_budget_larger_than_candidates(model_dir, tmp_path):
    cand = tmp_path / "c.txt"
    cand.write_text("P1_DRV1\nP2_DRV2\n")
    result = invoke("design", model_dir / "model", "--budget", 5, "--candidates", cand, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert len(_table(tmp_path / "o")) == 2 and "not filled" in result.stdout


def test_cli_candidates_file_forms(model_dir, tmp_path):
    lines = tmp_path / "c.txt"
    lines.write_text("# to test\nP1_DRV1\n\nP2_DRV2\nP1_DRV2\n")  # P1_DRV2 was measured: left out
    result = invoke("design", model_dir / "model", "--budget", 5, "--candidates", lines, "--out", tmp_path / "o1")
    assert result.exit_code == 0, result.output
    assert set(_table(tmp_path / "o1")["perturbation"]) == {"P1_DRV1", "P2_DRV2"}
    assert "already measured, left out: P1_DRV2" in result.stdout
    table = tmp_path / "c.csv"
    table.write_text("note,perturbation\nx,P1_DRV1+P3_DRV1\ny,P2_DRV2\n")
    result = invoke("design", model_dir / "model", "--budget", 5, "--candidates", table, "--out", tmp_path / "o2")
    assert result.exit_code == 0, result.output
    assert set(_table(tmp_path / "o2")["perturbation"]) == {"P1_DRV1+P3_DRV1", "P2_DRV2"}


@pytest.mark.parametrize("content, fact", [
    ("", "holds no labels"),
    ("# only a comment\n", "holds no labels"),
    ("gene,score\nP1_DRV1,1\n", "none is named 'perturbation'"),
    ("perturbation\n", "no rows"),
    ("P1_DRV1\nP1_DRV1\n", "more than once"),
    ("NOTAGENE123\n", "NOTAGENE123"),
    ("NOTAGENE123\nNOTAGENE456\n", "'NOTAGENE123', 'NOTAGENE456' (e.g. gene 'NOTAGENE123'"),  # all of them, at once
    ("control\n", "is the control"),
    ("P1_DRV2\n", "already measured"),
    ("P1_DRV1+\n", "P1_DRV1+"),
])
def test_cli_bad_candidates_file(model_dir, tmp_path, content, fact):
    cand = tmp_path / "c.txt"
    cand.write_text(content)
    result = invoke("design", model_dir / "model", "--budget", 1, "--candidates", cand, "--out", tmp_path / "o")
    assert_one_line_error(result, fact)
    assert not (tmp_path / "o" / "design.csv").exists()


def test_cli_missing_candidates_file_and_model(model_dir, tmp_path):
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 1, "--candidates", tmp_path / "no.txt",
                                 "--out", tmp_path / "o"), "no.txt", "does not exist")
    assert_one_line_error(invoke("design", tmp_path / "nomodel", "--budget", 1, "--out", tmp_path / "o"), "nomodel")


def test_cli_goal_and_strategy(model_dir, tmp_path):
    result = invoke("design", model_dir / "model", "--budget", 2, "--goal", "down:SIM_P2", "--strategy", "discovery",
                    "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    t = _table(tmp_path / "g")
    assert t["expected_goal"].notna().all() and (t["strategy_score"].diff().dropna() <= 1e-9).all()
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 2, "--goal", "down:NOPE",
                                 "--out", tmp_path / "h"), "goal entity 'NOPE'")
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 2, "--strategy", "discovery",
                                 "--out", tmp_path / "i"), "needs --goal")
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 2, "--strategy", "greedy",
                                 "--out", tmp_path / "j"), "--strategy 'greedy' is unknown", "information")
    for s in ("knowledge", "information", "mix", "error"):
        result = invoke("design", model_dir / "model", "--budget", 2, "--strategy", s, "--out", tmp_path / s)
        assert result.exit_code == 0, (s, result.output)
        assert result.stdout.startswith(f"design ({s}): chose 2")
        # a success never prints a line that reads as the CLI's error line ('error: ...' is --strategy error)
        assert not any(line.startswith("error:") for line in result.output.splitlines()), result.output


def test_cli_flags_candidates_on_the_goal_readout(model_dir, tmp_path):
    from bioworld.query._candidates import Readout
    from bioworld.query._planner import Goal

    wm = bw.WorldModel.load(model_dir / "model")
    share = Readout.of(Goal.parse("down:SIM_P2", entity_names=list(wm.entity_names)), wm.engine,
                       list(wm.genes)).gene_share()
    top, second = sorted(share, key=lambda gene: -share[gene])[:2]
    own = wm.space.parse(f"ko:{top}+ko:{second}").label
    (tmp_path / "c.txt").write_text(f"{own}\nP1_DRV1\n")  # P1_DRV1: another pathway's driver, unflagged
    result = invoke("design", model_dir / "model", "--budget", 2, "--goal", "down:SIM_P2", "--strategy", "discovery",
                    "--candidates", tmp_path / "c.txt", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    assert f"1 candidate(s) act on the goal's own readout: flagged 'readout' and ranked last ({own})" in result.stdout
    t = _table(tmp_path / "g")
    assert list(t["perturbation"]) == ["P1_DRV1", own] and t["flag"].fillna("").tolist() == ["", "readout"]
    assert top in t["flag_reason"].iloc[-1]


def test_cli_ensemble_folder_uses_member_disagreement(model_dir, tmp_path):
    result = invoke("design", model_dir / "ens", "--budget", 2, "--strategy", "information", "--out", tmp_path / "e")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "2 ensemble members" in result.stdout
    assert (_table(tmp_path / "e")["expected_info"] > 0).all()


def test_cli_seed(model_dir, tmp_path):
    orders = []
    for s in (0, 0, 1):
        out = tmp_path / f"s{len(orders)}"
        result = invoke("design", model_dir / "model", "--budget", 20, "--strategy", "random", "--seed", s,
                        "--out", out)
        assert result.exit_code == 0, result.output
        orders.append(list(_table(out)["perturbation"]))
    assert orders[0] == orders[1] != orders[2]


def test_cli_max_genes(model_dir, tmp_path):
    counts = []
    for n in (0, 30):
        result = invoke("design", model_dir / "model", "--budget", 1, "--max-genes", n, "--strategy", "random",
                        "--out", tmp_path / f"m{n}")
        assert result.exit_code == 0, result.output
        counts.append(int(result.stdout.split(" of ")[1].split()[0].replace(",", "")))
        assert "given candidate" not in result.stdout  # none were given: the defaults left out the measured ones
    assert counts[0] < counts[1]
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 1, "--max-genes", -1,
                                 "--out", tmp_path / "x"), "--max-genes -1")


def test_cli_out_and_overwrite(model_dir, tmp_path):
    out = tmp_path / "o"
    assert invoke("design", model_dir / "model", "--budget", 1, "--out", out).exit_code == 0
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 1, "--out", out), "not empty",
                          "--overwrite")
    result = invoke("design", model_dir / "model", "--budget", 2, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(_table(out)) == 2
    assert_one_line_error(invoke("design", model_dir / "model", "--budget", 1, "--out", model_dir / "model"),
                          "model folder")


def test_cli_dose_on_a_compound_plate(tmp_path):
    from test_cli_flags import SMILES, _raw_compound_plate

    plate = _raw_compound_plate()
    plate.write_h5ad(tmp_path / "plate.h5ad")
    (tmp_path / "smiles.csv").write_text("".join(f"{k}, {v}\n" for k, v in SMILES.items()))
    (tmp_path / "config.json").write_text(json.dumps({"groups_per_batch": 4, "cells_per_group": 4, "self_pairs": 4,
                                                      "num_threads": 1}))
    model = tmp_path / "model"
    result = invoke("train", tmp_path / "plate.h5ad", "--out", model, "--perturbation-key", "pert_iname",
                    "--dose-key", "pert_dose", "--compound-id-key", "pert_id", "--smiles", tmp_path / "smiles.csv",
                    "--input", "log", "--control", "DMSO", "--config", tmp_path / "config.json", "--max-steps", 3,
                    "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    result = invoke("design", model, "--budget", 500, "--max-genes", 0, "--dose", 3, "--strategy", "random",
                    "--out", tmp_path / "d")
    assert result.exit_code == 0, (result.output, result.exception)
    labels = set(_table(tmp_path / "d")["perturbation"])
    assert {"aspirin@3", "caffeine@3"} <= labels  # new dose: not measured (0.5 and 10 were)
    assert_one_line_error(invoke("design", model, "--budget", 1, "--dose", -1, "--out", tmp_path / "e"), "--dose -1")
    assert isinstance(ad.read_h5ad(tmp_path / "plate.h5ad"), ad.AnnData)


def test_knowledge_prior_spreads_the_batch_over_knowledge():
    """With the knowledge prior, measuring one candidate resolves its look-alikes in knowledge features."""
    G = 20
    e = np.zeros((2, 4, G))
    e[:, :, :] = 1.0  # same size, same predicted effect: only the knowledge features tell them apart
    f = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    plain = select(e, 2, "information", features=f, scale_prior=0, knowledge_prior=0, seed=0)
    assert np.all(plain.info == 0)
    sel = select(e, 2, "information", features=f, scale_prior=0, knowledge_prior=1.0, seed=0)
    assert 3 in set(sel.order)  # the one unlike the others is the second question
    assert sel.info[0] > sel.info[1] > 0


# ------------------------------------------------------------------------------ the readout (tautology) guard
def test_flagged_candidates_come_last_for_goal_strategies():
    rng = np.random.default_rng(5)
    e = rng.normal(size=(3, 4, 10))
    g = np.array([[5.0, 1.0, 0.5, 0.0]] * 3)  # candidate 0 has by far the best goal score
    flagged = np.array([True, False, False, False])
    for strategy in ("discovery", "mix", "information"):
        free = select(e, 4, strategy, goal_scores=g)
        guarded = select(e, 4, strategy, goal_scores=g, flagged=flagged)
        assert guarded.order[-1] == 0 and sorted(guarded.order) == [0, 1, 2, 3]
        if strategy == "discovery":
            assert free.order[0] == 0  # without the guard the tautology wins
    rnd = np.zeros((1, 4, 1))
    assert list(select(rnd, 4, "random", flagged=flagged).order) == list(select(rnd, 4, "random").order)
    with pytest.raises(BioworldError, match="flagged has shape"):
        select(e, 2, "information", flagged=np.array([True, False]))


def test_design_flags_a_knockout_of_the_readout_genes(tiny_trained):
    from bioworld.query._candidates import Readout
    from bioworld.query._planner import Goal

    ent = tiny_trained.entity_names[0]
    goal = f"down:{ent}"
    share = Readout.of(Goal.parse(goal, entity_names=list(tiny_trained.entity_names)), tiny_trained.engine,
                       list(tiny_trained.genes)).gene_share()
    top, second = sorted(share, key=lambda gene: -share[gene])[:2]  # the genes carrying most of the readout's weight
    own = tiny_trained.space.parse(f"ko:{top}+ko:{second}").label  # together >= 10% of it: flagged
    cands = list(tiny_trained.holdout) + ["STAT1", "IRF1", own]
    table = bw.design(tiny_trained, cands, budget=len(cands), goal=goal, strategy="discovery")
    row = table[table["perturbation"] == own].iloc[0]
    assert row["flag"] == "readout" and top in row["flag_reason"] and "own readout" in row["reason"]
    assert row["rank"] == len(table)  # ranked after every unflagged candidate
    assert (table[table["perturbation"] != own]["flag"] == "").all()
    assert table.attrs["n_flagged"] == 1 and table.attrs["flagged"] == [own]
    assert (bw.design(tiny_trained, cands, budget=2)["flag"] == "").all()  # no goal: nothing to guard


# ------------------------------------------------------------------------------ sizes from measured look-alikes
def test_sizes_replace_the_predicted_size_in_the_gain_prior():
    e = np.zeros((2, 3, 30))  # members agree; three effects on separate genes: large, small, medium
    e[:, 0, :10], e[:, 1, 10:20], e[:, 2, 20:] = 1.0, 0.1, 0.5
    assert select(e, 1, "information").order[0] == 0  # by predicted size
    sel = select(e, 1, "information", sizes=np.array([0.1, 2.0, 0.5]))
    assert sel.order[0] == 1  # small predicted effect, but its measured look-alikes moved a lot
    with pytest.raises(BioworldError, match="sizes have shape"):
        select(e, 1, "information", sizes=np.array([1.0, -1.0, 0.5]))
    with pytest.raises(BioworldError, match="sizes have shape"):
        select(e, 1, "information", sizes=np.ones(2))


def test_transferred_sizes_follow_the_nearest_measured():
    from bioworld.query._design import transferred_sizes

    measured = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    s = transferred_sizes(np.array([[1.0, 0, 0], [0, 1.0, 0.1], [0, 0, 1.0]]), measured, [3.0, 1.0], floor=0.1)
    assert s[0] > 2.5 and s[1] < 1.5  # like the first measured / like the second
    assert s[2] == pytest.approx(2.0)  # like neither: the mean measured size
    with pytest.raises(BioworldError, match="one size per measured"):
        transferred_sizes(np.ones((2, 3)), measured, [1.0])


# ------------------------------------------------------------------------------------ error strategy
def test_expected_error_is_the_size_left_unexplained():
    """Unseen: the prediction is taken to explain nothing (s^2 + v); anchored on observed singles: (s - p)^2 + v;
    without sizes: the members' disagreement alone."""
    from bioworld.query._design import expected_error

    G = 4
    e = np.zeros((2, 3, G))
    e[:, 0] = 0.5  # members agree: p = 0.5, v = 0
    e[:, 1] = 1.0
    e[0, 2], e[1, 2] = 0.1, -0.1  # p = 0, v = 0.02
    s = np.array([2.0, 1.0, 0.5])
    np.testing.assert_allclose(expected_error(e, s), [4.0, 1.0, 0.25 + 0.02])
    np.testing.assert_allclose(expected_error(e, s, np.array([True, True, False])), [2.25, 0.0, 0.25 + 0.02])
    np.testing.assert_allclose(expected_error(e), [0.0, 0.0, 0.02])
    with pytest.raises(BioworldError, match="sizes have shape"):
        expected_error(e, s[:2])
    with pytest.raises(BioworldError, match="anchored has shape"):
        expected_error(e, s, np.array([1, 0, 0]))


def test_error_measures_the_largest_expected_error_first():
    e = np.zeros((2, 4, 5))
    e[:, 3] = 3.0  # predicted large, and anchored on observed singles: the model already has it
    sizes = np.array([0.5, 2.0, 1.0, 3.0])
    anchored = np.array([False, False, False, True])
    sel = select(e, 3, "error", sizes=sizes, anchored=anchored, novelty=0)
    assert list(sel.order) == [1, 2, 0]
    np.testing.assert_allclose(sel.info, [4.0, 1.0, 0.25])  # the table's expected_info: each pick's expected error
    assert list(select(e, 3, "error", sizes=sizes, novelty=0).order) == [3, 1, 2]  # unanchored: 3 is the largest


def test_error_novelty_spreads_the_batch_over_knowledge():
    """Two look-alikes with the largest expected errors: without novelty both are chosen; with it the second pick
    is the candidate far from the first in knowledge features."""
    e = np.zeros((1, 5, 3))
    f = np.array([[1.0, 0, 0], [1.0, 0.05, 0], [0, 1.0, 0], [0, 0, 1.0], [0.7, 0.7, 0]])
    measured = np.array([[0, 0, 1.0]])  # 3 is like a measured one
    sizes = np.array([3.0, 2.9, 2.8, 1.0, 0.5])
    plain = select(e, 2, "error", sizes=sizes, features=f, measured_features=measured, novelty=0)
    assert list(plain.order) == [0, 1]
    sel = select(e, 2, "error", sizes=sizes, features=f, measured_features=measured, novelty=1.0)
    assert list(sel.order) == [0, 2]
    with pytest.raises(BioworldError, match="needs action features"):
        select(e, 2, "error", sizes=sizes)


def test_expected_sizes_transfer_from_measured_look_alikes(tiny_trained):
    """A knockout of a pathway whose driver had a large measured effect is expected large, one of a pathway with a
    small one small; a combination's mean square is the sum of its components'; optimism only raises sizes."""
    from bioworld.query._design import expected_sizes

    space = tiny_trained.space
    cands = ["P1_DRV2", "P2_DRV2", "P1_DRV2+P2_DRV2"]
    s0 = expected_sizes(space, cands, ["P1_DRV1", "P2_DRV1"], [2.0, 0.5], beta=0)
    assert s0[0] > 1.0 > 0.75 > s0[1]
    assert s0[2] ** 2 == pytest.approx(s0[0] ** 2 + s0[1] ** 2)
    assert np.all(expected_sizes(space, cands, ["P1_DRV1", "P2_DRV1"], [2.0, 0.5], beta=1) >= s0)
    swapped = expected_sizes(space, cands, ["P1_DRV1", "P2_DRV1"], [0.5, 2.0], beta=0)
    assert swapped[1] > swapped[0]
    with pytest.raises(BioworldError, match="one finite size per measured"):
        expected_sizes(space, cands, ["P1_DRV1", "P2_DRV1"], [2.0])


def test_design_error_on_a_model(tiny_trained):
    table = bw.design(tiny_trained, budget=3, strategy="error")
    assert list(table.columns) == COLUMNS and len(table) == 3
    assert not set(table["perturbation"]) & set(tiny_trained.train_labels)
    assert (table["expected_info"] > 0).all() and table["reason"].str.contains("expected squared error").all()
