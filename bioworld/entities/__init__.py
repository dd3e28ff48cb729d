"""bioworld.entities: gene sets, weight tables, regulons and NMF programs as the model's slots.

>>> from bioworld.entities import default_entities, map_to_panel, entity_scores
>>> pm = map_to_panel(default_entities(), adata.var_names, min_genes=3)   # doctest: +SKIP
>>> scores = entity_scores(X, pm)                                          # [cells, E]  # doctest: +SKIP
"""

from bioworld.entities._bundled import BUNDLED, default_entities, load_bundled, resolve_entities
from bioworld.entities._entity import ENTITY_SET_FORMAT, REGULON_PREFIX, Entity, EntitySet, combine, regulon_tf
from bioworld.entities._features import TF_FEATURE_SUFFIX, gene_membership_features
from bioworld.entities._panel import DroppedEntity, EntityWarning, PanelMap, entity_scores, map_to_panel

__all__ = [
    "BUNDLED",
    "ENTITY_SET_FORMAT",
    "REGULON_PREFIX",
    "TF_FEATURE_SUFFIX",
    "DroppedEntity",
    "Entity",
    "EntitySet",
    "EntityWarning",
    "PanelMap",
    "combine",
    "default_entities",
    "entity_scores",
    "gene_membership_features",
    "load_bundled",
    "map_to_panel",
    "regulon_tf",
    "resolve_entities",
]
