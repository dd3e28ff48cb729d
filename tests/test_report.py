"""bioworld.report (plots, the self-contained HTML report) and the counterfactual / prioritize CLI."""

from __future__ import annotations

import html as _html
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from typer.testing import CliRunner

from bioworld.cli import app
from bioworld.errors import BioworldError

torch.set_num_threads(1)

SECTIONS = ("The question", "Data &amp; model provenance", "Ranked interventions", "Plots",
            "Counterfactual explanations", "How far to trust this")
#: an attribute or CSS reference that would make the browser fetch something from the network
EXTERNAL = re.compile(r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)|(?:url\(\s*["']?\s*(?:https?:)?//)|@import""",
                      re.IGNORECASE)


def _control_cells(sim, n: int) -> ad.AnnData:
    a = sim.adata
    return a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:n]].copy()


@pytest.fixture(scope="module")
def cells(small_sim):
    return _control_cells(small_sim, 40)


@pytest.fixture(scope="module")
def prioritized(tiny_trained, cells):
    return tiny_trained.prioritize(cells, f"down:{tiny_trained.entity_names[0]}", n_boot=50)


@pytest.fixture(scope="module")
def counterfactuals(tiny_trained, cells):
    holdout = tiny_trained.holdout[0]
    return tiny_trained.counterfactual(cells[:10].copy(), [f"silence:{tiny_trained.entity_names[1]}", holdout])


@pytest.fixture
def no_benchmark(tiny_trained, monkeypatch):
    """The trained model has no held-out evaluation of its own."""
    monkeypatch.setattr(tiny_trained, "evaluation", None, raising=False)


def _accuracy() -> pd.DataFrame:
    rows = []
    for method, mse, r in (("NoChange", 1.0, 0.0), ("MeanOfTrain", 0.8, 0.4), ("WorldModel", 0.6, 0.55)):
        rows += [(method, "mse_top20", mse, 0.1), (method, "pearson_all", r, 0.05)]
    return pd.DataFrame(rows, columns=["method", "metric", "value", "sd"])


# ---------------------------------------------------------------------------------- the report
def test_report_is_self_contained_with_sections_and_csv(prioritized, counterfactuals, tiny_trained, tmp_path, no_benchmark):
    from bioworld.report import write_report

    path = write_report(prioritized, tmp_path / "rep", counterfactuals=counterfactuals, model=tiny_trained)
    assert path == tmp_path / "rep" / "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    assert not EXTERNAL.search(text), EXTERNAL.search(text).group(0)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for section in SECTIONS:
        assert section in text, section
    plain = text.replace("<wbr>", "")  # long names may wrap after '_' and '+'
    for name in prioritized.table["intervention"].head(5):
        assert _html.escape(name) in plain, name
    for spec in counterfactuals.obs["bw_intervention"].unique():  # counterfactual tables
        assert f"<h3>{_html.escape(spec)}</h3>" in text
    # pathway enrichment of each counterfactual (simulated genes: no Hallmark set is on the panel)
    assert text.count("enriched pathways:") == counterfactuals.obs["bw_intervention"].nunique()
    # provenance: genes, entities, holdout, seed, version
    assert f"{len(tiny_trained.genes):,}" in text and tiny_trained.holdout[0] in text and "bioworld version" in text
    assert "ranking is unvalidated" in text and "bioworld evaluate MODEL_DIR --data TEST.h5ad" in text
    csv = pd.read_csv(tmp_path / "rep" / "ranked_interventions.csv")
    assert len(csv) == len(prioritized.table)
    assert list(csv["intervention"]) == list(prioritized.table["intervention"])
    assert text.count('<td class="num">') > 0 and text.count("<tr><td class=\"num\">") >= min(30, len(csv))
    # each row shows its priority with the model's and the prior's percentiles
    assert "priority (model, network, directed)" in text
    assert {"priority", "model_pct", "prior_pct", "directed_pct"} <= set(csv.columns)
    from bioworld.report.html import _priority_text, main_rows

    top = main_rows(prioritized.table).iloc[0]
    assert f'<td class="num">{_priority_text(top)}</td>' in text and _priority_text(top).startswith(f"{top['priority']:.2f} (")


def test_report_shows_held_out_accuracy_next_to_baselines(prioritized, tmp_path):
    from bioworld.report import write_report

    text = write_report(prioritized, tmp_path, accuracy=_accuracy()).read_text()
    assert "unvalidated" not in text
    assert '<tr class="model">' in text and "MeanOfTrain" in text and "0.600 ± 0.100" in text
    assert "WorldModel is the best method on 2 of 2" in text
    assert "No counterfactuals were computed" in text
    # the hint names the command-line flag too (a report of `bioworld prioritize` named only a Python argument)
    assert "--counterfactuals N" in text and "counterfactuals=wm.counterfactual(cells, [...])" in text


def test_report_shows_the_models_own_evaluation_never_a_checkout_file(prioritized, tiny_trained, tmp_path,
                                                                       monkeypatch):
    from bioworld.report import load_accuracy, write_report

    # a benchmark summary of the repository in the working folder is not this model's accuracy
    stray = tmp_path / "benchmarks" / "results" / "papalexi_summary.csv"
    stray.parent.mkdir(parents=True)
    _accuracy().rename(columns={"value": "mean"}).assign(split="unseen_singles").to_csv(stray, index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tiny_trained, "evaluation", None, raising=False)
    text = write_report(prioritized, tmp_path / "a", model=tiny_trained).read_text()
    assert "unvalidated" in text and "papalexi_summary" not in text and "unseen_singles" not in text
    # the model's own held-out table (as bioworld evaluate writes it) is shown
    own = pd.DataFrame({"split": ["unseen"] * 4, "method": ["WorldModel", "WorldModel", "NoChange", "NoChange"],
                        "metric": ["mse_top20", "pearson_all"] * 2, "mean": [0.25, 0.61, 0.5, 0.0],
                        "sd": [0.05, 0.1, 0.1, 0.0], "n": [3] * 4})
    monkeypatch.setattr(tiny_trained, "evaluation", own, raising=False)
    text = write_report(prioritized, tmp_path / "b", model=tiny_trained).read_text()
    assert "unvalidated" not in text and "own evaluation on held-out data" in text
    assert "0.250 ± 0.050" in text and '<tr class="model">' in text
    assert list(load_accuracy(own).columns) == ["method", "metric", "value", "sd", "split"]


def test_report_escapes_and_refuses_bad_input(prioritized, tmp_path, no_benchmark):
    from bioworld.report import load_accuracy, write_report

    text = write_report(prioritized, tmp_path, title="<script>alert(1)</script>").read_text()
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    with pytest.raises(BioworldError, match="ranked table"):
        write_report(object(), tmp_path)
    with pytest.raises(BioworldError, match="lacks column"):
        load_accuracy(pd.DataFrame({"method": ["a"], "score": [1.0]}))
    with pytest.raises(BioworldError, match="is a file"):
        write_report(prioritized, tmp_path / "report.html")


def test_counterfactuals_survive_h5ad_round_trip(counterfactuals, prioritized, tmp_path, no_benchmark):
    from bioworld.report import write_report
    from bioworld.report._h5ad import effect_records, write_h5ad_atomic

    path = write_h5ad_atomic(counterfactuals, tmp_path / "cf.h5ad")
    back = ad.read_h5ad(path)
    assert back.shape == counterfactuals.shape
    np.testing.assert_allclose(back.layers["delta"], counterfactuals.layers["delta"])
    for spec, table in counterfactuals.uns["bioworld"]["entity_effects"].items():
        records = effect_records(table)
        got = effect_records(back.uns["bioworld"]["entity_effects"][spec])
        assert [r["entity"] for r in got] == [r["entity"] for r in records]
        np.testing.assert_allclose([r["shift"] for r in got], [r["shift"] for r in records], rtol=1e-6)
    text = write_report(prioritized, tmp_path / "rep", counterfactuals=back).read_text()
    for spec in counterfactuals.uns["bioworld"]["entity_effects"]:
        assert f"<h3>{_html.escape(spec)}</h3>" in text


# ------------------------------------------------------------------------------------- plots
def test_plots_return_figures_including_edge_cases(prioritized, tiny_trained):
    import matplotlib.pyplot as plt

    from bioworld.report import plots

    figs = [
        plots.effect_bars(prioritized.table, top_n=8),
        plots.entity_heatmap(prioritized.entity_shift, list(prioritized.table["intervention"][:6])),
        plots.per_cell_distributions(prioritized.per_cell_scores),
        plots.pair_synergy_matrix(prioritized.pair_synergy),
        plots.training_curves(tiny_trained.train_result.history),
        plots.accuracy_bars(_accuracy()),
        plots.accuracy_bars(pd.concat([_accuracy().assign(split="unseen_singles"),
                                       _accuracy().assign(split="unseen_doubles")], ignore_index=True)),
        # nothing to show: a figure saying so, never an exception
        plots.effect_bars(prioritized.table.head(0)),
        plots.entity_heatmap(prioritized.entity_shift, ["not-an-intervention"]),
        plots.per_cell_distributions({}),
        plots.per_cell_distributions({"a": np.zeros(1)}),
        plots.pair_synergy_matrix(pd.DataFrame(np.nan, index=["a", "b"], columns=["a", "b"])),
        plots.training_curves([]),
        plots.accuracy_bars(None),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        plt.close(fig)
    no_pairs = plots.pair_synergy_matrix(pd.DataFrame(np.nan, index=["a", "b"], columns=["a", "b"]))
    assert "--no-pairs" in no_pairs.texts[0].get_text()  # the flag of the report's command, not only pairs=False
    big = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 40)))
    fig = plots.pair_synergy_matrix(big, max_entities=10)
    assert len(fig.axes[0].get_xticklabels()) == 10
    plt.close(fig)


# --------------------------------------------------------------------------------------- CLI
def _invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved(tiny_trained, small_sim, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tiny_trained.save(d / "model")
    _control_cells(small_sim, 12).write_h5ad(d / "cells.h5ad")
    return d


def test_cli_counterfactual_writes_rows_per_intervention_and_cell(saved, tiny_trained, tmp_path):
    specs = [f"silence:{tiny_trained.entity_names[0]}", tiny_trained.holdout[0]]
    out = tmp_path / "cf.h5ad"
    res = _invoke("counterfactual", saved / "model", "--cells", saved / "cells.h5ad",
                  "--intervention", specs[0], "--intervention", specs[1], "--out", out)
    assert res.exit_code == 0, (res.output, res.exception)
    cf = ad.read_h5ad(out)
    assert cf.n_obs == 2 * 12 and cf.n_vars == len(tiny_trained.var_names)
    assert list(cf.obs["bw_intervention"].unique()) == specs
    assert "delta" in cf.layers and cf.obsm["bw_entity_shift"].shape == (24, len(tiny_trained.entity_names))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_cli_prioritize_writes_csv_and_report(saved, tiny_trained, tmp_path, no_benchmark):
    out = tmp_path / "rep"
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad",
                  "--goal", f"up:{tiny_trained.entity_names[2]}", "--out", out, "--no-pairs")
    assert res.exit_code == 0, (res.output, res.exception)
    assert (out / "report.html").is_file() and "Report: " in res.stdout
    csv = pd.read_csv(out / "ranked_interventions.csv")
    # --no-pairs: singles only; this genetic model scores the bundled compounds as the loss of their targets
    assert set(csv["kind"]) == {"gene", "entity", "compound"}
    comp = csv[csv["kind"] == "compound"]
    assert comp["evidence"].str.contains("as the inhibition of its target").all() and "action" in csv.columns
    assert "compounds not scored: " in res.stdout
    assert {"rank", "intervention", "kind", "score", "flag", "seen", "evidence"} <= set(csv.columns)
    genes = sorted({p.target for a in tiny_trained.actions.values() for p in a.components if p.kind == "ko"})[:2]
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad", "--goal", "toward:control",
                  "--out", tmp_path / "rep2", "--genes", ",".join(genes))
    assert res.exit_code == 0, (res.output, res.exception)
    labels = set(pd.read_csv(tmp_path / "rep2" / "ranked_interventions.csv")["intervention"])
    assert {f"ko:{g}" for g in genes} <= labels or set(genes) <= labels


def test_report_shows_flagged_rows_apart_druggability_and_fit_banner(tiny_trained, cells, tmp_path, monkeypatch,
                                                                   no_benchmark):
    from bioworld.knowledge import CompoundKnowledge
    from bioworld.report import write_report
    from bioworld.train.fit_check import WEAK_FIT_RATIO

    goal = tiny_trained.entity_names[0]
    trained = tiny_trained.space.genetic_targets()[:2]
    res = tiny_trained.prioritize(cells, f"down:{goal}", genes=trained + ["JAK1"], compounds=[], pairs=False, n_boot=10)
    t = res.table.set_index("intervention")
    drugs = CompoundKnowledge.bundled().compounds_targeting("JAK1")
    assert drugs and t.loc["JAK1", "drugs"].startswith(f"{len(drugs)}: ") and not t.loc["JAK1", "seen"]
    assert (t.loc[trained, "drugs"] == "").all()  # simulated genes: no known compound
    monkeypatch.setitem(tiny_trained.meta, "training_fit", {"strong_median_magnitude_ratio": WEAK_FIT_RATIO / 2,
                                                            "strong_effects": ["P1_DRV1"]})
    page = write_report(res, tmp_path / "a", model=tiny_trained).read_text()
    ranked = page.split('id="ranked"')[1].split("</table>")[0]
    flagged = page.split('id="flagged"')[1].split("</table>")[0]
    assert "silence:" not in ranked  # neither the tautology nor any mechanism is in the main table
    mech = page.split('id="mechanism-table"')[1].split("</table>")[0]
    assert "silence:" in mech and f"silence:{goal.replace('_', '_<wbr>')}<" not in mech
    assert "goal entity" in flagged and "itself" in flagged
    assert _html.escape(sorted(drugs)[0]) in ranked and "nearest measured" in ranked
    assert 'id="fit-failed"' in page and "training fit check failed" in page and "P1_DRV1" in page
    monkeypatch.setitem(tiny_trained.meta, "training_fit", {"strong_median_magnitude_ratio": WEAK_FIT_RATIO * 2,
                                                            "strong_effects": ["P1_DRV1"]})
    assert 'id="fit-failed"' not in write_report(res, tmp_path / "b", model=tiny_trained).read_text()


def test_cli_prioritize_ranks_unseen_genes_and_flags_the_readout(saved, tiny_trained, tmp_path, no_benchmark):
    out = tmp_path / "rep"
    goal = tiny_trained.entity_names[0]
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad", "--goal", f"down:{goal}",
                  "--out", out, "--max-genes", "40", "--no-pairs")
    assert res.exit_code == 0, (res.output, res.exception)
    csv = pd.read_csv(out / "ranked_interventions.csv", keep_default_na=False)
    genes = csv[csv["kind"] == "gene"]
    assert len(genes) == 40 and (genes["seen"].astype(str) == "False").sum() >= 40 - len(tiny_trained.space.genetic_targets())
    flagged = csv["flag"] == "readout"
    members = {g for g, w in zip(tiny_trained.genes, tiny_trained.membership[0]) if w}
    assert f"silence:{goal}" in set(csv.loc[flagged, "intervention"])
    assert set(csv.loc[flagged, "intervention"]) - {f"silence:{goal}"} <= members  # knockouts of readout genes
    assert not flagged.head(10).any() and flagged.iloc[int(np.flatnonzero(flagged)[0]):].all()
    assert "act on the goal's own readout" in res.stdout
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad", "--goal", f"down:{goal}",
                  "--out", tmp_path / "rep2", "--max-genes", "-1")
    assert res.exit_code == 2 and "max-genes" in res.output


@pytest.mark.parametrize("goal, fact", [("sideways:X", "direction"), ("down:NOT_AN_ENTITY", "NOT_AN_ENTITY"),
                                        ("nonsense", "DIRECTION:TARGET")])
def test_cli_prioritize_bad_goal_is_one_line_error(saved, tmp_path, goal, fact):
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad", "--goal", goal, "--out", tmp_path / "r")
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fact in lines[0], lines
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


def test_cli_counterfactual_errors_are_one_line(saved, tmp_path):
    res = _invoke("counterfactual", tmp_path / "missing", "--cells", saved / "cells.h5ad",
                  "--intervention", "silence:SIM_P1", "--out", tmp_path / "cf.h5ad")
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "does not exist" in res.stderr


def test_cli_counterfactual_unknown_entity_is_one_line_error(saved, tmp_path):
    res = _invoke("counterfactual", saved / "model", "--cells", saved / "cells.h5ad",
                  "--intervention", "silence:SIM_P99", "--out", tmp_path / "cf.h5ad")
    assert res.exit_code == 2 and res.stderr.startswith("error: "), (res.output, res.exception)
    assert not (tmp_path / "cf.h5ad").exists()


def test_report_methods_gene_heatmap_and_collapsed_pairs(prioritized, tiny_trained, tmp_path, no_benchmark):
    from bioworld.report import write_report

    table = prioritized.table
    page = write_report(prioritized, tmp_path / "m", model=tiny_trained).read_text()
    methods = page.split('id="methods"')[1].split("</section>")[0]
    assert "training data hash" in methods and "sha256:" in methods
    assert "TrainConfig" in methods and "&#34;max_steps&#34;: 40" in methods.replace("&quot;", "&#34;")
    assert 'id="knowledge-table"' in methods and "licence" in methods and "tautology guard" in methods
    assert "Gene × intervention: predicted changes" in page
    ranked = page.split('id="ranked"')[1].split("</table>")[0]
    collapsed = table[table["collapsed_into"] != ""]
    for lab in collapsed["intervention"]:
        assert f">{_html.escape(lab).replace('_', '_<wbr>').replace('+', '+<wbr>')}<" not in ranked
    if len(collapsed):
        assert "adding nothing over it" in page and "collapsed_into" in page
    # without a model: said, not invented
    page = write_report(prioritized, tmp_path / "n").read_text()
    assert "not given to the report" in page.split('id="methods"')[1].split("</section>")[0]


def test_report_gene_heatmap_plot_handles_empty_and_marks_readout():
    from bioworld.report import plots

    assert isinstance(plots.gene_heatmap(pd.DataFrame()), Figure)
    gd = pd.DataFrame([[1.0, -2.0, 0.1], [0.5, -1.0, 0.0]], index=["A", "B"], columns=["g1", "g2", "g3"])
    fig = plots.gene_heatmap(gd, top_genes=2, highlight=["g2"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["g2*", "g1"]


def test_cli_prioritize_counterfactuals_fill_the_report(saved, tiny_trained, tmp_path, no_benchmark):
    goal = tiny_trained.entity_names[0]
    out = tmp_path / "cfrep"
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad", "--goal", f"down:{goal}",
                  "--out", out, "--max-genes", "15", "--no-pairs", "--counterfactuals", "2")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "counterfactuals: 2 intervention(s) on 12 cells" in res.stdout
    page = (out / "report.html").read_text()
    cf = page.split('id="counterfactuals"')[1].split("</section>")[0]
    csv = pd.read_csv(out / "ranked_interventions.csv", keep_default_na=False)
    main = csv[(csv["flag"] == "") & ~csv["intervention"].str.contains("silence:") & (csv["collapsed_into"] == "")]
    # the best rows the model answers as counterfactuals (a compound as the loss of > 2 targets is passed over)
    main = main[main["action"].map(lambda a: len(tiny_trained.space.parse(a).components) <= 2)]
    for lab in main["intervention"].head(2):
        assert f"<h3>{_html.escape(lab)}</h3>" in cf
    assert "No counterfactuals were computed" not in cf
    res = _invoke("prioritize", saved / "model", "--cells", saved / "cells.h5ad", "--goal", f"down:{goal}",
                  "--out", tmp_path / "bad", "--counterfactuals", "-1")
    assert res.exit_code == 2 and "counterfactuals" in res.output


def test_report_says_enrichment_was_not_tested_on_a_panel_no_hallmark_set_covers(prioritized, counterfactuals,
                                                                                   tiny_trained, tmp_path, no_benchmark):
    """Simulated genes: no Hallmark set has 5 genes on the panel, so GSEA never ran. The report used to say
    'none at FDR < 0.25' (a negative result that was never computed) and warn once per intervention."""
    import warnings

    from bioworld.report import write_report

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the reason is in the report, not warned per intervention
        path = write_report(prioritized, tmp_path / "rep", counterfactuals=counterfactuals, model=tiny_trained)
    text = path.read_text(encoding="utf-8")
    n = counterfactuals.obs["bw_intervention"].nunique()
    assert "none at FDR" not in text
    assert text.count("<b>enriched pathways:</b> not tested: no set of bundled hallmark has 5 to 500") == n
    # the provenance says no replicate key in words, not Python's None
    assert re.search(r"replicate key (none|\w+)</td>", text) and "replicate key None" not in text


def test_report_and_plots_read_a_sparse_delta_layer(counterfactuals, tmp_path):
    """A counterfactual whose delta a user stored sparse (scipy csr): the report's gene lists, bw.pl.effect_bars and
    bw.tl.enrichment used to crash inside numpy ('setting an array element with a sequence')."""
    import matplotlib

    matplotlib.use("Agg")
    import scipy.sparse as sp

    import bioworld as bw
    from bioworld.report.html import _counterfactual_view

    cf = counterfactuals.copy()
    cf.layers["delta"] = sp.csr_matrix(np.asarray(counterfactuals.layers["delta"]))
    spec = str(cf.obs["bw_intervention"].iloc[0])
    dense_view = {v["spec"]: v["genes"] for v in _counterfactual_view(counterfactuals)}
    assert {v["spec"]: v["genes"] for v in _counterfactual_view(cf)} == dense_view
    ax = bw.pl.effect_bars(cf, spec, n_genes=3)
    d = np.asarray(counterfactuals.layers["delta"])[(cf.obs["bw_intervention"] == spec).to_numpy()].mean(0)
    np.testing.assert_allclose(sorted(abs(p.get_width()) for p in ax.patches), sorted(np.sort(np.abs(d))[-3:]),
                               rtol=1e-5)
    sets = {"first": [str(g) for g in cf.var_names[:8]], "second": [str(g) for g in cf.var_names[8:16]]}
    res = bw.tl.enrichment(cf, spec, gene_sets=sets, permutations=20)
    assert res.equals(bw.tl.enrichment(counterfactuals, spec, gene_sets=sets, permutations=20))
    import matplotlib.pyplot as plt

    plt.close("all")


def test_report_counterfactual_genes_are_symbols_when_var_names_are_ids(counterfactuals):
    """A model trained on Ensembl ids (gene_symbols_key / id_map) answers with the ids as var_names and the symbols in
    var['bw_gene_symbol']; the report's up/down gene lists showed the ids, unlike bw.pl.effect_bars and the heatmap."""
    from bioworld.report.html import _counterfactual_view

    cf = counterfactuals.copy()
    symbols = [str(g) for g in cf.var_names]
    cf.var["bw_gene_symbol"] = symbols
    cf.var_names = [f"ENSG{i:011d}" for i in range(cf.n_vars)]
    views = _counterfactual_view(cf)
    shown = [g for v in views for g, _ in v["genes"]["up"] + v["genes"]["down"]]
    assert shown and all(g in symbols for g in shown) and not any(g.startswith("ENSG") for g in shown)


def test_write_report_refuses_a_model_path_and_a_bad_top_n_and_passes_top_n_to_the_distributions(
        prioritized, tiny_trained, tmp_path, no_benchmark, monkeypatch):
    """model='my_model' (a folder path) was silently ignored: a report without the fit banner, training details or
    data findings. top_n=-1 plotted every row but the last; top_n did not reach the per-cell distributions, though
    the docstring said so."""
    from bioworld.report import plots, write_report

    with pytest.raises(BioworldError, match=r"model is 'my_model' \(str\).*Fix: load the folder first"):
        write_report(prioritized, tmp_path / "a", model="my_model")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(BioworldError, match=r"top_n=.*expected a whole number >= 1"):
            write_report(prioritized, tmp_path / "b", model=tiny_trained, top_n=bad)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    seen = {}
    real = plots.per_cell_distributions

    def spy(*args, **kwargs):
        seen["top_n"] = kwargs.get("top_n")
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "per_cell_distributions", spy)
    write_report(prioritized, tmp_path / "c", model=tiny_trained, top_n=3)
    assert seen["top_n"] == 3
    write_report(prioritized, tmp_path / "d", model=tiny_trained)
    assert seen["top_n"] == 12  # the default report is unchanged


def test_training_curves_log_axis_ticks_are_plain_numbers():
    """The loss-terms panel (log scale) showed its tick labels as raw mathtext ('$\\mathdefault{2\\times10^{0}}$'):
    the report's figures are drawn with the math parser off, and matplotlib's log formatter writes mathtext."""
    import io

    from bioworld.report import plots

    history = [{"step": s, "loss": 3.0 - s / 100, "latent": 0.3 + s / 100, "recon": 1.1 - s / 200,
                "expr": 1.26, "covariance": 0.3 + s / 15} for s in (10, 20, 30)]
    fig = plots.training_curves(history)
    fig.savefig(io.BytesIO(), format="png")  # ticks are labelled when drawn
    ax = fig.axes[1]
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels
    assert "1" in labels and all(float(t) > 0 for t in labels)


def test_report_says_when_the_models_evaluation_scored_only_trained_perturbations(prioritized, tiny_trained,
                                                                                   tmp_path, monkeypatch):
    """bioworld evaluate on the training perturbations (split 'seen' only) warns that it measures fit; the report
    showed the same table as the model's 'held-out accuracy' with nothing saying so."""
    from bioworld.report import write_report

    def table(split):
        return pd.DataFrame({"split": [split] * 4, "method": ["WorldModel", "WorldModel", "NoChange", "NoChange"],
                             "metric": ["mse_top20", "pearson_all"] * 2, "mean": [0.25, 0.61, 0.5, 0.0],
                             "sd": [0.05, 0.1, 0.1, 0.0], "n": [3] * 4})

    monkeypatch.setattr(tiny_trained, "evaluation", table("seen"), raising=False)
    text = write_report(prioritized, tmp_path / "seen", model=tiny_trained).read_text()
    assert "Every scored perturbation was one the model trained on" in text and "unvalidated" in text
    assert "0.250 ± 0.050" in text  # the table is still shown
    monkeypatch.setattr(tiny_trained, "evaluation", table("unseen"), raising=False)
    text = write_report(prioritized, tmp_path / "unseen", model=tiny_trained).read_text()
    assert "Every scored perturbation was one the model trained on" not in text and "unvalidated" not in text


def test_gene_heatmap_colour_range_is_not_set_by_a_knocked_out_genes_own_transcript():
    """A knockout lowers its own gene's transcript far more than anything else it moves: that one cell set the colour
    range alone and every other cell of the report's heatmap was white (seen on a 3-perturbation screen)."""
    from bioworld.report import plots

    rng = np.random.default_rng(0)
    genes = ["MAPKBP1", "STAT1", "IRF1", "g4", "g5"]
    gd = pd.DataFrame(rng.normal(0, 0.01, (3, 5)), index=["MAPKBP1", "IRF1+STAT1", "silence:X"], columns=genes)
    gd.loc["MAPKBP1", "MAPKBP1"] = -0.35  # its own transcript
    gd.loc["IRF1+STAT1", "STAT1"] = -0.2
    fig = plots.gene_heatmap(gd)
    ax = fig.axes[0]
    lo, hi = ax.images[0].get_clim()
    own = {("MAPKBP1", "MAPKBP1"), ("IRF1+STAT1", "STAT1"), ("IRF1+STAT1", "IRF1")}
    others = [abs(gd.loc[r, c]) for r in gd.index for c in gd.columns if (r, c) not in own]
    assert hi == pytest.approx(max(others)) and lo == -hi and hi < 0.05
    circled = ax.collections[0].get_offsets()  # (column, row) of the own-transcript cells, in the plotted order
    cols = [t.get_text() for t in ax.get_xticklabels()]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert {(rows[int(r)], cols[int(c)]) for c, r in circled} == own


def test_write_report_refuses_answers_of_another_model(prioritized, counterfactuals, tiny_trained, tmp_path,
                                                       no_benchmark):
    """A notebook with wm and wm2: write_report(wm.prioritize(...), model=wm2) showed one model's ranking under the
    other's provenance, fit banner and held-out accuracy, with nothing saying so."""
    import copy

    from bioworld.report import write_report

    class Reseeded:  # the same model as far as the report reads it, but another seed
        def __init__(self, wm):
            self._wm = wm

        def describe(self):
            return {**self._wm.describe(), "seed": 99}

        def __getattr__(self, name):
            return getattr(self._wm, name)

    with pytest.raises(BioworldError, match=r"result came from another model than model= \(they differ in seed.*"
                                            r"Fix: pass the model that answered"):
        write_report(prioritized, tmp_path / "a", model=Reseeded(tiny_trained))
    cf = counterfactuals.copy()
    cf.uns["bioworld"] = copy.deepcopy(dict(cf.uns["bioworld"]))
    cf.uns["bioworld"]["model"] = {**cf.uns["bioworld"]["model"], "train_labels": ["control", "OTHER"]}
    with pytest.raises(BioworldError, match=r"counterfactuals came from another model.*train_labels"):
        write_report(prioritized, tmp_path / "b", counterfactuals=cf, model=tiny_trained)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the model that answered, also saved and loaded again, is accepted
    tiny_trained.save(tmp_path / "m")
    import bioworld as bw

    path = write_report(prioritized, tmp_path / "c", counterfactuals=counterfactuals,
                        model=bw.WorldModel.load(tmp_path / "m"))
    assert path.is_file()
