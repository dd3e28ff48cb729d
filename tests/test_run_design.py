"""benchmarks/run_design.py: the retrospective loop's refit (warm start, or fresh members with --cold)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from _helpers import benchmark_script


class _FakeModel:
    """Stands in for bw.WorldModel: records each train call's steps and whether a warm start was in place."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        self.module = None

    def train(self, *, progress, seed, max_steps):
        import bioworld.train.setup as setup

        warm = setup.new_module is not _FakeModel.fresh
        _FakeModel.calls.append((seed, max_steps, warm))
        self.module = SimpleNamespace(state_dict=lambda: {})


@pytest.mark.parametrize("cold, prev, expected", [
    (False, None, [(7000, 150, False), (7001, 150, False)]),  # first round: fresh, --steps
    (False, "prev", [(7000, 75, True), (7001, 75, True)]),  # later rounds: warm start, --warm-steps
    (True, "prev", [(7000, 150, False), (7001, 150, False)]),  # --cold: fresh members, --steps, every round
])
def test_refit_warm_or_cold(monkeypatch, cold, prev, expected):
    import bioworld as bw
    import bioworld.train.setup as setup

    mod = benchmark_script("run_design")
    _FakeModel.calls, _FakeModel.fresh = [], setup.new_module
    monkeypatch.setattr(bw, "WorldModel", _FakeModel)
    task = mod.JepaTask("t", None, {"a": None, "b": None}, None, {"a": 1.0, "b": 0.0}, 1, entities=None,
                        knowledge=False, start=1, batch=1, rounds=1, members=2, steps=150, warm_steps=75,
                        replicate_key=None)
    task.cold = cold
    old = None if prev is None else SimpleNamespace(modules=[SimpleNamespace(state_dict=lambda: {})] * 2)
    out = task.fit(["a"], old, seed=7)
    assert _FakeModel.calls == expected
    assert len(out.modules) == 2
    assert setup.new_module is _FakeModel.fresh  # the warm start is undone after training


def test_design_png_draws_the_newest_block_of_each_family():
    """design.png keeps one column per family (simulator, papalexi, atlas): the block written last."""
    mod = benchmark_script("run_design")
    rows = ["simulator", "simulator", "papalexi", "simulator (abc, warm 300)", "atlas", "papalexi (x)",
            "simulator (abc)", "atlas (HT-29, y)"]
    assert mod.plotted_sets(rows) == ["simulator (abc)", "papalexi (x)", "atlas (HT-29, y)"]
