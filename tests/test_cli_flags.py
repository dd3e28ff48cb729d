"""CLI flags do what they say, on raw input files: --dose-key/--compound-id-key, --min-cells,
--version, --device, hints that name CLI flags, and real help for benchmark / the torchrun entry."""

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

from bioworld.cli import cli_hint
from test_cli import GENES, _small_adata, _write, assert_one_line_error, invoke

REPO = Path(__file__).resolve().parents[1]
SMILES = {"BRD-K0001": "CC(=O)Oc1ccccc1C(=O)O", "BRD-K0002": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"}
#: small batches and one thread keep CLI training fast on a busy 2-core machine
FAST = {"groups_per_batch": 4, "cells_per_group": 4, "self_pairs": 4, "num_threads": 1}


def _raw_compound_plate(n_per_dose: int = 3) -> ad.AnnData:
    """A raw compound screen as public plates store it: name and dose in separate columns, log input."""
    rng = np.random.default_rng(0)
    rows = [("DMSO", 0.0, "DMSO")] * 8
    for name, cid in (("aspirin", "BRD-K0001"), ("caffeine", "BRD-K0002")):
        for dose in (0.5, 10.0):
            rows += [(name, dose, cid)] * n_per_dose
    obs = pd.DataFrame(rows, columns=["pert_iname", "pert_dose", "pert_id"],
                       index=[f"w{i}" for i in range(len(rows))])
    X = rng.normal(5.0, 1.0, size=(len(rows), len(GENES))).astype(np.float32)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(GENES)))


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    d = tmp_path_factory.mktemp("plate")
    _write(_raw_compound_plate(), d / "plate.h5ad")
    (d / "smiles.csv").write_text("".join(f"{k}, {v}\n" for k, v in SMILES.items()))
    (d / "config.json").write_text(json.dumps(FAST))
    return d


# ------------------------------------------------------------------------ --dose-key: compound actions
def test_inspect_dose_key_turns_names_and_doses_into_compound_actions(plate):
    result = invoke("inspect", plate / "plate.h5ad", "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                    "--compound-id-key", "pert_id", "--input", "log", "--control", "DMSO")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "4 NAME@DOSE labels in obs['bw_perturbation']" in out
    assert "2 compounds x 2 doses" in out and "genetic" not in out


@pytest.fixture(scope="module")
def plate_model(plate):
    model = plate / "model"
    result = invoke("train", plate / "plate.h5ad", "--out", model, "--perturbation-key", "pert_iname",
                    "--dose-key", "pert_dose", "--compound-id-key", "pert_id", "--smiles", plate / "smiles.csv",
                    "--input", "log", "--control", "DMSO", "--config", plate / "config.json",
                    "--max-steps", 3, "--restarts", 0, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    return model


def test_train_and_predict_compound_at_dose_from_the_raw_plate(plate_model, tmp_path):
    model = plate_model
    meta = json.loads((model / "bioworld.json").read_text())
    assert sorted(meta["train_labels"]) == ["DMSO", "aspirin@0.5", "aspirin@10", "caffeine@0.5", "caffeine@10"]
    assert sorted(meta["smiles"]) == ["aspirin", "caffeine"]  # joined through pert_id
    out = tmp_path / "pred.h5ad"
    # a dose between the trained ones is a compound action too
    result = invoke("predict", model, "--perturbations", "DMSO,aspirin@10,caffeine@2", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    pred = ad.read_h5ad(out)
    assert list(pred.obs_names) == ["DMSO", "aspirin@10", "caffeine@2"]
    assert np.abs(np.asarray(pred.layers["delta"])[1:]).max() > 0


def test_compound_ids_join_smiles_whatever_the_name_column_is_called(plate, tmp_path):
    """--compound-id-key joined ids to the SMILES table only through a column literally named 'pert_iname': a plate
    whose names are in obs['drug'] trained with no structure at all, silently. Now through --perturbation-key."""
    raw = _raw_compound_plate().copy()
    raw.obs = raw.obs.rename(columns={"pert_iname": "drug", "pert_id": "brd"})
    path = _write(raw, tmp_path / "drug_plate.h5ad")
    result = invoke("train", path, "--out", tmp_path / "m", "--perturbation-key", "drug", "--dose-key", "pert_dose",
                    "--compound-id-key", "brd", "--smiles", plate / "smiles.csv", "--input", "log", "--control", "DMSO",
                    "--config", plate / "config.json", "--max-steps", 2, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    meta = json.loads((tmp_path / "m" / "bioworld.json").read_text())
    assert sorted(meta["smiles"]) == ["aspirin", "caffeine"]
    assert meta["smiles"]["aspirin"] == SMILES["BRD-K0001"]


def test_query_commands_take_device(plate, plate_model, tmp_path):
    import torch

    cells = tmp_path / "cells.h5ad"
    raw = ad.read_h5ad(plate / "plate.h5ad")
    raw[raw.obs["pert_iname"] == "DMSO"].copy().write_h5ad(cells)
    outs = {}
    for dev in ("cpu", "auto"):
        out = tmp_path / f"pred_{dev}.h5ad"
        r = invoke("predict", plate_model, "--perturbations", "DMSO,aspirin@10", "--out", out, "--device", dev)
        assert r.exit_code == 0, (r.output, r.exception)
        outs[dev] = ad.read_h5ad(out)
        r = invoke("counterfactual", plate_model, "--cells", cells, "--intervention", "caffeine@10",
                   "--out", tmp_path / f"cf_{dev}.h5ad", "--device", dev)
        assert r.exit_code == 0, (r.output, r.exception)
    if not torch.cuda.is_available():  # 'auto' ran on the CPU: the same answers
        np.testing.assert_array_equal(outs["cpu"].X, outs["auto"].X)
        for cmd in (["predict", plate_model, "--perturbations", "DMSO", "--out", tmp_path / "p.h5ad"],
                    ["counterfactual", plate_model, "--cells", cells, "--intervention", "caffeine@10",
                     "--out", tmp_path / "c.h5ad"],
                    ["prioritize", plate_model, "--cells", cells, "--goal", "down:MAPK", "--out", tmp_path / "rep"]):
            line = assert_one_line_error(invoke(*cmd, "--device", "cuda"), "no CUDA GPU", "--device cpu")
            assert "device=" not in line
        assert not (tmp_path / "p.h5ad").exists() and not (tmp_path / "rep").exists()
    assert_one_line_error(invoke("predict", plate_model, "--perturbations", "DMSO", "--out", tmp_path / "q.h5ad",
                                 "--device", "tpu"), "--device tpu")


def test_evaluate_raw_plate_with_its_flags(plate, plate_model, tmp_path):
    """evaluate's flags on a raw held-out plate: name + dose joined, log input, --min-cells, --k, --train-data."""
    test = _raw_compound_plate(n_per_dose=2)
    test.X = test.X + np.float32(0.3)  # another plate of the same design
    test.obs_names = [f"t{i}" for i in range(test.n_obs)]
    keep = ~((test.obs["pert_iname"] == "caffeine") & (test.obs["pert_dose"] == 0.5)).to_numpy()
    path = _write(test[keep].copy(), tmp_path / "test_plate.h5ad")
    model = tmp_path / "m"
    import shutil

    shutil.copytree(plate_model, model)
    result = invoke("evaluate", model, "--data", path, "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                    "--compound-id-key", "pert_id", "--control", "DMSO", "--input", "log", "--min-cells", 2,
                    "--k", 3, "--train-data", plate / "plate.h5ad", "--seed", 1)
    assert result.exit_code == 0, (result.output, result.exception)
    table = pd.read_csv(model / "evaluation.csv")
    assert set(table["metric"]) >= {"mse_top3", "pearson_top3", "direction_top3"}
    wm = table[(table["method"] == "WorldModel") & (table["metric"] == "mse_top3")]
    assert wm["split"].tolist() == ["seen"] and int(wm["n"].iloc[0]) == 3  # 3 compound@dose groups
    assert "mean of the observed deltas of 4 training perturbations in the given training data" in result.stdout
    bad = invoke("evaluate", model, "--data", path, "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                 "--input", "tpm")
    assert_one_line_error(bad, "--input 'tpm'")


def test_evaluate_raw_plate_without_the_name_column_says_which_flag(plate, plate_model, tmp_path):
    """The model's labels live in obs['bw_perturbation'] (built at training); a raw test plate lacks that column:
    the error asks for the compound-name column by its flag (it named 'bw_perturbation' with a generic hint)."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(plate_model, model)
    line = assert_one_line_error(invoke("evaluate", model, "--data", plate / "plate.h5ad"),
                                 "NAME@DOSE", "obs['pert_dose']", "--perturbation-key COLUMN", "'pert_iname'")
    assert "perturbation_key=" not in line
    ok = invoke("evaluate", model, "--data", plate / "plate.h5ad", "--perturbation-key", "pert_iname")
    assert ok.exit_code == 0, (ok.output, ok.exception)  # the model's dose column is used as it was trained


def test_dose_key_refuses_treated_cells_without_a_dose(plate, tmp_path):
    a = _raw_compound_plate()
    dose = a.obs["pert_dose"].astype(str).to_numpy()
    dose[9] = "n/a"
    a.obs["pert_dose"] = dose
    path = _write(a, tmp_path / "nodose.h5ad")
    result = invoke("inspect", path, "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                    "--compound-id-key", "pert_id", "--input", "log", "--control", "DMSO")
    assert_one_line_error(result, "1 treated cells", "non-numeric", "pert_dose")


def test_dose_key_reads_doses_written_with_units(plate, tmp_path):
    """'10uM' / '500 nM' / '0.5 µM' in the dose column were refused as non-numeric; now NAME@DOSE labels in µM,
    with a warning naming each conversion. A treated cell without a dose names its compound, no Python in the
    hint and no np.str_ repr."""
    a = _raw_compound_plate()
    unit = {0.0: "0", 0.5: "500 nM", 10.0: "10uM"}
    dose = [unit[float(d)] for d in a.obs["pert_dose"]]
    dose[-1] = "0.5 \u00b5M"  # the last caffeine@10 well: not the same dose as its group, still read
    a.obs["pert_dose"] = dose
    path = _write(a, tmp_path / "units.h5ad")
    args = ("--perturbation-key", "pert_iname", "--dose-key", "pert_dose", "--input", "log", "--control", "DMSO")
    result = invoke("inspect", path, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "doses 0.5, 10" in result.stdout
    assert "'500 nM' -> 0.5" in result.stderr and "'10uM' -> 10" in result.stderr and "µM" in result.stderr
    dose[9] = np.nan
    a.obs["pert_dose"] = dose
    line = assert_one_line_error(invoke("inspect", _write(a, tmp_path / "nan.h5ad"), *args), "1 treated cells",
                                 "['aspirin']", "['nan']")
    assert "adata" not in line and "np.str_" not in line


def test_dose_key_missing_control_names_the_cli_flag(plate):
    result = invoke("inspect", plate / "plate.h5ad", "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                    "--input", "log")
    line = assert_one_line_error(result, "'DMSO' looks like a control label", "--control")
    assert "control=" not in line


def test_labels_already_in_the_grammar_are_kept(tmp_path, l1000):
    path = _write(l1000, tmp_path / "l1000.h5ad")  # obs['perturbation'] holds NAME@DOSE already
    result = invoke("inspect", path, "--dose-key", "pert_dose", "--compound-id-key", "pert_id")
    assert result.exit_code == 0, result.output
    assert "NAME@DOSE labels" not in result.stdout and "labels in obs['perturbation']" in result.stdout


def test_inspect_real_raw_l1000_plate(tmp_path):
    """The bundled A375 plate written out as a plain h5ad, read as a new user would."""
    from bioworld.data import bundled_path

    raw = ad.read_h5ad(bundled_path("compounds/l1000_a375_lincs_dose_response.h5ad"))
    path = _write(raw, tmp_path / "raw.h5ad")
    result = invoke("inspect", path, "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                    "--compound-id-key", "pert_id", "--input", "log", "--control", "DMSO")
    assert result.exit_code == 0, result.output
    assert "315 perturbations + control: 53 compounds x 6 doses" in result.stdout
    assert "genetic" not in result.stdout


@pytest.mark.slow
def test_train_predict_real_raw_l1000_plate(tmp_path):
    from bioworld.data import bundled_path

    raw = ad.read_h5ad(bundled_path("compounds/l1000_a375_lincs_dose_response.h5ad"))
    path = _write(raw, tmp_path / "raw.h5ad")
    model = tmp_path / "model"
    result = invoke("train", path, "--out", model, "--perturbation-key", "pert_iname", "--dose-key", "pert_dose",
                    "--compound-id-key", "pert_id", "--input", "log", "--control", "DMSO",
                    "--max-steps", 5, "--restarts", 0, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    out = tmp_path / "pred.h5ad"
    result = invoke("predict", model, "--perturbations", "DMSO,PLX-4720@3.33,neratinib@10", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert list(ad.read_h5ad(out).obs_names) == ["DMSO", "PLX-4720@3.33", "neratinib@10"]


# --------------------------------------------------------------------------------- train --min-cells
def test_train_min_cells_keeps_or_sets_aside_small_groups(tmp_path):
    a = _small_adata()
    a.obs["perturbation"] = a.obs["perturbation"].astype(str)
    a.obs.iloc[-4:, 0] = "JAK2"  # 4 JAK2 cells, IRF1 left with 2
    path = _write(a, tmp_path / "d.h5ad")
    (tmp_path / "c.json").write_text(json.dumps(FAST))
    labels = {}
    for n in (2, 3):
        model = tmp_path / f"m{n}"
        result = invoke("train", path, "--out", model, "--min-cells", n, "--config", tmp_path / "c.json",
                        "--max-steps", 2, "--restarts", 0, "--quiet")
        assert result.exit_code == 0, (result.output, result.exception)
        meta = json.loads((model / "bioworld.json").read_text())
        assert meta["registration"]["min_cells_per_group"] == n
        labels[n] = sorted(meta["train_labels"])
    assert labels[2] == ["IRF1", "JAK2", "STAT1", "control"]
    assert labels[3] == ["JAK2", "STAT1", "control"]


# ------------------------------------------------------------------------------- --version, --device
def test_version():
    import bioworld

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"bioworld {bioworld.__version__}"


def test_train_device_cpu_and_unavailable_cuda(tmp_path):
    import torch

    path = _write(_small_adata(), tmp_path / "d.h5ad")
    (tmp_path / "c.json").write_text(json.dumps(FAST))
    model = tmp_path / "m"
    result = invoke("train", path, "--out", model, "--device", "cpu", "--config", tmp_path / "c.json",
                    "--max-steps", 2, "--restarts", 0, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((model / "bioworld.json").read_text())["train_config"]["device"] == "cpu"
    bad = invoke("train", path, "--out", tmp_path / "m2", "--device", "tpu", "--max-steps", 2)
    assert_one_line_error(bad, "--device tpu", "'cpu', 'cuda'")
    if not torch.cuda.is_available():
        result = invoke("train", path, "--out", tmp_path / "m3", "--device", "cuda", "--max-steps", 2)
        line = assert_one_line_error(result, "no CUDA GPU", "--device cpu")
        assert "device=" not in line
        assert not (tmp_path / "m3").exists()


# ---------------------------------------------------------------------------------------- hints
@pytest.mark.parametrize(("python", "cli"), [
    ("Fix: pass control=<the label of unperturbed cells>.", "Fix: pass --control <the label of unperturbed cells>."),
    ("Fix: pass input='log'.", "Fix: pass --input log."),
    ("pass overwrite=True (CLI: --overwrite) to replace it", "pass --overwrite to replace it"),
    ("Lower min_cells_per_group to keep them.", "Lower --min-cells to keep them."),
    ("use device='cpu' (or 'auto')", "use --device cpu (or 'auto')"),
    ("adata.obs['control'] and compound_id_key='pert_id'", "adata.obs['control'] and --compound-id-key pert_id"),
])
def test_cli_hint_names_flags(python, cli):
    assert cli_hint(python) == cli


# ---------------------------------------------------------------------------- help that lists options
def test_benchmark_help_lists_its_options():
    result = invoke("benchmark", "-h")
    assert result.exit_code == 0
    for flag in ("--quick", "--full", "--only", "--out", "--report", "--seeds", "--steps", "--folds", "--ablations",
                 "--no-world-model", "--keep-earlier"):
        assert flag in result.stdout, flag


def test_benchmark_passes_its_options_on(monkeypatch):
    import bioworld.eval.benchmark as B

    seen = {}
    monkeypatch.setattr(B, "main", lambda argv, prog: seen.update(argv=list(argv), prog=prog))
    result = invoke("benchmark", "--only", "simulator", "--steps", 7, "--seeds", "0,1", "--no-world-model",
                    "--no-progress", "--out", "res", "--keep-earlier")
    assert result.exit_code == 0, result.output
    assert seen["argv"] == ["--quick", "--only", "simulator", "--out", "res", "--seeds", "0,1", "--steps", "7",
                            "--no-world-model", "--no-progress", "--keep-earlier"]
    # and they are options the benchmark's own parser accepts
    args = B._parser().parse_args(seen["argv"])
    assert args.steps == 7 and args.no_world_model and args.only == "simulator" and args.keep_earlier


@pytest.fixture
def small_quick(monkeypatch):
    """The quick mode's simulator, smaller (fewer cells and truth draws): the same code path in seconds."""
    from dataclasses import replace

    import bioworld.eval.benchmark as B

    monkeypatch.setitem(B.SETTINGS, "quick", replace(B.SETTINGS["quick"], sim_cells=20, sim_control_cells=100,
                                                     sim_truth_draws=500, sim_unsampled_doubles=4))


def _bench(out: Path, *flags):
    result = invoke("benchmark", "--only", "simulator", "--seeds", "0", "--out", out, *flags)
    assert result.exit_code == 0, (result.output, result.exception)
    return result, set(pd.read_csv(out / "simulator_scores.csv")["method"])


def test_benchmark_progress_and_world_model_flags_run(tmp_path, small_quick):
    """Real runs (the quick simulator benchmark, smaller; baselines only): --progress draws the bar on stderr,
    --no-progress does not; --no-world-model scores no WorldModel, and the report's settings line says so (it named
    the WorldModel's max_steps of a model never trained)."""
    shown, methods = _bench(tmp_path / "a", "--no-world-model", "--progress")
    hidden, again = _bench(tmp_path / "b", "--no-world-model", "--no-progress")
    assert "simulator:" in shown.stderr and "%|" in shown.stderr, shown.stderr
    assert "%|" not in hidden.stderr and "simulator: " in hidden.stderr  # the summary line, no bar
    assert methods == again and "WorldModel" not in methods and {"NoChange", "Additive"} <= methods
    report = (tmp_path / "a" / "BENCHMARKS.md").read_text()
    assert "no WorldModel (--no-world-model)" in report and "WorldModel max_steps" not in report  # said 150 steps
    # the report names the command that ran, with the CLI's own options (it named benchmarks/run_benchmarks.py, a
    # script an installed wheel does not have)
    assert "- command: `bioworld benchmark --quick --only simulator --out " in report and "run_benchmarks.py" not in report


def test_benchmark_world_model_flag_trains_the_model(tmp_path, small_quick):
    """--world-model (the default) trains and scores the world model (2 steps per fold here)."""
    result, methods = _bench(tmp_path / "wm", "--world-model", "--steps", 2, "--no-progress")
    assert "WorldModel" in methods and "WorldModel max_steps=2" in (tmp_path / "wm" / "BENCHMARKS.md").read_text()
    assert "%|" not in result.stderr


def test_torchrun_entry_help_lists_its_options():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "bioworld.train.distributed", "-h"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--out", "--entities", "--perturbation-key", "--holdout", "--backend", "--device", "--threads",
                 "--backed", "--overwrite"):
        assert flag in proc.stdout, flag


def test_inspect_reports_knowledge_coverage_with_hints(tmp_path):
    """Targets without knowledge are named before training, with what they may be instead."""
    rng = np.random.default_rng(0)
    labels = ["NT"] * 12 + ["STAT1_IRF1"] * 6 + ["sgIRF7"] * 6 + ["ruxolitinib"] * 6 + ["JAK2"] * 6
    obs = pd.DataFrame({"guide": labels}, index=[f"c{i}" for i in range(len(labels))])
    data = _write(ad.AnnData(rng.poisson(3, (len(labels), len(GENES))).astype(np.float32), obs=obs,
                             var=pd.DataFrame(index=list(GENES))), tmp_path / "raw.h5ad")
    result = invoke("inspect", data, "--perturbation-key", "guide", "--control", "NT")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("knowledge:"))
    assert line.startswith("knowledge: 1 of 4 genetic targets")
    assert "without: STAT1_IRF1, ruxolitinib, sgIRF7" in line
    assert "STAT1_IRF1 looks like a combination: write it with '+' (e.g. 'STAT1+IRF1')" in line
    assert "ruxolitinib is a compound of the bundled knowledge: write it NAME@DOSE" in line
    # a screen whose targets are all known gets the count only
    known = invoke("inspect", "papalexi")
    assert "knowledge: 20 of 20 genetic targets" in known.stdout and "without:" not in known.stdout


def test_progress_bars_redraw_rarely_when_the_cli_writes_to_a_log(monkeypatch):
    """stderr to a file or a pipe: tqdm redraws every LOG_PROGRESS_INTERVAL s; a terminal, or a value the user
    set, is left alone."""
    import io

    from bioworld import cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TQDM_MININTERVAL", "recorded")  # so that teardown restores the variable as it was
    monkeypatch.delenv("TQDM_MININTERVAL")
    cli._progress_for_logs(Terminal())
    assert "TQDM_MININTERVAL" not in os.environ
    cli._progress_for_logs(io.StringIO())
    assert os.environ["TQDM_MININTERVAL"] == cli.LOG_PROGRESS_INTERVAL
    monkeypatch.setenv("TQDM_MININTERVAL", "0.5")
    cli._progress_for_logs(io.StringIO())
    assert os.environ["TQDM_MININTERVAL"] == "0.5"
