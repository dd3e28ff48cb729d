"""Typed configuration of the JEPA module (stored in every checkpoint; rebuilds the module exactly)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class JEPAConfig:
    """Architecture of the entity-slot JEPA.

    Sizes that come from the data (genes, entities, action features) are filled in by
    :class:`bioworld.WorldModel`; the rest are hyper-parameters with commented defaults.
    """

    n_genes: int  # G: genes of the panel (readout width)
    n_entities: int  # E: entity slots per cell
    gene_feature_dim: int  # F_g: features of a genetic target (entity/regulon membership)
    compound_feature_dim: int = 0  # F_c: Morgan fingerprint bits (0 = no compounds in the data)
    latent_dim: int = 32  # D: width of a slot latent
    token_dim: int = 8  # width of the per-entity gene projection before lifting to D
    encoder_depth: int = 2  # transformer blocks in the context/target encoder f_theta
    predictor_depth: int = 2  # transformer blocks in the action-conditioned predictor g_phi
    n_heads: int = 4  # attention heads in both
    mlp_ratio: float = 2.0  # hidden width of the transformer MLPs, relative to D
    dropout: float = 0.0  # dropout inside transformer blocks
    max_components: int = 2  # A: most components in one action (combinations)
    readout_hidden: int = 128  # hidden width of the latent -> expression readout
    gene_bank_size: int = 0  # training genetic targets in the action retrieval bank (set from data)
    retrieval_temperature: float = 0.1  # softmax temperature over feature cosine similarity
    own_embedding_dropout: float = 0.5  # P(drop a seen target's own embedding) while training
    # trained compound-dose actions with their own embedding (set from data; 0 = none, the module has no such weights)
    compound_bank_size: int = 0
    compound_embedding_dropout: float = 0.5  # P(drop a trained compound-dose's own embedding) while training
    compound_embedding_scale: float = 10.0  # multiplier of the stored own compound embedding (reaches a well's effect in few steps)
    residual_readout: bool = True  # expression = source cell + R(z_next) - R(z_source): readout errors cancel
    additive_combinations: bool = True  # A+B = control + (A - control) + (B - control) + learned interaction (latent slots)
    use_gene_mlp: bool = False  # also map target features through an MLP (LTO on Papalexi: no gain over retrieval alone)
    # local entity attention: above ``dense_max_slots`` slots, slots are ordered so that those sharing genes
    # are adjacent, cut into blocks of ``slot_block``, and each slot attends to its own and the two adjacent
    # blocks plus one pooled key over all visible slots: cost ~ slots x 3 slot_block instead of slots^2
    # (benchmarks/results/speed/SPEED.md, section g)
    slot_block: int = 16  # slots per attention block (each slot sees 3 blocks); 0 = always dense
    dense_max_slots: int = 128  # up to this many slots attention stays dense (exact, and fast enough)

    def __post_init__(self) -> None:
        for name in ("slot_block", "dense_max_slots"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                from bioworld.errors import BioworldError

                raise BioworldError(f"model config {name}={v!r}; expected an int >= 0 (slot_block=0: dense attention)")

    @property
    def sparse_slots(self) -> bool:
        """Whether entity attention is local (blocks of :func:`bioworld.model.jepa.slot_order`), not dense."""
        return self.slot_block > 0 and self.n_entities > max(self.dense_max_slots, 3 * self.slot_block)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JEPAConfig":
        if "slot_block" not in d:  # written before local attention existed: those models attended densely
            d = {**d, "slot_block": 0}
        return config_from_dict(cls, d, "model config")


def config_from_dict(cls: Any, d: dict[str, Any], what: str) -> Any:
    """Rebuild a config dataclass from its stored dict; unknown fields are refused (another version wrote it)."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        from bioworld.errors import CheckpointError

        raise CheckpointError(
            f"{what} has unknown fields {sorted(unknown)}; expected only {sorted(known)}. "
            "The checkpoint was probably written by a different bioworld version."
        )
    return cls(**d)
