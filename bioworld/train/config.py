"""Typed training configuration, stored in every checkpoint."""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bioworld.data.collate import MaskingConfig
from bioworld.errors import BioworldError
from bioworld.model.jepa import LossWeights

# masking and loss defaults are written once, in their own dataclasses; the flat fields below read them
_MASK, _LOSS = MaskingConfig(), LossWeights()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a world model is trained (defaults fit Papalexi on 2 CPU cores)."""

    seed: int = 0  # one seed drives parameter init, batch sampling and masking
    # optimiser steps; 0 = sized to the data: auto_epochs passes over the perturbed training cells, clamped to
    # [min_steps, step_cap], with early stopping on held-in validation cells (Papalexi: 442 steps at most)
    max_steps: int = 0
    auto_epochs: float = 3.0  # max_steps=0: passes over the perturbed training cells
    group_visits: float = 10.0  # max_steps=0: and at least this many draws of each training perturbation group
    min_steps: int = 150  # max_steps=0: fewest steps (also the earliest early stop)
    step_cap: int = 800  # max_steps=0: most steps
    val_fraction: float = 0.1  # max_steps=0: share of each training perturbation's cells held in for early stopping
    val_min_cells: int = 20  # perturbations with fewer cells keep all theirs for training (no validation from them)
    eval_every: int = 25  # steps between validation passes
    patience: int = 4  # validation passes without a 1% lower error before training stops (best weights kept)
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
    mask_mode: str = _MASK.mode  # "entity" (method) | "gene" (patch-style ablation) | "none" (ablation)
    self_mask_ratio: tuple[float, float] = _MASK.self_ratio  # fraction of slots hidden in self pairs
    transition_mask_ratio: tuple[float, float] = _MASK.transition_ratio  # fraction hidden in perturbation pairs
    structured_mask_prob: float = _MASK.structured_prob  # P(hide all slots the action touches)
    clamp_prob: float = 0.0  # P(a transition becomes a do()-transition: touched slots clamped to the perturbed latents, action withheld)
    # loss weights (defaults and meaning: bioworld.model.jepa.LossWeights)
    w_latent: float = _LOSS.latent
    w_expr: float = _LOSS.expr
    w_energy: float = _LOSS.energy
    w_recon: float = _LOSS.recon
    w_score: float = _LOSS.score
    w_variance: float = _LOSS.variance
    w_covariance: float = _LOSS.covariance
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

    def __post_init__(self) -> None:
        _check_values(self)

    def resolved_threads(self) -> int:
        """Threads training will use (``num_threads`` or the automatic choice)."""
        import os

        return self.num_threads or max(1, min(8, (os.cpu_count() or 2) // 2))

    def resolved_device(self) -> str:
        """The torch device training runs on; a clear error when the requested one is unavailable."""
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BioworldError(
                f"unknown training config field(s) {unknown}; expected a subset of {sorted(known)}. Fix: "
                + "".join(f"did you mean {close[0]!r} for {u!r}? " for u in unknown
                          if (close := difflib.get_close_matches(u, list(known), n=1)))
                + "remove or rename the unknown fields."
            )
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read a JSON file of overrides (fields not given keep their defaults)."""
        p = Path(path)
        if not p.is_file():
            raise BioworldError(f"config file {str(p)!r} does not exist; expected a JSON file of TrainConfig fields. "
                                "Fix: check the path.")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise BioworldError(f"config file {str(p)!r} is not valid JSON ({e}); expected an object of TrainConfig fields such as "
                                f"{{\"max_steps\": 500, \"seed\": 1}}. Fix: correct the file, or drop --config.") from None
        if not isinstance(d, dict):
            raise BioworldError(f"config file {str(p)!r} holds a {type(d).__name__}; expected a JSON object of TrainConfig "
                                "fields. Fix: write it as {\"max_steps\": 500, ...}.")
        try:
            return cls.from_dict({**cls().to_dict(), **d})
        except BioworldError as e:
            raise BioworldError(f"config file {str(p)!r}: {e}") from None


#: Allowed values of each field: (kind, low, high); kind "int" (not bool), "float" (finite), "prob" ([0, 1]).
_INT_MIN = {"seed": 0, "max_steps": 0, "min_steps": 1, "step_cap": 1, "val_min_cells": 2, "eval_every": 1, "patience": 1, "warmup_steps": 0, "groups_per_batch": 1, "cells_per_group": 1, "self_pairs": 0,
            "collapse_patience": 1, "checkpoint_every": 0, "log_every": 1, "block_size": 1, "buffer_blocks": 1,
            "buffer_refresh": 1, "resident_controls": 0, "num_threads": 0}
_INT_MAX = {"seed": 2**63 - 1, "num_threads": 1024}
_FLOAT_MIN = {"lr": (0.0, True), "lr_min": (0.0, False), "weight_decay": (0.0, False), "grad_clip": (0.0, True),
              "w_latent": (0.0, False), "w_expr": (0.0, False), "w_energy": (0.0, False), "w_recon": (0.0, False),
              "w_score": (0.0, False), "w_variance": (0.0, False), "w_covariance": (0.0, False),
              "collapse_std": (0.0, False), "auto_epochs": (0.0, True), "group_visits": (0.0, False)}
_PROBS = ("ema_start", "ema_end", "structured_mask_prob", "clamp_prob", "val_fraction")
_RATIOS = ("self_mask_ratio", "transition_mask_ratio")


def _check_values(cfg: "TrainConfig") -> None:
    """Type and range of every field; a :class:`BioworldError` naming the field, the value and the range."""
    import math

    def bad(name: str, value: Any, expected: str) -> BioworldError:
        return BioworldError(f"training config field {name} is {value!r:.60} ({type(value).__name__}); expected "
                             f"{expected}. Fix: set {name} to such a value.")

    for name, lo in _INT_MIN.items():
        v = getattr(cfg, name)
        hi = _INT_MAX.get(name, 2**62)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(name, v, f"an integer in [{lo}, {hi}]" if name in _INT_MAX else f"an integer >= {lo}")
    for name, (lo, open_lo) in _FLOAT_MIN.items():
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if open_lo else v >= lo)
        if not ok:
            raise bad(name, v, f"a finite number {'>' if open_lo else '>='} {lo}")
    for name in _PROBS:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise bad(name, v, "a number in [0, 1]")
    for name in _RATIOS:
        v = getattr(cfg, name)
        ok = (isinstance(v, (tuple, list)) and len(v) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0 for x in v)
              and v[0] <= v[1])
        if not ok:
            raise bad(name, v, "a pair [low, high] with 0 <= low <= high <= 1")
    if cfg.min_steps > cfg.step_cap:
        raise bad("min_steps", cfg.min_steps, f"at most step_cap ({cfg.step_cap})")
    if cfg.lr_min > cfg.lr:
        raise bad("lr_min", cfg.lr_min, f"at most lr ({cfg.lr})")
    if cfg.mask_mode not in ("entity", "gene", "none"):
        raise bad("mask_mode", cfg.mask_mode, "'entity', 'gene' or 'none'")
    if not isinstance(cfg.device, str):
        raise bad("device", cfg.device, "'cpu', 'cuda', 'cuda:N' or 'auto'")


def resolve_device(device: str) -> str:
    """The torch device for a ``device`` setting (``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``: a GPU when
    torch sees one; under torchrun ``'cuda'`` = ``cuda:LOCAL_RANK``); a clear error when it is unavailable.
    The one resolution shared by training, queries and atlas pretraining."""
    import os

    import torch

    dev = str(device).strip().lower()
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return dev
    if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        if not torch.cuda.is_available():
            raise BioworldError(
                f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}, "
                f"cuda build: {torch.version.cuda or 'none'}); expected a machine with a GPU and a CUDA build of "
                "torch. Fix: use device='cpu' (or 'auto'), or install a CUDA torch on a GPU machine."
            )
        if dev == "cuda":
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if int(dev[5:]) >= torch.cuda.device_count():
            raise BioworldError(f"device={dev!r} but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    raise BioworldError(f"device={device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
