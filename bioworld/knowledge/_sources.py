"""The curated knowledge bioworld reads, each with its source, version and licence.

Every knowledge object records which of these it read (``sources``), and a model built with it
stores that list in its checkpoint metadata (``meta['knowledge_sources']``) and model card, so the
terms a model inherits travel with it. Several sources are **non-commercial** or **share-alike**.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["KnowledgeSource", "SOURCES", "source_records"]


@dataclass(frozen=True)
class KnowledgeSource:
    """One bundled knowledge file and the terms it comes with."""

    name: str  # short key used in metadata
    file: str  # path relative to bioworld/_data (as listed in SHA256SUMS)
    description: str
    version: str
    licence: str
    non_commercial: bool  # some or all content is restricted to non-commercial use

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SOURCES: dict[str, KnowledgeSource] = {
    s.name: s
    for s in (
        KnowledgeSource(
            "signature_atlas", "atlas/signature_atlas.h5ad",
            "perturbation signature atlas: Tahoe-100M (47 cell lines), Open Problems / NeurIPS 2023 PBMC "
            "(4 cell types), sci-Plex3 (3 lines), Replogle 2022 CRISPRi (K562, RPE1; up side only); "
            "inverse-normal rank scores of each signature's 500 most up / down genes",
            "montilab/sigrecon @112228f4 / @f466677, built 2026-12-02",
            "GPL-3 (sigrecon's LICENSE file; its DESCRIPTION says MIT); upstream data keep their own terms",
            False,
        ),
        KnowledgeSource(
            "compound_targets", "compounds/compound_targets.tsv",
            "compound -> HGNC target genes and mechanism of action (291 compound keys)",
            "Drug Repurposing Hub 2020-03-24; LINCS 2020 compoundinfo; signatureSearch union",
            "Drug Repurposing Hub: non-commercial use only (cite Corsello 2017); DrugBank-derived rows "
            "(source 'broad_union') CC BY-NC",
            True,
        ),
        KnowledgeSource(
            "compound_aliases", "compounds/compound_aliases.tsv",
            "every name seen for a compound key (atlas sources, L1000 plate, Hub, LINCS)",
            "derived with compound_targets", "as compound_targets", True,
        ),
        KnowledgeSource(
            "string", "networks/string_v12_human_ge700.tsv.gz",
            "STRING v12 protein-protein associations without text-mining, combined score >= 700",
            "STRING v12 via emosca-cnr/dmfind @3e1c7fc", "CC BY 4.0 (redistributed in a GPL-3 package)", False,
        ),
        KnowledgeSource(
            "omnipath", "networks/omnipath_signed_directed.tsv.gz",
            "signed, directed protein -> protein signalling edges (OmniPath part of the COSMOS network)",
            "saezlab/cosmosR @7f1e6ae (2023-05-19)",
            "GPL-3 package; constituent OmniPath resources keep their licences, some non-commercial", True,
        ),
        KnowledgeSource(
            "dorothea", "networks/dorothea_hs_regulons.tsv.gz",
            "DoRothEA human TF regulons (confidence A-C used)", "saezlab dorothea", "GPL-3", False,
        ),
    )
}


def source_records(names: list[str] | tuple[str, ...]) -> list[dict[str, object]]:
    """The metadata records (``KnowledgeSource.to_dict()``) of the named sources, in order."""
    return [SOURCES[n].to_dict() for n in names]
