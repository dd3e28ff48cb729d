"""--layer: files laid out the scverse way (normalised values in X, raw counts in layers['counts']) are read
from the named layer by every command that reads cells, with the same answers as a file that holds the
counts in X; a missing layer, --layer with --backed and with --nproc are one-line errors."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bioworld as bw
from bioworld.errors import DataValidationError
from test_cli import assert_one_line_error, invoke

TRAIN = ("--config", "config.json", "--max-steps", "20", "--seed", "0", "--quiet")


def _scverse_layout(counts: ad.AnnData) -> ad.AnnData:
    """The same cells as a scanpy user keeps them: log1p CP10k in X (sparse), raw counts in layers['counts']."""
    X = np.asarray(counts.X.todense() if sp.issparse(counts.X) else counts.X, dtype=np.float32)
    lognorm = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1.0) * 1e4).astype(np.float32)
    out = ad.AnnData(X=sp.csr_matrix(lognorm), obs=counts.obs.copy(), var=counts.var.copy())
    out.layers["counts"] = sp.csr_matrix(X)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(folder, counts-in-X file, scverse-layout file of the same cells, pathways GMT)."""
    d = tmp_path_factory.mktemp("layer")
    bw.data.simulate(n_pathways=3, genes_per_pathway=6, n_drivers=2, n_other_genes=6, n_cells_per_condition=10,
                     n_control_cells=60, doubles=0, n_truth_draws=50, seed=1).write(d)
    plain = ad.read_h5ad(d / "train.h5ad")
    _scverse_layout(plain).write_h5ad(d / "scverse.h5ad")
    (d / "config.json").write_text(json.dumps({"groups_per_batch": 4, "cells_per_group": 6, "self_pairs": 8,
                                               "num_threads": 1}))
    return d, d / "train.h5ad", d / "scverse.h5ad", d / "pathways.gmt"


def _train(d, data, out, *extra):
    result = invoke("train", data, "--out", out, "--entities", d / "pathways.gmt",
                    *[d / a if a == "config.json" else a for a in TRAIN], *extra)
    assert result.exit_code == 0, (result.output, result.exception)
    return out


@pytest.fixture(scope="module")
def models(files):
    d, plain, scverse, _ = files
    return _train(d, plain, d / "m_plain"), _train(d, scverse, d / "m_layer", "--layer", "counts")


def test_read_h5ad_layer_sets_x_and_records_it(files):
    _, plain, scverse, _ = files
    a = bw.data.read_h5ad(scverse, layer="counts")
    ref = ad.read_h5ad(plain)
    np.testing.assert_array_equal(np.asarray(a.X.todense()), np.asarray(ref.X.todense() if sp.issparse(ref.X) else ref.X))
    assert a.uns["bioworld"]["loader"]["layer"] == "counts"
    assert "counts" in a.layers  # the other layers are kept
    with pytest.raises(DataValidationError, match=r"layer 'raw' not found .*\['counts'\]"):
        bw.data.read_h5ad(scverse, layer="raw")
    with pytest.raises(DataValidationError, match="no layers"):
        bw.data.read_h5ad(plain, layer="counts")


def test_inspect_reads_the_layer_and_x_alone_is_refused_with_the_flag_named(files):
    _, _, scverse, gmt = files
    result = invoke("inspect", scverse, "--entities", gmt, "--layer", "counts")
    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.stdout
    assert "X = layers['counts']" in result.stdout
    # without --layer X holds log values: refused for counts input, and the hint names the CLI flag
    assert_one_line_error(invoke("inspect", scverse, "--entities", gmt), "looks log-normalised", "--layer counts")
    assert_one_line_error(invoke("inspect", scverse, "--layer", "raw"), "layer 'raw' not found", "['counts']")


def test_train_with_layer_gives_the_model_of_the_counts_file(models):
    plain, layer = models
    assert (plain / "model.safetensors").read_bytes() == (layer / "model.safetensors").read_bytes()


def test_counterfactual_and_prioritize_read_the_layer(files, models, tmp_path):
    _, plain_file, scverse, _ = files
    model = models[0]
    out = {}
    for name, cells, extra in (("plain", plain_file, ()), ("layer", scverse, ("--layer", "counts"))):
        res = invoke("counterfactual", model, "--cells", cells, "--intervention", "P1_DRV1",
                     "--intervention", "silence:SIM_P2", "--out", tmp_path / f"cf_{name}.h5ad", *extra)
        assert res.exit_code == 0, (res.output, res.exception)
        out[name] = ad.read_h5ad(tmp_path / f"cf_{name}.h5ad")
        res = invoke("prioritize", model, "--cells", cells, "--goal", "toward:control", "--no-pairs",
                     "--out", tmp_path / f"rep_{name}", *extra)
        assert res.exit_code == 0, (res.output, res.exception)
    np.testing.assert_array_equal(np.asarray(out["layer"].X), np.asarray(out["plain"].X))
    np.testing.assert_array_equal(np.asarray(out["layer"].layers["delta"]), np.asarray(out["plain"].layers["delta"]))
    ranked = [pd.read_csv(tmp_path / f"rep_{n}" / "ranked_interventions.csv") for n in ("plain", "layer")]
    pd.testing.assert_frame_equal(ranked[0], ranked[1])
    # the log values in X are not counts: the same cells without --layer are refused, naming the flag
    res = invoke("counterfactual", model, "--cells", scverse, "--intervention", "P1_DRV1", "--out", tmp_path / "x.h5ad")
    assert_one_line_error(res, "--layer counts")


def test_evaluate_reads_the_layer_of_both_files(files, models):
    _, plain, scverse, _ = files
    model = models[1]
    scores = {}
    for name, data, extra in (("plain", plain, ()), ("layer", scverse, ("--layer", "counts"))):
        res = invoke("evaluate", model, "--data", data, "--train-data", data, *extra)
        assert res.exit_code == 0, (res.output, res.exception)
        scores[name] = pd.read_csv(model / "evaluation.csv")
    pd.testing.assert_frame_equal(scores["plain"], scores["layer"])
    assert_one_line_error(invoke("evaluate", model, "--data", scverse, "--layer", "raw"), "layer 'raw' not found")


def test_layer_with_backed_or_nproc_is_refused(files, tmp_path):
    d, _, scverse, _ = files
    line = assert_one_line_error(invoke("train", scverse, "--out", tmp_path / "m", "--backed", "--layer", "counts"),
                                 "--backed", "--layer", "layer 'counts' as its X")
    assert "adata." not in line  # a command-line fix, not a Python line
    assert_one_line_error(invoke("train", scverse, "--out", tmp_path / "m2", "--nproc", "2", "--layer", "counts"),
                          "--nproc 2 does not combine with", "--layer")


def _raw_layout(counts: ad.AnnData, keep_genes: int | None = None) -> ad.AnnData:
    """scanpy's other layout: the counts in .raw (adata.raw = adata before normalising), log values in X, X
    perhaps cut to fewer genes (highly variable ones) than .raw holds."""
    scverse = _scverse_layout(counts)
    raw = ad.AnnData(X=scverse.layers["counts"], obs=scverse.obs.copy(), var=scverse.var.copy())
    out = ad.AnnData(X=scverse.X, obs=scverse.obs.copy(), var=scverse.var.copy())
    out.raw = raw
    return out if keep_genes is None else out[:, :keep_genes].copy()


def test_layer_raw_reads_the_counts_scanpy_keeps_in_raw(files, tmp_path):
    """Counts kept in .raw (no layers) could not be read: the error hinted '--layer counts', which the file has
    not, and '--layer raw' was 'not found'. Now --layer raw reads .raw (its genes, also when X has fewer) and the
    hint names it."""
    _, plain, _, gmt = files
    ref = ad.read_h5ad(plain)
    for keep in (None, 5):
        path = tmp_path / f"raw_{keep}.h5ad"
        _raw_layout(ref, keep).write_h5ad(path)
        a = bw.data.read_h5ad(path, layer="raw")
        assert list(a.var_names) == list(ref.var_names) and a.uns["bioworld"]["loader"]["layer"] == "raw"
        np.testing.assert_array_equal(np.asarray(a.X.todense()), np.asarray(ref.X.todense() if sp.issparse(ref.X)
                                                                               else ref.X))
        result = invoke("inspect", path, "--entities", gmt, "--layer", "raw")
        assert result.exit_code == 0, result.output
        assert "X = .raw" in result.stdout and f"x {ref.n_vars} genes" in result.stdout
        line = assert_one_line_error(invoke("inspect", path, "--entities", gmt), "looks log-normalised", "--layer raw")
        assert "--layer counts" not in line and "adata" not in line.split("Fix:")[1]
    line = assert_one_line_error(invoke("inspect", path, "--layer", "counts"), "layer 'counts' not found", "'raw'")


def test_counts_hint_without_counts_anywhere_names_no_layer_the_file_lacks(files, tmp_path):
    """X of log values and no layer or .raw of counts: the hint said '--layer counts' (a layer the file lacks)."""
    _, plain, _, _ = files
    scverse = _scverse_layout(ad.read_h5ad(plain))
    del scverse.layers["counts"]
    scverse.write_h5ad(tmp_path / "log_only.h5ad")
    line = assert_one_line_error(invoke("inspect", tmp_path / "log_only.h5ad"), "looks log-normalised", "--layer NAME")
    assert "--layer counts" not in line
