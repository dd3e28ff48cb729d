"""Label splits: disjointness, control placement, determinism, JSON round-trip."""

from __future__ import annotations

import json

import pytest

from bioworld.data import Split, leave_targets_out, unseen_combinations, unseen_compounds, unseen_doses
from bioworld.errors import DataValidationError

GENETIC = ["control", "A", "B", "C", "D", "E", "A+B", "A+C", "B+C", "C+D", "D+E", "kd:F:0.5"]
COMPOUNDS = ["control"] + [f"{d}@{x}" for d in ("drugA", "drugB", "drugC", "drugD", "drugE")
                           for x in ("0.1", "1", "10")]


def _check_partition(split: Split, labels, control="control"):
    assert set(split.train).isdisjoint(split.test)
    assert set(split.train) | set(split.test) == set(labels)
    assert control in split.train and control not in split.test
    assert split.train == sorted(split.train) and split.test == sorted(split.test)
    assert split.test


def test_leave_targets_out_one_fold_per_target():
    splits = leave_targets_out(GENETIC)
    assert [s.held_out for s in splits] == [["A"], ["B"], ["C"], ["D"], ["E"], ["F"]]
    for s in splits:
        _check_partition(s, GENETIC)
        assert s.kind == "leave_targets_out"
    a = splits[0]
    assert a.fold == 0
    assert a.test == ["A", "A+B", "A+C"]  # combos containing the held-out gene go to test
    assert "B+C" in a.train and "B" in a.train
    assert splits[5].test == ["kd:F:0.5"]


def test_leave_targets_out_n_folds_covers_each_target_once():
    splits = leave_targets_out(GENETIC, n_folds=3, seed=4)
    assert len(splits) == 3
    held = [t for s in splits for t in s.held_out]
    assert sorted(held) == ["A", "B", "C", "D", "E", "F"]
    for s in splits:
        _check_partition(s, GENETIC)
        for lab in s.train:
            assert not set(lab.replace("kd:", "").split(":")[0].split("+")) & set(s.held_out)
    # every single-target label is tested exactly once over the folds
    singles = [t for s in splits for t in s.test if "+" not in t]
    assert sorted(singles) == ["A", "B", "C", "D", "E", "kd:F:0.5"]


def test_leave_targets_out_determinism_and_seed():
    shuffled_with_repeats = list(reversed(GENETIC)) * 2
    assert leave_targets_out(GENETIC, n_folds=3, seed=1) == leave_targets_out(shuffled_with_repeats, n_folds=3, seed=1)
    assert any(
        leave_targets_out(GENETIC, n_folds=3, seed=1) != leave_targets_out(GENETIC, n_folds=3, seed=s)
        for s in range(2, 6)
    )


def test_leave_targets_out_bad_folds():
    with pytest.raises(DataValidationError, match="n_folds=9"):
        leave_targets_out(GENETIC, n_folds=9)
    with pytest.raises(DataValidationError, match="at least 2"):
        leave_targets_out(["control", "A", "control"])


def test_leave_targets_out_papalexi(papalexi):
    splits = leave_targets_out(papalexi.obs["perturbation"], n_folds=5, seed=0)
    assert len(splits) == 5
    assert sum(len(s.test) for s in splits) == 20
    for s in splits:
        assert len(s.train) + len(s.test) == 21 and "control" in s.train


def test_unseen_combinations():
    s = unseen_combinations(GENETIC, frac=0.4, seed=0)
    _check_partition(s, GENETIC)
    assert s.kind == "unseen_combinations"
    assert len(s.test) == 2 and all("+" in t for t in s.test)
    assert s.held_out == s.test
    for combo in s.test:  # every component is seen alone in train
        assert set(combo.split("+")) <= set(s.train)
    assert unseen_combinations(GENETIC, frac=0.4, seed=0) == s
    assert len({tuple(unseen_combinations(GENETIC, frac=0.4, seed=k).test) for k in range(8)}) > 1


def test_unseen_combinations_needs_combos():
    with pytest.raises(DataValidationError, match="combination labels"):
        unseen_combinations(["control", "A", "B"])
    with pytest.raises(DataValidationError, match="0 < frac < 1"):
        unseen_combinations(GENETIC, frac=1.5)


def test_unseen_compounds_holds_all_doses():
    s = unseen_compounds(COMPOUNDS, frac=0.4, seed=3)
    _check_partition(s, COMPOUNDS)
    assert len(s.held_out) == 2
    for drug in s.held_out:
        assert {f"{drug}@{x}" for x in ("0.1", "1", "10")} <= set(s.test)
    assert {t.split("@")[0] for t in s.test} == set(s.held_out)
    assert not {t.split("@")[0] for t in s.train if t != "control"} & set(s.held_out)
    assert Split.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_unseen_compounds_l1000(l1000):
    s = unseen_compounds(l1000.obs["perturbation"], frac=0.2, seed=0)
    assert len(s.held_out) == round(0.2 * 53)
    assert len(s.train) + len(s.test) == 316


def test_unseen_doses_by_value():
    s = unseen_doses(COMPOUNDS, doses_to_hold=[10.0])
    _check_partition(s, COMPOUNDS)
    assert s.test == sorted(f"{d}@10" for d in ("drugA", "drugB", "drugC", "drugD", "drugE"))
    assert s.held_out == ["10"]
    with pytest.raises(DataValidationError, match="available doses: 0.1, 1, 10"):
        unseen_doses(COMPOUNDS, doses_to_hold=[3.0])


def test_unseen_doses_random_per_compound():
    s = unseen_doses(COMPOUNDS, doses_to_hold=5, seed=2)  # capped: one dose per compound stays
    _check_partition(s, COMPOUNDS)
    assert len(s.test) == 10
    trained = {t.split("@")[0] for t in s.train if t != "control"}
    assert trained == {"drugA", "drugB", "drugC", "drugD", "drugE"}
    assert unseen_doses(COMPOUNDS, doses_to_hold=1, seed=2) == unseen_doses(COMPOUNDS, doses_to_hold=1, seed=2)


def test_split_round_trip_all_kinds():
    splits = [
        *leave_targets_out(GENETIC, n_folds=2, seed=7),
        unseen_combinations(GENETIC, seed=7),
        unseen_compounds(COMPOUNDS, frac=0.3, seed=7),
        unseen_doses(COMPOUNDS, doses_to_hold=[0.1]),
    ]
    for s in splits:
        d = json.loads(json.dumps(s.to_dict()))
        assert Split.from_dict(d) == s
    assert splits[0].to_dict()["fold"] == 0 and splits[2].to_dict()["fold"] is None
    with pytest.raises(DataValidationError, match="lacks"):
        Split.from_dict({"train": []})


def test_custom_control_label_and_bad_labels():
    s = unseen_combinations(["NT", "A", "B", "A+B", "B+C", "C"], frac=0.5, control="NT")
    assert "NT" in s.train
    with pytest.raises(DataValidationError, match="single string"):
        leave_targets_out("A+B")
