"""Retrospective validation of prioritize (bioworld.eval.retrospective): metrics and baselines with
known answers, the BENCHMARKS.md section, and one tiny end-to-end run on a simulated screen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bioworld.errors import BioworldError
from bioworld.eval import retrospective as R


# ------------------------------------------------------------------------------------ metrics
def test_rank_percentile_orders_and_averages_ties():
    assert np.allclose(R.rank_percentile([3.0, 1.0, 2.0]), [1.0, 0.0, 0.5])
    assert np.allclose(R.rank_percentile([1.0, 1.0, 0.0]), [0.75, 0.75, 0.0])
    assert np.allclose(R.rank_percentile([np.nan, 1.0, 2.0]), [0.0, 0.5, 1.0])  # NaN ranks last
    assert np.allclose(R.rank_percentile([5.0]), [1.0])
    assert len(R.rank_percentile([])) == 0


def test_auroc_known_answers():
    hits = [True, True, False, False]
    assert R.auroc([4, 3, 2, 1], hits) == 1.0
    assert R.auroc([1, 2, 3, 4], hits) == 0.0
    assert R.auroc([1, 1, 1, 1], hits) == 0.5
    assert R.auroc([4, 1, 3, 2], hits) == 0.5  # 4>3,4>2 ; 1<3,1<2 -> 2 of 4 pairs
    assert np.isnan(R.auroc([1, 2], [True, True]))


def test_precision_at_k_known_answers_and_ties():
    s, h = [0.9, 0.8, 0.7, 0.1], [True, False, True, False]
    assert R.precision_at_k(s, h, 1) == 1.0
    assert R.precision_at_k(s, h, 2) == 0.5
    assert R.precision_at_k(s, h, 3) == pytest.approx(2 / 3)
    assert R.precision_at_k(s, h, 10) == 0.5  # k capped at the number of items
    # a tie at the cut-off counts the tied items' hit rate for the places left
    assert R.precision_at_k([1.0, 0.5, 0.5], [False, True, False], 2) == pytest.approx(0.25)
    with pytest.raises(BioworldError, match="k=0"):
        R.precision_at_k(s, h, 0)


def test_metrics_of_and_random_expectation():
    m = R.metrics_of([1.0, 0.9, 0.2, 0.1], [True, False, True, False], k=2)
    assert m["auroc"] == 0.75 and m["precision_at_k"] == 0.5 and m["hit_percentile"] == pytest.approx(0.6)
    exp = R.random_expectation(20, 5, 5, draws=300)
    assert exp["auroc"][0] == 0.5 and exp["precision_at_k"][0] == 0.25 and exp["hit_percentile"][0] == 0.5
    assert all(0 < sd < 0.3 for _, sd in exp.values())


# ------------------------------------------------------------------------------------ observed hits
def test_observed_goal_change_scores_and_leaves_out_own_transcript():
    rng = np.random.default_rng(0)
    var = ["A", "B", "C", "D"]
    ctrl = rng.normal(0, 1, (200, 4))
    ko_a = ctrl[:50].copy()
    ko_a[:, 0] -= 3.0  # A's own transcript only
    ko_b = ctrl[50:100].copy()
    ko_b[:, 2] -= 2.0  # lowers C, a readout gene
    X = np.vstack([ctrl, ko_a, ko_b])
    labels = ["control"] * 200 + ["A"] * 50 + ["B"] * 50
    w = np.array([1.0, 0.0, 1.0, 0.0])  # readout = A and C
    obs, ctrl_scores = R.observed_goal_change(X, labels, "control", w, var, exclude={"A": ["A"], "B": ["B"]})
    mu, sd = ctrl.mean(0), ctrl.std(0)
    z_b = ((ko_b - mu) / sd).mean(0)
    assert obs["B"] == pytest.approx((z_b[0] + z_b[2]) / 2)  # weighted mean of the readout genes' z
    assert obs["B"] < -0.8
    # A's change is all its own transcript: excluded, only C (unchanged) is left
    assert obs["A"] == pytest.approx(((ko_a[:, 2] - mu[2]) / sd[2]).mean())
    assert abs(obs["A"]) < 0.3
    assert ctrl_scores.shape == (200,)
    with pytest.raises(BioworldError, match="non-zero"):
        R.observed_goal_change(X, labels, "control", np.zeros(4), var)
    with pytest.raises(BioworldError, match="control cells"):
        R.observed_goal_change(X, labels, "ctrl", w, var)


def test_control_noise_between_replicates_and_threshold():
    s = np.array([0.0, 0.2, 1.0, 1.2, 2.0, 2.2])
    assert R.control_noise(s, ["a", "a", "b", "b", "c", "c"]) == pytest.approx(1.0)  # sd of 0.1, 1.1, 2.1
    assert R.control_noise(np.array([1.0, 3.0])) == pytest.approx(np.sqrt(2.0))
    assert R.hit_threshold(0.5, 2.0) == 1.0
    with pytest.raises(BioworldError, match="2 replicates"):
        R.control_noise(s, ["a"] * 6)
    with pytest.raises(BioworldError, match="positive"):
        R.hit_threshold(0.0, 2.0)


# ------------------------------------------------------------------------------------ baselines
def _chain() -> tuple[list[str], object]:
    """A path graph A - B - C - D - E, plus an isolated F."""
    from scipy import sparse

    genes = list("ABCDEF")
    i, j = [0, 1, 2, 3], [1, 2, 3, 4]
    a = sparse.coo_matrix((np.ones(4), (i, j)), shape=(6, 6)).tocsr()
    return genes, (a + a.T).tocsr()


def test_network_proximity_decays_with_distance():
    p = R.network_proximity(["A"], network=_chain())
    assert p["A"] > p["B"] > p["C"] > p["D"] > p["E"] > 0
    assert "F" not in p  # unreachable: absent (proximity 0)
    with pytest.raises(BioworldError, match="network"):
        R.network_proximity(["Z"], network=_chain())


def test_pathway_membership():
    assert R.pathway_membership(["A", "B", "C"], ["C", "A"]).tolist() == [1.0, 0.0, 1.0]


def test_compound_scores_from_targets():
    t = {"x": ["A", "B"], "y": [], "z": ["C"]}
    s = {"A": 1.0, "B": 3.0, "C": 2.0}
    assert R._compound_scores(list("xyz"), s.get, t.get, "max").tolist() == [3.0, 0.0, 2.0]
    assert R._compound_scores(list("xyz"), s.get, t.get, "mean").tolist() == [2.0, 0.0, 2.0]


# ------------------------------------------------------------------------------------ summary + report
def _items() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for method, pct in (("WorldModel", [0.9, 0.8, 0.2, 0.1]), ("Network proximity", [0.1, 0.2, 0.8, 0.9])):
            for item, p, hit in zip("abcd", pct, (True, True, False, False)):
                rows.append({"dataset": "toy", "seed": seed, "fold": 0, "method": method, "item": item, "hit": hit,
                             "observed": -1.0 if hit else 0.0, "score": p, "percentile": p, "n_candidates": 10})
    df = pd.DataFrame(rows, columns=R.ITEM_COLUMNS)
    df.attrs.update(goal="down:X", n_items=4, n_hits=2)
    return df


def test_summarize_and_verdict():
    summ = R.summarize_retro(_items(), k=2, draws=50)
    wm = summ[(summ.method == "WorldModel")].set_index("metric")
    assert wm.loc["auroc", "mean"] == 1.0 and wm.loc["precision_at_k", "mean"] == 1.0
    assert wm.loc["hit_percentile", "mean"] == pytest.approx(0.85) and wm.loc["auroc", "sd"] == 0.0
    net = summ[(summ.method == "Network proximity")].set_index("metric")
    assert net.loc["auroc", "mean"] == 0.0
    rnd = summ[(summ.method == "Random")].set_index("metric")
    assert rnd.loc["precision_at_k", "mean"] == 0.5
    text = R.verdict(summ, "toy")
    assert "beats Network proximity on every metric" in text and "beats Random on every metric" in text
    assert "does not beat" in R.verdict(summ, "toy", "Network proximity")


def test_write_retro_and_benchmarks_section_is_replaced_not_duplicated(tmp_path):
    frames = {"toy": _items()}
    report, summ = R.write_retro(frames, tmp_path / "retro", command="cmd", settings=R.RetroSettings(k=2))
    text = report.read_text()
    assert "| WorldModel | 1.000 ± 0.000 |" in text and (tmp_path / "retro" / "retrospective.png").exists()
    assert set(pd.read_csv(tmp_path / "retro" / "items.csv")["method"]) == {"WorldModel", "Network proximity"}
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# bioworld benchmarks\n\n## papalexi\nkept\n")
    for _ in range(2):
        R.update_benchmarks_md(md, R.benchmarks_section(summ, frames, report, md, "cmd"))
    out = md.read_text()
    assert out.count(R.SECTION_BEGIN) == 1 and "kept" in out and "retro/RETROSPECTIVE.md" in out


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow  # ~10 s of CPU; 30+ s wall on a loaded 2-core machine
def test_genetic_retro_end_to_end_on_a_small_simulated_screen(tmp_path):
    from scipy import sparse

    from _helpers import sim_entities, small_simulation

    sim = small_simulation(n_pathways=4, n_cells_per_condition=25, n_control_cells=150, doubles=0)
    ents = sim_entities(sim)
    goal_ent = list(sim.gmt)[-1]  # the last pathway in topological order: most upstream drivers can hit it
    genes = sorted({g for gs in sim.gmt.values() for g in gs})
    pos = {g: i for i, g in enumerate(genes)}
    i, j = [], []
    for gs in sim.gmt.values():  # genes of one pathway are linked
        for a in gs:
            for b in gs:
                if a < b:
                    i.append(pos[a])
                    j.append(pos[b])
    net = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(len(genes), len(genes))).tocsr()
    st = R.RetroSettings(seeds=(0,), folds=2, steps=8, max_genes=40, n_cells=40, candidates_dir=str(tmp_path))
    df = R.run_genetic_retro(sim.adata.copy(), f"down:{goal_ent}", goal_weights={g: 1.0 for g in sim.gmt[goal_ent]},
                             settings=st, dataset="sim", replicate_key="replicate", network=(genes, net + net.T),
                             progress=False, entities=ents, knowledge=False, nmf_programs=0)
    assert set(df["method"]) == {R.MODEL, R.MODEL_RANKED, R.NETWORK, R.PATHWAY, R.PREDICTED, R.NO_PRIOR}
    # each fold's candidate table is kept: the default ranking and its parts
    cand = pd.read_csv(tmp_path / "sim_s0_f0.csv")
    assert list(cand.columns) == R.CANDIDATE_COLUMNS and cand["priority"].between(0, 1).all()
    n_singles = len(df.attrs["observed"])
    assert df.attrs["n_items"] == n_singles > 0
    per_method = df.groupby("method")["item"].nunique()
    assert (per_method == n_singles).all()  # every held-out single is ranked by every method
    assert df["percentile"].between(0, 1).all() and (df["n_candidates"] > 1).all()
    # the hit labels come from the observed data (the same for every method)
    assert df.groupby("item")["hit"].nunique().max() == 1
    assert 0 < df.attrs["n_hits"] < n_singles
    summ = R.summarize_retro(df, k=2, draws=20)
    assert set(summ["method"]) >= {R.MODEL, R.RANDOM}
    with pytest.raises(BioworldError, match="toward"):
        R.run_genetic_retro(sim.adata.copy(), "toward:control", goal_weights={}, settings=st, dataset="sim",
                            replicate_key="replicate", progress=False)


def test_model_seed_offset_trains_another_member_on_the_same_split(monkeypatch):
    from scipy import sparse

    from _helpers import small_simulation

    sim = small_simulation(n_pathways=2, n_cells_per_condition=10, n_control_cells=60, doubles=0)
    calls = []

    class Stop(Exception):
        pass

    def fake_train(adata, holdout, seed, steps, **kw):
        calls.append((sorted(holdout), seed))
        raise Stop

    monkeypatch.setattr(R, "_train", fake_train)
    goal_ent = list(sim.gmt)[-1]
    genes = sorted({g for gs in sim.gmt.values() for g in gs})
    net = (genes, sparse.eye(len(genes), format="csr"))
    for offset in (0, 1000):
        st = R.RetroSettings(seeds=(3,), folds=2, steps=1, model_seed_offset=offset)
        with pytest.raises(Stop):
            R.run_genetic_retro(sim.adata.copy(), f"down:{goal_ent}", goal_weights={g: 1.0 for g in sim.gmt[goal_ent]},
                                settings=st, dataset="sim", replicate_key="replicate", network=net, progress=False)
    assert calls[0][0] == calls[1][0] and calls[0][1] == 3 and calls[1][1] == 1003  # same held-out targets


def test_benchmark_only_retrospective_runs_it_and_writes_its_section(tmp_path, monkeypatch):
    from bioworld.cli import main as cli_main

    seen = {}

    def fake(settings, *, datasets=("papalexi", "l1000"), progress=True):
        seen["settings"] = settings
        return {"toy": _items()}

    monkeypatch.setattr(R, "run_retrospective", fake)
    report = tmp_path / "B.md"
    with pytest.raises(SystemExit) as exc:
        cli_main(["benchmark", "--only", "retrospective", "--seeds", "0,1", "--steps", "9", "--out", str(tmp_path),
                  "--report", str(report), "--no-progress"])
    assert exc.value.code in (0, None)
    assert seen["settings"].seeds == (0, 1) and seen["settings"].steps == 9 and seen["settings"].folds == 2
    assert R.SECTION_BEGIN in report.read_text() and (tmp_path / "retrospective" / "RETROSPECTIVE.md").exists()
    # the baselines-only mode skips it (it ranks the world model's candidates)
    seen.clear()
    with pytest.raises(SystemExit):
        cli_main(["benchmark", "--only", "retrospective", "--no-world-model", "--out", str(tmp_path / "b"),
                  "--no-progress"])
    assert not seen


def test_run_retrospective_refuses_unknown_datasets():
    with pytest.raises(BioworldError, match="unknown retrospective dataset"):
        R.run_retrospective(R.RetroSettings(), datasets=["papalexi", "norman"])


def test_assemble_rebuilds_hits_from_the_data_without_training(tmp_path):
    items = _items()
    items["dataset"] = "papalexi"
    (tmp_path / "run").mkdir()
    items.to_csv(tmp_path / "run" / "items.csv", index=False)
    frames = R.assemble([tmp_path / "run"], R.RetroSettings())
    a = frames["papalexi"].attrs
    # Papalexi's observed hits (own transcript left out, 2 x the replicate noise of the controls)
    assert a["n_items"] == 20 and a["n_hits"] == 5 and a["wall_s"] == {}
    assert {k for k, v in a["observed"].items() if v <= -a["threshold"]} == {"STAT1", "IFNGR1", "STAT2", "IRF1", "IRF7"}
    assert len(frames["papalexi"]) == len(items)


def test_assembled_report_names_the_seeds_of_its_runs(tmp_path):
    """--assemble trains nothing: the header's seeds are those of the saved runs, not the --seeds default."""
    items = _items()
    items["dataset"] = "papalexi"
    items["seed"] = items["seed"].map({0: 9, 1: 11})
    (tmp_path / "run").mkdir()
    items.to_csv(tmp_path / "run" / "items.csv", index=False)
    assert R.main(["--assemble", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "RETROSPECTIVE.md").read_text()
    assert "- settings: seeds [9, 11], 4 folds" in text
