"""One device setting for every path (training, queries, planner, atlas pretraining) and the GPU check script.

No GPU here: placement is checked with torch's ``meta`` default device (a tensor made without an
explicit device lands there, and an op mixing it with the module's CPU tensors fails), and the GPU
check script runs its CPU-vs-CPU self-consistency mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import benchmark_script

from test_cli import assert_one_line_error, invoke


def _gpu_check():
    return benchmark_script("gpu_check")


def test_meta_default_device_catches_a_tensor_made_without_device():
    a = torch.ones(3)
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta"):
        _ = a + torch.zeros(3)  # what a query creating tensors off the module's device would do


def test_queries_make_their_tensors_on_the_module_device(tiny_trained, small_sim):
    wm = tiny_trained
    labels = [lab for lab in small_sim.adata.obs["perturbation"].astype(str).unique() if lab != "control"]
    cells = small_sim.adata[small_sim.adata.obs["perturbation"].astype(str) == "control"][:20].copy()
    pathway = next(iter(small_sim.gmt))
    ref = wm.predict(labels[:3]).layers["delta"]
    with torch.device("meta"):  # any tensor made without device=... would be a meta tensor and fail below
        pred = wm.predict(labels[:3])
        cf = wm.counterfactual(cells, [labels[0], f"silence:{pathway}"])
        pr = wm.prioritize(cells, f"down:{pathway}", n_boot=10, max_genes=10, refine_top=4)
    np.testing.assert_allclose(pred.layers["delta"], ref, rtol=1e-6, atol=1e-7)
    assert cf.n_obs == 2 * cells.n_obs and len(pr.table) > 0


@pytest.mark.filterwarnings("ignore:the trained model reproduces")
def test_module_stays_on_the_training_device(small_sim):
    """fit leaves the module where it trained (queries run there); here 'cpu' is all there is."""
    import bioworld as bw
    from _helpers import sim_entities

    wm = bw.WorldModel(small_sim.adata.copy(), entities=sim_entities(small_sim), replicate_key="replicate",
                       nmf_programs=0, config={"max_steps": 2, "warmup_steps": 1, "device": "auto"})
    wm.train(progress=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(wm.module.parameters()).device.type == expected
    assert wm.to("cpu") is wm and next(wm.module.parameters()).device.type == "cpu"


def test_resolve_device_is_shared_and_refuses_clearly():
    from bioworld.errors import BioworldError
    from bioworld.train import TrainConfig
    from bioworld.train.config import resolve_device
    from bioworld.train.pretrain import PretrainConfig

    assert resolve_device("CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BioworldError, match="expected 'cpu', 'cuda'"):
        resolve_device("tpu")
    with pytest.raises(BioworldError, match="expected 'cpu', 'cuda'"):
        TrainConfig(device="tpu").resolved_device()
    if not torch.cuda.is_available():
        with pytest.raises(BioworldError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(BioworldError, match="PretrainConfig.device"):
        PretrainConfig(device=0)


def test_atlas_pretraining_honours_device(tmp_path):
    from bioworld.errors import BioworldError
    from bioworld.train.pretrain import PretrainConfig, pretrain_atlas

    model = pretrain_atlas(config=PretrainConfig(steps=2, use_knowledge=False, device="cpu", hidden=16, basis_dim=8),
                           progress=False)
    assert model.device.type == "cpu" and model.config.device == "cpu"
    rows = model.predict_rows(np.arange(4))
    assert rows.shape[0] == 4 and np.isfinite(rows).all()
    assert model.to("auto") is model
    with pytest.raises(BioworldError, match="expected 'cpu', 'cuda'"):
        model.to("tpu")
    with pytest.raises(BioworldError, match="expected 'cpu', 'cuda'"):
        pretrain_atlas(config=PretrainConfig(steps=1, use_knowledge=False, device="tpu"), progress=False)


def test_pretrain_cli_device_flag_on_raw_input(tmp_path):
    bad = invoke("pretrain", "--out", tmp_path / "a", "--steps", 1, "--no-knowledge", "--quiet", "--device", "tpu")
    assert_one_line_error(bad, "--device tpu")
    assert not (tmp_path / "a").exists()
    if not torch.cuda.is_available():
        line = assert_one_line_error(invoke("pretrain", "--out", tmp_path / "b", "--steps", 1, "--no-knowledge",
                                            "--quiet", "--device", "cuda"), "no CUDA GPU", "--device cpu")
        assert "device=" not in line
    r = invoke("pretrain", "--out", tmp_path / "c", "--steps", 1, "--no-knowledge", "--quiet", "--device", "cpu")
    assert r.exit_code == 0, (r.output, r.exception)
    assert (tmp_path / "c" / "atlas.json").exists()


def test_gpu_check_runs_end_to_end_here(capsys, tmp_path):
    gc = _gpu_check()
    rc = gc.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "checks passed" in out and "FAIL" not in out
    import json

    rows = json.loads((tmp_path / "c.json").read_text())["checks"]
    names = {r["check"] for r in rows}
    for must in ("init gradients", "predict: device vs cpu (same weights)", "counterfactual: device vs cpu (same weights)",
                 "predict after save/load on the device", "atlas predictions: device vs cpu"):
        assert must in names
    assert any(n.startswith("prioritize scores") for n in names)


def test_gpu_check_refuses_bad_arguments(capsys):
    gc = _gpu_check()
    assert gc.main(["--device", "tpu"]) == 2
    assert "expected 'cpu', 'cuda'" in capsys.readouterr().err
    assert gc.main(["--model-config", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert gc.main(["--steps", "0"]) == 2


def test_gpu_check_fails_on_a_mismatch(monkeypatch, capsys):
    gc = _gpu_check()
    real = gc._close

    def off_by_one(name, a, b, atol, rtol, note=""):  # a device that answers differently from the CPU
        return real(name, np.asarray(a, float) + (1.0 if name.startswith("predict:") else 0.0), b, atol, rtol, note)

    monkeypatch.setattr(gc, "_close", off_by_one)
    rc = gc.main(["--tiny", "--device", "cpu", "--atlas-steps", "0"])
    out = capsys.readouterr().out
    assert rc == 1 and "failed: predict: device vs cpu (same weights)" in out
