"""Config values are checked (issue 17 item 7): every TrainConfig field has a type and a range, and
the CLI names its own flags (--seed, --max-steps, --config) in the one-line error."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bioworld.cli import app
from bioworld.errors import BioworldError
from bioworld.train import TrainConfig


def _invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


def _one_line(res, *facts):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fact in facts:
        assert fact in lines[0], (fact, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_steps", "abc"), ("max_steps", -1), ("max_steps", 2.5), ("val_fraction", 1.5), ("patience", 0), ("min_steps", 900), ("num_threads", -1), ("groups_per_batch", 0),
     ("seed", -1), ("seed", True), ("lr", float("nan")), ("lr", 0), ("lr_min", 1.0), ("ema_start", 1.5),
     ("self_mask_ratio", [0.5, 0.1]), ("transition_mask_ratio", [0.1]), ("w_expr", -1.0), ("mask_mode", "patch"),
     ("checkpoint_every", -5), ("cells_per_group", None), ("device", 0)],
)
def test_bad_train_config_values_name_the_field(field, value):
    with pytest.raises(BioworldError, match=field):
        TrainConfig.from_dict({**TrainConfig().to_dict(), field: value})


def test_defaults_and_edges_are_accepted():
    TrainConfig()
    TrainConfig(max_steps=1, warmup_steps=0, num_threads=0, self_pairs=0, checkpoint_every=0, lr_min=1e-3, seed=2**63 - 1)


def test_worldmodel_refuses_bad_config_before_training(small_sim):
    import bioworld as bw

    with pytest.raises(BioworldError, match="groups_per_batch"):
        bw.WorldModel(small_sim.adata.copy(), nmf_programs=0, config={"groups_per_batch": 0})


@pytest.mark.parametrize(("args", "facts"), [(["--seed", "-1"], ["--seed -1"]), (["--max-steps", "0"], ["--max-steps 0"])])
def test_cli_train_flags_are_checked_before_work(tmp_path, args, facts):
    out = tmp_path / "m"
    _one_line(_invoke("train", tmp_path / "missing.h5ad", "--out", out, *args), *facts)
    assert not out.exists()


@pytest.mark.parametrize("cfg", [{"max_steps": "abc"}, {"num_threads": -1}, {"groups_per_batch": 0}])
def test_cli_train_bad_config_file_is_one_line(small_sim, tmp_path, cfg):
    data = tmp_path / "data.h5ad"
    small_sim.adata.write_h5ad(data)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "m"
    line = _one_line(_invoke("train", data, "--out", out, "--config", tmp_path / "cfg.json"), "cfg.json", next(iter(cfg)))
    assert "Traceback" not in line
    assert not out.exists()
