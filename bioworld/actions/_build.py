"""The action space of a dataset: its labels parsed, the holdout checked, feature sources chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from bioworld.actions._parse import parse_action
from bioworld.actions._space import ActionSpace, GeneFeatureTable, compound_bank_of, compound_features_for
from bioworld.errors import DataValidationError

__all__ = ["DataActions", "build_actions", "check_holdout"]


@dataclass
class DataActions:
    """What :func:`build_actions` returns: the space, the training labels, the holdout and what was found."""

    space: ActionSpace
    train_labels: list[str]  # control first
    holdout: list[str]  # sorted
    findings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # knowledge provenance (kmeta)


def _refuse_set_aside(held: list[str], dropped: Iterable[str] | Mapping[str, str]) -> None:
    """Refuse holdout labels whose groups registration set aside (too few cells): neither trained nor held out."""
    if not held:
        return
    why = "; ".join(f"{h!r}: {dropped[h]}" for h in held) if isinstance(dropped, Mapping) else "too few cells"
    raise DataValidationError(
        f"holdout labels {held} are in the data but their groups were set aside ({why}), so they are neither "
        "trained on nor held out; expected labels of groups the model keeps. Fix: lower min_cells_per_group to "
        "keep them, or leave them out of the holdout (CLI: --holdout)."
    )


def _refuse_nothing_to_train(labels: Sequence[str], dropped: Iterable[str] | Mapping[str, str], control: str) -> None:
    """Refuse data without a perturbation group to train on (a model of the control cells alone learns no effect)."""
    aside = list(dropped)
    if any(lab not in set(aside) for lab in labels):
        return
    if aside:
        why = "; ".join(f"{h!r}: {dropped[h]}" for h in aside[:5]) if isinstance(dropped, Mapping) else ""
        found = f"all {len(aside)} perturbation groups were set aside ({why or 'too few cells'})"
        fix = "lower min_cells_per_group to keep them"
    else:
        found, fix = f"the data hold only the control label {control!r}", "check the perturbation column and the control label"
    raise DataValidationError(f"{found}, so there is no perturbation group to train on; expected at least one "
                              f"besides the control (a model learns effects from them). Fix: {fix}.")


def check_holdout(holdout: Iterable[str] | Any, labels: Sequence[str], *, control: str, dropped: Iterable[str],
                  perturbation_key: str) -> list[str]:
    """The holdout as a sorted list (a :class:`~bioworld.actions.Split`: its ``test``), refusing labels not
    in the data, the control label and a holdout of every trainable perturbation."""
    holdout = getattr(holdout, "test", () if holdout is None else holdout)
    held = sorted({holdout} if isinstance(holdout, str) else {str(h) for h in holdout})  # one label, not its letters
    known = set(labels) | {control}
    _refuse_set_aside([h for h in held if h not in known and h in set(dropped)], dropped)
    unknown = [h for h in held if h not in known]
    if unknown:
        import difflib

        by_case = {str(lab).casefold(): lab for lab in labels}
        close = {h: by_case.get(h.casefold()) or next(iter(difflib.get_close_matches(h, list(labels), n=1)), None)
                 for h in unknown}
        hint = "; ".join(f"{h!r}: did you mean {c!r}?" for h, c in close.items() if c is not None)
        raise DataValidationError(
            f"holdout labels {unknown} are not perturbations of this data; expected labels from "
            f"obs[{perturbation_key!r}] such as {list(labels)[:3]}" + (f" ({hint})" if hint else "")
            + ". Fix: hold out labels exactly as the data write them (CLI: --holdout A,B)."
        )
    if control in held:
        raise DataValidationError(
            f"holdout contains the control label {control!r}; expected perturbation labels only (every effect is "
            "measured against the control cells, so they cannot be held out). Fix: remove it from the holdout "
            "(CLI: --holdout)."
        )
    _refuse_nothing_to_train(labels, dropped, control)
    dropped = set(dropped)
    kept = [lab for lab in labels if lab not in dropped]
    if kept and all(lab in held for lab in kept):
        raise DataValidationError(
            f"holdout contains all {len(kept)} perturbations of the data; expected at least one left to train on. "
            "Fix: hold out fewer labels (CLI: --holdout)."
        )
    return held


def build_actions(perturbations: Sequence[str], *, control: str, dropped: Iterable[str], holdout: Any,
                  perturbation_key: str, entity_set: Any, entity_names: Sequence[str], genes: Sequence[str],
                  knowledge: Any, smiles: Any, adata: Any, compound_id_key: str | None,
                  compound_targets: Any) -> DataActions:
    """Parse the data's ``perturbations`` (control excluded), check ``holdout``, and build the
    :class:`ActionSpace`: gene features from the slots (and the curated knowledge unless ``knowledge`` is
    False/None), compound features from ``smiles`` / the knowledge, the retrieval bank of training targets."""
    uniq = [control] + list(perturbations)
    actions = {lab: parse_action(lab, control_labels=(control, "control")) for lab in uniq}
    held = check_holdout(holdout, uniq[1:], control=control, dropped=dropped, perturbation_key=perturbation_key)
    dropped = set(dropped)
    genes_src = GeneFeatureTable.from_entities(entity_set)
    meta: dict[str, Any] = {}
    if knowledge is not False and knowledge is not None:  # genes and compounds grounded in curated knowledge
        from bioworld.actions._knowledge import knowledge_sources
        from bioworld.actions._space import _compound_targets, read_smiles

        table = read_smiles(smiles, adata, compound_id_key, sorted(_compound_targets(actions)))
        genes_src, compounds, found, meta = knowledge_sources(
            genes_src, actions, config=None if knowledge is True else knowledge, smiles=table,
            compound_targets=compound_targets)
    else:
        compounds, found = compound_features_for(actions, smiles, adata, compound_id_key)
    train_labels = [lab for lab in uniq if lab not in held and lab not in dropped]
    gene_bank = sorted({p.target for lab in train_labels for p in actions[lab].components
                        if p.kind in ("ko", "kd", "act")})
    space = ActionSpace(
        control=control, actions=actions, entity_set=entity_set, entity_names=entity_names,
        panel_genes=list(genes), gene_bank=gene_bank, genes=genes_src,
        compounds=compounds, max_components=max(2, max(len(a) for a in actions.values())),
        compound_bank=compound_bank_of(train_labels, actions),
    )
    findings = list(found)
    unknowable = space.featureless_targets()
    if unknowable:
        findings.append(
            f"{len(unknowable)} training targets are in no entity, regulon or GO set ({', '.join(unknowable[:6])}"
            + (" …" if len(unknowable) > 6 else "") + "): they are learned from their observed effect alone "
            "(own action embedding); unseen genes without such knowledge cannot be predicted"
        )
    return DataActions(space, train_labels, held, findings, dict(meta))
