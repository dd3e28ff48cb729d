"""Validation gaps of issue 17 item 10: empty control cells, impossible holdouts, counts given to a
log model, compressed GMT files, repeated candidate genes."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import bioworld as bw
from bioworld.cli import app
from bioworld.errors import BioworldError, DataValidationError


def _invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


def _gmt(small_sim, path):
    text = "".join(f"{k}\tsim\t" + "\t".join(v) + "\n" for k, v in small_sim.gmt.items())
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _control(a):
    return np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")


@pytest.mark.parametrize("sparse", [False, True])
def test_all_zero_control_cells_are_refused(small_sim, sparse):
    a = small_sim.adata.copy()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X).copy()
    X[_control(a)] = 0
    a.X = sp.csr_matrix(X) if sparse else X
    with pytest.raises(DataValidationError, match="zero expression in every gene"):
        bw.data.register(a, perturbation_key="perturbation", control="control")


def test_some_empty_control_cells_are_a_finding(small_sim):
    a = small_sim.adata.copy()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X).copy()
    X[_control(a)[:3]] = 0
    a.X = X
    reg = bw.data.register(a, perturbation_key="perturbation", control="control")
    assert any("3 of" in f and "zero expression" in f for f in reg.findings), reg.findings


@pytest.mark.parametrize("sparse", [False, True])
def test_empty_perturbed_cells_are_a_finding(small_sim, sparse):
    # all-zero cells of a perturbation are kept (like empty control cells) but must not pass silently:
    # on the log scale they read as the loss of every gene and pull that group's mean effect down
    a = small_sim.adata.copy()
    labels = a.obs["perturbation"].astype(str).to_numpy()
    label = next(lab for lab in labels if lab != "control")
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X).copy()
    X[np.flatnonzero(labels == label)[:2]] = 0
    a.X = sp.csr_matrix(X) if sparse else X
    reg = bw.data.register(a, perturbation_key="perturbation", control="control")
    found = [f for f in reg.findings if "zero expression" in f]
    assert len(found) == 1 and "2 of" in found[0] and label in found[0] and "perturbed" in found[0], reg.findings


class _CountingRows:
    """A row-sliceable matrix that counts the row blocks read (stands in for a backed X)."""

    def __init__(self, X):
        self.X, self.shape, self.dtype, self.reads = X, X.shape, X.dtype, 0

    def __getitem__(self, key):
        self.reads += 1
        return self.X[key]


@pytest.mark.parametrize("kind", ["dense", "csr blocks"])
def test_value_pass_also_finds_the_empty_cells_in_one_streamed_pass(kind):
    """Registration reads a streamed X once for the value checks and the empty cells together (it read it twice)."""
    from bioworld.data._register import _CHUNK_ROWS, _empty_mask, _value_stats

    n = 2 * _CHUNK_ROWS + 7
    rng = np.random.default_rng(0)
    X = rng.poisson(0.5, (n, 6)).astype(np.float32)
    X[[0, 5, _CHUNK_ROWS, n - 1]] = 0
    src = _CountingRows(X if kind == "dense" else sp.csr_matrix(X))
    s = _value_stats(src, rows=True)
    assert src.reads == 3  # the row blocks, once
    np.testing.assert_array_equal(s.empty, (X == 0).all(axis=1))
    np.testing.assert_array_equal(s.empty, _empty_mask(X))
    mem = _value_stats(sp.csr_matrix(X), rows=True)  # in memory: the stored values, rows counted apart
    np.testing.assert_array_equal(mem.empty, s.empty)
    assert (mem.maximum, mem.n_noninteger) == (s.maximum, s.n_noninteger)
    assert _value_stats(X).empty is None


def test_holdout_of_control_or_of_everything_is_refused(small_sim, tmp_path):
    a = small_sim.adata.copy()
    from _helpers import sim_entities

    with pytest.raises(DataValidationError, match="control label"):
        bw.WorldModel(a, entities=sim_entities(small_sim), nmf_programs=0, holdout=["control"])
    everything = sorted(set(a.obs["perturbation"].astype(str)) - {"control"})
    with pytest.raises(DataValidationError, match=f"all {len(everything)} perturbations"):
        bw.WorldModel(a, entities=sim_entities(small_sim), nmf_programs=0, holdout=everything)
    data = tmp_path / "d.h5ad"
    a.write_h5ad(data)
    res = _invoke("train", data, "--out", tmp_path / "m", "--entities", _gmt(small_sim, tmp_path / "s.gmt"),
                  "--holdout", "control", "--max-steps", 1)
    assert res.exit_code == 2 and "--holdout" in res.stderr, (res.output, res.exception)
    assert not (tmp_path / "m").exists()


def test_gzipped_gmt_is_accepted(small_sim, tmp_path):
    a = small_sim.adata.copy()
    a.write_h5ad(tmp_path / "d.h5ad")
    res = _invoke("inspect", tmp_path / "d.h5ad", "--entities", _gmt(small_sim, tmp_path / "sets.gmt.gz"))
    assert res.exit_code == 0, (res.output, res.exception)
    assert "SIM_P1" in res.stdout


@pytest.fixture(scope="module")
def log_model(small_sim):
    from _helpers import sim_entities

    a = small_sim.adata.copy()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    a.X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    wm = bw.WorldModel(a, entities=sim_entities(small_sim), nmf_programs=0, input="log",
                       config={"max_steps": 3, "warmup_steps": 1, "num_threads": 1, "groups_per_batch": 4,
                               "cells_per_group": 6, "self_pairs": 8})
    return wm.train(progress=False), a


def test_counts_given_to_a_log_model_are_refused(log_model, small_sim):
    wm, log_data = log_model
    counts = small_sim.adata[_control(small_sim.adata)[:10]].copy()
    X = np.asarray(counts.X.toarray() if sp.issparse(counts.X) else counts.X)
    counts.X = np.minimum(X, 50).astype(np.float32)  # shallow counts: the old check let integers <= 50 through
    with pytest.raises(DataValidationError, match="look like raw counts"):
        wm.counterfactual(counts, ["silence:SIM_P1"])
    ok = wm.counterfactual(log_data[_control(log_data)[:10]].copy(), ["silence:SIM_P1"])  # log cells still work
    assert np.isfinite(np.asarray(ok.X)).all()


def test_duplicated_genes_are_refused(tiny_trained, small_sim, tmp_path):
    cells = small_sim.adata[_control(small_sim.adata)[:10]].copy()
    with pytest.raises(BioworldError, match="more than once"):
        tiny_trained.prioritize(cells, "down:SIM_P1", genes=["P1_DRV1", "P1_DRV1"], pairs=False, n_boot=5)
    tiny_trained.save(tmp_path / "m")
    cells.write_h5ad(tmp_path / "c.h5ad")
    res = _invoke("prioritize", tmp_path / "m", "--cells", tmp_path / "c.h5ad", "--goal", "down:SIM_P1",
                  "--genes", "P1_DRV1,P2_DRV1,P1_DRV1", "--no-pairs", "--out", tmp_path / "rep")
    assert res.exit_code == 2 and "--genes" in res.stderr and "'P1_DRV1'" in res.stderr, (res.output, res.exception)
    assert not (tmp_path / "rep").exists()
