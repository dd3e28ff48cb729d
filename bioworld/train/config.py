"""Typed training configuration, stored in every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bioworld.errors import BioworldError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a world model is trained (defaults fit Papalexi on 2 CPU cores)."""

    seed: int = 0  # one seed drives parameter init, batch sampling and masking
    max_steps: int = 800  # optimiser steps (Papalexi leave-targets-out, seed 0: top-20 MSE 0.202 / 0.199 / 0.203 at 400 / 800 / 1200)
    lr: float = 1e-3  # peak AdamW learning rate (after warmup, cosine to lr_min)
    lr_min: float = 1e-5  # final learning rate
    warmup_steps: int = 100  # linear warmup
    weight_decay: float = 0.05  # AdamW weight decay
    grad_clip: float = 1.0  # global grad-norm clip
    ema_start: float = 0.99  # target-encoder momentum at step 0 ...
    ema_end: float = 0.999  # ... rising linearly to this at the last step
    groups_per_batch: int = 8  # perturbation groups per batch (transition pairs)
    cells_per_group: int = 12  # perturbed cells drawn per group
    self_pairs: int = 32  # control cells per batch for pure masked-entity prediction
    mask_mode: str = "entity"  # "entity" (method) | "gene" (patch-style ablation) | "none" (ablation)
    self_mask_ratio: tuple[float, float] = (0.15, 0.5)  # fraction of slots hidden in self pairs
    transition_mask_ratio: tuple[float, float] = (0.0, 0.25)  # fraction hidden in perturbation pairs
    structured_mask_prob: float = 0.5  # P(hide all slots the action touches)
    clamp_prob: float = 0.0  # P(a transition becomes a do()-transition: touched slots clamped to the perturbed latents, action withheld)
    # loss weights (see bioworld.model.jepa.LossWeights)
    w_latent: float = 1.0
    w_expr: float = 1.0
    w_energy: float = 0.5
    w_recon: float = 1.0
    w_score: float = 0.1
    w_variance: float = 1.0
    w_covariance: float = 0.04
    # collapse monitor: stop when the target latents' mean per-slot std stays below this
    collapse_std: float = 1e-3
    collapse_patience: int = 50  # consecutive steps under collapse_std before stopping
    checkpoint_every: int = 200  # steps between resumable training-state checkpoints (0 = never)
    log_every: int = 10  # steps between progress-bar updates
    # out-of-core (backed .h5ad) training only: block-buffer sampling, see bioworld.data.collate.BlockBufferSampler
    block_size: int = 256  # contiguous cells per block read from disk
    buffer_blocks: int = 64  # blocks pooled in the in-memory buffer (buffer = block_size x buffer_blocks cells)
    buffer_refresh: int = 50  # batches drawn from one buffer before the next is read
    resident_controls: int = 20000  # control cells kept in memory for pairing (seeded subsample)
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available); under torchrun "cuda" = cuda:LOCAL_RANK
    num_threads: int = 0  # torch intra-op threads; 0 = auto: half the cores, 1..8 (2 threads on 2 busy cores ran ~10x slower than 1)

    def resolved_threads(self) -> int:
        """Threads training will use (``num_threads`` or the automatic choice)."""
        import os

        return self.num_threads or max(1, min(8, (os.cpu_count() or 2) // 2))

    def resolved_device(self) -> str:
        """The torch device training runs on; a clear error when the requested one is unavailable."""
        import os

        import torch

        dev = str(self.device).strip().lower()
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cpu":
            return dev
        if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
            if not torch.cuda.is_available():
                raise BioworldError(
                    f"device={self.device!r} but torch sees no CUDA GPU (torch {torch.__version__}, "
                    f"cuda build: {torch.version.cuda or 'none'}); expected a machine with a GPU and a CUDA build of "
                    "torch. Fix: use device='cpu' (or 'auto'), or install a CUDA torch on a GPU machine."
                )
            if dev == "cuda":
                dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            if int(dev[5:]) >= torch.cuda.device_count():
                raise BioworldError(f"device={dev!r} but only {torch.cuda.device_count()} GPU(s) are visible")
            return dev
        raise BioworldError(f"device={self.device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BioworldError(
                f"unknown training config field(s) {unknown}; expected a subset of {sorted(known)}"
            )
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if clean.get("mask_mode", "entity") not in ("entity", "gene", "none"):
            raise BioworldError(
                f"mask_mode={clean['mask_mode']!r}; expected 'entity', 'gene' or 'none'"
            )
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read a JSON file of overrides (fields not given keep their defaults)."""
        p = Path(path)
        if not p.is_file():
            raise BioworldError(f"config file {str(p)!r} does not exist; pass a JSON file of TrainConfig fields")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise BioworldError(f"config file {str(p)!r} is not valid JSON ({e}); expected an object of TrainConfig fields") from None
        if not isinstance(d, dict):
            raise BioworldError(f"config file {str(p)!r} holds a {type(d).__name__}; expected a JSON object")
        return cls.from_dict({**cls().to_dict(), **d})
