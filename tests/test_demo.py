"""``bioworld demo`` / :func:`bioworld._demo.run_demo`: cache key, end-to-end run with a cached model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bioworld.cli import app

torch.set_num_threads(1)


def test_demo_key_depends_on_data_and_config(tmp_path):
    from bioworld._demo import _demo_key

    data = tmp_path / "data.h5ad"
    data.write_bytes(b"abc")
    k1 = _demo_key(data, {"max_steps": 10})
    assert k1 == _demo_key(data, {"max_steps": 10})
    assert json.loads(json.dumps(k1)) == k1  # storable as JSON as is
    assert k1["train_config_sha256"] != _demo_key(data, {"max_steps": 11})["train_config_sha256"]
    data.write_bytes(b"abd")
    assert k1["data_sha256"] != _demo_key(data, {"max_steps": 10})["data_sha256"]


def test_cached_model_ignored_when_key_differs(tmp_path):
    from bioworld._demo import KEY_FILE, _cached_model

    messages = []
    assert _cached_model(tmp_path, {"a": 1}, messages.append) is None  # no key file: nothing cached
    (tmp_path / KEY_FILE).write_text(json.dumps({"a": 2}))
    assert _cached_model(tmp_path, {"a": 1}, messages.append) is None
    assert "retraining" in messages[-1]
    (tmp_path / KEY_FILE).write_text("{not json")
    assert _cached_model(tmp_path, {"a": 1}, messages.append) is None


def test_cli_demo_refuses_non_positive_steps(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--max-steps", "0"])
    assert res.exit_code == 2 and "error: --max-steps 0" in res.output


@pytest.mark.slow
def test_demo_end_to_end_then_reuses_cached_model(tmp_path, monkeypatch, capsys):
    import bioworld as bw
    import bioworld._demo as demo

    # fewer cells than the real demo keeps this test around a minute; the flow is the same
    monkeypatch.setattr(demo, "N_PRIORITIZE_CELLS", 120)
    monkeypatch.setattr(demo, "N_COUNTERFACTUAL_CELLS", 30)
    report = demo.run_demo(tmp_path / "d", max_steps=3, progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"Report: {report}" and report.is_absolute() and report.is_file()
    text = report.read_text(encoding="utf-8")
    assert "down:HALLMARK_INTERFERON_GAMMA_RESPONSE" in text
    for spec in demo.DEMO_COUNTERFACTUALS:
        assert f"<h3>{spec}</h3>" in text, spec
    assert (tmp_path / "d" / "ranked_interventions.csv").is_file()
    assert (tmp_path / "d" / "counterfactuals.h5ad").is_file()
    key = json.loads((tmp_path / "d" / "model" / demo.KEY_FILE).read_text())
    assert key["train_config"]["max_steps"] == 3 and len(key["data_sha256"]) == 64

    def no_training(self, **kwargs):
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(bw.WorldModel, "train", no_training)
    again = demo.run_demo(tmp_path / "d", max_steps=3, progress=False)
    assert again == report and capsys.readouterr().out.strip().splitlines()[-1] == f"Report: {report}"


def test_training_retries_with_the_next_seed_when_a_run_did_not_learn_the_strong_effects():
    from bioworld.train.fit_check import train_until_fit
    from bioworld.train import TrainConfig

    ratios = {0: 0.05, 1: 0.6, 2: 0.9}  # seed -> how much of the strong training effects the run reproduced
    trained: list[int] = []

    class FakeModel:
        def __init__(self, config):
            self.seed = config.seed
            self.meta = {}

        def train(self, progress=True):
            trained.append(self.seed)
            self.meta["training_fit"] = {"strong_median_magnitude_ratio": ratios[self.seed]}
            return self

    logs: list[str] = []
    wm = train_until_fit(FakeModel, TrainConfig(seed=0), restarts=2, progress=False, log=logs.append)
    assert wm.seed == 1 and trained == [0, 1]  # stops at the first run that learned them
    assert len(logs) == 1 and "seed 0" in logs[0] and "0.05" in logs[0] and "seed 1" in logs[0]
    ratios.update({1: 0.1, 2: 0.2})
    trained.clear()
    logs.clear()
    wm = train_until_fit(FakeModel, TrainConfig(seed=0), restarts=2, progress=False, log=logs.append)
    assert trained == [0, 1, 2] and wm.seed == 2 and "keeping the best run" in logs[-1]  # none passed: the best
    trained.clear()
    assert train_until_fit(FakeModel, TrainConfig(seed=0), restarts=0, progress=False).seed == 0 and trained == [0]


def test_demo_fit_check_hint_names_only_the_demo_options(tmp_path, monkeypatch, capsys):
    """`bioworld demo --max-steps 20` reported a failed fit check with 'train again with another --seed, or pass
    --restarts N': bioworld train's options, which the demo does not have."""
    import re

    import typer

    import bioworld._demo as demo
    from bioworld.train import fit_check
    from bioworld.train import TrainConfig

    class FakeModel:
        def __init__(self, config):
            self.seed, self.meta = config.seed, {}

        def train(self, progress=True):
            self.meta["training_fit"] = {"strong_median_magnitude_ratio": 0.01}
            return self

    logs: list[str] = []
    fit_check.train_until_fit(FakeModel, TrainConfig(seed=0), progress=False, log=logs.append)
    assert "--restarts N" in logs[-1]  # bioworld train's own hint is unchanged

    class Stop(Exception):
        pass

    real = fit_check.train_until_fit

    def spy(build, config, **kwargs):
        real(lambda cfg: FakeModel(cfg), config, progress=False, log=logs.append,
                                  **{k: v for k, v in kwargs.items() if k not in ("progress", "log")})
        raise Stop

    monkeypatch.setattr(fit_check, "train_until_fit", spy)
    with pytest.raises(Stop):
        demo.run_demo(tmp_path / "d", max_steps=3, progress=False)
    options = {o for p in typer.main.get_command(app).commands["demo"].params for o in getattr(p, "opts", [])}
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", logs[-1]))
    assert "fit check failed" in logs[-1] and flags and flags <= options, logs[-1]
