"""What a model knows how to perturb: genes, compounds and entities."""

from __future__ import annotations

from typing import Any, Iterable

from bioworld.actions._parse import Action, parse_action
from bioworld.errors import BioworldError, CheckpointError, UnknownPerturbationError, close_matches  # noqa: F401 (re-exported)

_VOCAB_VERSION = 1


def _clean_names(names: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise BioworldError(
            f"{what} given as the single string {names!r}; expected an iterable of names. Wrap it in a list."
        )
    out = set()
    for name in names:
        if not isinstance(name, str) or not name:
            raise BioworldError(
                f"{what} name {name!r}; expected non-empty strings. Drop or fix that entry."
            )
        out.add(name)
    return tuple(sorted(out))


class ActionVocabulary:
    """The genes, compounds and entities a model can act on.

    Parameters
    ----------
    genes
        Perturbable gene symbols (e.g. the genes the gene featurizer knows).
    compounds
        Compound names with known structure.
    entities
        Entity names that can be silenced.
    """

    def __init__(self, genes: Iterable[str] = (), compounds: Iterable[str] = (), entities: Iterable[str] = ()) -> None:
        self.genes = _clean_names(genes, "gene")
        self.compounds = _clean_names(compounds, "compound")
        self.entities = _clean_names(entities, "entity")
        self._sets = {"gene": frozenset(self.genes), "compound": frozenset(self.compounds),
                      "entity": frozenset(self.entities)}
        self._lower: dict[str, dict[str, list[str]]] = {}

    @classmethod
    def from_actions(cls, actions: Iterable[Action | str]) -> "ActionVocabulary":
        """Vocabulary of everything the given actions (or labels) touch."""
        genes: set[str] = set()
        compounds: set[str] = set()
        entities: set[str] = set()
        for a in actions:
            a = parse_action(a)
            genes.update(a.genes)
            compounds.update(a.compounds)
            entities.update(a.entities)
        return cls(genes, compounds, entities)

    def _names(self, what: str) -> tuple[str, ...]:
        return {"gene": self.genes, "compound": self.compounds, "entity": self.entities}[what]

    def _lower_index(self, what: str) -> dict[str, list[str]]:
        if what not in self._lower:
            index: dict[str, list[str]] = {}
            for k in self._names(what):
                index.setdefault(k.lower(), []).append(k)
            self._lower[what] = index
        return self._lower[what]

    def unknown(self, action: Action | str) -> list[tuple[str, str]]:
        """``(kind, name)`` pairs of the action's targets this vocabulary lacks (kind: gene/compound/entity)."""
        a = parse_action(action)
        out = [("gene", g) for g in a.genes if g not in self._sets["gene"]]
        out += [("compound", c) for c in a.compounds if c not in self._sets["compound"]]
        out += [("entity", e) for e in a.entities if e not in self._sets["entity"]]
        return out

    def knows(self, action: Action | str) -> bool:
        """True when every target of the action is in the vocabulary."""
        return not self.unknown(action)

    def check(self, action: Action | str) -> None:
        """Raise `UnknownPerturbationError` naming every unknown target, with close matches."""
        self.check_many([action])

    def check_many(self, actions: Iterable[Action | str]) -> None:
        """Like `check` for many actions; one error lists all unknown targets."""
        problems: dict[tuple[str, str], None] = {}
        for action in actions:
            for item in self.unknown(action):
                problems.setdefault(item)
        if not problems:
            return
        parts = []
        for what, name in problems:
            known = self._names(what)
            if not known:
                parts.append(f"{what} {name!r} (this model knows no {what}s)")
                continue
            close = close_matches(name, known, lower_index=self._lower_index(what))
            hint = f"; close matches: {', '.join(close)}" if close else ""
            parts.append(f"unknown {what} {name!r}{hint}")
        sizes = f"{len(self.genes)} genes, {len(self.compounds)} compounds, {len(self.entities)} entities"
        raise UnknownPerturbationError(
            f"{'; '.join(parts)}. Expected targets from the model's vocabulary ({sizes}). "
            "Fix the spelling, use a close match, or train with data / gene sets covering the target."
        )

    def __contains__(self, action: object) -> bool:
        return isinstance(action, (str, Action)) and self.knows(action)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {"version": _VOCAB_VERSION, "genes": list(self.genes), "compounds": list(self.compounds),
                "entities": list(self.entities)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ActionVocabulary":
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or d.get("version") != _VOCAB_VERSION:
            found = d.get("version") if isinstance(d, dict) else type(d).__name__
            raise CheckpointError(
                f"action vocabulary state with version {found!r}; expected version {_VOCAB_VERSION}. "
                "Re-save the model with this bioworld version."
            )
        return cls(d["genes"], d["compounds"], d["entities"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionVocabulary):
            return NotImplemented
        return (self.genes, self.compounds, self.entities) == (other.genes, other.compounds, other.entities)

    def __hash__(self) -> int:
        return hash((self.genes, self.compounds, self.entities))

    def __repr__(self) -> str:
        return (f"ActionVocabulary({len(self.genes)} genes, {len(self.compounds)} compounds, "
                f"{len(self.entities)} entities)")
