"""Atlas pretraining: fit :class:`bioworld.model.atlas.AtlasNet` on the bundled signature atlas.

``pretrain_atlas`` builds, for every training signature (perturbation ``p`` in context ``k``), the
leave-one-out inputs the module reads — p's mean signature over its *other* training contexts and
k's mean over its *other* training signatures — plus p's knowledge features, and minimises
``1 - Pearson`` with AdamW. ``AtlasModel`` bundles the fitted module with what it needs to answer
(the atlas rows it was trained on, the gene space, the contexts, the knowledge configuration) and
saves as safetensors + JSON (no pickle), atomically; loading re-reads the checksum-verified bundled
atlas and refuses a mismatch.

CLI: ``bioworld pretrain --out DIR [--seed N] [--steps N]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioworld.errors import BioworldError, CheckpointError

__all__ = ["AtlasModel", "PretrainConfig", "pretrain_atlas"]

FORMAT = "bioworld-atlas/1"
NEIGHBOUR_K = 20  # perturbations mixed into the in-context neighbour signature
NEIGHBOUR_T = 0.1  # softmax temperature over cosine similarity
WEIGHTS = "atlas.safetensors"
META = "atlas.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Training settings of the atlas module (stored with it)."""

    steps: int = 1000  # optimiser steps
    batch_size: int = 128  # signatures per step
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    drop_signature: float = 0.2  # P(hide a perturbation's other-context signatures): learn the knowledge path
    basis_dim: int = 64  # atlas principal axes the module starts from
    hidden: int = 256  # MLP width
    seed: int = 0  # seed of initialisation, batches and the basis
    num_threads: int = 1  # torch intra-op threads (fixed for reproducibility)
    use_knowledge: bool = True  # False: the knowledge features are left out (ablation)
    shuffle_retrieval: bool = False  # True: each compound's other-context signatures are another's (ablation)
    redraw_retrieval: bool = False  # with shuffle_retrieval: that other compound drawn afresh for every row, every step
    knowledge_retrieval: bool = False  # True: also read, in the context, the signatures of knowledge-related perturbations
    neighbour_residual: bool = False  # True: also read, in the context, how p's look-alikes deviate there from their own
    # signatures elsewhere (their residual over "own mean elsewhere + this context's mean")
    drop_blinds_knowledge: bool = False  # True: a row whose signatures elsewhere are hidden also gets its knowledge
    # features as if it had never been measured (no own signature in their signature block): what an unseen one has
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (as TrainConfig.device); the model returns on it
    ranked_loss: float = 0.0  # weight w of the Pearson over each target's ranked (non-zero) genes in the loss:
    # 1 - ((1 - w) Pearson over all genes + w Pearson over the ranked ones); 0 = the loss over all genes only

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "basis_dim", "hidden", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BioworldError(f"PretrainConfig.{name}={v!r}; expected a positive int.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BioworldError(f"PretrainConfig.seed={self.seed!r}; expected an int >= 0.")
        if not 0.0 <= float(self.drop_signature) < 1.0:
            raise BioworldError(f"PretrainConfig.drop_signature={self.drop_signature!r}; expected a value in [0, 1).")
        if not 0.0 <= float(self.ranked_loss) <= 1.0:
            raise BioworldError(f"PretrainConfig.ranked_loss={self.ranked_loss!r}; expected a value in [0, 1].")
        if not float(self.lr) > 0:
            raise BioworldError(f"PretrainConfig.lr={self.lr!r}; expected a positive float.")
        if self.redraw_retrieval and not self.shuffle_retrieval:
            raise BioworldError("PretrainConfig.redraw_retrieval=True needs shuffle_retrieval=True.")
        if self.knowledge_retrieval and not self.use_knowledge:
            raise BioworldError("PretrainConfig.knowledge_retrieval=True needs use_knowledge=True (it reads the curated "
                                "compound -> target and mechanism links).")
        if not isinstance(self.device, str):
            raise BioworldError(f"PretrainConfig.device={self.device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        from bioworld.model.config import config_from_dict

        return config_from_dict(cls, d, "pretrain config")


# ------------------------------------------------------------------------------- inputs
class _Inputs:
    """Leave-one-out inputs over an atlas restricted to ``train_rows`` (sums kept, so any row is cheap)."""

    def __init__(self, atlas: Any, train_rows: np.ndarray, basis: np.ndarray,
                 retrieval_seed: int | None = None, redraw: bool = False, relations: np.ndarray | None = None,
                 residual: bool = False) -> None:
        from bioworld.knowledge import zscore_rows

        self.atlas = atlas
        self.Z = zscore_rows(atlas.X)  # [N, G]
        self.train = np.zeros(len(atlas.obs), bool)
        self.train[np.asarray(train_rows, int)] = True
        self.keys = sorted(atlas.obs["key"].unique())
        self.contexts = sorted(atlas.obs["context"].unique())
        self.key_id = atlas.obs["key"].map({k: i for i, k in enumerate(self.keys)}).to_numpy()
        self.ctx_id = atlas.obs["context"].map({c: i for i, c in enumerate(self.contexts)}).to_numpy()
        from scipy import sparse

        tr = np.flatnonzero(self.train)
        ones = np.ones(len(tr))
        by_key = sparse.csr_matrix((ones, (self.key_id[tr], np.arange(len(tr)))), shape=(len(self.keys), len(tr)))
        by_ctx = sparse.csr_matrix((ones, (self.ctx_id[tr], np.arange(len(tr)))), shape=(len(self.contexts), len(tr)))
        Ztr = self.Z[tr]
        self.key_sum = np.asarray(by_key @ Ztr, np.float64)  # [n_keys, G]
        self.key_n = np.asarray(by_key.sum(axis=1)).ravel()
        self.ctx_sum = np.asarray(by_ctx @ Ztr, np.float64)  # [n_contexts, G]
        self.ctx_n = np.asarray(by_ctx.sum(axis=1)).ravel()
        # neighbours: each key's training mean signature in basis space, unit-normalised ("who behaves like p")
        self.basis = np.asarray(basis, np.float32)  # [G, S]
        mean = (self.key_sum / np.maximum(self.key_n, 1)[:, None]).astype(np.float32) @ self.basis
        self.key_unit = (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-9)).astype(np.float32)
        self.ctx_rows = {c: tr[self.ctx_id[tr] == c] for c in range(len(self.contexts))}
        # donor[k]: whose signatures elsewhere stand for key k (itself, unless the retrieval ablation is on)
        self.donor = np.arange(len(self.keys)) if retrieval_seed is None else retrieval_donors(self.keys, retrieval_seed)
        # redraw: every call gives each compound row a fresh random other compound (noise, not a fixed code)
        self._redraw = np.random.default_rng(retrieval_seed) if redraw and retrieval_seed is not None else None
        # relations[i, j]: curated relatedness of key i to key j (KnowledgeBase.key_relations; None = not used)
        self.relations = relations
        self.kfeat_blind: np.ndarray | None = None  # training only: knowledge features as if never measured
        # E[r] (training rows r of key q in context k; else 0): Z[r] minus q's z-scored mean over its other training
        # contexts (0 where it has none): what k does to q beyond q's response elsewhere (neighbour_residual only)
        self.E: np.ndarray | None = None
        if residual:
            kn = self.key_n[self.key_id[tr]] - 1
            zc = (self.key_sum[self.key_id[tr]] - Ztr) / np.maximum(kn, 1)[:, None]
            self.E = np.zeros_like(self.Z)
            self.E[tr] = Ztr - zscore_rows(zc) * (kn > 0)[:, None]

    def related(self, rel: np.ndarray, ctx_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(zt [n, G], has_t [n])``: in each row's context, the relation-weighted mean of the training
        signatures of the perturbations that ``rel`` (``[n, n_keys]``, one row of relations per query)
        relates to the query, z-scored; zero and ``has_t = 0`` where none of them was measured there."""
        from bioworld.knowledge import zscore_rows

        zt = np.zeros((len(ctx_ids), self.Z.shape[1]), np.float32)
        has_t = np.zeros(len(ctx_ids), np.float32)
        for c in np.unique(ctx_ids):
            sel = np.flatnonzero(ctx_ids == c)
            cand = self.ctx_rows.get(int(c), np.zeros(0, int))
            if len(cand) == 0:
                continue
            w = rel[sel][:, self.key_id[cand]]  # [s, m]
            tot = w.sum(1)
            ok = tot > 0
            if ok.any():
                zt[sel[ok]] = (w[ok] @ self.Z[cand]) / tot[ok, None]
                has_t[sel[ok]] = 1.0
        return zscore_rows(zt) * has_t[:, None], has_t

    def neighbours(self, zc: np.ndarray, has_c: np.ndarray, key_ids: np.ndarray, ctx_ids: np.ndarray,
                   source: np.ndarray | None = None) -> np.ndarray:
        """``[n, G]``: in each row's context, the mean of the training signatures of the perturbations whose
        signatures elsewhere look most like ``zc`` (softmax over cosine, temperature ``NEIGHBOUR_T``,
        top ``NEIGHBOUR_K``; the perturbation itself excluded), z-scored. Zero where ``has_c`` is 0. ``source``
        (``[N, G]``, e.g. :attr:`E`): mix its rows instead of the signatures, and return the mix unscaled."""
        from bioworld.knowledge import zscore_rows

        out = np.zeros_like(zc)
        src = self.Z if source is None else source
        q = zc @ self.basis  # [n, S]
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-9)
        for i in np.flatnonzero(has_c > 0):
            cand = self.ctx_rows.get(int(ctx_ids[i]), np.zeros(0, int))
            cand = cand[self.key_id[cand] != key_ids[i]]
            if len(cand) == 0:
                continue
            sims = self.key_unit[self.key_id[cand]] @ q[i]
            top = np.argsort(-sims)[:NEIGHBOUR_K]
            w = np.exp((sims[top] - sims[top].max()) / NEIGHBOUR_T)
            out[i] = (w / w.sum()) @ src[cand[top]]
        return (zscore_rows(out) if source is None else out) * (has_c[:, None] > 0)

    def residuals(self, zc: np.ndarray, has_c: np.ndarray, zk: np.ndarray, key_ids: np.ndarray,
                  ctx_ids: np.ndarray) -> np.ndarray:
        """``zr [n, G]``: in each row's context, the look-alikes' (as :meth:`neighbours`) mean of :attr:`E`, minus the
        row's context mean ``zk``: how perturbations that behave like p elsewhere deviate here from "own response
        elsewhere + this context's mean" (no input holds the row's own signature). Zero where ``has_c`` is 0."""
        if self.E is None:
            raise ValueError("these inputs were built without residual=True")
        mix = self.neighbours(zc, has_c, key_ids, ctx_ids, source=self.E)
        return ((mix - zk) * (has_c[:, None] > 0)).astype(np.float32)

    def for_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(zc [n, G], has_c [n], zk [n, G])`` for atlas rows, each leaving itself out."""
        from bioworld.knowledge import zscore_rows

        rows = np.asarray(rows, int)
        donor = self.donor[self.key_id[rows]]
        if self._redraw is not None:
            cmp = np.flatnonzero(self.donor != np.arange(len(self.keys)))
            pick = cmp[self._redraw.integers(len(cmp), size=len(rows))]
            pick = np.where(pick == self.key_id[rows], donor, pick)  # never the row's own compound
            donor = np.where(donor != self.key_id[rows], pick, donor)
        # leave the row itself out only where its own key supplies zc (the donor's sums never hold it)
        own = (self.train[rows] & (donor == self.key_id[rows])).astype(np.float64)[:, None]
        kn = self.key_n[donor] - own[:, 0]
        zc = (self.key_sum[donor] - own * self.Z[rows]) / np.maximum(kn, 1)[:, None]
        own = self.train[rows].astype(np.float64)[:, None]
        cn = self.ctx_n[self.ctx_id[rows]] - own[:, 0]
        zk = (self.ctx_sum[self.ctx_id[rows]] - own * self.Z[rows]) / np.maximum(cn, 1)[:, None]
        has_c = (kn > 0).astype(np.float32)
        zc = (zscore_rows(zc) * has_c[:, None]).astype(np.float32)
        zn = self.neighbours(zc, has_c, self.key_id[rows], self.ctx_id[rows])
        return zc, has_c, zscore_rows(zk), zn

    def for_query(self, key: str | None, context: str) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, int]:
        """Inputs for perturbation ``key`` in ``context`` from the training rows (no row left out)."""
        from bioworld.knowledge import zscore_rows

        ci = self.contexts.index(context)
        zk = zscore_rows(self.ctx_sum[ci] / max(self.ctx_n[ci], 1))
        if key in self.keys and self.key_n[self.donor[self.keys.index(key)]] > 0:
            ki = self.keys.index(key)
            di = self.donor[ki]
            zc = zscore_rows(self.key_sum[di] / self.key_n[di]).astype(np.float32)
            zn = self.neighbours(zc[None], np.ones(1, np.float32), np.array([ki]), np.array([ci]))[0]
            return zc, 1.0, zk, zn, ci
        return np.zeros_like(zk), 0.0, zk, np.zeros_like(zk), ci


def _to_batch(arrays: Sequence[np.ndarray], zr: np.ndarray | None, device: Any) -> Any:
    """An :class:`~bioworld.model.atlas.AtlasBatch` on ``device`` from its positional arrays (+ ``zr``)."""
    from bioworld.model.atlas import AtlasBatch

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return AtlasBatch(*(t(a) for a in arrays), zr=None if zr is None else t(zr))


def retrieval_donors(keys: Sequence[str], seed: int) -> np.ndarray:
    """Ablation: ``donor[i]`` is the key whose signatures stand in for key ``i``'s signatures elsewhere. The
    compound keys (``cmp:``) form one random cycle (seeded), so every compound gets another compound's
    signatures; other keys keep their own."""
    donor = np.arange(len(keys))
    cmp = np.flatnonzero([k.startswith("cmp:") for k in keys])
    order = cmp[np.random.default_rng(seed).permutation(len(cmp))]
    donor[order] = np.roll(order, 1)
    return donor


def _knowledge_table(kb: Any, keys: Sequence[str], blind: bool = False) -> np.ndarray:
    """``[len(keys), F]`` knowledge features of atlas keys (``cmp:x`` compounds, ``kd:G`` genes); ``blind``:
    each as if it had never been measured (its own atlas signatures left out of its features)."""
    genes = [k[3:] for k in keys if k.startswith("kd:")]
    cmps = [k[4:] for k in keys if k.startswith("cmp:")]
    out = np.zeros((len(keys), kb.dim), np.float32)
    gf = dict(zip(genes, kb.gene_features(genes, blind=blind)[0])) if genes else {}
    cf = dict(zip(cmps, kb.compound_features(cmps, blind=blind)[0])) if cmps else {}
    for i, k in enumerate(keys):
        out[i] = gf[k[3:]] if k.startswith("kd:") else cf[k[4:]]
    return out


# ------------------------------------------------------------------------------- model
class AtlasModel:
    """A fitted :class:`~bioworld.model.atlas.AtlasNet` with the atlas rows and knowledge it used."""

    def __init__(self, module: Any, inputs: _Inputs, kfeat: np.ndarray, knowledge: Any, config: PretrainConfig,
                 meta: dict[str, Any]) -> None:
        self.module = module
        self.inputs = inputs
        self.kfeat = kfeat  # [n_keys, F]
        self.knowledge = knowledge  # KnowledgeBase or None (built lazily for unseen perturbations)
        self.config = config
        self.meta = meta

    @property
    def genes(self) -> list[str]:
        return list(self.inputs.atlas.genes)

    @property
    def contexts(self) -> list[str]:
        return list(self.inputs.contexts)

    def _kb(self) -> Any:
        if self.knowledge is None:
            from bioworld.knowledge import KnowledgeBase, KnowledgeConfig

            self.knowledge = KnowledgeBase(KnowledgeConfig.from_dict(self.meta["knowledge_config"]))
        return self.knowledge

    def knowledge_features(self, keys: Sequence[str]) -> np.ndarray:
        """``[n, F]`` knowledge features (stored for atlas keys, computed for others)."""
        pos = {k: i for i, k in enumerate(self.inputs.keys)}
        out = np.zeros((len(keys), self.kfeat.shape[1]), np.float32)
        missing = [k for k in keys if k not in pos]
        extra = dict(zip(missing, _knowledge_table(self._kb(), missing))) if missing and self.kfeat.shape[1] else {}
        for i, k in enumerate(keys):
            if k in pos:
                out[i] = self.kfeat[pos[k]]
            elif k in extra:
                out[i] = extra[k]
        return out

    @torch.no_grad()
    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """Predicted signatures ``[n, G]`` for atlas rows (each row's own signature left out)."""
        rows = np.asarray(rows, int)
        zc, has_c, zk, zn = self.inputs.for_rows(rows)
        ctx = self.inputs.ctx_id[rows].astype(np.int64)
        kf = self.kfeat[self.inputs.key_id[rows]] if self.kfeat.shape[1] else np.zeros((len(rows), 0), np.float32)
        extra = self._related(self.inputs.key_id[rows], ctx)
        zr = self._residuals(zc, has_c, zk, self.inputs.key_id[rows], ctx)
        self.module.eval()
        return self.module(self._batch(zc, has_c, zk, zn, ctx, kf, *extra, zr=zr)).cpu().numpy()

    def _residuals(self, zc: np.ndarray, has_c: np.ndarray, zk: np.ndarray, key_ids: np.ndarray,
                   ctx: np.ndarray) -> np.ndarray | None:
        """``zr`` when the module reads neighbour residuals, else None (``key_ids``: -1 for a key it lacks)."""
        if not self.module.cfg.neighbour_residual:
            return None
        return self.inputs.residuals(zc, has_c, zk, key_ids, ctx)

    def _related(self, key_ids: np.ndarray, ctx: np.ndarray, keys: Sequence[str] | None = None) -> tuple:
        """``(zt, has_t)`` when the module reads knowledge retrieval, else ``()``; ``key_ids`` index the
        model's keys, ``-1`` for a key it does not have (then ``keys`` names it)."""
        if not self.module.cfg.knowledge_retrieval:
            return ()
        rel = np.zeros((len(key_ids), len(self.inputs.keys)), np.float32)
        known = key_ids >= 0
        rel[known] = self.inputs.relations[key_ids[known]]
        if (~known).any():
            rel[~known] = self._kb().key_relations([keys[i] for i in np.flatnonzero(~known)], self.inputs.keys)
        return self.inputs.related(rel, ctx)

    @torch.no_grad()
    def predict(self, keys: Sequence[str], context: str) -> np.ndarray:
        """Predicted signatures ``[n, G]`` of perturbation keys (``cmp:x`` / ``kd:G``) in an atlas context."""
        self.inputs.atlas.check_context(context)
        parts = [self.inputs.for_query(k, context) for k in keys]
        zc = np.stack([p[0] for p in parts]).astype(np.float32)
        has_c = np.array([p[1] for p in parts], np.float32)
        zk = np.stack([p[2] for p in parts]).astype(np.float32)
        zn = np.stack([p[3] for p in parts]).astype(np.float32)
        ctx = np.array([p[4] for p in parts], np.int64)
        kf = self.knowledge_features(keys) if self.kfeat.shape[1] else np.zeros((len(keys), 0), np.float32)
        pos = {k: i for i, k in enumerate(self.inputs.keys)}
        ids = np.array([pos.get(k, -1) for k in keys])
        extra = self._related(ids, ctx, keys)
        zr = self._residuals(zc, has_c, zk, ids, ctx)
        self.module.eval()
        return self.module(self._batch(zc, has_c, zk, zn, ctx, kf, *extra, zr=zr)).cpu().numpy()

    @property
    def device(self) -> torch.device:
        """Where the module is (queries run there; answers come back as numpy on the CPU)."""
        return next(self.module.parameters()).device

    def to(self, device: str) -> "AtlasModel":
        """Answer on ``device`` (``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'auto'``); an unavailable one is refused."""
        from bioworld.train.config import resolve_device

        self.module.to(resolve_device(device))
        return self

    def _batch(self, *arrays: np.ndarray, zr: np.ndarray | None = None) -> Any:
        return _to_batch(arrays, zr, self.device)

    # --------------------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``atlas.safetensors`` + ``atlas.json`` into ``directory`` all-or-nothing (created if needed)."""
        from safetensors.torch import save as save_bytes

        from bioworld._atomic import write_files

        folder = Path(directory)
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tensors["kfeat"] = torch.from_numpy(np.ascontiguousarray(self.kfeat))
        tensors["basis0"] = torch.from_numpy(np.ascontiguousarray(self.inputs.basis))
        if self.inputs.relations is not None:
            tensors["relations"] = torch.from_numpy(np.ascontiguousarray(self.inputs.relations))
        blob = save_bytes(tensors)
        meta = {**self.meta, "format": FORMAT, "weights_sha256": hashlib.sha256(blob).hexdigest(),
                "pretrain_config": self.config.to_dict(), "module_config": self.module.cfg.to_dict()}
        text = json.dumps(meta, indent=1, sort_keys=True)
        write_files([(folder / WEIGHTS, lambda tmp: Path(tmp).write_bytes(blob)),
                     (folder / META, lambda tmp: Path(tmp).write_text(text))], what="atlas model")
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AtlasModel":
        """Load a saved atlas model; refuses a changed file, another format or another bundled atlas."""
        from safetensors.torch import load_file

        from bioworld.knowledge import load_atlas
        from bioworld.model.atlas import AtlasConfig, AtlasNet

        folder = Path(directory)
        wpath, mpath = folder / WEIGHTS, folder / META
        if not wpath.is_file() or not mpath.is_file():
            raise CheckpointError(
                f"{folder} holds no atlas model: expected {WEIGHTS} and {META}. Fix: pass the folder written by "
                "'bioworld pretrain --out DIR'."
            )
        try:
            meta = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{mpath} is not valid JSON ({exc.__class__.__name__}); re-run 'bioworld pretrain'.") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{mpath}: format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}.")
        digest = hashlib.sha256(wpath.read_bytes()).hexdigest()
        if digest != meta.get("weights_sha256"):
            raise CheckpointError(
                f"{wpath} has SHA-256 {digest}, but {META} expects {meta.get('weights_sha256')}: the weights were "
                "changed after saving. Fix: re-run 'bioworld pretrain'."
            )
        atlas = load_atlas(min_signatures=int(meta["min_signatures"]))
        if atlas.genes[:5] != meta["genes_head"] or len(atlas.genes) != int(meta["n_genes"]):
            raise CheckpointError(f"{folder}: the bundled atlas' gene space differs from the one this model was trained on.")
        names = atlas.obs["signature"].tolist()
        pos = {n: i for i, n in enumerate(names)}
        missing = [n for n in meta["train_signatures"] if n not in pos]
        if missing:
            raise CheckpointError(f"{folder}: {len(missing)} training signatures are not in the bundled atlas (e.g. {missing[:2]}).")
        tensors = load_file(str(wpath))
        if "basis0" not in tensors:
            raise CheckpointError(f"{wpath} lacks the tensor 'basis0'; re-run 'bioworld pretrain'.")
        pcfg = PretrainConfig.from_dict(meta["pretrain_config"])
        cfg = AtlasConfig.from_dict(meta["module_config"])
        if cfg.knowledge_retrieval and "relations" not in tensors:
            raise CheckpointError(f"{wpath} lacks the tensor 'relations' its config reads; re-run 'bioworld pretrain'.")
        inputs = _Inputs(atlas, np.array([pos[n] for n in meta["train_signatures"]]), tensors["basis0"].numpy(),
                         retrieval_seed=pcfg.seed if pcfg.shuffle_retrieval else None, redraw=pcfg.redraw_retrieval,
                         relations=tensors["relations"].numpy() if cfg.knowledge_retrieval else None,
                         residual=cfg.neighbour_residual)
        module = AtlasNet(cfg)
        state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{wpath} does not fit its config: {str(exc).splitlines()[0]}") from None
        return cls(module, inputs, tensors["kfeat"].numpy(), None, pcfg, meta)


# ------------------------------------------------------------------------------- training
def pretrain_atlas(
    *,
    atlas: Any = None,
    train_rows: np.ndarray | None = None,
    knowledge: Any = None,
    config: PretrainConfig | None = None,
    progress: bool = True,
) -> AtlasModel:
    """Fit the atlas module.

    Parameters
    ----------
    atlas
        A :class:`~bioworld.knowledge.SignatureAtlas` (default: the bundled one).
    train_rows
        Atlas rows to learn from (default: all). Benchmarks pass their training split.
    knowledge
        A :class:`~bioworld.knowledge.KnowledgeBase`; default: built from the bundled sources over the
        training rows only (so held-out signatures never reach the features). Ignored when
        ``config.use_knowledge`` is False.
    config
        :class:`PretrainConfig`.
    """
    from bioworld.knowledge import KnowledgeBase, SignatureAtlas, load_atlas
    from bioworld.model.atlas import AtlasConfig, AtlasNet

    cfg = config or PretrainConfig()
    t0 = time.perf_counter()
    atlas = atlas or load_atlas()
    rows = np.arange(len(atlas.obs)) if train_rows is None else np.unique(np.asarray(train_rows, int))
    if len(rows) < 2:
        raise BioworldError(f"pretraining needs at least 2 training signatures; got {len(rows)}.")
    basis0 = atlas.basis(cfg.basis_dim, rows=rows, seed=cfg.seed)  # [G, S] principal axes of the training rows
    inputs = _Inputs(atlas, rows, basis0, retrieval_seed=cfg.seed if cfg.shuffle_retrieval else None,
                     redraw=cfg.redraw_retrieval, residual=cfg.neighbour_residual)
    if cfg.use_knowledge:
        if knowledge is None:
            seen = SignatureAtlas(atlas.X[rows], atlas.obs.iloc[rows].reset_index(drop=True), atlas.genes)
            knowledge = KnowledgeBase(atlas=seen)
        kfeat = _knowledge_table(knowledge, inputs.keys)
        if cfg.drop_blinds_knowledge:
            inputs.kfeat_blind = _knowledge_table(knowledge, inputs.keys, blind=True)
        if cfg.knowledge_retrieval:
            inputs.relations = knowledge.key_relations(inputs.keys, inputs.keys)
    else:
        knowledge, kfeat = None, np.zeros((len(inputs.keys), 0), np.float32)
    from bioworld.train.config import resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    basis = torch.from_numpy(basis0)
    mcfg = AtlasConfig(n_genes=len(atlas.genes), n_contexts=len(inputs.contexts), knowledge_dim=kfeat.shape[1],
                       basis_dim=cfg.basis_dim, hidden=cfg.hidden, knowledge_retrieval=cfg.knowledge_retrieval,
                       neighbour_residual=cfg.neighbour_residual)
    module = AtlasNet(mcfg, basis).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        module.train()
        bar = _bar(cfg.steps, progress)
        for step in range(cfg.steps):
            b = rng.choice(rows, size=min(cfg.batch_size, len(rows)), replace=False)
            *arrays, zr = _train_arrays(inputs, kfeat, b, cfg, rng)
            batch = _to_batch(arrays, zr, device)
            ranked = torch.from_numpy(inputs.atlas.X[b] != 0).to(device) if cfg.ranked_loss > 0 else None
            loss = module.loss(batch, torch.from_numpy(inputs.Z[b]).to(device), ranked, float(cfg.ranked_loss))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
    finally:
        torch.set_num_threads(threads)
    from bioworld.data import bundled_path
    from bioworld.knowledge import source_records
    from bioworld.knowledge.atlas import ATLAS_FILE, MIN_SIGNATURES_PER_GENE

    meta = {
        "min_signatures": MIN_SIGNATURES_PER_GENE, "n_genes": len(atlas.genes), "genes_head": atlas.genes[:5],
        "contexts": inputs.contexts, "train_signatures": atlas.obs["signature"].iloc[rows].tolist(),
        "atlas_sha256": hashlib.sha256(bundled_path(ATLAS_FILE).read_bytes()).hexdigest(),
        "knowledge_config": knowledge.config.to_dict() if knowledge is not None else None,
        "knowledge_sources": knowledge.describe()["sources"] if knowledge is not None else
        source_records(["signature_atlas"]),
        "train_seconds": round(time.perf_counter() - t0, 1), "final_loss": float(loss.item()),
    }
    module.eval()
    return AtlasModel(module, inputs, kfeat, knowledge, cfg, meta)


def _train_arrays(inputs: _Inputs, kfeat: np.ndarray, b: np.ndarray, cfg: PretrainConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """One training batch's inputs for atlas rows ``b`` (the batch's positional arrays, then ``zr`` or None): a share
    ``cfg.drop_signature`` of the rows answer as for a perturbation with no signature elsewhere, 10% as for an
    unseen context."""
    zc, has_c, zk, zn = inputs.for_rows(b)
    drop = rng.random(len(b)) < cfg.drop_signature
    zc[drop] = 0.0
    zn[drop] = 0.0
    has_c[drop] = 0.0
    ctx = inputs.ctx_id[b].astype(np.int64)
    ctx[rng.random(len(b)) < 0.1] = -1  # sometimes answer as for an unseen context
    kf = kfeat[inputs.key_id[b]]
    if cfg.drop_blinds_knowledge and kf.shape[1]:
        kf[drop] = inputs.kfeat_blind[inputs.key_id[b][drop]]
    extra = inputs.related(inputs.relations[inputs.key_id[b]], inputs.ctx_id[b]) if cfg.knowledge_retrieval else ()
    zr = inputs.residuals(zc, has_c, zk, inputs.key_id[b], inputs.ctx_id[b]) if cfg.neighbour_residual else None
    return (zc, has_c, zk, zn, ctx, kf, *extra, zr)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="atlas pretraining", unit="step", leave=False)


PRETRAINED = "pretrained/atlas"  # bundled folder (under bioworld/_data) of the shipped atlas model
_PRETRAINED_CACHE: dict[str, AtlasModel] = {}


def load_pretrained() -> AtlasModel:
    """The atlas model shipped with the package (``bioworld pretrain --seed 0 --knowledge-retrieval`` on the
    whole bundled atlas),
    checksum-verified like every bundled file; loaded once per process."""
    from bioworld.data import bundled_path

    if "default" not in _PRETRAINED_CACHE:
        folder = bundled_path(f"{PRETRAINED}/{META}").parent
        bundled_path(f"{PRETRAINED}/{WEIGHTS}")  # checks the weights against SHA256SUMS too
        _PRETRAINED_CACHE["default"] = AtlasModel.load(folder)
    return _PRETRAINED_CACHE["default"]
