"""Nothing lost (issue 17): outputs never overwrite anything, folders are locked, writes are atomic
with normal modes, failed writes are one-line errors that leave nothing half-made."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import types
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import bioworld as bw
from bioworld.cli import app

REPO = Path(__file__).resolve().parents[1]
FAST = {"num_threads": 1, "groups_per_batch": 4, "cells_per_group": 6, "self_pairs": 8, "warmup_steps": 2}
torch.set_num_threads(1)


def _invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


def _error_line(result, *facts: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fact in facts:
        assert fact in lines[0], (fact, lines[0])
    assert ".bwtmp" not in lines[0]  # errors name the user's path, never a temporary file
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def world(tiny_trained, small_sim, tmp_path_factory):
    """A saved model folder, a cells file and the data file, in one scratch folder."""
    d = tmp_path_factory.mktemp("outputs")
    tiny_trained.save(d / "model")
    a = small_sim.adata
    a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:12]].copy().write_h5ad(d / "cells.h5ad")
    return d


# ================================================================== item 1: nothing overwritten
@pytest.mark.parametrize("target", ["model/bioworld.json", "model/model.safetensors", "model/new.h5ad", "model"])
def test_predict_never_writes_into_a_model_folder(world, target):
    before = _files(world / "model")
    for extra in ([], ["--overwrite"]):  # not even with --overwrite
        res = _invoke("predict", world / "model", "--perturbations", "control,P1_DRV1", "--out", world / target, *extra)
        _error_line(res, "--out")
    assert _files(world / "model") == before
    assert bw.WorldModel.load(world / "model") is not None


def test_predict_refuses_existing_out_unless_overwrite(world, tmp_path):
    data = tmp_path / "data.h5ad"
    data.write_bytes((world / "cells.h5ad").read_bytes())
    before = data.read_bytes()
    _error_line(_invoke("predict", world / "model", "--perturbations", "control,P1_DRV1", "--out", data),
                "already exists", "--overwrite")
    assert data.read_bytes() == before
    res = _invoke("predict", world / "model", "--perturbations", "control,P1_DRV1", "--out", data, "--overwrite")
    assert res.exit_code == 0, res.output
    assert list(ad.read_h5ad(data).obs_names) == ["control", "P1_DRV1"]


@pytest.mark.parametrize("name", ["pred.csv", "pred", "pred.h5"])
def test_file_outputs_must_be_named_h5ad(world, tmp_path, name):
    """predict / counterfactual write AnnData: an --out with another suffix is refused before any work, with the
    .h5ad name to use; nothing is written."""
    out = tmp_path / name
    line = _error_line(_invoke("predict", world / "model", "--perturbations", "control,P1_DRV1", "--out", out),
                       "does not end in .h5ad", repr(str(out) + ".h5ad"), "Fix:")
    assert "Fix: give --out a .h5ad name" in line
    _error_line(_invoke("counterfactual", world / "model", "--cells", world / "cells.h5ad", "--intervention",
                        "P1_DRV1", "--out", out), "does not end in .h5ad")
    assert list(tmp_path.iterdir()) == []
    res = _invoke("predict", world / "model", "--perturbations", "control,P1_DRV1", "--out", tmp_path / "Pred.H5AD")
    assert res.exit_code == 0, res.output  # the suffix's case does not matter


def test_counterfactual_never_overwrites_its_input(world, tmp_path):
    cells = tmp_path / "c.h5ad"
    cells.write_bytes((world / "cells.h5ad").read_bytes())
    link = tmp_path / "link.h5ad"
    link.symlink_to(cells)
    before = cells.read_bytes()
    for out in (cells, link, tmp_path / "." / "c.h5ad"):
        for extra in ([], ["--overwrite"]):
            res = _invoke("counterfactual", world / "model", "--cells", cells, "--intervention", "silence:SIM_P1",
                          "--out", out, *extra)
            _error_line(res, "input --cells")
    assert cells.read_bytes() == before


def test_prioritize_refuses_model_folder_and_non_empty_out(world, tmp_path):
    before = _files(world / "model")
    args = ("prioritize", world / "model", "--cells", world / "cells.h5ad", "--goal", "down:SIM_P1", "--no-pairs",
            "--genes", "P1_DRV1")
    _error_line(_invoke(*args, "--out", world / "model", "--overwrite"), "model folder")
    assert _files(world / "model") == before
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "notes.txt").write_text("mine")
    _error_line(_invoke(*args, "--out", rep), "not empty", "--overwrite")
    assert _files(rep) == {"notes.txt": b"mine"}
    res = _invoke(*args, "--out", rep, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(_files(rep)) == ["notes.txt", "ranked_interventions.csv", "report.html"]


# ========================================================== item 4: train --out locked, writable
def test_train_refuses_a_folder_locked_by_another_run(world, tmp_path):
    from bioworld._atomic import folder_lock

    out = tmp_path / "model"
    with folder_lock(out):
        res = _invoke("train", world / "cells.h5ad", "--out", out, "--max-steps", 1, "--quiet")
        _error_line(res, "another bioworld process", "--out")
    assert list(out.iterdir()) == []  # the refused run wrote nothing; the holder's lock file is gone


def test_train_checks_writability_before_reading_data(tmp_path):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (a folder nobody can create files in, even root)")
    res = _invoke("train", tmp_path / "missing.h5ad", "--out", "/proc/bw_model_out", "--max-steps", 1)
    _error_line(res, "--out", "/proc/bw_model_out", "cannot write")  # not "missing.h5ad": checked first
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error_line(_invoke("train", tmp_path / "missing.h5ad", "--out", blocker / "sub" / "m"), "is a file")
    assert blocker.read_text() == "x"


def test_train_does_not_overwrite_a_model_that_appeared_meanwhile(world, small_sim, tmp_path, monkeypatch):
    import bioworld.train.fit_check as wmod

    out = tmp_path / "model"

    def fake_train(build, config, **kwargs):  # another program saves a model into --out meanwhile
        (out / "bioworld.json").write_text('{"theirs": 1}')
        return types.SimpleNamespace(train_config=config)

    monkeypatch.setattr(wmod, "train_until_fit", fake_train)
    data = tmp_path / "data.h5ad"
    small_sim.adata.write_h5ad(data)
    _error_line(_invoke("train", data, "--out", out, "--max-steps", 1, "--quiet"), "appeared", "--overwrite")
    assert (out / "bioworld.json").read_text() == '{"theirs": 1}'
    assert sorted(p.name for p in out.iterdir()) == ["bioworld.json"]  # lock released, nothing else left


# ============================================================ item 3: disk full, nothing half-made
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_train_disk_full_is_one_line_and_leaves_no_folder(tiny_trained, small_sim, tmp_path, monkeypatch):
    import copy

    import bioworld.train.fit_check as wmod
    import bioworld.train.checkpoint as ckpt
    from safetensors import SafetensorError

    monkeypatch.setattr(wmod, "train_until_fit", lambda build, config, **kw: copy.deepcopy(tiny_trained))

    def full(tensors, filename, *a, **k):  # what safetensors raises on a full disk
        Path(filename).write_bytes(b"partial")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(ckpt, "save_file", full)
    data = tmp_path / "data.h5ad"
    small_sim.adata.write_h5ad(data)
    out = tmp_path / "new" / "model"
    line = _error_line(_invoke("train", data, "--out", out, "--max-steps", 1, "--quiet"),
                       "No space left on device", str(out / "model.safetensors"), "Fix:")
    assert "errno 28" in line
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5ad"]


def test_counterfactual_disk_full_leaves_nothing(world, tmp_path, monkeypatch):
    import bioworld._atomic as atomic

    real = atomic.os.fsync

    def fsync(fd):  # the data reach the disk at fsync; a full disk fails there
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".bwtmp"):
            _enospc()
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    out = tmp_path / "cf" / "cf.h5ad"
    _error_line(_invoke("counterfactual", world / "model", "--cells", world / "cells.h5ad",
                        "--intervention", "silence:SIM_P1", "--out", out), "No space left", str(out))
    assert not (tmp_path / "cf").exists() and list(tmp_path.iterdir()) == []


def test_prioritize_disk_full_writes_neither_csv_nor_report(world, tmp_path, monkeypatch):
    real = Path.write_text

    def write_text(self, data, *a, **k):
        if ".report.html." in self.name:  # the CSV is written first, then the report fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    out = tmp_path / "rep"
    _error_line(_invoke("prioritize", world / "model", "--cells", world / "cells.h5ad", "--goal", "down:SIM_P1",
                        "--no-pairs", "--genes", "P1_DRV1", "--out", out), "No space left", str(out / "report.html"))
    assert not out.exists()


def _fsize_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_predict_real_write_failure_in_a_size_limited_process(world, tmp_path):
    """A real failing write (RLIMIT_FSIZE: the kernel refuses bytes past 2 kB, like a full disk)."""
    out = tmp_path / "p.h5ad"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("BIOWORLD_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "bioworld", "predict", str(world / "model"), "--perturbations",
                           "control,P1_DRV1,P2_DRV1", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=_fsize_limit(2048))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not write") and str(out) in lines[0], lines
    assert "Traceback" not in proc.stderr and ".bwtmp" not in lines[0]
    assert list(tmp_path.iterdir()) == []


# =========================================================== item 11: modes, stale temporary files
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_get_normal_modes_under_the_umask(tiny_trained, world, tmp_path, mask):
    old = os.umask(mask)
    try:
        tiny_trained.save(tmp_path / "m")
        res = _invoke("predict", world / "model", "--perturbations", "control", "--out", tmp_path / "p.h5ad")
        assert res.exit_code == 0, res.output
        res = _invoke("prioritize", world / "model", "--cells", world / "cells.h5ad", "--goal", "down:SIM_P1",
                      "--no-pairs", "--genes", "P1_DRV1", "--out", tmp_path / "rep")
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    files = [tmp_path / "m" / "model.safetensors", tmp_path / "m" / "bioworld.json", tmp_path / "p.h5ad",
             tmp_path / "rep" / "report.html", tmp_path / "rep" / "ranked_interventions.csv"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, (f, oct(f.stat().st_mode))


def test_stale_temp_files_of_killed_writers_are_cleaned(world, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".p.h5ad.{dead.pid}.k1ll3d.bwtmp"
    live = tmp_path / f".p.h5ad.{os.getpid()}.l1v3.bwtmp"  # a writer still running keeps its file
    stale.write_bytes(b"half")
    live.write_bytes(b"busy")
    res = _invoke("predict", world / "model", "--perturbations", "control", "--out", tmp_path / "p.h5ad")
    assert res.exit_code == 0, res.output
    assert not stale.exists() and live.exists()


@pytest.mark.slow
def test_sigkill_during_a_write_then_the_next_write_cleans_up(world, tmp_path):
    """A writer killed in the middle of writing leaves its temporary file; the next run removes it."""
    code = (
        "import os, signal\n"
        "import anndata as ad\n"
        "from bioworld.report._h5ad import write_h5ad_atomic\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed with the file written, not renamed\n"
        f"write_h5ad_atomic(ad.read_h5ad({str(world / 'cells.h5ad')!r}), {str(tmp_path / 'p.h5ad')!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].endswith(".bwtmp"), leftovers
    res = _invoke("predict", world / "model", "--perturbations", "control", "--out", tmp_path / "p.h5ad")
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5ad"]


# ============================================== item 8: names are not math, CSV cells not formulas
def test_report_shows_dollar_names_and_defuses_formula_cells(tiny_trained, world, tmp_path):
    import copy

    from bioworld.report import write_report

    cells = ad.read_h5ad(world / "cells.h5ad")
    result = copy.copy(tiny_trained.prioritize(cells, "down:SIM_P1", n_boot=5, pairs=False, max_cells=10))
    table = result.table.copy()
    nasty = ["silence:P$\\foo{$", '=HYPERLINK("http://example.com","x")', "@SUM(A1)", "+1", "-2+3"]
    table.loc[table.index[:len(nasty)], "intervention"] = nasty
    result.table = table
    path = write_report(result, tmp_path / "rep", model=tiny_trained)
    assert "P$\\foo{$" in path.read_text()
    csv = pd.read_csv(tmp_path / "rep" / "ranked_interventions.csv")
    got = list(csv["intervention"][:len(nasty)])
    assert got == ["silence:P$\\foo{$"] + ["'" + s for s in nasty[1:]]
    assert np.allclose(csv["score"].to_numpy(), table["score"].to_numpy(), rtol=1e-6)  # numbers untouched
    assert (csv["score"] < 0).any() == (table["score"] < 0).any()  # negative numbers are not quoted


def test_train_refuses_a_full_disk_before_training(small_sim, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import bioworld.train.fit_check as fit_check

    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def tiny(path):  # a filesystem with 1 MB free, like the issue's
        return usage(real(path).total, real(path).used, 1 << 20) if str(path).startswith(str(tmp_path)) else real(path)

    trained = []
    real_fit = fit_check.train_until_fit

    def spy(*a, **k):
        trained.append(True)
        return real_fit(*a, **k)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    monkeypatch.setattr(fit_check, "train_until_fit", spy)
    data = tmp_path / "data.h5ad"
    small_sim.adata.write_h5ad(data)
    gmt = tmp_path / "s.gmt"
    gmt.write_text("".join(f"{k}\tsim\t" + "\t".join(v) + "\n" for k, v in small_sim.gmt.items()))
    res = _invoke("train", data, "--out", tmp_path / "m", "--entities", gmt, "--max-steps", 2, "--quiet")
    _error_line(res, "1.0 MB free", "--out")
    assert trained  # refused inside the build step, before any optimiser step
    assert not (tmp_path / "m").exists()
