"""Train/test splits over perturbation *labels* (not cells), for out-of-distribution evaluation.

Every splitter takes the labels of a dataset (duplicates are fine, e.g. a whole ``obs`` column),
keeps the control in ``train``, and returns sorted, disjoint ``train`` / ``test`` label lists.
Labels are interpreted only through :func:`bioworld.actions.parse_action` (so splits live with the
action grammar; ``bw.data.leave_targets_out`` etc. remain as aliases). Results depend only on the set of labels and ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bioworld.actions._parse import parse_action
from bioworld.errors import DataValidationError

__all__ = ["Split", "leave_targets_out", "unseen_combinations", "unseen_compounds", "unseen_doses"]


@dataclass(frozen=True)
class Split:
    """One train/test partition of perturbation labels.

    Attributes
    ----------
    train, test
        Sorted, disjoint label lists; the control is always in ``train``.
    kind
        ``"leave_targets_out"``, ``"unseen_combinations"``, ``"unseen_compounds"`` or
        ``"unseen_doses"``.
    seed
        Seed of the random choice (recorded even where the split is deterministic).
    fold
        Fold index for multi-fold splits, else None.
    held_out
        What was held out: targets (genes/compounds), combinations, compounds, or doses (as
        strings).
    """

    train: list[str]
    test: list[str]
    kind: str
    seed: int
    fold: int | None = None
    held_out: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "train": list(self.train),
            "test": list(self.test),
            "kind": self.kind,
            "seed": int(self.seed),
            "fold": None if self.fold is None else int(self.fold),
            "held_out": list(self.held_out),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Split:
        """Rebuild from :meth:`to_dict` output."""
        missing = [k for k in ("train", "test", "kind", "seed") if k not in d]
        if missing:
            raise DataValidationError(
                f"split record lacks {missing}; expected keys train, test, kind, seed (fold, "
                "held_out optional). Fix: write it with Split.to_dict()."
            )
        fold = d.get("fold")
        return cls(
            train=[str(x) for x in d["train"]],
            test=[str(x) for x in d["test"]],
            kind=str(d["kind"]),
            seed=int(d["seed"]),
            fold=None if fold is None else int(fold),
            held_out=[str(x) for x in d.get("held_out", [])],
        )


# ----------------------------------------------------------------------------------------------
# helpers


def _parse_all(labels: Iterable[Any], control: str) -> tuple[list[str], dict[str, Any]]:
    """Unique labels (sorted) split into controls and ``{label: Action}`` for the rest."""
    if isinstance(labels, str):
        raise DataValidationError(
            f"labels={labels!r} is a single string; expected a list of perturbation labels "
            "(e.g. adata.obs['perturbation'])."
        )
    unique = sorted({str(x) for x in labels})
    if not unique:
        raise DataValidationError("labels is empty; expected perturbation labels to split.")
    controls: list[str] = []
    actions: dict[str, Any] = {}
    for label in unique:
        if label == control:
            controls.append(label)
            continue
        action = parse_action(label)
        if action.is_control:
            controls.append(label)
        else:
            actions[label] = action
    return controls, actions


def _targets(action: Any) -> set[str]:
    return {c.target for c in action.components}


def _n_to_hold(n: int, frac: float, what: str) -> int:
    if not 0.0 < frac < 1.0:
        raise DataValidationError(f"frac={frac}; expected 0 < frac < 1 (share of {what} held out).")
    k = int(round(frac * n))
    return min(max(k, 1), n - 1) if n > 1 else 1


def _make(train: Iterable[str], test: Iterable[str], **kw: Any) -> Split:
    test_set = set(test)
    return Split(train=sorted(set(train) - test_set), test=sorted(test_set), **kw)


# ----------------------------------------------------------------------------------------------
# splitters


def leave_targets_out(
    labels: Iterable[Any], *, n_folds: int | None = None, seed: int = 0, control: str = "control"
) -> list[Split]:
    """Hold out targets (genes, or compounds with all doses); every label touching one goes to test.

    Parameters
    ----------
    labels
        Perturbation labels in the action grammar.
    n_folds
        None: one fold per target (sorted by name). Otherwise the targets are shuffled with
        ``seed`` and dealt into ``n_folds`` near-equal groups.
    seed
        Seed of the shuffle.
    control
        Control label (labels parsed as control, e.g. ``ctrl``, also count).

    Returns
    -------
    One :class:`Split` per fold: ``test`` = labels with any component on a held-out target
    (so a combination containing a held-out gene is in test), ``train`` = the rest incl. control.
    """
    controls, actions = _parse_all(labels, control)
    targets = sorted(set().union(*(_targets(a) for a in actions.values()))) if actions else []
    if len(targets) < 2:
        raise DataValidationError(
            f"found {len(targets)} perturbation targets ({targets}); expected at least 2 to leave "
            "targets out. Fix: check the labels (is the control label right?)."
        )
    if n_folds is None:
        groups = [[t] for t in targets]
    else:
        if not 2 <= int(n_folds) <= len(targets):
            raise DataValidationError(
                f"n_folds={n_folds}; expected 2 <= n_folds <= {len(targets)} (the number of targets). "
                "Fix: pass a value in that range, or None for one fold per target."
            )
        order = np.random.default_rng(seed).permutation(len(targets))
        groups = [sorted(targets[i] for i in chunk) for chunk in np.array_split(order, int(n_folds))]
    splits = []
    for fold, held in enumerate(groups):
        held_set = set(held)
        test = [lab for lab, a in actions.items() if _targets(a) & held_set]
        splits.append(
            _make([*controls, *actions], test, kind="leave_targets_out", seed=seed, fold=fold, held_out=held)
        )
    return splits


def unseen_combinations(
    labels: Iterable[Any], *, frac: float = 0.3, seed: int = 0, control: str = "control"
) -> Split:
    """Hold out a random share of the combinations (labels with >1 component).

    Single perturbations and the control stay in ``train``, so every component of a held-out
    combination is seen alone; ``test`` holds ``round(frac * n_combinations)`` (at least 1, and at
    least one combination stays in train) combinations.
    """
    controls, actions = _parse_all(labels, control)
    combos = sorted(lab for lab, a in actions.items() if len(a.components) > 1)
    if len(combos) < 2:
        raise DataValidationError(
            f"found {len(combos)} combination labels; expected at least 2 (labels joined with '+', "
            "e.g. 'IFNGR1+STAT1'). Fix: use leave_targets_out for single perturbations."
        )
    k = _n_to_hold(len(combos), frac, "combinations")
    rng = np.random.default_rng(seed)
    held = sorted(combos[i] for i in rng.choice(len(combos), size=k, replace=False))
    return _make([*controls, *actions], held, kind="unseen_combinations", seed=seed, held_out=held)


def _compound_components(action: Any) -> list[Any]:
    return [c for c in action.components if c.kind == "compound"]


def unseen_compounds(
    labels: Iterable[Any], *, frac: float = 0.2, seed: int = 0, control: str = "control"
) -> Split:
    """Hold out a random share of compounds, with all their doses (and any combination using them)."""
    controls, actions = _parse_all(labels, control)
    compounds = sorted({c.target for a in actions.values() for c in _compound_components(a)})
    if len(compounds) < 2:
        raise DataValidationError(
            f"found {len(compounds)} compounds; expected at least 2 compound labels "
            "('NAME@DOSE', e.g. 'PLX-4720@1.11'). Fix: check the labels."
        )
    k = _n_to_hold(len(compounds), frac, "compounds")
    rng = np.random.default_rng(seed)
    held = sorted(compounds[i] for i in rng.choice(len(compounds), size=k, replace=False))
    held_set = set(held)
    test = [lab for lab, a in actions.items() if {c.target for c in _compound_components(a)} & held_set]
    return _make([*controls, *actions], test, kind="unseen_compounds", seed=seed, held_out=held)


def unseen_doses(
    labels: Iterable[Any],
    *,
    doses_to_hold: Sequence[float] | int,
    seed: int = 0,
    control: str = "control",
) -> Split:
    """Hold out doses of every compound; the compounds themselves stay seen at other doses.

    Parameters
    ----------
    doses_to_hold
        A list of dose values (e.g. ``[10.0]``): those doses of every compound go to test (matched
        with a relative tolerance of 1e-6; ``held_out`` lists them). Or an int ``n``: for each
        compound, ``n`` of its doses are drawn at random with ``seed`` (at most all but one, so each
        compound keeps a dose in train; ``held_out`` lists the held labels).
    """
    controls, actions = _parse_all(labels, control)
    single = {
        lab: a.components[0]
        for lab, a in actions.items()
        if len(a.components) == 1 and a.components[0].kind == "compound"
    }
    if not single:
        raise DataValidationError(
            "found no single-compound labels ('NAME@DOSE'); expected compounds at several doses. "
            "Fix: check the labels."
        )
    missing_dose = sorted(lab for lab, c in single.items() if c.dose is None)
    if missing_dose:
        raise DataValidationError(
            f"compound labels without a dose: {missing_dose[:5]}; expected 'NAME@DOSE'."
        )
    all_doses = sorted({float(c.dose) for c in single.values()})
    test: list[str] = []
    if isinstance(doses_to_hold, (int, np.integer)) and not isinstance(doses_to_hold, bool):
        n = int(doses_to_hold)
        if n < 1:
            raise DataValidationError(f"doses_to_hold={n}; expected >= 1 (doses held per compound).")
        rng = np.random.default_rng(seed)
        by_compound: dict[str, list[tuple[float, str]]] = {}
        for lab, c in single.items():
            by_compound.setdefault(c.target, []).append((float(c.dose), lab))
        for name in sorted(by_compound):
            entries = sorted(by_compound[name])
            k = min(n, len(entries) - 1)
            if k > 0:
                test += [entries[i][1] for i in rng.choice(len(entries), size=k, replace=False)]
        held = sorted(test)
    else:
        wanted = [float(d) for d in doses_to_hold]
        if not wanted:
            raise DataValidationError("doses_to_hold is empty; expected dose values or an int.")
        absent = [d for d in wanted if not np.isclose(all_doses, d, rtol=1e-6, atol=0).any()]
        if absent:
            raise DataValidationError(
                f"doses {absent} do not occur in the labels; available doses: "
                f"{', '.join(f'{d:g}' for d in all_doses)}. Fix: pick from those."
            )
        test = [
            lab for lab, c in single.items()
            if np.isclose(wanted, float(c.dose), rtol=1e-6, atol=0).any()
        ]
        held = [f"{d:g}" for d in sorted(wanted)]
    return _make([*controls, *actions], test, kind="unseen_doses", seed=seed, held_out=held)
