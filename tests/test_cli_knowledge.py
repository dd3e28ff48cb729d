"""CLI flags of the knowledge layer on a raw plate: unseen compounds by name, --compound,
--compound-targets, --no-knowledge, --context (shipped atlas model and a 'bioworld pretrain' folder)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from test_cli import GENES, _write, assert_one_line_error, invoke

FAST = {"groups_per_batch": 4, "cells_per_group": 4, "self_pairs": 4, "num_threads": 1}


def _raw_drug_plate() -> ad.AnnData:
    """Real compound names (no ids, no SMILES), name and dose in separate columns, log input."""
    rng = np.random.default_rng(1)
    rows = [("DMSO", 0.0)] * 8
    for name in ("trametinib", "PLX-4720"):
        for dose in (0.1, 1.0):
            rows += [(name, dose)] * 3
    obs = pd.DataFrame(rows, columns=["pert_iname", "pert_dose"], index=[f"w{i}" for i in range(len(rows))])
    X = rng.normal(5.0, 1.0, size=(len(rows), len(GENES))).astype(np.float32)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(GENES)))


@pytest.fixture(scope="module")
def drug_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("drugs")
    _write(_raw_drug_plate(), d / "plate.h5ad")
    (d / "config.json").write_text(json.dumps(FAST))
    (d / "targets.tsv").write_text("compound\ttarget_gene\nMyMEKi\tMAP2K1\nMyMEKi\tMAP2K2\n")
    common = ["--perturbation-key", "pert_iname", "--dose-key", "pert_dose", "--input", "log", "--control", "DMSO",
              "--config", d / "config.json", "--max-steps", 2, "--restarts", 0, "--quiet"]
    r = invoke("train", d / "plate.h5ad", "--out", d / "m", *common)
    assert r.exit_code == 0, (r.output, r.exception)
    r = invoke("train", d / "plate.h5ad", "--out", d / "m_plain", "--no-knowledge", *common)
    assert r.exit_code != 0  # no SMILES and no knowledge: the compounds cannot be represented
    return d


def test_unseen_compound_by_name_from_a_model_trained_on_a_raw_plate(drug_models, tmp_path):
    d = drug_models
    meta = json.loads((d / "m" / "bioworld.json").read_text())
    assert {s["name"] for s in meta["meta"]["knowledge_sources"]} >= {"compound_targets", "string"}
    out = tmp_path / "p.h5ad"
    r = invoke("predict", d / "m", "--perturbations", "DMSO,trametinib@1,selumetinib@1", "--out", out)
    assert r.exit_code == 0, (r.output, r.exception)
    pred = ad.read_h5ad(out)
    assert list(pred.obs_names) == ["DMSO", "trametinib@1", "selumetinib@1"]
    r = invoke("predict", d / "m", "--perturbations", "NoSuchDrugZZ@1", "--out", tmp_path / "q.h5ad")
    assert_one_line_error(r, "--compound-targets")


def test_compound_targets_and_compound_smiles_flags(drug_models, tmp_path):
    d = drug_models
    out = tmp_path / "t.h5ad"
    r = invoke("predict", d / "m", "--perturbations", "MyMEKi@1", "--compound-targets", d / "targets.tsv", "--out", out)
    assert r.exit_code == 0, (r.output, r.exception)
    assert ad.read_h5ad(out).obs_names.tolist() == ["MyMEKi@1"]
    out2 = tmp_path / "s.h5ad"
    r = invoke("predict", d / "m", "--perturbations", "aspirinx@1", "--compound", "aspirinx=CC(=O)Oc1ccccc1C(=O)O",
               "--out", out2)
    assert r.exit_code == 0, (r.output, r.exception)
    r = invoke("predict", d / "m", "--perturbations", "x@1", "--compound", "no-equals-sign", "--out", tmp_path / "u.h5ad")
    assert_one_line_error(r, "expected NAME=SMILES")
    r = invoke("predict", d / "m", "--perturbations", "x@1", "--compound-targets", tmp_path / "missing.tsv",
               "--out", tmp_path / "v.h5ad")
    assert_one_line_error(r, "--compound-targets")


def test_no_knowledge_flag_trains_the_ablation(drug_models, tmp_path):
    d = drug_models
    (d / "smiles.csv").write_text("trametinib, CC1=C2C(=C(N(C1=O)C)NC3=C(C=C(C=C3)I)F)C(=O)N(C(=O)N2C4=CC=CC(=C4)NC(=O)C)C5CC5\n"
                                  "PLX-4720, CCCS(=O)(=O)NC1=C(C(=C(C=C1)F)C(=O)C2=CNC3=NC=C(C=C23)Cl)F\n")
    r = invoke("train", d / "plate.h5ad", "--out", tmp_path / "plain", "--no-knowledge", "--smiles", d / "smiles.csv",
               "--perturbation-key", "pert_iname", "--dose-key", "pert_dose", "--input", "log", "--control", "DMSO",
               "--config", d / "config.json", "--max-steps", 2, "--restarts", 0, "--quiet")
    assert r.exit_code == 0, (r.output, r.exception)
    meta = json.loads((tmp_path / "plain" / "bioworld.json").read_text())
    assert "knowledge_sources" not in meta["meta"]
    r = invoke("predict", tmp_path / "plain", "--perturbations", "selumetinib@1", "--out", tmp_path / "p.h5ad")
    assert r.exit_code == 2  # without knowledge an unseen compound needs a structure


def test_predict_in_an_atlas_context(drug_models, tmp_path):
    d = drug_models
    out = tmp_path / "ctx.h5ad"
    r = invoke("predict", d / "m", "--context", "A498", "--perturbations", "trametinib,JAK2", "--out", out)
    assert r.exit_code == 0, (r.output, r.exception)
    pred = ad.read_h5ad(out)
    assert pred.obs_names.tolist() == ["trametinib", "JAK2"]
    assert pred.uns["bioworld"]["context"] == "A498"
    x = np.asarray(pred.X)
    assert ((x > 0).sum(1) == 500).all() and ((x < 0).sum(1) == 500).all()  # the atlas transform
    r = invoke("predict", d / "m", "--context", "Atlantis", "--perturbations", "trametinib", "--out", tmp_path / "n.h5ad")
    assert_one_line_error(r, "not in the atlas")


def test_predict_from_a_pretrain_folder(tmp_path):
    r = invoke("pretrain", "--out", tmp_path / "atlas", "--steps", 2, "--no-knowledge", "--quiet")
    assert r.exit_code == 0, r.output
    out = tmp_path / "a.h5ad"
    r = invoke("predict", tmp_path / "atlas", "--context", "myeloid", "--perturbations", "trametinib", "--out", out)
    assert r.exit_code == 0, (r.output, r.exception)
    assert ad.read_h5ad(out).uns["bioworld"]["context"] == "myeloid"
    r = invoke("predict", tmp_path / "atlas", "--perturbations", "trametinib", "--out", tmp_path / "b.h5ad")
    assert_one_line_error(r, "--context")


def test_context_says_it_does_not_read_compound_options(drug_models, tmp_path):
    """`predict --context A498 --compound-targets T.tsv` dropped the table silently, then refused a compound of it
    with 'Fix: ... give a compound's targets', which the user had just done: the atlas model describes perturbations
    by the bundled knowledge only. The flags now warn that they are not used there, and the refusal says so."""
    import bioworld as bw

    d = drug_models
    out = tmp_path / "ctx.h5ad"
    r = invoke("predict", d / "m", "--context", "A498", "--perturbations", "trametinib", "--out", out,
               "--compound-targets", d / "targets.tsv", "--compound", "x=CCO")
    assert r.exit_code == 0, (r.output, r.exception)
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any("--compound-targets is not used" in w for w in warned), r.stderr
    assert any("--compound is not used" in w for w in warned), r.stderr
    line = assert_one_line_error(invoke("predict", d / "m", "--context", "A498", "--perturbations", "MyMEKi",
                                        "--out", tmp_path / "b.h5ad", "--compound-targets", d / "targets.tsv"),
                                 "MyMEKi", "--context")
    assert "give a compound's targets" not in line
    with pytest.warns(UserWarning, match="compound_targets"):
        bw.WorldModel.load(d / "m").predict(["trametinib"], context="A498", compound_targets={"x": ["MAP2K1"]})
