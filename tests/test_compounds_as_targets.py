"""A model trained on gene perturbations answers a compound, in predict and counterfactual as in prioritize, as
the loss of its targets (bundled knowledge, or targets given at query time), and refuses with the reason one
it cannot answer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from bioworld.errors import UnknownPerturbationError
from bioworld.knowledge import CompoundKnowledge
from test_cli import invoke

torch.set_num_threads(1)

#: Hand-made compounds on the small simulation's genes (the bundled table's targets are human genes).
TABLE = {"cpd-one": ["P2_DRV1"], "cpd-two": ["P2_DRV1", "P3_DRV1"],
         "cpd-broad": [f"P{i}_DRV{j}" for i in range(1, 6) for j in (1, 2)],
         "cpd-off-table": ["NOTAGENE123"], "cpd-none": [],
         "cpd-three": ["P2_DRV1", "P3_DRV1", "P4_DRV1"]}  # wider than the model's max_components (2)


def _delta(pred, label):
    return np.asarray(pred.layers["delta"])[list(pred.obs_names).index(label)]


def _same(a, b):
    """The same answer: one action, so equal up to float rounding. Rows that sit at different places in the engine's
    row blocks can differ in the last bits on some CPUs (oneDNN picks other kernels for a block's tail rows: 2.4e-7 on
    an AMD EPYC host), while another action differs by orders of magnitude more."""
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_predict_answers_a_compound_as_the_loss_of_its_targets(tiny_trained, knowledge):
    assert tiny_trained.space.compounds is None  # a genetic model
    labels = ["cpd-one@1", "cpd-one@10", "ko:P2_DRV1", "cpd-two@1", "P2_DRV1+P3_DRV1", "cpd-one@1+P3_DRV1"]
    pred = tiny_trained.predict(labels)
    assert list(pred.obs_names) == labels
    _same(_delta(pred, "cpd-one@1"), _delta(pred, "ko:P2_DRV1"))
    _same(_delta(pred, "cpd-one@10"), _delta(pred, "ko:P2_DRV1"))  # no dose in a genetic model
    _same(_delta(pred, "cpd-two@1"), _delta(pred, "P2_DRV1+P3_DRV1"))
    _same(_delta(pred, "cpd-one@1+P3_DRV1"), _delta(pred, "P2_DRV1+P3_DRV1"))
    assert np.abs(_delta(pred, "cpd-one@1")).sum() > 0
    notes = pred.uns["bioworld"]["compounds_as_targets"]
    assert set(notes) == {"cpd-one@1", "cpd-one@10", "cpd-two@1", "cpd-one@1+P3_DRV1"}  # the labels as given
    assert "P2_DRV1, P3_DRV1 (ko:P2_DRV1+ko:P3_DRV1)" in notes["cpd-two@1"] and "whatever the dose" in notes["cpd-two@1"]
    # without compounds nothing is noted
    assert "compounds_as_targets" not in tiny_trained.predict(["ko:P2_DRV1"]).uns["bioworld"]


def test_counterfactual_agrees_with_predict_per_cell(tiny_trained, knowledge, cells):
    cf = tiny_trained.counterfactual(cells, ["cpd-one@1", "ko:P2_DRV1"])
    X = np.asarray(cf.X)
    n = cells.n_obs
    _same(X[:n], X[n:])
    assert list(cf.uns["bioworld"]["compounds_as_targets"]) == ["cpd-one@1"]


def test_targets_given_at_query_time(tiny_trained, knowledge):
    pred = tiny_trained.predict(["NewDrug@1", "ko:P3_DRV1"], compound_targets={"newdrug": ["P3_DRV1", "NOTAGENE123"]})
    _same(_delta(pred, "NewDrug@1"), _delta(pred, "ko:P3_DRV1"))
    note = pred.uns["bioworld"]["compounds_as_targets"]["NewDrug@1"]
    assert "1 known target the model cannot represent: NOTAGENE123" in note
    # given targets win over the bundled ones
    over = tiny_trained.predict(["cpd-one@1", "ko:P3_DRV1"], compound_targets={"cpd-one": ["P3_DRV1"]})
    _same(_delta(over, "cpd-one@1"), _delta(over, "ko:P3_DRV1"))


def test_given_targets_the_model_cannot_represent_are_named(tiny_trained, knowledge):
    """compound_targets={'mydrug': ['NOTAGENE7']}: the refusal said 'no representable target ... Fix: give its
    targets', which the user just did; it now names the given target(s) the model does not know."""
    with pytest.raises(UnknownPerturbationError) as err:
        tiny_trained.predict(["mydrug@1"], compound_targets={"mydrug": ["NOTAGENE7"]})
    assert "no representable target: the given target(s) ['NOTAGENE7'] are in no gene set" in str(err.value)


@pytest.mark.parametrize(("label", "facts"), [
    ("cpd-broad@1", ["more than 8 representable targets", "Fix: give its targets"]),
    ("cpd-none@1", ["no known target"]),
    ("cpd-off-table@1", ["no representable target"]),
    ("not-a-compound-xyz@1", ["not in the bundled compound knowledge", "close matches"]),
], ids=["broad", "no_target", "not_representable", "unknown"])
def test_compounds_it_cannot_answer_are_refused_with_the_reason(tiny_trained, knowledge, label, facts):
    with pytest.raises(UnknownPerturbationError) as err:
        tiny_trained.predict(["control", label])
    for fact in facts:
        assert fact in str(err.value)


def test_a_structure_is_refused_by_a_genetic_model(tiny_trained, knowledge):
    with pytest.raises(UnknownPerturbationError, match="give the targets instead"):
        tiny_trained.predict(["x@1"], compounds={"x": "CCO"})


def test_cli_predict_with_a_target_table_on_a_genetic_model(tiny_trained, knowledge, tmp_path):
    model = tiny_trained.save(tmp_path / "model")
    (tmp_path / "targets.tsv").write_text("compound\ttarget_gene\nmydrug\tP2_DRV1\n")
    out = tmp_path / "pred.h5ad"
    res = invoke("predict", model, "--perturbations", "mydrug@1,ko:P2_DRV1", "--compound-targets",
                 tmp_path / "targets.tsv", "--out", out)
    assert res.exit_code == 0, (res.output, res.exception)
    pred = ad.read_h5ad(out)
    _same(_delta(pred, "mydrug@1"), _delta(pred, "ko:P2_DRV1"))
    assert "mydrug@1" in pred.uns["bioworld"]["compounds_as_targets"]
    assert "  mydrug@1: mydrug: as the inhibition of its target P2_DRV1 (ko:P2_DRV1)" in res.stdout
    res = invoke("predict", model, "--perturbations", "mydrug@1", "--compound", "mydrug=CCO", "--out", tmp_path / "x.h5ad")
    assert res.exit_code == 2 and "give the targets instead" in res.stderr


def test_a_bare_compound_name_is_refused_with_the_dose_form(tiny_trained, knowledge):
    with pytest.raises(UnknownPerturbationError, match=r"write it with a dose: 'ruxolitinib@1'"):
        tiny_trained.predict(["ruxolitinib"])  # a bare name is a gene knockout in the grammar
    with pytest.raises(UnknownPerturbationError) as err:
        tiny_trained.predict(["NOTAGENE123"])
    assert "write it with a dose" not in str(err.value)


def test_targets_without_knowledge_get_a_hint_of_what_they_may_be():
    from types import SimpleNamespace

    from bioworld.actions._knowledge import _label_hints

    kb = SimpleNamespace(compounds=CompoundKnowledge.bundled())
    known = {"STAT1": 0, "IRF1": 1}
    text = _label_hints(["STAT1_IRF1", "ruxolitinib", "sgIRF7", "STAT1_NOTAGENE"], known, kb)
    assert "STAT1_IRF1 looks like a combination: write it with '+' (e.g. 'STAT1+IRF1')" in text
    assert "ruxolitinib is a compound of the bundled knowledge: write it NAME@DOSE (e.g. 'ruxolitinib@1')" in text
    assert "sgIRF7" not in text and "STAT1_NOTAGENE" not in text  # nothing to suggest
    assert _label_hints(["sgIRF7"], known, kb) == ""
    codes = _label_hints(["1", "2", "17"], known, kb)
    assert "1, 2, 17 look like numeric codes, not a gene or compound name" in codes and "relabel" in codes
    assert "numeric code" not in _label_hints(["IRF7", "A1"], known, kb)  # names with digits are not codes


def test_an_ensemble_takes_targets_at_query_time_too(tiny_trained, knowledge, tmp_path):
    import bioworld as bw

    ens = bw.Ensemble([tiny_trained, tiny_trained])
    pred = ens.predict(["newdrug@1", "ko:P3_DRV1"], compound_targets={"newdrug": ["P3_DRV1"]})
    _same(_delta(pred, "newdrug@1"), _delta(pred, "ko:P3_DRV1"))
    assert "newdrug@1" in pred.uns["bioworld"]["compounds_as_targets"]
    folder = ens.save(tmp_path / "ens")
    (tmp_path / "targets.tsv").write_text("compound\ttarget_gene\nnewdrug\tP3_DRV1\n")
    res = invoke("predict", folder, "--perturbations", "newdrug@1", "--compound-targets", tmp_path / "targets.tsv",
                 "--out", tmp_path / "p.h5ad")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "newdrug@1: newdrug: as the inhibition of its target P3_DRV1" in res.stdout


@pytest.mark.parametrize("strategy", ["information", "knowledge", "error"])
def test_design_takes_a_compound_as_the_loss_of_its_targets(tiny_trained, knowledge, strategy):
    """`bioworld design --candidates` with 'ruxolitinib@1' on a CRISPR model was refused ('has no SMILES in this
    model ... train on data with compounds'), though predict, counterfactual and prioritize answer it as the loss
    of its targets; design now does the same and keeps the label as given."""
    import bioworld as bw

    table = bw.design(tiny_trained, ["cpd-two@1", "cpd-one@1", "P2_DRV1+P4_DRV1", "cpd-three@1"], budget=3,
                      strategy=strategy)
    assert set(table["perturbation"]) == {"cpd-two@1", "P2_DRV1+P4_DRV1", "cpd-three@1"}
    row = table.set_index("perturbation").loc["cpd-two@1"]
    assert row["kind"] == "compound" and "P2_DRV1" in row["reason"] and "P3_DRV1" in row["reason"]
    assert table.attrs["excluded_measured"] == ["cpd-one@1"]  # the loss of a measured target: measured
    with pytest.raises(UnknownPerturbationError, match="no known target") as err:
        bw.design(tiny_trained, ["cpd-none@1"], budget=1, strategy=strategy)
    assert "compound_targets" not in str(err.value) and "Fix:" in str(err.value)  # design takes no targets table
