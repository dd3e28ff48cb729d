"""Interrupted training resumes from its last training-state checkpoint and ends bit-identical.

The trainer writes ``train_state.safetensors`` + ``train_state.json`` (weights incl. the EMA target,
AdamW moments, torch and numpy RNG states, step, history) every ``checkpoint_every`` steps; a
resumed run must end with exactly the model an uninterrupted run with the same seed produces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bioworld as bw
import bioworld.train.trainer as trainer
from bioworld.errors import CheckpointError, TrainingError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CONFIG = {"max_steps": 30, "checkpoint_every": 10, "log_every": 5, "seed": 3, "warmup_steps": 3,
          "num_threads": 1, "groups_per_batch": 4, "cells_per_group": 6, "self_pairs": 8}
LABELS = ["control", "P1_DRV1", "P2_DRV2+P5_DRV1", "silence:SIM_P2", "kd:P3_DRV1:0.5"]


def _wm(small_sim, **config):
    from _helpers import sim_entities

    return bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                         nmf_programs=0, config={**CONFIG, **config})


def _assert_same_model(a, b) -> None:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"parameters/buffers differ after resuming: {different[:5]}"
    assert np.array_equal(a.predict(LABELS).X, b.predict(LABELS).X)


@pytest.fixture(scope="module")
def uninterrupted(small_sim):
    torch.set_num_threads(1)
    return _wm(small_sim).train(progress=False)


class _Interrupt(BaseException):
    """Stands in for the process dying (not an Exception, so nothing may swallow it)."""


def _interrupt_after_save(monkeypatch, n_saves: int) -> list[int]:
    """Make the trainer die right after its ``n_saves``-th training-state save; returns saved steps."""
    real, steps = trainer.save_train_state, []

    def save_then_die(directory, tensors, state):
        real(directory, tensors, state)
        steps.append(state["step"])
        if len(steps) == n_saves:
            raise _Interrupt

    monkeypatch.setattr(trainer, "save_train_state", save_then_die)
    return steps


def test_interrupted_training_resumes_bit_identical(small_sim, uninterrupted, tmp_path, monkeypatch):
    state_dir = tmp_path / "state"
    steps = _interrupt_after_save(monkeypatch, 2)
    with pytest.raises(_Interrupt):
        _wm(small_sim).train(progress=False, state_dir=state_dir)
    monkeypatch.undo()
    assert steps == [10, 20]
    assert sorted(p.name for p in state_dir.iterdir()) == ["train_state.json", "train_state.safetensors"]
    assert json.loads((state_dir / "train_state.json").read_text())["step"] == 20

    resumed = _wm(small_sim).train(progress=False, state_dir=state_dir)  # a fresh object, as after a restart
    assert resumed.train_result.resumed_from == 20
    assert resumed.train_result.steps == CONFIG["max_steps"]
    assert resumed.train_result.history == uninterrupted.train_result.history
    _assert_same_model(resumed, uninterrupted)
    assert list(state_dir.iterdir()) == []  # finished: the training state is cleared


def test_resume_refuses_another_config_and_corrupt_state(small_sim, tmp_path, monkeypatch):
    state_dir = tmp_path / "state"
    _interrupt_after_save(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        _wm(small_sim).train(progress=False, state_dir=state_dir)
    monkeypatch.undo()
    saved = {p.name: p.read_bytes() for p in state_dir.iterdir()}

    with pytest.raises(TrainingError, match=r"different config \(differs in \['seed'\]") as err:
        _wm(small_sim, seed=4).train(progress=False, state_dir=state_dir)
    assert "train_state.json" in str(err.value)  # says how to start over
    assert {p.name: p.read_bytes() for p in state_dir.iterdir()} == saved  # refusing touches nothing

    w = state_dir / "train_state.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="inconsistent"):
        _wm(small_sim).train(progress=False, state_dir=state_dir)
    (state_dir / "train_state.json").write_text("{torn")
    with pytest.raises(CheckpointError, match="corrupt"):
        _wm(small_sim).train(progress=False, state_dir=state_dir)


def test_crash_inside_state_save_keeps_previous_state(small_sim, uninterrupted, tmp_path, monkeypatch):
    """Dying while the 2nd state is written (torn temp file) resumes from the 1st, same end result."""
    import bioworld.train.checkpoint as ckpt

    state_dir = tmp_path / "state"
    real, calls = ckpt.save_file, []

    def torn_second_write(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"torn")
            raise _Interrupt
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", torn_second_write)
    with pytest.raises(_Interrupt):
        _wm(small_sim).train(progress=False, state_dir=state_dir)
    monkeypatch.undo()
    assert json.loads((state_dir / "train_state.json").read_text())["step"] == 10
    resumed = _wm(small_sim).train(progress=False, state_dir=state_dir)
    assert resumed.train_result.resumed_from == 10
    _assert_same_model(resumed, uninterrupted)


_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import torch
    torch.set_num_threads(1)
    import bioworld as bw
    from _helpers import small_simulation, sim_entities

    sim = small_simulation()
    wm = bw.WorldModel(sim.adata.copy(), entities=sim_entities(sim), replicate_key="replicate",
                       nmf_programs=0, config={config!r})
    print("training", flush=True)
    wm.train(progress=False, state_dir={state_dir!r})
    print("finished", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(small_sim, tmp_path):
    """A real ``kill -9`` of a training process after its first training-state checkpoint."""
    config = {**CONFIG, "max_steps": 60}
    state_dir = tmp_path / "state"
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.format(repo=str(REPO), tests=str(TESTS), config=config, state_dir=str(state_dir)))
    # same environment as this process: the gene-feature SVD (numpy/OpenBLAS) depends on BLAS threads
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ), text=True)
    try:
        deadline = time.monotonic() + 300
        while not (state_dir / "train_state.json").exists():
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.communicate()}"
            assert time.monotonic() < deadline, "no training state appeared within 300 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert "finished" not in out
    saved_step = json.loads((state_dir / "train_state.json").read_text())["step"]
    assert 10 <= saved_step < config["max_steps"]

    torch.set_num_threads(1)
    resumed = _wm(small_sim, max_steps=60).train(progress=False, state_dir=state_dir)
    assert resumed.train_result.resumed_from == saved_step
    reference = _wm(small_sim, max_steps=60).train(progress=False)
    _assert_same_model(resumed, reference)
    assert list(state_dir.iterdir()) == []  # state and any temp file a killed save left are cleared


# ================================================= issue 17 item 6: data check and CLI --resume
def test_resume_refuses_other_data_and_another_panel(small_sim, tmp_path, monkeypatch):
    from _helpers import sim_entities

    state_dir = tmp_path / "state"
    _interrupt_after_save(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        _wm(small_sim).train(progress=False, state_dir=state_dir)
    monkeypatch.undo()
    saved = {p.name: p.read_bytes() for p in state_dir.iterdir()}

    other = small_sim.adata.copy()  # same panel, same labels, other values
    X = np.asarray(other.X.toarray() if hasattr(other.X, "toarray") else other.X).copy()
    X[:20] = X[:20][::-1]
    other.X = X
    wm = bw.WorldModel(other, entities=sim_entities(small_sim), replicate_key="replicate", nmf_programs=0,
                       config=dict(CONFIG))
    with pytest.raises(TrainingError, match=r"other data.*'data'"):
        wm.train(progress=False, state_dir=state_dir)

    fewer = small_sim.adata[:, small_sim.adata.var_names[:-5]].copy()  # another gene panel
    wm = bw.WorldModel(fewer, entities=sim_entities(small_sim), replicate_key="replicate", nmf_programs=0,
                       config=dict(CONFIG))
    with pytest.raises(TrainingError, match="other data"):
        wm.train(progress=False, state_dir=state_dir)
    assert {p.name: p.read_bytes() for p in state_dir.iterdir()} == saved  # refusing touches nothing


def _cli(*args):
    from typer.testing import CliRunner

    from bioworld.cli import app

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_train_resume_after_interruption_matches_uninterrupted(small_sim, tmp_path, monkeypatch):
    data = tmp_path / "data.h5ad"
    small_sim.adata.write_h5ad(data)
    gmt = tmp_path / "s.gmt"
    gmt.write_text("".join(f"{k}\tsim\t" + "\t".join(v) + "\n" for k, v in small_sim.gmt.items()))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in CONFIG.items() if k not in ("seed", "max_steps")}))
    common = ["--entities", gmt, "--config", cfg, "--max-steps", 30, "--seed", 3, "--restarts", 0, "--quiet"]

    whole = _cli("train", data, "--out", tmp_path / "whole", *common)
    assert whole.exit_code == 0, whole.output

    _interrupt_after_save(monkeypatch, 2)
    with pytest.raises(_Interrupt):  # the process "dies" after the 2nd state save
        _cli("train", data, "--out", tmp_path / "m", *common)
    monkeypatch.undo()
    state = tmp_path / "m" / ".bioworld-train-state"
    assert json.loads((state / "train_state.json").read_text())["step"] == 20
    assert not (tmp_path / "m" / "bioworld.json").exists()

    again = _cli("train", data, "--out", tmp_path / "m", *common)  # neither --resume nor --overwrite
    assert again.exit_code == 2 and "--resume" in again.stderr and "step 20" in again.stderr, again.output
    other_seed = _cli("train", data, "--out", tmp_path / "m", *common[:-5], "--seed", 9, "--restarts", 0,
                      "--quiet", "--resume")
    assert other_seed.exit_code == 2 and "seed 3" in other_seed.stderr, other_seed.output

    resumed = _cli("train", data, "--out", tmp_path / "m", *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    left = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert {"bioworld.json", "model.safetensors"} <= set(left) and not [n for n in left if n.startswith(".")], left
    a = bw.WorldModel.load(tmp_path / "whole")
    b = bw.WorldModel.load(tmp_path / "m")
    _assert_same_model(a, b)
    assert b.train_result.resumed_from == 20
