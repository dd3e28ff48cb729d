"""Curated knowledge, read once, each piece with its source, version and licence.

- :mod:`~bioworld.knowledge.atlas`: the perturbation signature atlas (signatures x contexts).
- :mod:`~bioworld.knowledge.compounds`: compound names -> keys -> target genes.
- :mod:`~bioworld.knowledge.network`: STRING / OmniPath networks and gene neighbourhood embeddings.
- :mod:`~bioworld.knowledge.features`: one feature space for genes and compounds built from all of
  them (shufflable for the ablations).

Licences (several are non-commercial or share-alike) are in :data:`SOURCES` and travel with every
model that reads them (``meta['knowledge_sources']``, the model card).
"""

from bioworld.knowledge._sources import SOURCES, KnowledgeSource, source_records
from bioworld.knowledge.atlas import SignatureAtlas, load_atlas, rank_scores, zscore_rows
from bioworld.knowledge.compounds import CompoundKnowledge, normalize_compound_name
from bioworld.knowledge.features import BLOCKS, KnowledgeBase, KnowledgeConfig
from bioworld.knowledge.network import GeneEmbedding, load_omnipath, load_string, network_embedding, signed_embedding

__all__ = [
    "BLOCKS", "CompoundKnowledge", "GeneEmbedding", "KnowledgeBase", "KnowledgeConfig", "KnowledgeSource",
    "SOURCES", "SignatureAtlas", "load_atlas", "load_omnipath", "load_string", "network_embedding",
    "normalize_compound_name", "rank_scores", "signed_embedding", "source_records", "zscore_rows",
]
