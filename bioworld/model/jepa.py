"""The entity-slot JEPA: pure torch, no AnnData, no training loop.

Shapes: ``B`` batch, ``E`` entities (slots), ``D`` latent dim, ``G`` genes, ``A`` action components,
``F`` feature dims.

Verbs (TD-MPC2 style): :meth:`JEPA.encode` (context encoder f_theta), :meth:`JEPA.encode_target`
(EMA target encoder, no grad), :meth:`JEPA.next` (action-conditioned predictor g_phi),
:meth:`JEPA.readout` (latents -> expression) and :meth:`JEPA.loss` (named losses for one batch).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioworld.actions._contract import N_KINDS, ActionBatch, Kind
from bioworld.model.config import JEPAConfig

# Component kinds and the action batch are the action contract (bioworld.actions._contract)
CIS_SCALE = 10.0  # cis log-ratio parameter multiplier (see JEPA.cis)


@dataclass
class JEPABatch:
    """One training batch: source (control) cells, target cells and the action between them."""

    x_src: Tensor  # [B, G] standardised expression of the source (control) cells
    x_tgt: Tensor  # [B, G] standardised expression of the target cells
    action: ActionBatch
    context_mask: Tensor  # [B, E] bool, True = slot visible to the context encoder
    target_mask: Tensor  # [B, E] bool, True = slot scored by the latent loss
    gene_mask: Tensor  # [B, G] bool, True = gene hidden from the encoder (patch-style ablation)
    group: Tensor  # [B] long, transition group (for the distributional loss); -1 = self pair
    clamp_mask: Tensor | None = None  # [B, E] bool, slots given as do(slot := target latent) inputs


@dataclass
class LossOutput:
    """Named losses of one batch; ``total`` is what the optimiser minimises."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)  # detached scalars, for logging
    monitor: dict[str, float] = field(default_factory=dict)  # collapse monitor


def slot_order(membership: Tensor) -> Tensor:
    """A permutation ``[E]`` of the entity slots that puts slots sharing genes next to each other.

    Greedy chain: start at slot 0, then always the unvisited slot with the highest Jaccard overlap
    of member genes with the current one (ties: lowest index), so the order is deterministic and the
    same on every device. Local attention (:class:`_Attention`) groups consecutive slots of this order
    into blocks. Time ~ E^2 G / sparse products (milliseconds at 1,000 slots), memory ~ E.
    """
    member = (membership != 0).to(torch.float32)
    E = member.shape[0]
    if member.is_meta or E == 0:  # shapes only (checkpoint schema checks): the order is not stored
        return torch.arange(E, device=member.device)
    size = member.sum(1)
    visited = torch.zeros(E, dtype=torch.bool)
    order = [0]
    visited[0] = True
    for _ in range(E - 1):
        cur = order[-1]
        inter = member @ member[cur]  # [E] shared genes
        jac = inter / (size + size[cur] - inter).clamp_min(1.0)
        nxt = int(torch.argmax(jac.masked_fill(visited, -1.0)))  # first maximum: deterministic ties
        order.append(nxt)
        visited[nxt] = True
    return torch.tensor(order, dtype=torch.long)


def _math_attention(qkv: Tensor, h: int) -> Tensor:
    """Dense multi-head attention ``[B, T, C]`` from the fused projections ``qkv`` ``[B, T, 3C]``
    as batched matmuls per head (the same function as ``scaled_dot_product_attention``).

    Used on the CPU under ``torch.inference_mode`` only (the query engine), so training, GPUs and
    training figures keep the fused kernel: with few tokens and 8-wide heads torch's CPU flash
    kernel is the slower one on row blocks that stay in cache (``benchmarks/results/speed/SPEED.md``,
    section h). Each head reads its columns of ``qkv`` in place (strided matmuls: a head-major copy
    cost as much as the matmuls) and works in the transposed layout: scores ``[B, keys, queries]``,
    output ``[B, c, queries]``, so the softmax's sums run over rows and its division is a contiguous
    ``[T]``-wide broadcast (in the ``[B, T, c]`` layout it is an 8-wide one torch does not vectorise).
    The softmax is ``exp(s) / sum exp(s)`` with the division applied to the head's output (``T x c``
    values, not ``T x T``) and no max subtracted, which is exact while the row sums stay in a safe
    float range; a head where any does not (scores above ~69 or all below ~-69) takes the
    max-subtracted softmax. ``exp(s)`` is computed as ``exp2(s log2 e)`` with ``log2 e`` folded into the
    product's scale (torch's ``exp2`` kernel is ~3x faster than its ``exp`` on this project's CPUs), and
    the heads share one scores buffer (one allocation per call instead of one per head: 40% less time
    per call together; ``benchmarks/results/speed/query_speed_notes.md``, "Stop 30"). The result is a
    contiguous ``[B, T, C]`` tensor. Answers differ from the fused kernel by float rounding.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    c = C // h
    out = qkv.new_empty(h, B, c, T)  # each head's output [B, c, queries], written in place
    e, total = qkv.new_empty(B, T, T), qkv.new_empty(B, 1, T)  # scores [B, keys, queries] and their sums, per head
    for j in range(h):
        q, k, v = (qkv[:, :, i * C + j * c: i * C + (j + 1) * c] for i in range(3))  # [B, T, c] views
        torch.baddbmm(e, k, q.transpose(1, 2), beta=0.0, alpha=c ** -0.5 * _LOG2E, out=e).exp2_()
        torch.sum(e, 1, keepdim=True, out=total)
        lo, hi = torch.aminmax(total)
        if float(lo) > _SOFTMAX_SAFE[0] and float(hi) < _SOFTMAX_SAFE[1]:  # (NaN fails both)
            torch.bmm(v.transpose(1, 2), e, out=out[j]).div_(total)
            continue
        s = torch.baddbmm(qkv.new_empty(()), k, q.transpose(1, 2), beta=0.0, alpha=c ** -0.5)
        torch.bmm(v.transpose(1, 2), s.softmax(1), out=out[j])
    return out.permute(1, 3, 0, 2).reshape(B, T, C)  # one copy into the next layer's [B, T, C] layout


def _query_mode(module: nn.Module, x: Tensor, key_padding_mask: Tensor | None, local: tuple[int, int] | None) -> bool:
    """Whether a block or readout call is a query the engine's CPU kernels answer: eval mode, no gradient
    (``torch.inference_mode``), CPU, no padding mask, dense attention. Training and validation keep torch's
    fused attention and plain linear layers."""
    return (local is None and key_padding_mask is None and not module.training and x.device.type == "cpu"
            and torch.is_inference_mode_enabled())


def _linear(x: Tensor, layer: nn.Linear, *, gelu: str | None = None, residual: Tensor | None = None) -> Tensor:
    """``layer(x)``, then ``gelu(.)`` (approximation ``gelu``) or ``residual + .``, in one oneDNN kernel
    (``torch.ops.mkldnn._linear_pointwise``, what torch's own compiler emits for CPU inference) where this
    torch build has it (:func:`_fused_linear`); else the same steps one by one. On this project's 2 x86
    cores the fused kernel gave the same floats as the separate steps in 20-30% less time per layer
    (``benchmarks/results/speed/query_speed_notes.md``, "Stop 25")."""
    op = _fused_linear() if x.dtype == torch.float32 else None  # (the probe checked float32)
    if op is not None:
        if residual is not None:
            return op.binary(x, residual, layer.weight, layer.bias, "add")
        return op(x, layer.weight, layer.bias, "none" if gelu is None else "gelu", [], "" if gelu is None else gelu)
    y = layer(x)
    if gelu is not None:
        y = F.gelu(y, approximate=gelu)
    return y if residual is None else residual + y


_FUSED_LINEAR: list = []  # [the fused kernel, or None where it is missing or disagrees]; [] = not yet checked


def _fused_linear():
    """oneDNN's fused linear kernel where it runs in this torch build and agrees with the separate steps
    (checked once per process on a small case), else None: a build or CPU without it takes the plain path."""
    if not _FUSED_LINEAR:
        op = None
        try:
            with torch.inference_mode():
                g = torch.Generator().manual_seed(0)
                x, r, w, b = (torch.randn(*shape, generator=g) for shape in ((6, 5, 16), (6, 5, 8), (8, 16), (8,)))
                fused, y = torch.ops.mkldnn._linear_pointwise, F.linear(x, w, b)  # (the global RNG is left alone)
                if (torch.allclose(fused(x, w, b, "none", [], ""), y, atol=1e-5)
                        and torch.allclose(fused(x, w, b, "gelu", [], "none"), F.gelu(y), atol=1e-5)
                        and torch.allclose(fused.binary(x, r, w, b, "add"), r + y, atol=1e-5)):
                    op = fused
        except Exception:  # a capability probe: any failure of the kernel means the plain path
            op = None
        _FUSED_LINEAR.append(op)
    return _FUSED_LINEAR[0]


# row sums of exp(scores) in which the plain exp is as exact as the max-subtracted softmax: the largest
# term is a normal float (no underflow) and sums / matmuls stay far from overflow
_SOFTMAX_SAFE = (1e-30, 1e30)
_LOG2E = math.log2(math.e)  # exp(s) = exp2(s log2 e)


class _Attention(nn.Module):
    """Multi-head self-attention over a token set with a key-padding mask (True = ignore key).

    ``local = (w, E)``: the first ``E`` tokens are entity slots, already in :func:`slot_order`; they
    are cut into blocks of ``w`` consecutive slots, and each slot attends to the slots of its own and
    the two adjacent blocks (``3 w`` keys), to one pooled key/value (the mean over all visible slots,
    so every slot still sees the whole cell) and to the tokens after the slots (action components),
    which attend to everything. Cost ~ B E (3w + 1) instead of B E^2; no gathers, one fused attention call.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"latent_dim {dim} must be divisible by n_heads {n_heads}")
        self.h = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, local: tuple[int, int] | None = None) -> Tensor:
        B, T, C = x.shape  # (queries on the CPU run _Block._query: _math_attention, not this)
        q, k, v = self.qkv(x).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)  # [B, h, T, c]
        if local is not None:
            y = self._local(q, k, v, key_padding_mask, *local)
        else:
            mask = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]  # True = attend
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def _local(self, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None, w: int, E: int) -> Tensor:
        B, h, T, c = q.shape
        drop = self.dropout if self.training else 0.0
        nb = -(-E // w)
        extra = nb * w - E  # the last block is filled up with masked dummy slots
        slot_pad = pad[:, :E] if pad is not None else None
        if slot_pad is None:
            wt = torch.full((B, E), 1.0 / E, dtype=q.dtype, device=q.device)
        else:
            vis = (~slot_pad).to(q.dtype)
            wt = vis / vis.sum(1, keepdim=True).clamp_min(1.0)  # [B, E] mean over visible slots
        ks, vs = k[:, :, :E], v[:, :, :E]
        kp = torch.einsum("bhec,be->bhc", ks, wt)[:, :, None, None]  # pooled key [B, h, 1, 1, c]
        vp = torch.einsum("bhec,be->bhc", vs, wt)[:, :, None, None]
        qs = q[:, :, :E]
        if extra:
            qs, ks, vs = (F.pad(t, (0, 0, 0, extra)) for t in (qs, ks, vs))
            fill = torch.ones(B, extra, dtype=torch.bool, device=q.device)
            slot_pad = torch.cat([slot_pad if slot_pad is not None else torch.zeros(B, E, dtype=torch.bool, device=q.device),
                                  fill], 1)
        qb, kb, vb = (t.reshape(B, h, nb, w, c) for t in (qs, ks, vs))
        kwin = torch.cat([kb.roll(1, 2), kb, kb.roll(-1, 2), kp.expand(B, h, nb, 1, c)], 3)  # [B, h, nb, 3w + 1, c]
        vwin = torch.cat([vb.roll(1, 2), vb, vb.roll(-1, 2), vp.expand(B, h, nb, 1, c)], 3)
        X = T - E
        if X:
            kx, vx = k[:, :, E:, None].transpose(2, 3), v[:, :, E:, None].transpose(2, 3)  # [B, h, 1, X, c]
            kwin = torch.cat([kwin, kx.expand(B, h, nb, X, c)], 3)
            vwin = torch.cat([vwin, vx.expand(B, h, nb, X, c)], 3)
        mask = None
        if slot_pad is not None or (pad is not None and X):
            sp = slot_pad if slot_pad is not None else torch.zeros(B, nb * w, dtype=torch.bool, device=q.device)
            pb = sp.view(B, nb, w)
            parts = [pb.roll(1, 1), pb, pb.roll(-1, 1), torch.zeros(B, nb, 1, dtype=torch.bool, device=q.device)]
            if X:
                xp = pad[:, E:] if pad is not None else torch.zeros(B, X, dtype=torch.bool, device=q.device)
                parts.append(xp[:, None, :].expand(B, nb, X))
            mask = ~torch.cat(parts, 2)  # True = attend; [B, nb, keys]
            mask = mask[:, None, :, None, :].expand(B, h, nb, 1, mask.shape[-1]).reshape(B, h * nb, 1, -1)
        L = kwin.shape[3]
        # 4-d inputs (blocks folded into heads) keep torch's fused attention kernel (5-d falls back to the slow path)
        y = F.scaled_dot_product_attention(qb.reshape(B, h * nb, w, c), kwin.reshape(B, h * nb, L, c),
                                           vwin.reshape(B, h * nb, L, c), attn_mask=mask, dropout_p=drop)
        y = y.reshape(B, h, nb * w, c)[:, :, :E]
        if not X:
            return y
        xmask = None if pad is None else (~pad)[:, None, None, :]
        y_x = F.scaled_dot_product_attention(q[:, :, E:], k, v, attn_mask=xmask, dropout_p=drop)  # components: dense (X E)
        return torch.cat([y, y_x], 2)


class _Block(nn.Module):
    """Pre-norm transformer block over a set of tokens (no positional order: slots are a set)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, key_padding_mask: Tensor | None = None, local: tuple[int, int] | None = None) -> Tensor:
        if _query_mode(self, h, key_padding_mask, local):
            return self._query(h)
        h = h + self.drop(self.attn(self.norm1(h), key_padding_mask, local))
        return h + self.drop(self.mlp(self.norm2(h)))

    def _query(self, h: Tensor) -> Tensor:
        """The block (eval mode, no mask, dense) for queries on the CPU: :func:`_math_attention`, and each
        linear layer with its bias, GELU or residual sum inside one kernel (:func:`_linear`)."""
        att, fc1, act, fc2 = self.attn, self.mlp[0], self.mlp[1], self.mlp[2]
        h = _linear(_math_attention(_linear(self.norm1(h), att.qkv), att.h), att.proj, residual=h)
        return _linear(_linear(self.norm2(h), fc1, gelu=act.approximate), fc2, residual=h)


class SlotEncoder(nn.Module):
    """f_theta: entity slots -> latents. Each slot sees its member genes through its own projection."""

    def __init__(self, cfg: JEPAConfig, membership: Tensor) -> None:
        super().__init__()
        E, G = membership.shape
        self.register_buffer("member", (membership != 0).float())  # [E, G]
        weights = membership / membership.abs().sum(1, keepdim=True).clamp_min(1e-6)
        self.register_buffer("score_w", weights)  # [E, G] signed weights for the slot score
        self.gene_proj = nn.Parameter(torch.randn(E, G, cfg.token_dim) * (1.0 / math.sqrt(cfg.token_dim)))
        self.lift = nn.Linear(cfg.token_dim + 1, cfg.latent_dim)
        self.entity_emb = nn.Parameter(torch.randn(E, cfg.latent_dim) * 0.02)
        self.blocks = nn.ModuleList(
            _Block(cfg.latent_dim, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.latent_dim)
        n_members = self.member.sum(1).clamp_min(1.0)  # [E]
        self.register_buffer("inv_sqrt_members", n_members.rsqrt())
        # local attention: slots in an overlap order, blocks of cfg.slot_block (rebuilt from the membership:
        # not stored in checkpoints)
        order = slot_order(membership) if cfg.sparse_slots else torch.zeros(0, dtype=torch.long)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.block = cfg.slot_block

    def local(self) -> tuple[Tensor, Tensor, tuple[int, int]] | None:
        """``(order, inverse, (block, E))`` when attention is local, else None."""
        if not self.order.numel():
            return None
        return self.order, self.inverse, (self.block, self.order.numel())

    def tokens(self, x: Tensor) -> Tensor:
        """Per-slot input tokens ``[B, E, D]`` from expression ``[B, G]``."""
        w = self.gene_proj * self.member.unsqueeze(-1)  # [E, G, k]
        t = torch.einsum("bg,egk->bek", x, w) * self.inv_sqrt_members[None, :, None]  # [B, E, k]
        score = x @ self.score_w.T  # [B, E]
        return self.lift(torch.cat([t, score.unsqueeze(-1)], dim=-1)) + self.entity_emb  # [B, E, D]

    def forward(self, x: Tensor, context_mask: Tensor | None = None) -> Tensor:
        h = self.tokens(x)
        pad = None if context_mask is None or bool(context_mask.all()) else ~context_mask
        loc = self.local()
        if loc is not None:  # slots into the overlap order for the blocks, back at the end
            h = h[:, loc[0]]
            pad = None if pad is None else pad[:, loc[0]]
        for blk in self.blocks:
            h = blk(h, key_padding_mask=pad, local=None if loc is None else loc[2])
        if loc is not None:
            h = h[:, loc[1]]
        return self.norm(h)  # [B, E, D]


class ActionEncoder(nn.Module):
    """Component tokens ``[B, A, D]`` from genetic, compound or entity (silence) actions.

    A genetic target is represented by *retrieval* over the bank of training targets: a softmax
    over feature similarity (entity / regulon / GO membership) mixes the bank's learned
    embeddings, always excluding the target itself. Every training step therefore asks "predict
    this target from the others", the situation of an unseen target at inference. A seen target
    also has its own embedding, dropped with ``own_embedding_dropout`` while training. A target
    without knowledge features (all-zero ``gene_feat``: in no entity, regulon or GO set) has nothing
    to retrieve with: it gets no retrieval term and its own embedding is never dropped.

    A compound is read from its structure / knowledge features and log dose (``cmp_mlp``), the path
    an unseen compound or dose takes. A trained compound-dose (``cmp_idx >= 0``) also has its own
    embedding (``cmp_own`` x ``compound_embedding_scale``, zero at init: a learned correction of what its
    features say; the multiplier, like ``CIS_SCALE``, lets Adam's steps of about ``lr`` reach a single well's
    effect within the sized training instead of under-fitting it), dropped with
    ``compound_embedding_dropout`` while training unless its features are all zero; so a plate's single well
    is learned as observed instead of smoothed over the compound's doses. Data without trained
    compounds have no such weights (``compound_bank_size = 0``).
    """

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        D = cfg.latent_dim
        self.cfg = cfg
        self.kind_emb = nn.Embedding(N_KINDS, D)
        nn.init.normal_(self.kind_emb.weight, std=D**-0.5)  # unit norm: the kind must not drown the target's identity
        if cfg.use_gene_mlp:
            self.gene_mlp = nn.Sequential(nn.Linear(cfg.gene_feature_dim + 1, D), nn.GELU(), nn.Linear(D, D))
        n_bank = cfg.gene_bank_size
        self.register_buffer("bank_feat", torch.zeros(n_bank, cfg.gene_feature_dim))
        self.bank_emb = nn.Parameter(torch.randn(n_bank, D) * D**-0.5)
        self.own_emb = nn.Parameter(torch.randn(n_bank, D) * D**-0.5)  # distinct codes from step 0
        self.has_compounds = cfg.compound_feature_dim > 0
        if self.has_compounds:
            self.cmp_mlp = nn.Sequential(nn.Linear(cfg.compound_feature_dim + 1, D), nn.GELU(), nn.Linear(D, D))
        if self.has_compounds and cfg.compound_bank_size > 0:  # zeros: no random draws, the other weights init as before
            self.cmp_own = nn.Parameter(torch.zeros(cfg.compound_bank_size, D))

    def retrieve(self, gene_feat: Tensor, bank_idx: Tensor) -> Tensor:
        """Similarity-weighted mix of bank embeddings, excluding each target's own row: ``[B, A, D]``."""
        n_bank = self.bank_feat.shape[0]
        if n_bank < 2:
            return gene_feat.new_zeros(*gene_feat.shape[:-1], self.bank_emb.shape[1])
        sims = gene_feat @ self.bank_feat.T / self.cfg.retrieval_temperature  # [B, A, n_bank]
        own = F.one_hot(bank_idx.clamp_min(0), n_bank).bool() & (bank_idx >= 0).unsqueeze(-1)
        w = torch.softmax(sims.masked_fill(own, float("-inf")), dim=-1)
        return w @ self.bank_emb

    def _compound_own(self, act: ActionBatch) -> Tensor | float:
        """The own embeddings ``[B, A, D]`` of trained compound-doses (0 for the others; dropped as the
        genetic ones while training, except for a compound without features)."""
        if not hasattr(self, "cmp_own"):
            return 0.0
        seen = (act.cmp_idx >= 0).unsqueeze(-1).float()
        if self.training and self.cfg.compound_embedding_dropout > 0:
            keep = torch.rand(seen.shape, device=seen.device) >= self.cfg.compound_embedding_dropout
            seen = seen * (keep | ~(act.cmp_feat != 0).any(-1, keepdim=True)).float()
        return seen * (self.cfg.compound_embedding_scale * self.cmp_own[act.cmp_idx.clamp_min(0)])

    def forward(self, act: ActionBatch) -> Tensor:
        kind = act.kind
        u = self.kind_emb(kind)  # [B, A, D]
        is_gene = ((kind == Kind.KO) | (kind == Kind.KD) | (kind == Kind.ACT)).unsqueeze(-1).float()
        has_feat = (act.gene_feat != 0).any(-1, keepdim=True)  # [B, A, 1]
        g = self.retrieve(act.gene_feat, act.bank_idx) * has_feat.float()
        if self.cfg.use_gene_mlp:
            g = g + self.gene_mlp(torch.cat([act.gene_feat, act.strength.unsqueeze(-1)], dim=-1))
        if self.own_emb.shape[0] > 0:
            seen = (act.bank_idx >= 0).unsqueeze(-1).float()
            if self.training and self.cfg.own_embedding_dropout > 0:
                keep = (torch.rand(seen.shape, device=seen.device) >= self.cfg.own_embedding_dropout)
                seen = seen * (keep | ~has_feat).float()  # nothing else represents a featureless target
            g = g + seen * self.own_emb[act.bank_idx.clamp_min(0)]
        u = u + is_gene * g * act.strength.unsqueeze(-1)
        if self.has_compounds:
            is_cmp = (kind == Kind.COMPOUND).unsqueeze(-1).float()
            c_in = torch.cat([act.cmp_feat, act.log_dose.unsqueeze(-1)], dim=-1)
            u = u + is_cmp * (self.cmp_mlp(c_in) + self._compound_own(act))
        # silence: the kind embedding plus its touch on the silenced slot (no per-entity identity,
        # so the learned "silence a slot" behaviour transfers to entities never silenced in training)
        return u * (kind != Kind.PAD).unsqueeze(-1).float()


class Predictor(nn.Module):
    """g_phi: (z_t, a_t) -> z_{t+1}, slot-wise.

    Each slot token receives the action components that touch it (membership-weighted), and the
    component tokens join the set so that combinations interact through attention (not a plain
    sum). Hidden slots enter as a learned mask token; the output is a residual on visible slots.
    """

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        D = cfg.latent_dim
        self.proj_in = nn.Linear(D, D)
        self.mask_token = nn.Parameter(torch.zeros(D))
        self.pos = nn.Parameter(torch.randn(cfg.n_entities, D) * 0.02)
        self.touch_proj = nn.Linear(D, D)
        self.action_proj = nn.Linear(D, D)  # the whole action, given to every slot (not only touched ones)
        self.comp_type = nn.Parameter(torch.randn(D) * 0.02)
        self.blocks = nn.ModuleList(
            _Block(D, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.predictor_depth)
        )
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, D)
        nn.init.zeros_(self.head.weight)  # start as "no change" on visible slots
        nn.init.zeros_(self.head.bias)
        self.interaction_head = nn.Linear(D, D)  # combinations: departure from additivity, per slot
        nn.init.zeros_(self.interaction_head.weight)  # start additive
        nn.init.zeros_(self.interaction_head.bias)

    def forward(
        self,
        z: Tensor,
        u: Tensor,
        act: ActionBatch,
        context_mask: Tensor | None = None,
        clamp: tuple[Tensor, Tensor] | None = None,
        interaction: bool = False,
        local: tuple[Tensor, Tensor, tuple[int, int]] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Next latents ``[B, E, D]``; with ``interaction`` also the interaction term ``[B, E, D]``.
        ``local``: local entity attention (``SlotEncoder.local()``; None = dense)."""
        B, E, D = z.shape
        if clamp is not None:  # do(slot := value): the clamped latent is an observed input
            slots, values = clamp  # [B, E] bool, [B, E, D]
            z = torch.where(slots.unsqueeze(-1), values, z)
            context_mask = None if context_mask is None else context_mask | slots
        # no context mask = every slot visible (queries): the mask selections are identities, skipped
        h = self.proj_in(z) if context_mask is None else torch.where(context_mask.unsqueeze(-1), self.proj_in(z), self.mask_token)
        h = h + self.pos
        h = h + torch.einsum("bae,bad->bed", act.touch, self.touch_proj(u))  # [B, E, D]
        h = h + self.action_proj(u.sum(1)).unsqueeze(1)  # every slot sees the action from the first layer
        comp = u + self.comp_type  # [B, A, D]
        comp_pad = act.kind == Kind.PAD  # [B, A]
        used = ~comp_pad.all(0)  # component columns padded in every row carry nothing: drop them
        comp, comp_pad = comp[:, used], comp_pad[:, used]
        if local is not None:
            h = h[:, local[0]]  # slots in the overlap order (attention blocks); restored below
        seq = torch.cat([h, comp], dim=1)
        pad = None
        if bool(comp_pad.any()):  # a key-padding mask only where rows differ (keeps the fast attention path)
            pad = torch.cat([torch.zeros(B, E, dtype=torch.bool, device=z.device), comp_pad], dim=1)
        for blk in self.blocks:
            seq = blk(seq, key_padding_mask=pad, local=None if local is None else local[2])
        feat = self.norm(seq[:, :E] if local is None else seq[:, :E][:, local[1]])
        out = self.head(feat)
        z_next = (z if context_mask is None else torch.where(context_mask.unsqueeze(-1), z, torch.zeros_like(z))) + out
        if clamp is not None:
            z_next = torch.where(clamp[0].unsqueeze(-1), clamp[1], z_next)
        if interaction:
            return z_next, self.interaction_head(feat)
        return z_next  # [B, E, D]


class Readout(nn.Module):
    """Latents ``[B, E, D]`` -> standardised expression ``[B, G]`` and entity scores ``[B, E]``."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        E, D = cfg.n_entities, cfg.latent_dim
        self.expr = nn.Sequential(
            nn.LayerNorm(E * D), nn.Linear(E * D, cfg.readout_hidden), nn.GELU(), nn.Linear(cfg.readout_hidden, cfg.n_genes)
        )
        self.score = nn.Linear(D, 1)
        self.score_bias = nn.Parameter(torch.zeros(E))

    def expression(self, z: Tensor) -> Tensor:
        """Standardised expression ``[B, G]`` from latents ``[B, E, D]``."""
        if _query_mode(self, z, None, None):  # queries on the CPU: the GELU inside the first product's kernel
            norm, hidden, act, out = self.expr
            return _linear(_linear(norm(z.flatten(1)), hidden, gelu=act.approximate), out)
        return self.expr(z.flatten(1))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = self.expression(z)
        s = self.score(z).squeeze(-1) + self.score_bias
        return x, s


def energy_distance(a: Tensor, b: Tensor) -> Tensor:
    """Energy distance between two sets of points ``[n, G]`` and ``[m, G]`` (>= 0 in expectation)."""
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).mean()
    bb = torch.cdist(b, b).mean()
    return 2 * ab - aa - bb


def effective_rank(z: Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred ``[N, K]`` latents."""
    zc = z - z.mean(0, keepdim=True)
    s = torch.linalg.svdvals(zc.float())
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass(frozen=True)
class LossWeights:
    latent: float = 1.0  # JEPA latent prediction (masked entities + next state)
    expr: float = 1.0  # readout of predicted latents vs observed target cells (per cell)
    energy: float = 0.5  # energy distance per transition group (distribution, not only mean)
    recon: float = 1.0  # readout of target latents (stop-grad) vs the same cells
    score: float = 0.1  # entity scores from latents
    variance: float = 1.0  # VICReg variance hinge on context latents (anti-collapse)
    covariance: float = 0.04  # VICReg off-diagonal covariance (anti-collapse)
    effect: float = 1.0  # mean effect per transition group: predicted vs observed group mean (cell noise averaged out)


EFFECT_MIN_DISTINCT = 4  # distinct cells a group mean needs for its mean-effect term to count fully
TARGET_DISTINCT_SHARE = 0.75  # the target encoder sees only distinct rows when they are at most this share (JEPA._target_latents)


def _group_terms(x_hat: Tensor, x_tgt: Tensor, group: Tensor, *, with_effect: bool) -> tuple[Tensor, Tensor]:
    """Per transition group present in the batch (``group >= 0``): the energy distance between predicted
    and observed cells (the distribution, not only the mean), and the squared error of the group's
    mean change (cell noise averaged out: the quantity the fit check and the benchmarks score).

    A group mean over fewer than ``EFFECT_MIN_DISTINCT`` distinct cells averages out little noise (a
    plate's compound-dose group is 1-2 wells drawn many times), so its mean-effect term is weighted by
    ``distinct / EFFECT_MIN_DISTINCT``; groups with enough distinct cells count fully."""
    groups = torch.unique(group)
    ed_terms, mean_terms = [], []
    G = x_hat.shape[1]
    for g in groups[groups >= 0]:
        sel = group == g
        if int(sel.sum()) >= 2:
            ed_terms.append(energy_distance(x_hat[sel], x_tgt[sel]) / math.sqrt(G))
        if with_effect:
            term = ((x_hat[sel] - x_tgt[sel]).mean(0) ** 2).mean()
            distinct = int(torch.unique(x_tgt[sel], dim=0).shape[0])
            mean_terms.append(term if distinct >= EFFECT_MIN_DISTINCT else term * (distinct / EFFECT_MIN_DISTINCT))
    energy = torch.stack(ed_terms).mean() if ed_terms else x_hat.new_zeros(())
    effect = torch.stack(mean_terms).mean() if mean_terms else x_hat.new_zeros(())
    return energy, effect


class JEPA(nn.Module):
    """Action-conditioned, entity-masked joint-embedding predictive architecture."""

    def __init__(self, cfg: JEPAConfig, membership: Tensor, gene_bank: Tensor | None = None) -> None:
        super().__init__()
        if membership.shape != (cfg.n_entities, cfg.n_genes):
            raise ValueError(
                f"membership has shape {tuple(membership.shape)}, expected (n_entities, n_genes) = "
                f"({cfg.n_entities}, {cfg.n_genes})"
            )
        self.cfg = cfg
        self.encoder = SlotEncoder(cfg, membership)
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.action_encoder = ActionEncoder(cfg)
        if gene_bank is not None:
            if tuple(gene_bank.shape) != (cfg.gene_bank_size, cfg.gene_feature_dim):
                raise ValueError(f"gene_bank has shape {tuple(gene_bank.shape)}, expected ({cfg.gene_bank_size}, {cfg.gene_feature_dim})")
            self.action_encoder.bank_feat.copy_(gene_bank)
        self.predictor = Predictor(cfg)
        self.readout_head = Readout(cfg)
        # direct (cis) effect of a genetic perturbation on its own transcript: a multiplicative
        # change of the cell's own level, learned per kind as a log-ratio (x CIS_SCALE so the
        # optimiser can reach a strong knockout quickly). Trans effects go through the slots.
        self.cis_effect = nn.Parameter(torch.zeros(N_KINDS))
        self.use_interaction = True  # False: combinations purely additive in latent slots (queries compare both)
        self.register_buffer("gene_mean", torch.zeros(cfg.n_genes))  # log-scale centre (standardisation)
        self.register_buffer("gene_sd", torch.ones(cfg.n_genes))  # log-scale spread (standardisation)

    # ----------------------------------------------------------------- verbs
    def encode(self, x: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """Context encoder f_theta on expression ``[B, G]`` -> ``[B, E, D]``."""
        return self.encoder(x, context_mask)

    @torch.no_grad()
    def encode_target(self, x: Tensor) -> Tensor:
        """EMA target encoder (stop-gradient) on the full view -> ``[B, E, D]``."""
        return self.target_encoder(x)

    def next(
        self,
        z: Tensor,
        act: ActionBatch,
        context_mask: Tensor | None = None,
        clamp: tuple[Tensor, Tensor] | None = None,
        u: Tensor | None = None,
    ) -> Tensor:
        """Predicted next latents under ``act``; ``clamp`` = (slots [B,E] bool, values [B,E,D]); ``u`` = the
        action's component tokens ``[B, A, D]`` (``action_encoder(act)``) when the caller has them already
        (queries encode each intervention once, not once per cell).

        A combination (two or more components) is built on additivity: the control prediction plus
        each component's own change (its single-component prediction minus the control one) plus
        a learned interaction term, read from the joint pass over all components and initialised
        to zero, so combinations start additive in latent slots and depart from it only where
        training combinations show an interaction (``JEPAConfig.additive_combinations``).
        """
        u = self.action_encoder(act) if u is None else u
        graph = self.encoder.local()  # local entity attention (or None: dense)
        multi = (act.kind != Kind.PAD).sum(1) >= 2  # [B]
        if not self.cfg.additive_combinations or not bool(multi.any()):
            return self.predictor(z, u, act, context_mask=context_mask, clamp=clamp, local=graph)
        z_next, inter = self.predictor(z, u, act, context_mask=context_mask, clamp=clamp, interaction=True, local=graph)
        idx = multi.nonzero().squeeze(1)
        sub = act.index(idx)
        zs, us = z[idx], u[idx]
        cms = None if context_mask is None else context_mask[idx]
        cls = None if clamp is None else (clamp[0][idx], clamp[1][idx])

        def alone(keep: Tensor) -> Tensor:  # the rows' prediction with only the components in ``keep`` [n, A]
            a = ActionBatch(**{k: getattr(sub, k) for k in sub.__dataclass_fields__})
            a.kind = sub.kind * keep
            a.touch = sub.touch * keep.unsqueeze(-1)
            return self.predictor(zs, us * keep.unsqueeze(-1), a, context_mask=cms, clamp=cls, local=graph)

        cols = torch.zeros_like(sub.kind)
        base = alone(cols)
        comp = base.clone()
        for j in range(sub.kind.shape[1]):
            if bool((sub.kind[:, j] != Kind.PAD).any()):
                keep = cols.clone()
                keep[:, j] = 1
                comp = comp + alone(keep) - base
        if self.use_interaction:
            comp = comp + inter[idx]
        if cls is not None:
            comp = torch.where(cls[0].unsqueeze(-1), cls[1], comp)
        return z_next.index_copy(0, idx, comp)

    def readout(self, z: Tensor) -> Tensor:
        """Standardised expression ``[B, G]`` from latents (the expression part of ``readout_head``)."""
        return self.readout_head.expression(z)

    def readout_scores(self, z: Tensor) -> Tensor:
        """Entity scores ``[B, E]`` from latents."""
        return self.readout_head(z)[1]

    def set_scale(self, mean: Tensor, sd: Tensor) -> None:
        """Tell the module how standardised values map back to log1p expression (for cis effects)."""
        self.gene_mean.copy_(mean)
        self.gene_sd.copy_(sd)

    def cis(self, act: ActionBatch, x_std: Tensor) -> Tensor:
        """Direct effect ``[B, G]`` (standardised) of genetic targets on their own measured transcript.

        In each cell the target's level x (log1p) becomes log1p(expm1(x) * r): knockout and
        knockdown keep a learned fraction r (knockdown of strength s keeps 1 - s(1 - r)),
        activation multiplies by 1 + r'. Unmeasured targets (``target_gene = -1``) have none.
        """
        B, A = act.kind.shape
        G = self.cfg.n_genes
        is_gene = (act.kind == Kind.KO) | (act.kind == Kind.KD) | (act.kind == Kind.ACT)
        measured = (act.target_gene >= 0) & is_gene
        if not bool(measured.any()):
            return x_std.new_zeros(B, G)
        idx = act.target_gene.clamp_min(0)  # [B, A]
        x_log = (x_std.gather(1, idx) * self.gene_sd[idx] + self.gene_mean[idx]).clamp_min(0.0)  # [B, A] (the targets' columns only)
        p = self.cis_effect[act.kind] * CIS_SCALE
        keep = torch.sigmoid(p)
        ratio = torch.where(act.kind == Kind.ACT, 1.0 + F.softplus(p), 1.0 - act.strength * (1.0 - keep))
        new = torch.log1p(torch.expm1(x_log) * ratio)
        eff = (new - x_log) / self.gene_sd[idx] * measured.float()  # [B, A]
        out = x_std.new_zeros(B, G + 1)
        out = out.scatter_add(1, torch.where(measured, idx, torch.full_like(idx, G)), eff)
        return out[:, :G]

    def expression_from(self, z_next: Tensor, act: ActionBatch, x_src: Tensor, z_ref: Tensor | None = None,
                        *, r_ref: Tensor | None = None) -> Tensor:
        """Expression ``[B, G]`` of the cells ``x_src`` moved to the latents ``z_next`` by ``act``.

        With ``residual_readout`` the readout predicts a *change*: x_src + R(z_next) - R(z_ref),
        where z_ref is the target encoding of the source cells, so readout error common to both
        cancels and the control action returns the cells themselves. Plus the cis effect.
        ``r_ref`` = R(z_ref) when the caller has it already (queries encode the cells once).
        """
        if self.cfg.residual_readout and r_ref is not None:  # (queries: in place on the readout's fresh output)
            base = self.readout(z_next).add_(x_src).sub_(r_ref) if torch.is_inference_mode_enabled() else \
                x_src + self.readout(z_next) - r_ref
        elif self.cfg.residual_readout:  # (this order of readouts keeps training's gradient sums as they were)
            if z_ref is None:
                z_ref = self.encode_target(x_src)
            base = x_src + self.readout(z_next) - self.readout(z_ref)
        else:
            base = self.readout(z_next)
        return base + self.cis(act, x_src)

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """target <- m * target + (1 - m) * online."""
        for pt, po in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)

    # ------------------------------------------------------------------ loss
    @torch.no_grad()
    def _target_latents(self, x_tgt: Tensor, x_src: Tensor) -> tuple[Tensor, Tensor]:
        """Target-encoder latents ``[B, E, D]`` of the target cells and of the source cells (the residual
        readout's reference), from one target-encoder pass.

        Rows whose source is the target itself (self pairs) reuse the target's encoding. When at most
        ``TARGET_DISTINCT_SHARE`` of the rows left are distinct cells, only the distinct ones are encoded:
        a plate's compound-dose group is one well drawn ``cells_per_group`` times and its sources come
        from a few dozen control wells (the L1000 plate: ~34 distinct of 224 rows, the pass 35 -> 6 ms
        per step on 1 thread). Batches of single cells (Papalexi, the simulator: 90-99% distinct) keep
        the full pass, and with it their exact float rounding."""
        B = x_tgt.shape[0]
        differ = (x_src != x_tgt).any(1)
        rows = torch.cat([x_tgt, x_src[differ]])
        limit = TARGET_DISTINCT_SHARE * rows.shape[0]
        # cheap bound first: equal rows have equal sums, so more distinct sums than the limit = more distinct rows
        few = torch.unique(rows.sum(1)).numel() <= limit
        distinct, inverse = torch.unique(rows, dim=0, return_inverse=True) if few else (rows, None)
        if inverse is not None and distinct.shape[0] <= limit:
            z_both = self.encode_target(distinct)[inverse]
        else:
            z_both = self.encode_target(rows)
        z_tgt = z_both[:B]
        z_src = z_tgt.clone()
        z_src[differ] = z_both[B:]
        return z_tgt, z_src

    def loss(self, batch: JEPABatch, weights: LossWeights = LossWeights()) -> LossOutput:
        """All training losses for one batch (I-JEPA step: target under no_grad, then context)."""
        x_in = batch.x_src.masked_fill(batch.gene_mask, 0.0)
        z_tgt, z_src = self._target_latents(batch.x_tgt, batch.x_src)
        z_ctx = self.encode(x_in, batch.context_mask)  # [B, E, D]
        clamp = None
        scored = batch.target_mask
        if batch.clamp_mask is not None and bool(batch.clamp_mask.any()):
            # intervened slots given as do() inputs: the predictor learns to propagate their change
            clamp = (batch.clamp_mask, z_tgt)
            scored = scored & ~batch.clamp_mask  # a clamped slot is right by construction
        z_hat = self.next(z_ctx, batch.action, context_mask=batch.context_mask, clamp=clamp)

        # JEPA: predicted vs target latents on the scored slots
        tm = scored.unsqueeze(-1).float()
        lat = (F.smooth_l1_loss(z_hat, z_tgt, reduction="none") * tm).sum() / (tm.sum() * z_hat.shape[-1]).clamp_min(1)

        # readouts
        _, s_hat = self.readout_head(z_hat)
        x_hat = self.expression_from(z_hat, batch.action, batch.x_src, z_ref=z_src)
        expr = F.mse_loss(x_hat, batch.x_tgt)
        x_rec, s_rec = self.readout_head(z_tgt)
        recon = F.mse_loss(x_rec, batch.x_tgt)
        s_true = batch.x_tgt @ self.encoder.score_w.T
        score = F.mse_loss(s_rec, s_true) + F.mse_loss(s_hat, s_true)

        energy, effect = _group_terms(x_hat, batch.x_tgt, batch.group, with_effect=bool(weights.effect))

        # anti-collapse (VICReg) on visible context latents, per slot
        cm = batch.context_mask.float().unsqueeze(-1)  # [B, E, 1]
        n = cm.sum(0).clamp_min(2.0)  # [E, 1]
        mean = (z_ctx * cm).sum(0) / n  # [E, D]
        zc = (z_ctx - mean) * cm
        var = (zc**2).sum(0) / (n - 1)  # [E, D]
        std = torch.sqrt(var + 1e-4)
        variance = F.relu(1.0 - std).mean()
        cov = torch.einsum("bed,bef->edf", zc, zc) / (n - 1).unsqueeze(-1)  # [E, D, D]
        off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
        covariance = (off**2).sum((1, 2)).mean() / z_ctx.shape[-1]

        total = (
            weights.latent * lat
            + weights.expr * expr
            + weights.energy * energy
            + weights.recon * recon
            + weights.score * score
            + weights.variance * variance
            + weights.covariance * covariance
            + weights.effect * effect
        )
        with torch.no_grad():
            tgt_std = z_tgt.std(0).mean().item()  # per-slot spread of target latents
            rank = effective_rank(z_tgt.mean(1)) if z_tgt.shape[0] > 2 else float("nan")
        terms = {
            "latent": lat.detach(),
            "expr": expr.detach(),
            "energy": energy.detach(),
            "recon": recon.detach(),
            "score": score.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
            "effect": effect.detach(),
        }
        return LossOutput(total=total, terms=terms, monitor={"target_std": tgt_std, "eff_rank": rank})
