"""benchmarks/compare_answers.py: the check that a change left weights and answers bitwise as they were."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import benchmark_script


def _script():
    return benchmark_script("compare_answers")


def _fake(digest: str, x: np.ndarray, candidates: list[str]):
    asked = {"predict": ["A"], "counterfactual": ["A", "silence:E"], "candidates": candidates, "cells": 3,
             "prioritize": "down:E", "steps": 1, "seed": 0}
    return lambda *a, **k: (digest, {"predict_X": x, "entity_shift": x[:, :1]}, asked)


def test_equal_runs_pass_and_any_difference_fails(tmp_path, monkeypatch, capsys):
    mod = _script()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    monkeypatch.setattr(mod, "answers", _fake("ab" * 32, x, ["A", "B"]))
    old = tmp_path / "old.npz"
    assert mod.main(["--out", str(old)]) == 0
    assert mod.main(["--out", str(tmp_path / "same.npz"), "--against", str(old)]) == 0
    assert "predict_X (2, 3): max |diff| 0, bitwise equal" in capsys.readouterr().out

    y = x.copy()
    y[1, 2] += 1e-6  # one value, one ulp-sized change: reported, with its size
    monkeypatch.setattr(mod, "answers", _fake("ab" * 32, y, ["A", "B"]))
    assert mod.main(["--out", str(tmp_path / "new.npz"), "--against", str(old)]) == 1
    out = capsys.readouterr().out
    assert "predict_X (2, 3): max |diff| 9.54e-07, DIFFER" in out and "weights: bitwise equal" in out

    monkeypatch.setattr(mod, "answers", _fake("cd" * 32, x, ["A", "B"]))  # other weights, same answers
    assert mod.main(["--out", str(tmp_path / "w.npz"), "--against", str(old)]) == 1
    assert "weights: DIFFER" in capsys.readouterr().out

    monkeypatch.setattr(mod, "answers", _fake("ab" * 32, x, ["B", "A"]))  # same numbers, other candidates
    assert mod.main(["--out", str(tmp_path / "c.npz"), "--against", str(old)]) == 1
    assert "candidates: the two runs asked different questions" in capsys.readouterr().out


@pytest.mark.slow
def test_the_same_seed_gives_bitwise_the_same_model_and_answers(tmp_path):
    mod = _script()
    first = tmp_path / "first.npz"
    args = ["--steps", "3", "--cells", "40", "--silences", "2"]
    assert mod.main(["--out", str(first), *args]) == 0
    assert mod.main(["--out", str(tmp_path / "second.npz"), "--against", str(first), *args]) == 0
