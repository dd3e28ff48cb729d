"""Out-of-core training: backed .h5ad, streaming statistics, block-buffer sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bioworld as bw
from bioworld.data import normalize, open_backed, register, write_h5ad_chunks
from bioworld.data._backed import BackedExpression, read_rows, streaming_moments
from bioworld.data.collate import BlockBufferSampler, EntityMaskCollator, MaskingConfig
from bioworld.errors import DataValidationError

from _helpers import sim_entities, small_simulation

CFG = {"max_steps": 120, "warmup_steps": 20, "checkpoint_every": 0, "num_threads": 1, "block_size": 32,
       "buffer_blocks": 12, "buffer_refresh": 15, "resident_controls": 150}


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    sim = small_simulation(seed=3)
    a = sim.adata
    path = tmp_path_factory.mktemp("backed") / "sim.h5ad"
    write_h5ad_chunks(path, (a.X[i:i + 500] for i in range(0, a.n_obs, 500)), obs=a.obs, var=a.var)
    return sim, path


def _counts(n=300, g=9, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.poisson(2.0, (n, g)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": np.where(np.arange(n) < 100, "control", "A")},
                       index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"G{i}" for i in range(g)])
    return M, obs, var


@pytest.mark.parametrize("dense", [False, True])
def test_backed_reads_and_statistics_match_in_memory(tmp_path, dense):
    import anndata as ad

    M, obs, var = _counts()
    path = tmp_path / "x.h5ad"
    if dense:
        ad.AnnData(X=M, obs=obs, var=var).write_h5ad(path)
    else:
        write_h5ad_chunks(path, (M[i:i + 70] for i in range(0, len(M), 70)), obs=obs, var=var)
    b = open_backed(path)
    assert b.isbacked
    rows = np.array([250, 3, 3, 4, 5, 99, 0])
    got = read_rows(b.X, rows)
    got = got.toarray() if sp.issparse(got) else got
    np.testing.assert_array_equal(got, M[rows])  # order and repeats kept
    mem = ad.AnnData(X=M.copy(), obs=obs.copy(), var=var.copy())
    reg_b = register(b, input="counts")
    reg_m = register(mem, input="counts")
    full = normalize(mem, reg_m)
    np.testing.assert_allclose(normalize(b, reg_b), full, rtol=1e-6)
    is_ctrl = obs["perturbation"].to_numpy() == "control"
    cm, mean, sd = streaming_moments(b.X, "counts", is_ctrl, block_rows=64)
    np.testing.assert_allclose(cm, full[is_ctrl].mean(0), atol=1e-5)
    np.testing.assert_allclose(mean, full.mean(0), atol=1e-5)
    np.testing.assert_allclose(sd, full.std(0), atol=1e-4)
    src = BackedExpression(b.X, "counts", cm, sd)
    np.testing.assert_allclose(src[rows], (full[rows] - cm) / sd, atol=1e-5)


def test_backed_bad_input_is_refused(tmp_path):
    M, obs, var = _counts()
    M[7, 2] = 0.5  # not a count
    path = tmp_path / "bad.h5ad"
    write_h5ad_chunks(path, [M], obs=obs, var=var)
    with pytest.raises(DataValidationError, match="non-integer"):
        register(open_backed(path), input="counts")
    M[7, 2] = np.nan
    write_h5ad_chunks(path, [M], obs=obs, var=var)
    with pytest.raises(DataValidationError, match="NaN"):
        register(open_backed(path), input="counts")
    with pytest.raises(DataValidationError, match="does not exist"):
        open_backed(tmp_path / "missing.h5ad")
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataValidationError, match="could not open"):
        open_backed(broken)
    with pytest.raises(DataValidationError, match="rows"):
        write_h5ad_chunks(tmp_path / "short.h5ad", [M[:10]], obs=obs, var=var)
    assert not (tmp_path / "short.h5ad").exists() and not (tmp_path / "short.h5ad.tmp").exists()


def _sampler(wm, **kw):
    labels = list(wm.actions)
    table = wm._encode([wm.actions[lab] for lab in labels])
    row_of = {lab: i for i, lab in enumerate(labels)}
    action_row = np.array([row_of.get(lab, -1) for lab in wm._labels])
    train_rows = [row_of[lab] for lab in wm.train_labels if lab != wm.control]
    coll = EntityMaskCollator(len(wm.entity_names), len(wm.genes), MaskingConfig())
    args = dict(seed=0, block_size=32, buffer_blocks=6, refresh_every=4, resident_controls=100,
                groups_per_batch=4, cells_per_group=5, self_pairs=8)
    args.update(kw)
    return BlockBufferSampler(wm._X, action_row, row_of[wm.control], wm._replicate, table, train_rows, coll,
                              **args)


def test_block_buffer_bounds_memory_and_resumes_identically(sim_file):
    sim, path = sim_file
    wm = bw.WorldModel(open_backed(path), entities=sim_entities(sim), replicate_key="replicate",
                       nmf_programs=0, config=CFG)
    assert isinstance(wm._X, BackedExpression)
    wm._X.max_rows_per_read = wm._X.rows_read = 0  # count what the sampler reads, not the set-up
    s = _sampler(wm)
    rng = np.random.default_rng(1)
    batches = [s.sample(rng) for _ in range(10)]
    # the buffer never holds more than buffer_blocks x block_size cells (plus the resident controls)
    assert len(s.buffer_cells) <= 6 * 32 and len(s.ctrl_cells) == 100
    assert wm._X.max_rows_per_read <= max(6 * 32, 100)
    # every buffer changes: over 10 batches (3 buffers) more distinct cells are read than one buffer holds
    assert wm._X.rows_read > 100 + 6 * 32
    # resume at batch 6 with the rng state at that point: identical batches 6..9
    rng2 = np.random.default_rng(1)
    s_ref = _sampler(wm)
    for _ in range(6):
        s_ref.sample(rng2)
    s2 = _sampler(wm)
    s2.set_step(6)
    for b_ref in batches[6:]:
        b = s2.sample(rng2)
        np.testing.assert_array_equal(b["x_tgt"].numpy(), b_ref["x_tgt"].numpy())
        np.testing.assert_array_equal(b["x_src"].numpy(), b_ref["x_src"].numpy())


def test_backed_world_model_trains_predicts_and_is_deterministic(sim_file):
    sim, path = sim_file
    ents = sim_entities(sim)
    labels = [lab for lab in sim.adata.obs["perturbation"].cat.categories if lab != "control"]
    singles = [lab for lab in labels if "+" not in lab and ":" not in lab][:4]
    preds = []
    for _ in range(2):
        wm = bw.WorldModel(open_backed(path), entities=ents, replicate_key="replicate", nmf_programs=0,
                           config=CFG)
        wm._X.max_rows_per_read = wm._X.rows_read = 0
        wm.train(progress=False)
        preds.append(wm.predict(singles).layers["delta"])
    np.testing.assert_array_equal(preds[0], preds[1])
    # the buffer was refreshed (120 steps / 15 per buffer) and never held the whole file at once
    assert wm._X.rows_read > sim.adata.n_obs // 2
    assert wm._X.max_rows_per_read <= max(CFG["block_size"] * CFG["buffer_blocks"], CFG["resident_controls"])
    r = [np.corrcoef(preds[0][i], sim.truth_delta.loc[lab].to_numpy())[0, 1] for i, lab in enumerate(singles)]
    assert np.mean(r) > 0.7, r


def test_block_buffer_epoch_reads_every_block_once(sim_file):
    sim, path = sim_file
    wm = bw.WorldModel(open_backed(path), entities=sim_entities(sim), replicate_key="replicate",
                       nmf_programs=0, config=CFG)
    s = _sampler(wm, refresh_every=1)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(s.steps_per_epoch):
        s.sample(rng)
        seen.append(s.buffer_cells)
    seen = np.concatenate(seen)
    assert len(seen) == len(np.unique(seen))  # no cell twice within an epoch
    expected = np.setdiff1d(np.arange(sim.adata.n_obs), s.ctrl_cells)  # every cell outside the resident pool
    np.testing.assert_array_equal(np.sort(seen), expected)


def test_write_h5ad_chunks_from_anndata_pieces(tmp_path):
    import anndata as ad

    M, obs, var = _counts()
    pieces = [ad.AnnData(X=M[i:i + 100], obs=obs.iloc[i:i + 100], var=var) for i in range(0, 300, 100)]
    b = open_backed(write_h5ad_chunks(tmp_path / "p.h5ad", iter(pieces)))
    assert list(b.obs_names) == list(obs.index)
    np.testing.assert_array_equal(b.X[120:130].toarray(), M[120:130])
    clash = [ad.AnnData(X=M[:100], obs=obs.iloc[:100], var=var)] * 2
    with pytest.raises(DataValidationError, match="repeat"):
        write_h5ad_chunks(tmp_path / "dup.h5ad", iter(clash))
    assert not (tmp_path / "dup.h5ad").exists()


def test_cli_train_backed(sim_file, tmp_path):
    import json

    from typer.testing import CliRunner

    from bioworld.cli import app

    sim, path = sim_file
    gmt = tmp_path / "sim.gmt"
    gmt.write_text("".join(f"{n}\tsim\t" + "\t".join(g) + "\n" for n, g in sim.gmt.items()))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**CFG, "max_steps": 30}))
    out = tmp_path / "model"
    r = CliRunner().invoke(app, ["train", str(path), "--out", str(out), "--entities", str(gmt), "--replicate-key",
                                 "replicate", "--config", str(cfg), "--backed", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "model saved" in r.output
    assert "scanning cells" not in r.output  # --quiet: no progress bar of the streaming pass either (it showed)
    wm = bw.WorldModel.load(out)
    assert wm.train_config.block_size == CFG["block_size"]  # the out-of-core settings travel in the checkpoint
    pred = wm.predict(["control"])
    assert pred.n_vars == sim.adata.n_vars and np.isfinite(pred.X).all()


def test_backed_fits_nmf_programs_on_a_subsample(sim_file):
    sim, path = sim_file
    backed = bw.WorldModel(open_backed(path), entities=sim_entities(sim), replicate_key="replicate", config=CFG)
    mem = bw.WorldModel(sim.adata.copy(), entities=sim_entities(sim), replicate_key="replicate", config=CFG)
    nmf = [n for n in backed.entity_names if n not in sim.gmt]
    assert nmf and len(backed.entity_names) == len(mem.entity_names)  # the uncovered OTHER genes got programs
    assert any("NMF" in f for f in backed.findings)
