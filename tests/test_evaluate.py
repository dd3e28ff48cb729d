"""``bioworld evaluate`` / ``bioworld.eval.evaluate``: one model on held-out data, and the model card."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bioworld.errors import BioworldError


@pytest.fixture(scope="module")
def held_out(small_sim):
    """New cells from the same simulated screen (same DAG, other cell draws) + a label nobody knows."""
    from _helpers import small_simulation

    test = small_simulation(seed=0, cells_seed=7).adata.copy()
    labels = test.obs["perturbation"].astype(str).to_numpy().copy()
    labels[np.flatnonzero(labels == "control")[:6]] = "NOTAGENE1"
    test.obs["perturbation"] = pd.Categorical(labels)
    return test


@pytest.fixture(scope="module")
def evaluation(tiny_trained, held_out, small_sim):
    from bioworld.eval import evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = evaluate(tiny_trained, held_out, train_data=small_sim.adata)
    summary.attrs["caught"] = [str(w.message) for w in caught]
    return summary


def test_evaluate_scores_model_baselines_and_ceiling_by_split(tiny_trained, evaluation):
    assert list(evaluation.columns) == ["split", "method", "metric", "mean", "sd", "n"]
    methods = set(evaluation["method"])
    assert methods == {"WorldModel", "MeanOfTrain", "NoChange", "Ceiling (split-half)"}
    unseen = evaluation[(evaluation["split"] == "unseen") & (evaluation["metric"] == "mse_top20")]
    assert set(unseen["method"]) == methods and (unseen["n"] == len(tiny_trained.holdout)).all()
    seen = evaluation[(evaluation["split"] == "seen") & (evaluation["method"] == "WorldModel")]
    assert int(seen["n"].max()) == len(tiny_trained.train_labels) - 1
    # the label the model cannot answer is listed, with the reason, and warned about
    assert list(evaluation.attrs["skipped"]) == ["NOTAGENE1"]
    assert any("NOTAGENE1" in m for m in evaluation.attrs["caught"])


def test_evaluate_values_match_an_independent_computation(tiny_trained, held_out, evaluation):
    from bioworld.data import normalize, register
    from bioworld.eval.metrics import mse_top_de, pearson_delta

    label = tiny_trained.holdout[0]
    a = held_out.copy()
    reg = register(a, perturbation_key="perturbation", control="control", input="counts")
    X = normalize(a, reg).astype(np.float64)
    lab = a.obs["perturbation"].astype(str).to_numpy()
    obs = X[lab == label].mean(0) - X[lab == "control"].mean(0)
    pred = np.asarray(tiny_trained.predict([label]).layers["delta"], np.float64)[0]
    scores = evaluation.attrs["scores"]
    got = scores[(scores["method"] == "WorldModel") & (scores["perturbation"] == label)].set_index("metric")["value"]
    assert got["mse_top20"] == pytest.approx(mse_top_de(pred, obs, 20), rel=1e-6)
    assert got["pearson_all"] == pytest.approx(pearson_delta(pred, obs), rel=1e-6)
    nochange = scores[(scores["method"] == "NoChange") & (scores["perturbation"] == label)].set_index("metric")["value"]
    top = np.argsort(-np.abs(obs))[:20]
    assert nochange["mse_top20"] == pytest.approx(float(np.mean(obs[top] ** 2)), rel=1e-6)


def test_evaluate_refuses_a_different_gene_panel(tiny_trained, held_out):
    from bioworld.eval import evaluate

    with pytest.raises(BioworldError, match="lack 3 of the model's"):
        evaluate(tiny_trained, held_out[:, 3:].copy())


def test_cli_evaluate_writes_table_card_and_report_uses_it(tiny_trained, held_out, tmp_path):
    import bioworld as bw
    from bioworld.eval import load_evaluation
    from test_cli import assert_one_line_error, invoke

    model = tmp_path / "model"
    tiny_trained.save(model)
    card = (model / "README.md").read_text()
    assert "Not evaluated" in card and "sha256:" in card
    data = tmp_path / "test.h5ad"
    held_out.write_h5ad(data)
    result = invoke("evaluate", model, "--data", data)
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    assert "WorldModel" in out and "Ceiling (split-half)" in out and "mse_top20" in out
    assert f"wrote {model / 'evaluation.csv'}" in out
    table = load_evaluation(model)
    assert table is not None and set(table["split"]) == {"unseen", "seen"}
    card = (model / "README.md").read_text()
    assert "Not evaluated" not in card and "| unseen | **WorldModel** |" in card
    # reports of the loaded model show its own held-out table
    wm = bw.WorldModel.load(model)
    assert wm.evaluation is not None and len(wm.evaluation) == len(table)
    cells = tmp_path / "cells.h5ad"
    held_out[held_out.obs["perturbation"] == "control"][:20].copy().write_h5ad(cells)
    result = invoke("prioritize", model, "--cells", cells, "--goal", f"down:{wm.entity_names[0]}", "--no-pairs",
                    "--out", tmp_path / "rep")
    assert result.exit_code == 0, (result.output, result.exception)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "own evaluation on held-out data" in html and "unvalidated" not in html
    # a test file without the model's genes: one line, exit 2
    held_out[:, 2:].copy().write_h5ad(tmp_path / "short.h5ad")
    assert_one_line_error(invoke("evaluate", model, "--data", tmp_path / "short.h5ad"), "lack 2 of the model's")


def test_model_card_lists_data_hash_config_fit_and_licences(tiny_trained, tmp_path, monkeypatch):
    from bioworld.report.card import model_card

    monkeypatch.setitem(tiny_trained.meta, "knowledge_sources",
                        [{"name": "repurposing_hub", "source": "compound targets", "licence": "non-commercial"}])
    tiny_trained.save(tmp_path / "m")  # records the data hash
    text = model_card(tiny_trained)
    assert tiny_trained.meta["data_hash"].startswith("sha256:") and tiny_trained.meta["data_hash"] in text
    assert '"max_steps": 40' in text and "## Training fit" in text and "median Pearson" in text
    assert "| repurposing_hub | compound targets | non-commercial |" in text
    assert "| dorothea | gene features: DoRothEA" in text and "GPL-3" in text
    assert "user-supplied entity file 'simulator'" in text


def test_evaluate_k_is_checked_against_the_panel(tiny_trained, held_out):
    """k larger than the panel scored every gene under a 'mse_top100000' heading without a word (k < 1 was and is
    refused)."""
    from bioworld.eval import evaluate

    n_genes = len(tiny_trained.var_names)
    with pytest.warns(UserWarning, match=f"k={n_genes + 5} is more than the {n_genes} genes"):
        evaluate(tiny_trained, held_out, k=n_genes + 5)
    with pytest.raises(BioworldError, match="k=0"):
        evaluate(tiny_trained, held_out, k=0)


def test_evaluate_on_seen_perturbations_only_says_it_measures_fit(tiny_trained, held_out, evaluation):
    """The model's own training labels only (e.g. its training file): a note and a warning say the scores are fit,
    not prediction of unseen perturbations; with held-out labels present there is no such note."""
    from bioworld.eval import evaluate

    assert not any("were in the model's training data" in n for n in evaluation.attrs["notes"])
    labels = held_out.obs["perturbation"].astype(str)
    seen_only = held_out[labels.isin(list(tiny_trained.train_labels) + ["control"]).to_numpy()].copy()
    with pytest.warns(UserWarning, match="were in the model's training data"):
        summary = evaluate(tiny_trained, seen_only)
    assert set(summary["split"]) == {"seen"}
    assert any("not how it predicts unseen ones" in n for n in summary.attrs["notes"])


def test_evaluate_refuses_a_missing_out_folder_before_scoring_and_a_path_as_data(tiny_trained, held_out, tmp_path,
                                                                                  monkeypatch):
    """out= a folder that does not exist used to be found only after every perturbation was scored; a file path given
    as the test data said 'expected an AnnData' with no fix."""
    import bioworld.eval._evaluate as ev

    def scoring(*a, **k):
        raise AssertionError("the data were read before out= was checked")

    monkeypatch.setattr(ev, "_test_cells", scoring)
    with pytest.raises(BioworldError, match=r"out=.*is not a folder.*Fix: pass out= an existing folder"):
        ev.evaluate(tiny_trained, held_out, out=tmp_path / "no_such_model")
    monkeypatch.undo()
    with pytest.raises(BioworldError, match=r"got str as test data.*Fix: read the file first: bw.data.read_h5ad"):
        ev.evaluate(tiny_trained, str(tmp_path / "test.h5ad"))


def test_python_evaluate_into_a_model_folder_updates_its_model_card(tiny_trained, held_out, tmp_path):
    """README's `bw.eval.evaluate(wm, test, out="papalexi_model")` promises evaluation.csv + model card; from Python
    only the CSVs were written and the folder's README.md still said 'Not evaluated'."""
    from bioworld.eval import evaluate

    model = tmp_path / "model"
    tiny_trained.save(model)
    assert "Not evaluated" in (model / "README.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate(tiny_trained, held_out, out=model)
    card = (model / "README.md").read_text()
    assert "Not evaluated" not in card and "| unseen | **WorldModel** |" in card
    # a plain folder (no model in it) gets the tables only, no card
    plain = tmp_path / "plain"
    plain.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate(tiny_trained, held_out, out=plain)
    assert (plain / "evaluation.csv").is_file() and not (plain / "README.md").exists()


def test_log_normalised_test_data_for_a_counts_model_say_to_give_the_counts(tiny_trained, held_out):
    """evaluate / to_cell_eval on log-normalised test cells of a counts model said 'Fix: pass input='log'', which
    is then refused as another scale than the model's; the fix is the raw counts (here kept in a layer)."""
    import bioworld as bw
    from bioworld.eval import evaluate

    test = held_out.copy()
    X = np.asarray(test.X.toarray() if hasattr(test.X, "toarray") else test.X, dtype=np.float64)
    test.layers["counts"] = X.copy()
    test.X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    for call in (lambda: evaluate(tiny_trained, test), lambda: bw.tl.to_cell_eval(tiny_trained, test)):
        with pytest.raises(BioworldError) as e:
            call()
        msg = str(e.value)
        assert "this model was trained on raw counts" in msg and "pass input='log'" not in msg
        assert "Fix: give the test cells' raw counts; layers['counts'] holds integer counts" in msg
