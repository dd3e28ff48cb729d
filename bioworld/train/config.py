"""Typed training configuration, stored in every checkpoint.

``TrainConfig`` nests its groups (nanoGPT-style, each default written once, in its own dataclass):
``TrainConfig(mask=MaskingConfig(...), loss=LossWeights(...), buffer=BufferConfig(...))``. Checkpoints
store the nested form; the flat names of earlier versions (``mask_mode``, ``w_latent``,
``block_size``, ... in ``FLAT_ALIASES``) are still accepted by :meth:`TrainConfig.from_dict` (old
checkpoints, config files, ``config={"mask_mode": "none"}``, ``wm.train(w_latent=2.0)``) and read as
attributes (``cfg.w_latent`` is ``cfg.loss.latent``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from bioworld.data.collate import MaskingConfig
from bioworld.errors import BioworldError
from bioworld.model.jepa import LossWeights


@dataclass(frozen=True)
class BufferConfig:
    """Out-of-core (backed .h5ad) training only: block-buffer sampling (``bioworld.data.collate.BlockBufferSampler``)."""

    block_size: int = 256  # contiguous cells per block read from disk
    buffer_blocks: int = 64  # blocks pooled in the in-memory buffer (buffer = block_size x buffer_blocks cells)
    buffer_refresh: int = 50  # batches drawn from one buffer before the next is read
    resident_controls: int = 20000  # control cells kept in memory for pairing (seeded subsample)


#: The nested groups of TrainConfig and their dataclasses.
GROUPS: dict[str, type] = {"mask": MaskingConfig, "loss": LossWeights, "buffer": BufferConfig}
#: Flat field names of earlier versions -> (group, field): accepted by from_dict, readable as attributes.
FLAT_ALIASES: dict[str, tuple[str, str]] = {
    "mask_mode": ("mask", "mode"), "self_mask_ratio": ("mask", "self_ratio"),
    "transition_mask_ratio": ("mask", "transition_ratio"), "structured_mask_prob": ("mask", "structured_prob"),
    **{f"w_{k}": ("loss", k) for k in ("latent", "expr", "energy", "recon", "score", "variance", "covariance", "effect")},
    **{k: ("buffer", k) for k in ("block_size", "buffer_blocks", "buffer_refresh", "resident_controls")},
}


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
    # max_steps=0: no early stop before this share of the sized steps (Papalexi seeds 5 and 7 stopped at
    # 250 / 200 of 442 steps and failed the fit check; benchmarks/results/fit_seeds/FIT_SEEDS.md)
    early_stop_after: float = 0.75
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
    # a group with fewer cells than cells_per_group is drawn max(its cells, this share of cells_per_group) times
    # (an L1000 plate: one well per compound-dose, 6 draws instead of 12 copies; 128 -> 80 rows, -32% CPU per step)
    small_group_share: float = 0.5
    self_pairs: int = 32  # control cells per batch for pure masked-entity prediction
    mask: MaskingConfig = field(default_factory=MaskingConfig)  # which slots the context encoder sees
    clamp_prob: float = 0.0  # P(a transition becomes a do()-transition: touched slots clamped to the perturbed latents, action withheld)
    loss: LossWeights = field(default_factory=LossWeights)  # weights of the training losses
    # collapse monitor: stop when the target latents' mean per-slot std stays below this
    collapse_std: float = 1e-3
    collapse_patience: int = 50  # consecutive steps under collapse_std before stopping
    checkpoint_every: int = 200  # steps between resumable training-state checkpoints (0 = never)
    log_every: int = 10  # steps between progress-bar updates
    buffer: BufferConfig = field(default_factory=BufferConfig)  # out-of-core (backed .h5ad) training only
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available); under torchrun "cuda" = cuda:LOCAL_RANK
    num_threads: int = 0  # torch intra-op threads; 0 = auto: half the cores, 1..8 (2 threads on 2 busy cores ran ~10x slower than 1)

    def __post_init__(self) -> None:
        for name, kind in GROUPS.items():  # a group given as a dict of its fields
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, _group(name, value))
            elif not isinstance(value, kind):
                raise BioworldError(f"training config field {name} is a {type(value).__name__}; expected a "
                                    f"{kind.__name__} or a dict of its fields. Fix: pass {name}={kind.__name__}(...).")
        _check_values(self)

    def resolved_threads(self) -> int:
        """Threads training will use (``num_threads`` or the automatic choice)."""
        import os

        return self.num_threads or max(1, min(8, (os.cpu_count() or 2) // 2))

    def query_threads(self) -> int:
        """Threads that answer a query's row blocks (``num_threads``, or every core up to 8 when it is 0: the
        blocks are independent Python-level jobs, so they scale on busy cores without OpenMP's spin-waits, and the
        answers do not depend on the count; they share the GIL between torch calls, and scaling was measured on
        2 cores only, hence the cap)."""
        import os

        return self.num_threads or max(1, min(8, os.cpu_count() or 1))

    def resolved_device(self) -> str:
        """The torch device training runs on; a clear error when the requested one is unavailable."""
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, the groups nested (the form checkpoints store)."""
        return _lists(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A config from nested and/or flat fields; a flat name (``mask_mode``, ``w_latent``, ...) is laid over
        its group, so ``{**cfg.to_dict(), "mask_mode": "none"}`` changes only that field."""
        known = [f.name for f in fields(cls)] + list(FLAT_ALIASES)
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BioworldError(
                f"unknown training config field(s) {unknown}; expected a subset of {sorted(known)}. Fix: "
                + "".join(f"did you mean {close[0]!r} for {u!r}? " for u in unknown
                          if (close := difflib.get_close_matches(u, known, n=1)))
                + "remove or rename the unknown fields."
            )
        top = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k not in FLAT_ALIASES}
        groups = {name: _group_fields(name, top.pop(name, {})) for name in GROUPS}
        for flat, (name, key) in FLAT_ALIASES.items():
            if flat in d:
                groups[name][key] = tuple(d[flat]) if isinstance(d[flat], list) else d[flat]
        return cls(**top, **{name: _group(name, g) for name, g in groups.items()})

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


for _flat, (_name, _key) in FLAT_ALIASES.items():  # cfg.w_latent is cfg.loss.latent, ...
    setattr(TrainConfig, _flat, property(lambda self, n=_name, k=_key: getattr(getattr(self, n), k),
                                         doc=f"``{_name}.{_key}`` (the flat name of earlier versions)"))


def _lists(d: Any) -> Any:
    """Tuples as lists, recursively (JSON form)."""
    if isinstance(d, dict):
        return {k: _lists(v) for k, v in d.items()}
    return list(d) if isinstance(d, tuple) else d


def _group_fields(name: str, value: Any) -> dict[str, Any]:
    """The fields of group ``name`` given as a dataclass or a dict (refusing unknown ones)."""
    if is_dataclass(value) and not isinstance(value, type):
        return dict(asdict(value))
    if not isinstance(value, dict):
        raise BioworldError(f"training config field {name} is a {type(value).__name__}; expected an object of "
                            f"{GROUPS[name].__name__} fields. Fix: write it as {{\"{name}\": {{...}}}} or leave it out.")
    known = [f.name for f in fields(GROUPS[name])]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise BioworldError(f"unknown training config field(s) {[f'{name}.{u}' for u in unknown]}; expected a subset of "
                            f"{[f'{name}.{k}' for k in known]}. Fix: remove or rename them.")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}


def _group(name: str, value: Any) -> Any:
    return GROUPS[name](**_group_fields(name, value))


#: Allowed values of each field: (kind, low, high); kind "int" (not bool), "float" (finite), "prob" ([0, 1]).
_INT_MIN = {"seed": 0, "max_steps": 0, "min_steps": 1, "step_cap": 1, "val_min_cells": 2, "eval_every": 1, "patience": 1, "warmup_steps": 0, "groups_per_batch": 1, "cells_per_group": 1, "self_pairs": 0,
            "collapse_patience": 1, "checkpoint_every": 0, "log_every": 1, "block_size": 1, "buffer_blocks": 1,
            "buffer_refresh": 1, "resident_controls": 0, "num_threads": 0}
_INT_MAX = {"seed": 2**63 - 1, "num_threads": 1024}
_FLOAT_MIN = {"lr": (0.0, True), "lr_min": (0.0, False), "weight_decay": (0.0, False), "grad_clip": (0.0, True),
              "w_latent": (0.0, False), "w_expr": (0.0, False), "w_energy": (0.0, False), "w_recon": (0.0, False),
              "w_score": (0.0, False), "w_variance": (0.0, False), "w_covariance": (0.0, False), "w_effect": (0.0, False),
              "collapse_std": (0.0, False), "auto_epochs": (0.0, True), "group_visits": (0.0, False)}
_PROBS = ("ema_start", "ema_end", "structured_mask_prob", "clamp_prob", "val_fraction", "early_stop_after",
          "small_group_share")
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
