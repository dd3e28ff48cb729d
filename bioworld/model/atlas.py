"""The atlas module: how a perturbation moves a context's signature (pure torch, no data access).

A signature of perturbation ``p`` in context ``k`` is predicted from what the world already shows:

- ``zc`` ``[B, G]``: p's mean (z-scored) signature over the *other* contexts where it was measured
  (zeros and ``has_c = 0`` when it was measured nowhere else: then only knowledge speaks for it);
- ``zk`` ``[B, G]``: the mean signature of the *other* perturbations in context ``k`` (what any
  perturbation does there: the context's own response);
- ``ctx`` ``[B]``: the context's learned embedding (``-1`` = a context the module never saw: it is then
  inferred from ``zk`` alone);
- ``kfeat`` ``[B, F]``: knowledge features of ``p`` (:class:`bioworld.knowledge.KnowledgeBase`: network
  neighbourhoods, targets, signatures; one space for genes and compounds);
- ``zt`` ``[B, G]`` (only with ``AtlasConfig.knowledge_retrieval``): in context ``k``, the mean signature
  of the *other* perturbations that curated knowledge relates to ``p`` (shared targets, same mechanism;
  :meth:`bioworld.knowledge.KnowledgeBase.key_relations`) — retrieval through knowledge, which exists
  for a perturbation with no signature anywhere (``has_t = 0`` where nothing related was measured in k).

Both inputs are projected on a gene basis ``W`` ``[G, S]`` (initialised from the atlas' principal
axes, learned); an MLP over ``[Pzc, has_c, context embedding, knowledge]`` gives two mixing gains
and a residual in basis space::

    pred = (1 + a) * zc + (1 + b) * zk + c * zn [+ t * zt] [+ e * zr] + r @ W.T          # [B, G]

where ``zn`` ``[B, G]`` is, in context ``k``, the signature of the perturbations that behave most like
``p`` elsewhere (a retrieval input: how p's look-alikes respond *here*),

and ``zr`` ``[B, G]`` (only with ``AtlasConfig.neighbour_residual``) is how those look-alikes deviate in
``k`` from "their own mean signature elsewhere + k's mean" (their context-specific part, which ``zn``
mixes with their compound-specific part; its projection also enters the MLP),

so the baseline "compound mean + context mean" is the starting point and the module learns when
to trust which, and the context-specific part of the response. The loss is ``1 - Pearson`` per row:
atlas values are rank scores, so only the ordering and shape of a signature carry information.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AtlasBatch", "AtlasConfig", "AtlasNet", "masked_row_pearson", "row_pearson"]


@dataclass(frozen=True)
class AtlasConfig:
    """Architecture of :class:`AtlasNet` (stored in every checkpoint; rebuilds the module exactly)."""

    n_genes: int  # G: genes of the atlas gene space
    n_contexts: int  # contexts with a learned embedding
    knowledge_dim: int  # F: knowledge feature width (0 = no knowledge)
    basis_dim: int = 64  # S: width of the gene basis the inputs are projected on
    context_dim: int = 32  # width of a context embedding
    hidden: int = 256  # MLP hidden width
    dropout: float = 0.1  # dropout in the MLP
    knowledge_retrieval: bool = False  # True: read zt (related perturbations' signatures in the context)
    neighbour_residual: bool = False  # True: read zr (look-alikes' deviation in the context from their response elsewhere)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AtlasConfig":
        from bioworld.model.config import config_from_dict

        return config_from_dict(cls, d, "atlas config")


@dataclass
class AtlasBatch:
    zc: Tensor  # [B, G] perturbation's mean signature elsewhere (z-scored; 0 if none)
    has_c: Tensor  # [B] 1.0 when zc carries a signature
    zk: Tensor  # [B, G] context's mean signature over other perturbations (z-scored)
    zn: Tensor  # [B, G] in this context, perturbations that behave like p elsewhere (z-scored; 0 if none)
    ctx: Tensor  # [B] long, context index (-1 = unseen context)
    kfeat: Tensor  # [B, F] knowledge features (F may be 0)
    zt: Tensor | None = None  # [B, G] knowledge-related perturbations in this context (z-scored; 0 if none)
    has_t: Tensor | None = None  # [B] 1.0 when zt carries a signature
    zr: Tensor | None = None  # [B, G] look-alikes' residual in this context (raw scale; 0 if none)


def row_pearson(pred: Tensor, target: Tensor) -> Tensor:
    """``[B]`` Pearson correlation of each row of ``pred`` with the same row of ``target``."""
    p = pred - pred.mean(dim=1, keepdim=True)
    t = target - target.mean(dim=1, keepdim=True)
    return (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1) + 1e-8)


def masked_row_pearson(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` Pearson correlation of each row of ``pred`` with ``target`` over the entries where ``mask``
    (``[B, G]`` bool) is set: for an atlas target, its ranked genes (a surrogate of Spearman over them)."""
    m = mask.to(pred.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    p = (pred - (pred * m).sum(1, keepdim=True) / n) * m
    t = (target - (target * m).sum(1, keepdim=True) / n) * m
    return (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1) + 1e-8)


class AtlasNet(nn.Module):
    """Signature of a perturbation in a context from its signatures elsewhere, the context and knowledge."""

    def __init__(self, cfg: AtlasConfig, basis: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        G, S = cfg.n_genes, cfg.basis_dim
        self.W = nn.Parameter(basis.clone().float() if basis is not None else torch.randn(G, S) / G ** 0.5)
        if tuple(self.W.shape) != (G, S):
            raise ValueError(f"basis has shape {tuple(self.W.shape)}, expected ({G}, {S})")
        self.ctx_emb = nn.Embedding(cfg.n_contexts + 1, cfg.context_dim)  # last row: unseen context
        nn.init.normal_(self.ctx_emb.weight, std=0.02)
        self.ctx_from_zk = nn.Linear(S, cfg.context_dim)
        self.knowledge = nn.Linear(cfg.knowledge_dim, cfg.context_dim) if cfg.knowledge_dim else None
        width = 2 * S + 1 + cfg.context_dim + (cfg.context_dim if cfg.knowledge_dim else 0)
        width += 1 if cfg.knowledge_retrieval else 0  # has_t only: zt's content enters through its gain, not the MLP
        width += S if cfg.neighbour_residual else 0
        self.n_gains = 3 + int(cfg.knowledge_retrieval) + int(cfg.neighbour_residual)
        self.mlp = nn.Sequential(
            nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, S + self.n_gains),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # start exactly at zc + zk
        nn.init.zeros_(self.mlp[-1].bias)

    def context_embedding(self, ctx: Tensor, zk: Tensor) -> Tensor:
        """``[B, C]``: learned embedding of a seen context plus what its own response (``zk``) says."""
        idx = torch.where(ctx >= 0, ctx, torch.full_like(ctx, self.cfg.n_contexts))
        return self.ctx_emb(idx) + self.ctx_from_zk(zk @ self.W)

    def forward(self, b: AtlasBatch) -> Tensor:
        """Predicted signature ``[B, G]`` (z-score-like scale; compare by correlation)."""
        pc, pn = b.zc @ self.W, b.zn @ self.W  # [B, S] each
        parts = [pc, pn, b.has_c.unsqueeze(1), self.context_embedding(b.ctx, b.zk)]
        if self.knowledge is not None:
            parts.append(self.knowledge(b.kfeat))
        if self.cfg.knowledge_retrieval:
            if b.zt is None or b.has_t is None:
                raise ValueError("this AtlasNet reads knowledge retrieval: the batch needs zt and has_t")
            parts.append(b.has_t.unsqueeze(1))  # (a projection of zt is a per-compound code the MLP memorises)
        if self.cfg.neighbour_residual:
            if b.zr is None:
                raise ValueError("this AtlasNet reads neighbour residuals: the batch needs zr")
            parts.append(b.zr @ self.W)
        h = self.mlp(torch.cat(parts, dim=1))  # [B, S + n_gains]
        gain_c, gain_k, gain_n, r = h[:, :1], h[:, 1:2], h[:, 2:3], h[:, self.n_gains:]
        has = b.has_c.unsqueeze(1)
        out = (1 + gain_c) * b.zc * has + (1 + gain_k) * b.zk + gain_n * b.zn * has + r @ self.W.T
        if self.cfg.knowledge_retrieval:
            out = out + h[:, 3:4] * b.zt * b.has_t.unsqueeze(1)
        if self.cfg.neighbour_residual:
            i = self.n_gains - 1
            out = out + h[:, i:i + 1] * b.zr * has
        return out

    def loss(self, b: AtlasBatch, target: Tensor, ranked: Tensor | None = None, ranked_weight: float = 0.0) -> Tensor:
        """``1 - Pearson`` per row over all genes; with ``ranked_weight`` w > 0 and ``ranked`` (``[B, G]`` bool, the
        genes each target signature ranks), ``1 - ((1 - w) * Pearson over all genes + w * Pearson over its ranked
        genes)``: the ranked genes are what the Spearman score reads."""
        pred = self(b)
        r = row_pearson(pred, target)
        if ranked_weight > 0:
            if ranked is None:
                raise ValueError("ranked_weight > 0 needs the ranked-gene mask of the targets")
            r = (1 - ranked_weight) * r + ranked_weight * masked_row_pearson(pred, target, ranked)
        return (1 - r).mean()
