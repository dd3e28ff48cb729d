"""Values read from files are validated (issue 17 item 9): integers in an h5ad's loader record,
ensemble.json's version / members / calibration; an ensemble member path never leaves its folder."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bioworld as bw
from bioworld.cli import app
from bioworld.errors import CheckpointError


def _invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("value", ["abc", -3, 2.5, True])
def test_loader_min_cells_must_be_a_positive_integer(small_sim, tmp_path, value):
    a = small_sim.adata.copy()
    a.uns["bioworld"] = {"loader": {"register_kwargs": {"min_cells_per_group": value}}}
    a.write_h5ad(tmp_path / "d.h5ad")
    res = _invoke("inspect", tmp_path / "d.h5ad")
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "min_cells_per_group" in lines[0] and "positive integer" in lines[0], lines
    a.uns["bioworld"]["loader"]["register_kwargs"]["min_cells_per_group"] = 2  # a valid one still works
    a.write_h5ad(tmp_path / "ok.h5ad")
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("".join(f"{k}\tsim\t" + "\t".join(v) + "\n" for k, v in small_sim.gmt.items()))
    ok = _invoke("inspect", tmp_path / "ok.h5ad", "--entities", gmt)
    assert ok.exit_code == 0, ok.output


@pytest.fixture(scope="module")
def ensemble_dir(tiny_trained, tmp_path_factory):
    other = copy.deepcopy(tiny_trained)
    with torch.no_grad():
        next(other.module.parameters()).add_(0.1)
    d = tmp_path_factory.mktemp("ens") / "ens"
    bw.Ensemble([tiny_trained, other]).save(d)
    return d


def _edited(ensemble_dir: Path, tmp_path: Path, edit) -> Path:
    d = Path(shutil.copytree(ensemble_dir, tmp_path / "ens"))
    meta = json.loads((d / "ensemble.json").read_text())
    edit(meta, d)
    (d / "ensemble.json").write_text(json.dumps(meta))
    return d


def test_ensemble_round_trip(ensemble_dir):
    ens = bw.Ensemble.load(ensemble_dir)
    assert len(ens.members) == 2


@pytest.mark.parametrize(
    ("edit", "fact"),
    [
        (lambda m, d: m.update(version="abc"), "version 'abc'"),
        (lambda m, d: m.update(version=99), "version 99"),
        (lambda m, d: m.update(version=True), "version True"),
        (lambda m, d: m.update(members=["../outside", "member_1"]), "'../outside'"),
        (lambda m, d: m.update(members=[str(d / "member_0"), "member_1"]), "never a path that leaves it"),
        (lambda m, d: m.update(members=["member_0", 7]), "member 7"),
        (lambda m, d: m.update(members=["member_0", "member_0"]), "distinct"),
        (lambda m, d: m.update(calibration={"gene_scale": [1.0, 2.0], "quantiles": {"0.9": 1.0},
                                            "n_perturbations": 3}), "gene_scale of shape (2,)"),
        (lambda m, d: m.update(calibration={"gene_scale": "x", "quantiles": 3, "n_perturbations": "n"}), "calibration"),
    ],
    ids=["version_string", "version_future", "version_bool", "member_parent", "member_absolute", "member_int",
         "member_duplicate", "calibration_shape", "calibration_garbage"],
)
def test_bad_ensemble_records_are_refused(ensemble_dir, tmp_path, edit, fact):
    d = _edited(ensemble_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        bw.Ensemble.load(d)
    assert fact in str(err.value), str(err.value)


def test_ensemble_member_symlink_out_of_the_folder_is_refused(ensemble_dir, tmp_path):
    outside = Path(shutil.copytree(ensemble_dir / "member_0", tmp_path / "elsewhere"))

    def edit(meta, d):
        (d / "member_link").symlink_to(outside)
        meta["members"] = ["member_link", "member_1"]

    d = _edited(ensemble_dir, tmp_path, edit)
    with pytest.raises(CheckpointError, match="never a path that leaves it"):
        bw.Ensemble.load(d)
    assert np.isfinite(bw.WorldModel.load(outside).predict(["control"]).X).all()  # the target itself is fine
