"""The ``bioworld`` command line: inspect, simulate, train, predict and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bioworld.cli import app
from bioworld.errors import BioworldError

REPO = Path(__file__).resolve().parents[1]
# symbols in MSigDB Hallmark IFN-gamma response / PROGENy JAK-STAT, so default entities map
GENES = ["STAT1", "IRF1", "JAK2", "IFNGR1", "SOCS1", "CXCL10", "GBP1", "IRF7", "ISG15", "MX1",
         "OAS1", "IFIT1", "IFIT3", "PSMB9", "TAP1", "B2M"]


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless asked not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def invoke(*args, env: dict[str, str] | None = None):
    return _runner().invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(result, *facts: str) -> str:
    """Exit 2, exactly one non-empty stderr line ``error: ...`` holding ``facts``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for fact in facts:
        assert fact in lines[0], (fact, lines[0])
    return lines[0]


def _small_adata(**obs_extra) -> ad.AnnData:
    """18 cells (6 control, 6 STAT1, 6 IRF1) x 16 symbols, Poisson counts."""
    rng = np.random.default_rng(0)
    labels = ["control"] * 6 + ["STAT1"] * 6 + ["IRF1"] * 6
    obs = pd.DataFrame({"perturbation": labels, **obs_extra}, index=[f"cell{i}" for i in range(len(labels))])
    X = rng.poisson(3.0, size=(len(labels), len(GENES))).astype(np.float32)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(GENES)))


def _write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


# ------------------------------------------------------------------------------ bundled datasets
def test_inspect_papalexi():
    result = invoke("inspect", "papalexi")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "16,527 cells x 299 genes" in out
    assert "20 perturbations + control" in out
    assert "validation: passed" in out
    assert "entities: " in out and "panel: 299 genes" in out


def test_inspect_l1000_uses_loader_register_kwargs():
    result = invoke("inspect", "l1000")
    assert result.exit_code == 0, result.output
    assert "341 wells x 978 genes (input: log" in result.stdout
    assert "panel: 978 genes" in result.stdout


def test_inspect_file_picks_up_stored_register_kwargs(tmp_path, l1000):
    path = _write(l1000, tmp_path / "l1000.h5ad")  # keeps uns['bioworld']['loader']['register_kwargs']
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    assert "input: log" in result.stdout


def test_inspect_combines_gmt_and_weight_table(tmp_path):
    data = _write(_small_adata(), tmp_path / "ok.h5ad")
    gmt = tmp_path / "mysets.gmt"
    gmt.write_text("IFN_CORE\tdesc\tSTAT1\tIRF1\tGBP1\tCXCL10\nTINY\tdesc\tMX1\n")
    tsv = tmp_path / "myweights.tsv"
    tsv.write_text("gene\tpathway\tweight\n" + "".join(f"{g}\tJAKSTAT\t{i + 1}\n" for i, g in enumerate(GENES[:6])))
    result = invoke("inspect", data, "--entities", gmt, "--entities", tsv)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "18 cells x 16 genes" in out
    assert "entities: 2 kept of 3" in out
    assert "mysets: 1/2 kept" in out and "myweights: 1/1 kept" in out
    assert "dropped: TINY" in out


# --------------------------------------------------------------------------------- broken inputs
def _nan(a):
    a.X[0, 0] = np.nan
    return a, [], "NaN"


def _negative(a):
    a.X[1, 2] = -1.0
    return a, [], "negative"


def _fractional(a):
    a.X = a.X + 0.5
    return a, [], "non-integer"


def _missing_control(a):
    a.obs["perturbation"] = a.obs["perturbation"].replace({"control": "ctrl"})
    return a, [], "control label 'control' not found"


def _missing_perturbation_key(a):
    return a, ["--perturbation-key", "condition"], "perturbation_key 'condition'"


def _whitespace_label(a):
    a.obs["perturbation"] = a.obs["perturbation"].replace({"STAT1": "STAT1 "})
    return a, [], "whitespace"


def _empty_label(a):
    labels = a.obs["perturbation"].astype(object).copy()
    labels.iloc[7] = ""
    a.obs["perturbation"] = labels
    return a, [], "empty or missing"


def _duplicated_var_names(a):
    a.var_names = ["STAT1", *GENES[:-1]]
    return a, [], "duplicated gene names"


def _ensembl_ids(a):
    a.var_names = [f"ENSG{i:011d}" for i in range(1, a.n_vars + 1)]
    return a, [], "Ensembl ids"


def _non_numeric_dose(a):
    a.obs["dose"] = ["high"] * a.n_obs
    return a, ["--dose-key", "dose"], "non-numeric"


def _counts_declared_log(a):
    a.X = a.X * 20  # integers up to ~200
    return a, ["--input", "log"], "looks like raw counts"


def _bad_input_option(a):
    return a, ["--input", "tpm"], "--input 'tpm'"


BROKEN = [_nan, _negative, _fractional, _missing_control, _missing_perturbation_key, _whitespace_label,
          _empty_label, _duplicated_var_names, _ensembl_ids, _non_numeric_dose, _counts_declared_log,
          _bad_input_option]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("breaker", BROKEN, ids=lambda f: f.__name__.strip("_"))
def test_inspect_broken_h5ad_one_line_error(tmp_path, breaker):
    adata, args, fact = breaker(_small_adata())
    path = _write(adata, tmp_path / "broken.h5ad")
    assert_one_line_error(invoke("inspect", path, *args), fact)


@pytest.mark.parametrize(
    ("content", "fact"),
    [
        ("", "empty file"),
        ("SETA only two fields\n", "tab-separated field"),
        ("SETX\tdesc\tFOO1\tFOO2\tFOO3\tFOO4\n", "no entity with >= 3 genes"),
        ("# only a comment\n\n", "no gene sets"),
    ],
    ids=["empty", "malformed", "no_shared_genes", "comments_only"],
)
def test_inspect_bad_entities_file(tmp_path, content, fact):
    data = _write(_small_adata(), tmp_path / "ok.h5ad")
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(content)
    assert_one_line_error(invoke("inspect", data, "--entities", gmt), fact)


def test_inspect_missing_entities_file(tmp_path):
    data = _write(_small_adata(), tmp_path / "ok.h5ad")
    assert_one_line_error(invoke("inspect", data, "--entities", tmp_path / "nope.gmt"), "nope.gmt")


def test_inspect_missing_file(tmp_path):
    assert_one_line_error(invoke("inspect", tmp_path / "missing.h5ad"), "file not found", "missing.h5ad")


def test_inspect_not_an_h5ad(tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("gene,value\nSTAT1,3\n")
    assert_one_line_error(invoke("inspect", path), "not an HDF5 file")


def test_debug_flag_and_env_show_the_exception(tmp_path):
    missing = tmp_path / "missing.h5ad"
    for result in (invoke("--debug", "inspect", missing),
                   invoke("inspect", missing, env={"BIOWORLD_DEBUG": "1"})):
        assert result.exit_code != 0
        assert isinstance(result.exception, BioworldError)
        assert "error: " not in result.output


def _run_module(*args, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("BIOWORLD_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bioworld", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_invalid_data_exit_2_one_line_no_traceback(tmp_path):
    adata, _, _ = _nan(_small_adata())
    path = _write(adata, tmp_path / "nan.h5ad")
    proc = _run_module("inspect", path, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NaN" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_subprocess_debug_shows_traceback(tmp_path):
    proc = _run_module("--debug", "inspect", tmp_path / "missing.h5ad", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "DataValidationError" in proc.stderr


# ------------------------------------------------------------------------------------- simulate
def test_simulate_writes_files(tmp_path):
    out = tmp_path / "sim"
    result = invoke("simulate", "--out", out, "--seed", 1, "--n-cells-per-condition", 5)
    assert result.exit_code == 0, result.output
    for name in ("train.h5ad", "pathways.gmt", "truth_delta.csv", "truth_entity_delta.csv", "dag.json"):
        assert (out / name).is_file(), name
        assert name in result.stdout
    # what simulate writes passes inspect with its own pathways as entities
    check = invoke("inspect", out / "train.h5ad", "--entities", out / "pathways.gmt")
    assert check.exit_code == 0, check.output
    assert "validation: passed" in check.stdout


def test_simulate_refuses_to_overwrite_then_overwrites(tmp_path):
    out = tmp_path / "sim"
    assert invoke("simulate", "--out", out, "--n-cells-per-condition", 5).exit_code == 0
    before = (out / "truth_delta.csv").read_bytes()
    again = invoke("simulate", "--out", out, "--seed", 3, "--n-cells-per-condition", 5)
    assert_one_line_error(again, "not empty", "--overwrite")
    assert (out / "truth_delta.csv").read_bytes() == before  # nothing replaced
    forced = invoke("simulate", "--out", out, "--seed", 3, "--n-cells-per-condition", 5, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert (out / "truth_delta.csv").read_bytes() != before


@pytest.mark.parametrize("args, expect", [
    (["--seed", "-1"], "--seed -1 is negative"),
    (["--n-cells-per-condition", "0"], "--n-cells-per-condition 0"),
])
def test_simulate_rejects_bad_values(tmp_path, args, expect):
    result = invoke("simulate", "--out", tmp_path / "sim", *args)
    assert_one_line_error(result, expect)
    assert not (tmp_path / "sim").exists()


def test_simulate_out_is_a_file(tmp_path):
    f = tmp_path / "sim.txt"
    f.write_text("x")
    result = invoke("simulate", "--out", f)
    assert_one_line_error(result, "is a file", "train.h5ad")
    assert f.read_text() == "x"


# ---------------------------------------------------------------------------------- train/predict
def test_train_refuses_existing_model_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "bioworld.json").write_text("{}")
    # the check comes before the data are read, so even a missing data file reports the model dir
    result = invoke("train", tmp_path / "missing.h5ad", "--out", model, "--max-steps", 1)
    assert_one_line_error(result, "already holds a model", "--overwrite")
    assert (model / "bioworld.json").read_text() == "{}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny simulated screen trained for 30 steps through the CLI: (model dir, data dir)."""
    from bioworld.data import simulate

    d = tmp_path_factory.mktemp("cli_e2e")
    simulate(n_pathways=3, genes_per_pathway=6, n_drivers=2, n_other_genes=6, n_cells_per_condition=10,
             n_control_cells=60, doubles=1, n_truth_draws=100, seed=0).write(d)
    # small batches and one thread keep this fast on a busy 2-core machine
    (d / "config.json").write_text(json.dumps(
        {"groups_per_batch": 4, "cells_per_group": 6, "self_pairs": 8, "num_threads": 1}))
    model = d / "model"
    result = invoke("train", d / "train.h5ad", "--out", model, "--entities", d / "pathways.gmt",
                    "--config", d / "config.json", "--max-steps", 30, "--seed", 0,
                    "--holdout", "P1_DRV1", "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"model saved to {model}" in result.stdout
    assert (model / "bioworld.json").is_file() and (model / "model.safetensors").is_file()
    return model, d


def test_train_predict_end_to_end(trained, tmp_path):
    model, data_dir = trained
    meta = json.loads((model / "bioworld.json").read_text())
    assert meta["train_config"]["max_steps"] == 30 and meta["holdout"] == ["P1_DRV1"]
    labels = ["silence:SIM_P2", "control", "P1_DRV1", "P1_DRV2+P3_DRV1"]
    out = tmp_path / "preds" / "pred.h5ad"
    result = invoke("predict", model, "--perturbations", ",".join(labels), "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    pred = ad.read_h5ad(out)
    assert list(pred.obs_names) == labels
    train = ad.read_h5ad(data_dir / "train.h5ad")
    assert list(pred.var_names) == list(train.var_names)
    delta = np.asarray(pred.layers["delta"])
    assert np.abs(delta[labels.index("control")]).max() < 1e-5
    assert np.isfinite(np.asarray(pred.X)).all()
    assert [p.name for p in out.parent.iterdir()] == ["pred.h5ad"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("perturbations", "facts"),
    [
        ("control,NOPE1", ["NOPE1"]),
        ("control, P2_DRV1", ["whitespace", "' P2_DRV1'"]),
        ("control,silence:NOT_A_PATHWAY", ["NOT_A_PATHWAY"]),
    ],
    ids=["unknown_gene", "stray_whitespace", "unknown_entity"],
)
def test_predict_bad_label_one_line_error(trained, tmp_path, perturbations, facts):
    model, _ = trained
    out = tmp_path / "pred.h5ad"
    assert_one_line_error(invoke("predict", model, "--perturbations", perturbations, "--out", out), *facts)
    assert not out.exists()


def test_predict_missing_model_dir(tmp_path):
    result = invoke("predict", tmp_path / "nomodel", "--perturbations", "control", "--out", tmp_path / "p.h5ad")
    assert_one_line_error(result, "nomodel")


def test_train_ensemble_calibrate_predict_and_counterfactual(trained, tmp_path):
    _, d = trained
    ens = tmp_path / "ens"
    result = invoke("train", d / "train.h5ad", "--out", ens, "--entities", d / "pathways.gmt",
                    "--config", d / "config.json", "--max-steps", 4, "--seed", 3, "--members", 2,
                    "--calibrate-folds", 2, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"ensemble saved to {ens}" in result.stdout and "calibrated on" in result.stdout
    meta = json.loads((ens / "ensemble.json").read_text())
    assert meta["seeds"] == [3, 4] and meta["calibration"]["quantiles"]["0.9"] > 0
    out = tmp_path / "pred.h5ad"
    result = invoke("predict", ens, "--perturbations", "control,P1_DRV1", "--out", out, "--level", 0.9)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "intervals calibrated" in result.stdout
    pred = ad.read_h5ad(out)
    lo, mid, hi = (np.asarray(pred.layers[k]) for k in ("delta_lo", "delta", "delta_hi"))
    assert (lo < mid).all() and (mid < hi).all()
    cells = tmp_path / "cells.h5ad"
    train = ad.read_h5ad(d / "train.h5ad")
    train[train.obs["perturbation"] == "control"][:5].copy().write_h5ad(cells)
    cf_out = tmp_path / "cf.h5ad"
    result = invoke("counterfactual", ens, "--cells", cells, "--intervention", "P1_DRV1", "--out", cf_out)
    assert result.exit_code == 0, (result.output, result.exception)
    cf = ad.read_h5ad(cf_out)
    pop = cf.uns["bioworld"]["population"]["P1_DRV1"]
    assert np.asarray(pop["hi"]).shape == (cf.n_vars,) and "delta_sd" in cf.layers and "bw_delta_sd" not in cf.layers
    # prioritize takes one model, not an ensemble
    result = invoke("prioritize", ens, "--cells", cells, "--goal", "toward:control", "--out", tmp_path / "rep")
    assert_one_line_error(result, "is an ensemble", "member_0")


def test_train_calibrate_without_members_is_refused(tmp_path):
    result = invoke("train", tmp_path / "missing.h5ad", "--out", tmp_path / "m", "--calibrate-folds", 2)
    assert_one_line_error(result, "--calibrate-folds needs an ensemble", "--members 2 or more")
