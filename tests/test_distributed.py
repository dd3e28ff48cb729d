"""Data-parallel training: 2 gloo CPU processes follow the single-process run of the same config."""

from __future__ import annotations

import numpy as np
import pytest

STEPS = 30
CONFIG = {"max_steps": STEPS, "seed": 0, "warmup_steps": 5, "num_threads": 1, "checkpoint_every": 0}


def _build():
    import bioworld as bw
    from _helpers import sim_entities, small_simulation

    sim = small_simulation()
    holdout = sorted(lab for lab in sim.adata.obs["perturbation"].unique() if "+" in lab)[:1]
    wm = bw.WorldModel(sim.adata.copy(), entities=sim_entities(sim), replicate_key="replicate",
                       holdout=holdout, nmf_programs=0, config=dict(CONFIG))
    labels = sorted(set(wm.train_labels) - {wm.control})[:6] + list(wm.holdout)
    return wm, labels


def _summary(wm, labels):
    pred = wm.predict(labels)
    params = np.concatenate([p.detach().numpy().ravel() for p in wm.module.state_dict().values()
                             if p.dtype.is_floating_point])
    return {"delta": np.asarray(pred.layers["delta"]), "params": params,
            "history": wm.train_result.history}


def _rank_fn(rank, world, tests_dir):
    import sys

    sys.path.insert(0, tests_dir)
    import torch.distributed as dist

    assert dist.is_initialized() and dist.get_world_size() == world
    wm, labels = _build()
    wm.train(progress=False)
    return _summary(wm, labels)


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process():
    from pathlib import Path

    from bioworld.train.distributed import train_distributed

    wm, labels = _build()
    wm.train(progress=False)
    single = _summary(wm, labels)

    ranks = train_distributed(2, _rank_fn, str(Path(__file__).parent), backend="gloo", threads=1)
    r0, r1 = ranks
    # deterministic for a fixed world size: a second 2-process run gives the same parameters
    again = train_distributed(2, _rank_fn, str(Path(__file__).parent), backend="gloo", threads=1)
    np.testing.assert_array_equal(again[0]["params"], r0["params"])
    # gradients are averaged by DistributedDataParallel: both ranks hold bit-identical parameters and predictions
    np.testing.assert_array_equal(r0["params"], r1["params"])
    np.testing.assert_array_equal(r0["delta"], r1["delta"])
    # the logged metrics are averaged over ranks, so both ranks log the same history
    assert [h["loss"] for h in r0["history"]] == [h["loss"] for h in r1["history"]]
    assert len(r0["history"]) == len(single["history"]) > 0
    # same trajectory as one process up to per-shard batch statistics (variance/covariance terms, dropout draws)
    a, b = r0["delta"].ravel(), single["delta"].ravel()
    corr = float(np.corrcoef(a, b)[0, 1])
    assert corr > 0.9, corr
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert rel < 0.25, rel
    # and it has actually moved away from the initial weights in the same direction
    assert np.isfinite(r0["params"]).all()
    pcorr = float(np.corrcoef(r0["params"], single["params"])[0, 1])
    print(f"2-rank vs 1-process: delta corr {corr:.4f}, rel. L2 diff {rel:.3f}, parameter corr {pcorr:.5f}")
    assert pcorr > 0.99, pcorr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: nccl is allowed")
def test_nccl_is_refused_without_gpus():
    from bioworld.errors import BioworldError
    from bioworld.train.distributed import train_distributed

    with pytest.raises(BioworldError, match="needs CUDA GPUs"):
        train_distributed(2, _rank_fn, "", backend="nccl")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_device_option_resolves_and_refuses_missing_gpu():
    from bioworld.errors import BioworldError
    from bioworld.train import TrainConfig

    assert TrainConfig(device="auto").resolved_device() == "cpu"
    assert TrainConfig().resolved_device() == "cpu"
    with pytest.raises(BioworldError, match="no CUDA GPU"):
        TrainConfig(device="cuda").resolved_device()
    with pytest.raises(BioworldError, match="expected 'cpu'"):
        TrainConfig(device="tpu").resolved_device()


def test_is_main_process_without_group():
    from bioworld.train.distributed import init_from_env, is_main_process

    assert is_main_process()
    import os

    if "WORLD_SIZE" not in os.environ:
        assert init_from_env() == (0, 1)


def test_rank_results_travel_as_safetensors_and_json_not_pickle(tmp_path, monkeypatch):
    """Item 12 (issue 17): what a rank returns is written as safetensors + JSON and read back without pickle."""
    import pickle
    import sys
    from pathlib import Path

    import torch

    import bioworld.train.distributed as d

    assert "pickle" not in sys.modules["bioworld.train.distributed"].__dict__
    out = {"delta": np.arange(6, dtype=np.float32).reshape(2, 3), "params": torch.ones(4, dtype=torch.float64),
           "history": [{"loss": 1.5, "step": 1}], "name": "r0", "n": np.int64(3), "pair": (1, 2.0)}

    def forbidden(*a, **k):
        raise AssertionError("results must not be pickled")

    monkeypatch.setattr(pickle, "dump", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    d._write_result(str(tmp_path), 0, out)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["rank0.json", "rank0.safetensors"]
    back = d._read_result(str(tmp_path), 0)
    np.testing.assert_array_equal(back["delta"], out["delta"])
    assert isinstance(back["delta"], np.ndarray) and isinstance(back["params"], torch.Tensor)
    assert torch.equal(back["params"], out["params"])
    assert back["history"] == out["history"] and back["name"] == "r0" and back["n"] == 3 and back["pair"] == [1, 2.0]
    with pytest.raises(d.BioworldError, match="object"):
        d._write_result(str(tmp_path), 1, {"bad": object()})


# ------------------------------------------------------------------ DistributedDataParallel, bioworld train --nproc
def test_fit_uses_bucketed_ddp_not_per_parameter_all_reduce():
    import inspect

    from bioworld.train import trainer
    from bioworld.train.distributed import BUCKET_MB, DataParallelLoss

    src = inspect.getsource(trainer.fit)
    assert "DataParallelLoss" in src and "all_reduce(p.grad" not in src
    assert "DistributedDataParallel" in inspect.getsource(DataParallelLoss) and BUCKET_MB > 0


def _raw(tmp_path):
    from test_cli import _small_adata, _write

    return _write(_small_adata(), tmp_path / "d.h5ad")


def test_train_nproc_refuses_bad_values_and_flags_it_cannot_pass(tmp_path):
    from test_cli import assert_one_line_error, invoke

    path = _raw(tmp_path)
    assert_one_line_error(invoke("train", path, "--out", tmp_path / "m", "--nproc", 0), "--nproc 0", "--nproc 2")
    line = assert_one_line_error(invoke("train", path, "--out", tmp_path / "m", "--nproc", 2, "--members", 2,
                                        "--no-knowledge"), "--members", "--no-knowledge", "--nproc 1")
    assert "does not combine" in line
    assert not (tmp_path / "m").exists()


def test_train_nproc_runs_torchrun_with_the_flags(tmp_path, monkeypatch):
    import subprocess

    from test_cli import invoke

    path = _raw(tmp_path)
    seen = {}

    def fake_run(cmd, check=False):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    r = invoke("train", path, "--out", tmp_path / "m", "--nproc", 3, "--max-steps", 5, "--seed", 2,
               "--holdout", "G1", "--replicate-key", "rep", "--overwrite", "--quiet")
    assert r.exit_code == 0, (r.output, r.exception)
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    assert cmd[5:8] == ["-m", "bioworld.distributed", str(path)]
    joined = " ".join(cmd)
    for part in ("--out " + str(tmp_path / "m"), "--backend gloo", "--max-steps 5", "--seed 2", "--holdout G1",
                 "--replicate-key rep", "--overwrite", "--threads"):
        assert part in joined, part
    monkeypatch.setattr(subprocess, "run", lambda cmd, check=False: subprocess.CompletedProcess(cmd, 2))
    assert invoke("train", path, "--out", tmp_path / "m2", "--nproc", 2, "--quiet").exit_code == 2  # a failed run fails


@pytest.mark.slow
def test_train_nproc_two_processes_end_to_end(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = _raw(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    (tmp_path / "c.json").write_text(json.dumps({"groups_per_batch": 4, "cells_per_group": 4, "self_pairs": 4}))
    r = subprocess.run([sys.executable, "-m", "bioworld", "train", str(path), "--out", str(tmp_path / "m"),
                        "--nproc", "2", "--max-steps", "3", "--config", str(tmp_path / "c.json"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on 2 process(es)" in r.stdout
    assert (tmp_path / "m" / "bioworld.json").exists()
