"""bioworld.eval: metrics on hand-made vectors, baselines on tiny synthetic deltas, the noise
ceiling, and smoke runs of the benchmark runners."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from bioworld.errors import BioworldError, UnknownPerturbationError
from bioworld.eval import metrics as M
from bioworld.eval.baselines import (
    Additive,
    FitContext,
    LinearEmbedding,
    MeanOfTrain,
    NearestCompound,
    NoChange,
    TargetEmbedding,
    split_half_ceiling,
    split_half_deltas,
)

OBS = np.array([3.0, -2.0, 0.5, 0.0, -0.1, 1.0, 0.2, -4.0])


# ----------------------------------------------------------------------------- metrics
def test_top_de_genes_by_absolute_observed_delta():
    assert M.top_de_genes(OBS, 3).tolist() == [7, 0, 1]
    assert len(M.top_de_genes(OBS, 100)) == len(OBS)  # k > G: all genes
    with pytest.raises(BioworldError, match="positive integer"):
        M.top_de_genes(OBS, 0)


def test_perfect_prediction_is_perfect():
    assert M.mse_top_de(OBS, OBS, k=4) == 0.0
    assert M.pearson_delta(OBS, OBS) == pytest.approx(1.0)
    assert M.pearson_delta(OBS, OBS, genes=4) == pytest.approx(1.0)
    assert M.direction_accuracy(OBS, OBS, k=5) == 1.0
    ref = np.full_like(OBS, 0.3)
    assert M.centred_pearson(OBS, OBS, ref) == pytest.approx(1.0)


def test_shuffled_prediction_scores_worse():
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(OBS)
    assert M.mse_top_de(shuffled, OBS, k=4) > 0
    assert M.pearson_delta(shuffled, OBS) < 1.0
    assert M.pearson_delta(-OBS, OBS) == pytest.approx(-1.0)
    assert M.direction_accuracy(-OBS, OBS, k=4) == 0.0


def test_mse_top_de_uses_only_top_genes():
    pred = OBS.copy()
    pred[3] += 10.0  # gene 3 has obs 0: not among the top 4 DE genes
    assert M.mse_top_de(pred, OBS, k=4) == 0.0
    pred[7] += 2.0  # gene 7 is the top DE gene
    assert M.mse_top_de(pred, OBS, k=4) == pytest.approx(4.0 / 4)


def test_pearson_constant_prediction_is_nan_and_direction_zero():
    assert np.isnan(M.pearson_delta(np.zeros_like(OBS), OBS))
    assert M.direction_accuracy(np.zeros_like(OBS), OBS, k=3) == 0.0


def test_pearson_gene_selection_forms():
    mask = np.abs(OBS) > 0.9
    idx = np.flatnonzero(mask)
    pred = OBS + np.linspace(0, 1, len(OBS))
    assert M.pearson_delta(pred, OBS, genes=mask) == pytest.approx(M.pearson_delta(pred, OBS, genes=idx))
    with pytest.raises(BioworldError, match="dtype"):
        M.pearson_delta(pred, OBS, genes=np.array([0.5, 1.5]))
    with pytest.raises(BioworldError, match="same gene panel"):
        M.pearson_delta(pred[:3], OBS)


def test_centred_pearson_removes_the_shared_shift():
    shared = np.array([1.0, 1.0, -1.0, -1.0, 2.0, 0.0, 0.5, -0.5])
    specific = np.array([0.2, -0.3, 0.1, 0.0, -0.2, 0.3, -0.1, 0.05])
    obs = shared + specific
    # predicting only the shared profile correlates well with obs but not after centring
    assert M.pearson_delta(shared, obs) > 0.9
    assert abs(M.centred_pearson(shared, obs, shared)) < 1e-6 or np.isnan(M.centred_pearson(shared, obs, shared))
    assert M.centred_pearson(obs, obs, shared) == pytest.approx(1.0)


def test_discrimination_perfect_shuffled_and_chance():
    rng = np.random.default_rng(1)
    obs = {f"p{i}": rng.normal(size=30) for i in range(6)}
    perfect = M.discrimination(obs, obs)
    assert all(v == 1.0 for v in perfect.values())
    labels = list(obs)
    swapped = {lab: obs[labels[(i + 1) % len(labels)]] for i, lab in enumerate(labels)}
    worse = M.discrimination(swapped, obs)
    assert np.mean(list(worse.values())) < 1.0
    same = {lab: np.zeros(30) + 100.0 for lab in labels}  # far from everything: rank depends on obs only
    scores = M.discrimination(same, obs)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    with pytest.raises(BioworldError, match="no observed delta"):
        M.discrimination({"zzz": np.zeros(30)}, obs)


def test_discrimination_ties_count_half():
    obs = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([5.0, 5.0])}
    s = M.discrimination({"a": np.array([1.0, 0.0])}, obs)
    assert s["a"] == pytest.approx(1.0 - 0.5 / 2)


def test_energy_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    assert M.energy_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    near = M.energy_distance(a, rng.normal(size=(200, 5)))
    far = M.energy_distance(a, rng.normal(loc=2.0, size=(200, 5)))
    assert far > near >= -1e-9
    with pytest.raises(BioworldError, match="cells, G"):
        M.energy_distance(a, a[:, :3])


def test_score_deltas_tidy_and_definitions_documented():
    obs = {"a": OBS, "b": -OBS, "c": OBS[::-1].copy()}
    df = M.score_deltas({"a": OBS}, obs, k=4, reference=np.zeros_like(OBS))
    assert list(df.columns) == ["perturbation", "metric", "value"]
    got = dict(zip(df["metric"], df["value"]))
    assert got["mse_top4"] == 0 and got["pearson_all"] == pytest.approx(1) and got["discrimination"] == 1.0
    for name in ("mse_top", "pearson_all", "pearson_top", "direction_top", "discrimination", "centred_pearson",
                 "energy_distance"):
        assert name in M.METRIC_DEFINITIONS


# ----------------------------------------------------------------------------- baselines
def _deltas(rng, labels, G=12):
    return {lab: rng.normal(size=G) for lab in labels}


def test_nochange_and_mean_of_train():
    rng = np.random.default_rng(0)
    train = _deltas(rng, ["A", "B", "C"])
    assert np.allclose(NoChange().fit(train).predict(["X"])["X"], 0)
    pred = MeanOfTrain().fit(train).predict(["X", "Y"])
    assert np.allclose(pred["X"], np.mean(list(train.values()), 0), atol=1e-6)
    assert np.allclose(pred["X"], pred["Y"])
    with pytest.raises(BioworldError, match="not fitted"):
        MeanOfTrain().predict(["X"])


def test_mean_of_train_per_dose_for_compounds():
    rng = np.random.default_rng(0)
    train = _deltas(rng, ["a@1", "b@1", "a@10", "b@10", "c@10"])
    m = MeanOfTrain().fit(train)
    pred = m.predict(["z@1", "z@10", "z@3", "z@0.5"])
    assert np.allclose(pred["z@1"], (train["a@1"] + train["b@1"]) / 2, atol=1e-6)
    assert np.allclose(pred["z@10"], (train["a@10"] + train["b@10"] + train["c@10"]) / 3, atol=1e-6)
    assert np.allclose(pred["z@3"], pred["z@1"])  # log10(3) is nearer log10(1) than log10(10)
    assert np.allclose(pred["z@0.5"], pred["z@1"])


def test_additive_sums_singles():
    rng = np.random.default_rng(0)
    train = _deltas(rng, ["A", "B", "C", "A+C"])
    add = Additive().fit(train)
    pred = add.predict(["A+B", "B", "A+B+C"])
    assert np.allclose(pred["A+B"], train["A"] + train["B"], atol=1e-6)
    assert np.allclose(pred["B"], train["B"], atol=1e-6)
    assert np.allclose(pred["A+B+C"], train["A"] + train["B"] + train["C"], atol=1e-6)
    with pytest.raises(UnknownPerturbationError, match="not seen alone"):
        add.predict(["A+Q"])


def _planted_linear(seed=0, G=40, d=6, n_train=30, n_test=10):
    """Deltas y_p = A e_p + b with a known target embedding e_p: a linear model should recover it."""
    rng = np.random.default_rng(seed)
    genes = [f"T{i}" for i in range(n_train + n_test)]
    E = rng.normal(size=(len(genes), d))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    A = rng.normal(size=(G, d))
    b = rng.normal(scale=0.5, size=G)
    deltas = {g: A @ E[i] + b + rng.normal(scale=0.01, size=G) for i, g in enumerate(genes)}
    emb = TargetEmbedding(genes, E.astype(np.float32))
    cells = rng.normal(size=(300, d)) @ A.T + rng.normal(scale=0.05, size=(300, G))  # genes covary through A
    train = {g: deltas[g] for g in genes[:n_train]}
    test = genes[n_train:]
    return train, test, deltas, FitContext(target_embedding=emb, expression=cells)


def test_linear_embedding_recovers_planted_structure():
    train, test, truth, ctx = _planted_linear()
    lin = LinearEmbedding(n_gene_pcs=6, ridge=1e-3).fit(train, ctx).predict(test)
    mean = MeanOfTrain().fit(train, ctx).predict(test)
    mse_lin = np.mean([np.mean((lin[t] - truth[t]) ** 2) for t in test])
    mse_mean = np.mean([np.mean((mean[t] - truth[t]) ** 2) for t in test])
    assert mse_lin < 0.1 * mse_mean
    assert np.mean([M.pearson_delta(lin[t], truth[t]) for t in test]) > 0.95
    # without cells the gene embedding comes from the training deltas themselves
    ctx_nocells = FitContext(target_embedding=ctx.target_embedding)
    lin2 = LinearEmbedding(n_gene_pcs=6, ridge=1e-3).fit(train, ctx_nocells).predict(test)
    assert np.mean([np.mean((lin2[t] - truth[t]) ** 2) for t in test]) < 0.1 * mse_mean


def test_linear_embedding_unknown_target_falls_back_to_mean_with_warning():
    train, test, truth, ctx = _planted_linear()
    lin = LinearEmbedding().fit(train, ctx)
    with pytest.warns(UserWarning, match="no prior knowledge"):
        pred = lin.predict(["NOT_A_GENE"])
    assert np.allclose(pred["NOT_A_GENE"], np.mean(list(train.values()), 0), atol=1e-5)
    with pytest.raises(BioworldError, match="target_embedding"):
        LinearEmbedding().fit(train, FitContext())


def test_nearest_compound_picks_most_similar_structure():
    smiles = {"benzene": "c1ccccc1", "toluene": "Cc1ccccc1", "ethanol": "CCO", "propanol": "CCCO"}
    rng = np.random.default_rng(0)
    train = _deltas(rng, ["toluene@1", "toluene@10", "ethanol@1", "ethanol@10"])
    nc = NearestCompound().fit(train, FitContext(smiles=smiles))
    pred = nc.predict(["benzene@1", "propanol@10", "propanol@3"])
    assert np.allclose(pred["benzene@1"], train["toluene@1"], atol=1e-6)
    assert np.allclose(pred["propanol@10"], train["ethanol@10"], atol=1e-6)
    assert np.allclose(pred["propanol@3"], train["ethanol@1"], atol=1e-6)  # nearest dose on log scale
    assert nc.neighbours_["benzene@1"][0] == "toluene@1"
    with pytest.raises(UnknownPerturbationError, match="no SMILES"):
        nc.predict(["unknownium@1"])


# ----------------------------------------------------------------------------- ceiling
def test_split_half_ceiling_identical_halves_is_perfect():
    rng = np.random.default_rng(0)
    G = 15
    profiles = {"control": np.zeros(G), "A": rng.normal(size=G), "B": rng.normal(size=G), "C": rng.normal(size=G)}
    labels = [lab for lab in profiles for _ in range(10)]
    X = np.stack([profiles[lab] for lab in labels])  # no cell noise: both halves are identical
    A, B = split_half_deltas(X, labels, "control", seed=0)
    assert set(A) == {"A", "B", "C"} and all(np.allclose(A[k], B[k]) for k in A)
    df = split_half_ceiling(X, labels, "control", seed=0, k=5)
    got = df.groupby("metric")["value"].mean()
    assert got["mse_top5"] == pytest.approx(0.0)
    assert got["pearson_all"] == pytest.approx(1.0)
    assert got["discrimination"] == 1.0
    assert got["centred_pearson"] == pytest.approx(1.0)


def test_split_half_ceiling_noise_lowers_scores():
    rng = np.random.default_rng(0)
    G = 30
    prof = {lab: rng.normal(size=G) for lab in "ABCD"}
    labels = ["control"] * 40 + [lab for lab in "ABCD" for _ in range(40)]
    X = np.stack([np.zeros(G) if lab == "control" else prof[lab] for lab in labels])
    X_noisy = X + rng.normal(scale=2.0, size=X.shape)
    clean = split_half_ceiling(X, labels, "control", seed=1).groupby("metric")["value"].mean()
    noisy = split_half_ceiling(X_noisy, labels, "control", seed=1).groupby("metric")["value"].mean()
    assert noisy["pearson_all"] < clean["pearson_all"]
    with pytest.raises(BioworldError, match="control cells"):
        split_half_ceiling(X, ["A"] * len(labels), "control")


# ----------------------------------------------------------------------------- benchmark
def test_summarize_and_report(tmp_path):
    from bioworld.eval.benchmark import summarize, write_outputs

    rows = []
    for method, scale in (("MeanOfTrain", 1.0), ("WorldModel", 0.5)):
        for p in ("A", "B"):
            rows += [("toy", method, "lto", 0, 0, p, "mse_top20", scale * (1 if p == "A" else 3)),
                     ("toy", method, "lto", 0, 0, p, "pearson_all", 0.5)]
    df = pd.DataFrame(rows, columns=["benchmark", "method", "split", "fold", "seed", "perturbation", "metric", "value"])
    s = summarize(df)
    rel = s[(s.metric == "mse_rel_reduction_vs_MeanOfTrain") & (s.method == "WorldModel")]["mean"].item()
    assert rel == pytest.approx(0.5)
    report = write_outputs({"toy": df}, out=tmp_path / "res", report=tmp_path / "BENCHMARKS.md",
                           command="pytest", mode="quick", wall_s={"toy": 1.0})
    text = report.read_text()
    assert "| WorldModel |" in text and "Metric definitions" in text and "0.500 ± 0.000" in text
    assert (tmp_path / "res" / "toy_scores.csv").is_file() and (tmp_path / "res" / "toy_lto.png").is_file()
    # the retrospective section (written by its own run between markers) survives a rewrite of the tables
    from bioworld.eval.retrospective import update_benchmarks_md

    update_benchmarks_md(report, "<!-- retrospective:begin -->\n## retro\nAUROC 0.9\n<!-- retrospective:end -->")
    write_outputs({"toy": df}, out=tmp_path / "res", report=report, command="again", mode="quick", wall_s={"toy": 1.0})
    text = report.read_text()
    assert "`again`" in text and "## retro\nAUROC 0.9" in text and text.count("retrospective:begin") == 1


def test_benchmark_outputs_survive_a_failed_rewrite(tmp_path):
    """A rewrite that fails part-way (a process whose files may not grow past 3 kB: a full disk) leaves every
    file whole: the earlier report, CSVs and plot as they were (they were written in place: a truncated plot)."""
    import os
    import resource
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys, pandas as pd\n"
        "from bioworld.eval.benchmark import write_outputs\n"
        "rows = [('toy', m, 'lto', 0, 0, p, 'mse_top20', v) for m, v in (('MeanOfTrain', 1.0), ('WorldModel', 0.5))"
        " for p in 'AB']\n"
        "df = pd.DataFrame(rows, columns=['benchmark', 'method', 'split', 'fold', 'seed', 'perturbation', 'metric',"
        " 'value'])\n"
        "write_outputs({'toy': df}, out=sys.argv[1], report=sys.argv[2], command=sys.argv[3], mode='quick',"
        " wall_s={'toy': 1.0})\n"
    )
    out, report = tmp_path / "res", tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MPLBACKEND": "Agg"}

    def run(command: str, limit: int | None):
        def apply():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.run([sys.executable, "-c", script, str(out), str(report), command], env=env,
                              capture_output=True, text=True, timeout=300, preexec_fn=apply if limit else None)

    first = run("first", None)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in [report, *out.iterdir()]}
    assert max(len(b) for b in before.values()) > 3000  # the limit bites
    failed = run("second", 3000)
    assert failed.returncode != 0
    after = {p.name: p.read_bytes() for p in [report, *out.iterdir()] if p.is_file()}
    assert after.keys() == before.keys()  # no temporary file left behind
    import json

    json.loads(after.pop("toy_meta.json"))  # replaced whole before the plot failed (one file at a time)
    assert after == {k: v for k, v in before.items() if k != "toy_meta.json"}


def test_a_later_run_keeps_an_earlier_benchmark_table(tmp_path, monkeypatch):
    """--keep-earlier: a run of one benchmark keeps another's table from its CSV + meta, marked as earlier;
    without the earlier files it is a clear error, and without the flag the table is not in the report."""
    from bioworld.eval import benchmark as B

    def frame(bench, value):
        rows = [(bench, m, "lto", 0, 0, p, "mse_top20", value * (1 if m == "WorldModel" else 2))
                for m in ("MeanOfTrain", "WorldModel") for p in ("A", "B")]
        df = pd.DataFrame(rows, columns=B.COLUMNS)
        df.attrs["wall_s"] = {"WorldModel": 12.5}
        df.attrs["note"] = f"note of {bench}"
        return df

    out = tmp_path / "res"
    B.write_outputs({"papalexi": frame("papalexi", 0.25)}, out=out, report=tmp_path / "first.md", command="first",
                    mode="quick", wall_s={"papalexi": 42.0})
    monkeypatch.setattr(B, "run_simulator", lambda **kw: frame("simulator", 0.75))
    assert B.main(["--only", "simulator", "--out", str(out), "--report", str(tmp_path / "second.md"),
                   "--no-progress", "--keep-earlier"]) == 0
    text = (tmp_path / "second.md").read_text()
    assert text.index("## papalexi") < text.index("## simulator")  # RUNNERS order, not run order
    assert "Kept from an earlier run" in text and "`first`; 42 s" in text and "note of papalexi" in text
    assert "papalexi 42 s" in text and "0.250 ± 0.000" in text and "0.750 ± 0.000" in text
    assert text.count("Kept from an earlier run") == 1  # the simulator table is this run's
    B.main(["--only", "simulator", "--out", str(out), "--report", str(tmp_path / "third.md"), "--no-progress"])
    assert "## papalexi" not in (tmp_path / "third.md").read_text()
    assert "## l1000" not in text  # never run into this folder: nothing to keep
    assert "settings of the benchmarks this command ran (simulator)" in text and "Papalexi folds" not in text
    # --only '' + --keep-earlier: the report from the earlier runs alone; --only '' alone is refused
    assert B.main(["--only", "", "--out", str(out), "--report", str(tmp_path / "r.md"), "--keep-earlier"]) == 0
    assert (tmp_path / "r.md").read_text().count("Kept from an earlier run") == 2
    with pytest.raises(BioworldError, match="nothing to run"):
        B.main(["--only", "", "--out", str(out)])
    (out / "papalexi_meta.json").unlink()  # a table without its record (an older run) is refused, not guessed
    with pytest.raises(BioworldError, match="papalexi has no earlier run.*papalexi_meta.json missing"):
        B.main(["--only", "simulator", "--out", str(out), "--no-progress", "--keep-earlier"])


def test_run_simulator_baselines_only_fast(tmp_path):
    from bioworld.eval.benchmark import COLUMNS, run_simulator

    df = run_simulator(n_cells=20, n_control_cells=80, n_folds=2, n_doubles=4, n_truth_draws=500,
                       world_model=False, out=tmp_path, progress=False)
    assert list(df.columns) == COLUMNS
    assert {"NoChange", "MeanOfTrain", "LinearEmbedding", "Additive"} <= set(df["method"])
    assert set(df["split"]) == {"unseen_singles", "unseen_doubles"}
    path = tmp_path / "predictions" / "simulator__Additive__pred.h5ad"
    assert path.is_file()
    # written through the atomic writer: readable, the usual file mode, no temporary file left beside it
    import anndata as ad

    from bioworld._atomic import file_mode

    a = ad.read_h5ad(path)
    assert a.uns["bioworld_benchmark"]["method"] == "Additive" and a.obs_names[-1] == "control"
    assert np.allclose(a.X - a.X[-1], a.layers["delta"], atol=1e-5)
    assert (path.stat().st_mode & 0o777) == file_mode()
    assert sorted(f.name for f in path.parent.iterdir() if not f.name.endswith(".h5ad")) == []


def test_benchmark_predictions_are_written_all_or_nothing(tmp_path, monkeypatch):
    """A run that fails while writing a prediction file keeps the earlier file whole (it was written in place)."""
    import bioworld.report._h5ad as H
    from bioworld.errors import OutputError
    from bioworld.eval.benchmark import run_simulator

    kw = dict(n_cells=20, n_control_cells=80, n_folds=2, n_doubles=4, n_truth_draws=500, world_model=False,
              out=tmp_path, progress=False)
    run_simulator(**kw)
    path = tmp_path / "predictions" / "simulator__Additive__pred.h5ad"
    before = path.read_bytes()

    def torn(adata):  # building the file fails part way (a full disk)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(H, "h5ad_bytes", torn)
    with pytest.raises((OutputError, OSError)):
        run_simulator(**kw)
    assert path.read_bytes() == before


@pytest.mark.slow
def test_run_simulator_with_world_model_smoke(tmp_path):
    from bioworld.eval.benchmark import run_simulator

    t = time.perf_counter()
    df = run_simulator(n_cells=20, n_control_cells=80, n_folds=2, n_doubles=4, n_truth_draws=500, steps=20,
                       max_unsampled_doubles=4, splits=("unseen_doubles",), out=tmp_path, progress=False,
                       wm_config={"groups_per_batch": 4, "cells_per_group": 4, "self_pairs": 8})
    # ~20-45 s on a 2-core machine (45 s while another benchmark ran); the bound leaves room for a loaded CI runner
    assert time.perf_counter() - t < 180
    assert "WorldModel" in set(df["method"])
    assert np.isfinite(df.loc[df.method == "WorldModel", "value"]).any()


@pytest.mark.slow
def test_main_writes_report_for_baselines(tmp_path):
    from bioworld.eval.benchmark import main

    rc = main(["--quick", "--only", "l1000", "--no-world-model", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "unseen_compounds" in text and "NearestCompound" in text


def test_benchmark_report_repeats_companion_findings(tmp_path):
    from bioworld.eval.benchmark import _companion_sections

    out = tmp_path / "results"
    assert _companion_sections(out, tmp_path / "BENCHMARKS.md") == []  # no companion files: no sections
    (out / "masking").mkdir(parents=True)
    (out / "masking" / "MASKING.md").write_text("# t\n\nWhat it shows, per shape: default: lowest leak: **none**.\n")
    lines = _companion_sections(out, tmp_path / "BENCHMARKS.md")
    assert lines[0].startswith("## Masking")
    assert "What it shows, per shape: default: lowest leak: **none**." in lines
    assert any("results/masking/MASKING.md" in ln for ln in lines)


def test_benchmark_report_has_a_design_section_with_every_verdict(tmp_path):
    from bioworld.eval.benchmark import _companion_sections

    out = tmp_path / "results"
    (out / "design").mkdir(parents=True)
    (out / "design" / "DESIGN.md").write_text("# t\n\n## atlas\n\nVerdict (atlas): best AUC ratio information 0.98.\n\n"
                                               "## simulator\n\nVerdict (simulator): target not met.\n")
    lines = _companion_sections(out, tmp_path / "BENCHMARKS.md")
    assert lines[0].startswith("## DESIGN")
    assert "- Verdict (atlas): best AUC ratio information 0.98." in lines
    assert "- Verdict (simulator): target not met." in lines
    assert any("results/design/DESIGN.md" in ln for ln in lines)
