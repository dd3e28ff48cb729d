"""bioworld.actions: perturbations as actions (the only place perturbation strings are parsed).

>>> from bioworld.actions import parse_action
>>> parse_action("STAT1+IFNGR1").label
'IFNGR1+STAT1'
>>> parse_action("kd:JAK2:0.5").components[0].strength
0.5

Parsing (`parse_action`, `Action`, `Perturbation`) is imported eagerly (stdlib only); the
featurizers (numpy / scipy / RDKit) load on first use.
"""

from bioworld._lazy import lazy_exports
from bioworld.actions._parse import (
    CONTROL,
    CONTROL_LABEL,
    DEFAULT_CONTROL_LABELS,
    KINDS,
    Action,
    Perturbation,
    parse_action,
    parse_actions,
)
from bioworld.actions._contract import ActionArrays, ActionBatch, Kind
from bioworld.actions._vocab import ActionVocabulary

__all__ = [
    "CONTROL",
    "CONTROL_LABEL",
    "DEFAULT_CONTROL_LABELS",
    "KINDS",
    "Action",
    "ActionVocabulary",
    "CompoundFeaturizer",
    "Split",
    "format_registration",
    "leave_targets_out",
    "unseen_combinations",
    "unseen_compounds",
    "unseen_doses",
    "GeneFeaturizer",
    "Perturbation",
    "compound_key",
    "ActionArrays",
    "ActionBatch",
    "ActionSpace",
    "CompoundFeatures",
    "GeneFeatureTable",
    "Kind",
    "gene_touch_matrix",
    "load_smiles_table",
    "parse_action",
    "parse_actions",
    "smiles_for",
]

_getattr, _dir = lazy_exports(
    __name__,
    {
        "GeneFeaturizer": "._features",
        "CompoundFeaturizer": "._features",
        "compound_key": "._features",
        "load_smiles_table": "._features",
        "smiles_for": "._features",
        "ActionSpace": "._space",
        "CompoundFeatures": "._space",
        "GeneFeatureTable": "._space",
        "gene_touch_matrix": "._encode",
        "Split": "._splits",
        "leave_targets_out": "._splits",
        "unseen_combinations": "._splits",
        "unseen_compounds": "._splits",
        "unseen_doses": "._splits",
        "format_registration": "._summary",
    },
)


def __getattr__(name: str):
    return _getattr(name)


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
