"""The action contract between actions, data, model and query: one ``Kind`` enum, one action table.

An action table holds one row per action and ``A`` component slots (padded with ``Kind.PAD``).
:class:`ActionArrays` is the numpy table the action space builds; :meth:`ActionArrays.take` is the
one numpy -> torch step and gives an :class:`ActionBatch` (one row per cell), which the model reads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor


class Kind(IntEnum):
    """Component kinds as stored in action tables (0 = padding)."""

    PAD = 0
    KO = 1
    KD = 2
    ACT = 3
    COMPOUND = 4
    SILENCE = 5

    @classmethod
    def of(cls, kind: str) -> "Kind":
        """The code of a :class:`~bioworld.actions.Perturbation` kind (``"ko"`` -> ``Kind.KO``)."""
        return cls[kind.upper()]


N_KINDS = len(Kind)
GENETIC_KINDS = (Kind.KO, Kind.KD, Kind.ACT)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class ActionArrays:
    """Action table in numpy, one row per action (built by :class:`bioworld.actions.ActionSpace`)."""

    kind: np.ndarray  # [n, A] int64, Kind codes
    strength: np.ndarray  # [n, A] float32
    gene_feat: np.ndarray  # [n, A, F_g] float32
    cmp_feat: np.ndarray  # [n, A, F_c] float32
    log_dose: np.ndarray  # [n, A] float32
    entity_idx: np.ndarray  # [n, A] int64
    touch: np.ndarray  # [n, A, E] float32
    target_gene: np.ndarray  # [n, A] int64, panel column of a genetic target (-1 = not measured)
    bank_idx: np.ndarray  # [n, A] int64, row of a genetic target in the model's retrieval bank (-1 = unseen)
    cmp_idx: np.ndarray  # [n, A] int64, row of a trained compound-dose in the model's compound bank (-1 = untrained)

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def rows(self, idx: np.ndarray | list[int]) -> "ActionArrays":
        """The sub-table of rows ``idx`` (numpy, in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return ActionArrays(**{k: getattr(self, k)[idx] for k in _field_names(ActionArrays)})

    @staticmethod
    def concat(tables: list["ActionArrays"]) -> "ActionArrays":
        """Rows of several tables with the same component count ``A``, one after the other."""
        return ActionArrays(**{k: np.concatenate([getattr(t, k) for t in tables]) for k in _field_names(ActionArrays)})

    def n_components(self) -> np.ndarray:
        """``[n]`` number of non-padding components per row."""
        return (self.kind > Kind.PAD).sum(1)

    def take(self, rows: np.ndarray) -> "ActionBatch":
        """The tensors of rows ``rows`` (one per cell): the one numpy -> torch step."""
        import torch

        return ActionBatch(**{k: torch.from_numpy(np.ascontiguousarray(getattr(self, k)[rows]))
                              for k in _field_names(ActionArrays)})


@dataclass
class ActionBatch:
    """Tensorised actions; one row per cell, ``A`` component slots (padded with ``Kind.PAD``)."""

    kind: Tensor  # [B, A] long
    strength: Tensor  # [B, A] float, 1 = full knockout/activation
    gene_feat: Tensor  # [B, A, F_g] features of genetic targets (zeros otherwise)
    cmp_feat: Tensor  # [B, A, F_c] compound fingerprints (zeros otherwise)
    log_dose: Tensor  # [B, A] log10 dose (0 otherwise)
    entity_idx: Tensor  # [B, A] long, silenced entity (-1 otherwise)
    touch: Tensor  # [B, A, E] how strongly each component touches each slot (membership)
    target_gene: Tensor  # [B, A] long, panel column of a genetic target (-1 = not measured)
    bank_idx: Tensor  # [B, A] long, row of a genetic target in the retrieval bank (-1 = unseen)
    cmp_idx: Tensor  # [B, A] long, row of a trained compound-dose in the compound bank (-1 = untrained)

    def index(self, idx: Tensor) -> "ActionBatch":
        return ActionBatch(**{k: getattr(self, k)[idx] for k in _field_names(ActionBatch)})

    def to(self, device: object, non_blocking: bool = False) -> "ActionBatch":
        return ActionBatch(**{k: getattr(self, k).to(device, non_blocking=non_blocking) for k in _field_names(ActionBatch)})
