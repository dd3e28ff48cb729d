"""Every CLI error's "Fix:" hint names what a CLI user can do: the command's own flags, no Python keywords.

Library errors are written for both audiences ("holdout=... (CLI: --holdout)"); the CLI rewrites the
Python side. These cases fail before any training, so the file stays fast.
"""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import typer

from bioworld.cli import app, cli_hint
from tests.test_cli import GENES, assert_one_line_error, invoke

PY_KWARG = re.compile(r"(?<![\w\-\[.'\"])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)=")  # e.g. gene_symbols_key=
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _options(command: str) -> set[str]:
    click_cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {opt for p in click_cmd.params for opt in getattr(p, "opts", [])}


def _h5ad(path, *, obs_extra=None, uns=None, X=None):
    rng = np.random.default_rng(0)
    labels = ["control"] * 30 + ["STAT1"] * 30 + ["IRF1"] * 30
    obs = pd.DataFrame({"perturbation": labels, **(obs_extra or {})}, index=[f"c{i}" for i in range(90)])
    a = ad.AnnData(rng.poisson(3, (90, len(GENES))).astype(np.float32) if X is None else X, obs=obs,
                   var=pd.DataFrame(index=GENES))
    if uns:
        a.uns.update(uns)
    a.write_h5ad(path)
    return path


def _check_hint(command: str, line: str) -> None:
    assert "Fix:" in line, line
    fix = line.split("Fix:", 1)[1]
    assert not PY_KWARG.search(fix), f"Python keyword in a CLI hint: {line}"
    unknown = set(FLAG.findall(line)) - _options(command)
    assert not unknown, f"{command} has no option {sorted(unknown)}: {line}"


@pytest.mark.parametrize("case", [
    "config_typo", "config_value", "config_list", "config_missing", "replicate_key", "gene_symbols_key",
    "min_cells", "calibrate_folds", "members_backed", "members_resume", "holdout_control", "holdout_all",
    "input_value", "control_missing", "entities_species", "zero_controls",
])
def test_train_error_hints_name_cli_flags(tmp_path, case):
    data = _h5ad(tmp_path / "d.h5ad")
    args: list = ["train", data, "--out", tmp_path / "model", "--max-steps", 1]
    files = {"config_typo": '{"max_step": 5}', "config_value": '{"max_steps": "abc"}', "config_list": "[1, 2]"}
    if case in files:
        (tmp_path / "c.json").write_text(files[case])
        args += ["--config", tmp_path / "c.json"]
    expect = {
        "config_typo": "did you mean 'max_steps'", "config_value": "field max_steps is 'abc'",
        "config_list": "holds a list", "config_missing": "does not exist", "replicate_key": "leave out --replicate-key",
        "gene_symbols_key": "leave out --gene-symbols-key", "min_cells": "--min-cells 0",
        "calibrate_folds": "--members 2 or more", "members_backed": "--backed", "members_resume": "--resume",
        "holdout_control": "--holdout", "holdout_all": "--holdout", "input_value": "--input counts or --input log",
        "control_missing": "--control", "entities_species": "--gene-symbols-key COLUMN", "zero_controls": "zero expression",
    }[case]
    extra = {
        "config_missing": ["--config", tmp_path / "none.json"], "replicate_key": ["--replicate-key", "nope"],
        "gene_symbols_key": ["--gene-symbols-key", "nope"], "min_cells": ["--min-cells", 0],
        "calibrate_folds": ["--calibrate-folds", 3], "members_backed": ["--members", 2, "--backed"],
        "members_resume": ["--members", 2, "--resume"], "holdout_control": ["--holdout", "control"],
        "holdout_all": ["--holdout", "STAT1,IRF1"], "input_value": ["--input", "foo"],
        "control_missing": ["--control", "ctrl"],
    }.get(case, [])
    if case == "entities_species":
        args[1] = _h5ad(tmp_path / "mouse.h5ad")  # same file; entities that share no gene with it
        (tmp_path / "mouse.gmt").write_text("M1\tmouse\tStat1\tIrf1\tJak2\tSocs1\n")
        extra = ["--entities", tmp_path / "mouse.gmt"]
    if case == "zero_controls":
        X = np.random.default_rng(1).poisson(3, (90, len(GENES))).astype(np.float32)
        X[:30] = 0
        args[1] = _h5ad(tmp_path / "z.h5ad", X=X)
    result = invoke(*args, *extra)
    line = assert_one_line_error(result, expect)
    _check_hint("train", line)
    assert not (tmp_path / "model" / "bioworld.json").exists()


def test_stale_loader_suggestion_is_a_warning_not_an_error(tmp_path):
    """A subset of a bundled file keeps uns['bioworld'] naming a column it no longer has."""
    uns = {"bioworld": {"loader": {"register_kwargs": {"replicate_key": "bio_rep"}}}}
    data = _h5ad(tmp_path / "d.h5ad", uns=uns)
    result = invoke("inspect", data)
    assert result.exit_code == 0, result.output
    warn = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "bio_rep" in line]
    assert len(warn) == 1, result.stderr
    assert "going without it" in warn[0] and "--replicate-key COLUMN" in warn[0]


def test_simulate_and_prioritize_hints(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _check_hint("simulate", assert_one_line_error(invoke("simulate", "--out", f), "is a file"))
    _check_hint("simulate", assert_one_line_error(invoke("simulate", "--out", tmp_path / "s", "--seed", -2), "negative"))


def test_cli_hint_rewrites_python_keywords():
    assert cli_hint("Fix: pass control=<label>.") == "Fix: pass --control <label>."
    assert cli_hint("Fix: use input='log'.") == "Fix: use --input log."
    assert cli_hint("Fix: x=None (CLI: leave out --x) to go without.") == "Fix: leave out --x to go without."
    # a dict / list literal with spaces as the Python side (it was left in the CLI line)
    assert cli_hint("Fix: give them (compound_targets={name: [genes]} (CLI: --compound-targets TABLE)).") == \
        "Fix: give them (--compound-targets TABLE)."
    assert cli_hint("Fix: pass genes=['A', 'B'] (CLI: --genes A,B).") == "Fix: pass --genes A,B."
    # a field name inside a sentence about a file is left alone
    assert cli_hint("training config field max_steps is 'abc'") == "training config field max_steps is 'abc'"


@pytest.mark.parametrize(("text", "fact"), [("STAT1, IRF1", "' IRF1'"), ("STAT1,,IRF1", "empty label"),
                                            ("STAT1,IRF1,", "empty label")])
def test_comma_list_label_hints_name_the_flag(tmp_path, text, fact):
    """A stray space or an empty item in a comma-separated option is the option's text, not the data's labels:
    the fix is to rewrite the option (labels are not stripped), not to strip adata.obs."""
    model = tmp_path / "model"
    out = tmp_path / "pred.h5ad"
    line = assert_one_line_error(invoke("predict", model, "--perturbations", text, "--out", out), fact, "--perturbations")
    _check_hint("predict", line)
    assert "adata" not in line and "'control'" not in line
    data = _h5ad(tmp_path / "d.h5ad")
    line = assert_one_line_error(invoke("train", data, "--out", model, "--holdout", text, "--max-steps", 1), fact, "--holdout")
    _check_hint("train", line)
    assert "adata" not in line and not out.exists() and not (model / "bioworld.json").exists()
    spec = next(item for item in text.split(",") if not item.strip() or item != item.strip())
    line = assert_one_line_error(invoke("counterfactual", model, "--cells", data, "--intervention", spec,
                                        "--out", out), "--intervention")
    _check_hint("counterfactual", line)
    assert "adata" not in line and not out.exists()


def test_weak_fit_warning_of_an_ensemble_names_cli_flags(tmp_path):
    """`train --members 2` printed each member's weak-fit warning as 'train with another seed (config --seed ...)
    or a seed ensemble (bw.Ensemble.train)': a Python keyword half rewritten, and a Python call."""
    X = np.random.default_rng(0).poisson(3, (90, len(GENES))).astype(np.float32)
    X[30:60, :10] *= 8  # strong effects, which one step does not learn
    X[60:, 10:20] = 0
    data = _h5ad(tmp_path / "d.h5ad", X=X)
    r = invoke("train", data, "--out", tmp_path / "m", "--members", 2, "--max-steps", 1, "--quiet")
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if "strongest training effects" in line]
    assert warned, r.stderr
    for line in warned:
        assert not PY_KWARG.search(line) and "config --seed" not in line and "bw.Ensemble" not in line, line
        assert set(FLAG.findall(line)) <= _options("train") and "--seed" in line, line


@pytest.mark.parametrize("argv, says", [
    (["predict"], "Missing argument 'model_dir'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["evaluate", "m", "--data", "d.h5ad", "--k", "abc"], "Invalid value for '--k'"),
    (["evaluate", "m", "--data", "d.h5ad", "--k", "0"], "greater than or equal to 1"),
    (["train", "papalexi", "--out", "o", "--max-steps", "abc"], "Invalid value for '--max-steps'"),
    (["predict", "--bogus"], "No such option: --bogus"),
])
def test_a_command_line_the_parser_refuses_is_one_error_line(argv, says, capsys):
    from bioworld.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: bioworld") and says in err
    assert "Fix: see 'bioworld" in err and "-h'" in err and "╭" not in err and ".." not in err


def test_the_entry_point_keeps_help_version_and_a_bare_command(capsys):
    from bioworld.cli import main

    for argv, code in ((["--version"], 0), (["predict", "-h"], 0), ([], 2)):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == code, argv
    out = capsys.readouterr().out
    assert "bioworld" in out and "Usage" in out  # the version line, the command's help and the bare help


def test_holdout_of_a_set_aside_group_says_so(tmp_path):
    """--holdout naming a group that registration set aside (fewer cells than --min-cells) was told the label 'is
    not a perturbation of this data', which it is."""
    rng = np.random.default_rng(0)
    labels = ["control"] * 8 + ["STAT1"] * 6 + ["IRF1"] * 2
    a = ad.AnnData(rng.poisson(3, (len(labels), len(GENES))).astype(np.float32),
                   obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=GENES))
    a.write_h5ad(tmp_path / "d.h5ad")
    line = assert_one_line_error(invoke("train", tmp_path / "d.h5ad", "--out", tmp_path / "m", "--holdout", "IRF1",
                                        "--max-steps", 1), "['IRF1'] are in the data", "set aside",
                                 "'IRF1': 2 cells < --min-cells 3", "lower --min-cells")
    assert "not perturbations of this data" not in line
    _check_hint("train", line)


def test_train_refuses_data_with_every_perturbation_group_set_aside(tmp_path):
    """--min-cells above every group's size trained (and saved) a model of the control cells alone: it answered
    every perturbation with no effect, its card saying only 'no perturbation group besides the control is kept'."""
    rng = np.random.default_rng(0)
    labels = ["control"] * 40 + ["STAT1"] * 10 + ["IRF1"] * 10
    a = ad.AnnData(rng.poisson(3, (len(labels), len(GENES))).astype(np.float32),
                   obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=GENES))
    a.write_h5ad(data := tmp_path / "d.h5ad")
    line = assert_one_line_error(invoke("train", data, "--out", tmp_path / "m", "--min-cells", 11, "--max-steps", 1),
                                 "all 2 perturbation groups were set aside", "10 cells < --min-cells 11",
                                 "no perturbation group to train on", "lower --min-cells")
    _check_hint("train", line)
    assert not (tmp_path / "m" / "bioworld.json").exists()


def test_missing_labels_hint_is_for_the_command_line(tmp_path):
    """Cells without a perturbation label (unassigned guides) were refused with a Python line as the CLI's fix
    (adata = adata[adata.obs['perturbation'].notna()].copy())."""
    labels = ["control"] * 30 + ["STAT1"] * 30 + ["IRF1"] * 28 + [None, None]
    data = _h5ad(tmp_path / "d.h5ad")
    a = ad.read_h5ad(data)
    a.obs["perturbation"] = labels
    a.write_h5ad(data)
    line = assert_one_line_error(invoke("inspect", data), "2 empty or missing (NaN) labels",
                                 "remove those cells: do so in the file, then run again")
    _check_hint("inspect", line)
    assert "adata" not in line.split("Fix:")[1]
