"""``ModelState``: everything a trained model is, and the one way it is written to and read from a checkpoint.

:class:`bioworld.WorldModel` keeps its state in one :class:`ModelState` (its public attributes read
and write the fields). :meth:`ModelState.checkpoint` gives the tensors and JSON fields of
``model.safetensors`` / ``bioworld.json``; :meth:`ModelState.from_checkpoint` rebuilds the state from
them, refusing inconsistent files (entity hash, slot mapping, tensor shapes, single effects,
weights). The format is unchanged from the checkpoints written before this module existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from bioworld.actions._space import ActionSpace
from bioworld.data import Registration
from bioworld.entities import EntitySet
from bioworld.entities._slots import quiet_map_to_panel
from bioworld.errors import BioworldError, CheckpointError
from bioworld.model import JEPA, JEPAConfig
from bioworld.train.config import TrainConfig
from bioworld.train.trainer import TrainResult

__all__ = ["ModelState"]

_SPACE_FIELDS = ("actions", "gene_bank", "compound_bank", "gene_feature_genes", "smiles", "compound_knowledge_names", "compound_kb_dim",
                 "compound_seen", "compound_user_targets")


@dataclass
class ModelState:
    """A model's configuration, data statistics, slots, actions and (once trained) weights."""

    model_config: JEPAConfig
    train_config: TrainConfig
    registration: Registration
    var_names: list[str]
    genes: list[str]  # symbols, var order
    entity_set: EntitySet
    entity_names: list[str]
    membership: np.ndarray  # [E, G] float32
    control: str
    mu: np.ndarray  # [G] control mean
    sd: np.ndarray  # [G] gene spread
    reference: np.ndarray  # [cells, G] standardised reference control cells
    space: ActionSpace
    train_labels: list[str]
    holdout: list[str]
    findings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    single_effects: dict[Any, tuple[str, np.ndarray]] = field(default_factory=dict)  # component -> (label, [G])
    combination_prior: np.ndarray | None = None  # [G] untrained combinations' expected departure from additivity
    silence_heads: dict[str, np.ndarray] = field(default_factory=dict)  # entity -> response slope [G] (query._response)
    module: JEPA | None = None
    train_result: TrainResult | None = None
    evaluation: Any = None  # held-out summary read back from the model folder (bioworld.eval)

    def describe(self) -> dict[str, Any]:
        """Sizes, entity hash, labels, seed and training time (the provenance answers carry)."""
        tr = self.train_result
        return {
            "n_genes": len(self.genes), "n_entities": len(self.entity_names),
            "entity_hash": self.entity_set.hash(), "input": self.registration.input,
            "train_labels": list(self.train_labels), "holdout": list(self.holdout),
            "seed": self.train_config.seed,
            "train_wall_s": float("nan") if tr is None else round(tr.wall_s, 2),
        }

    def answer_provenance(self) -> dict[str, Any]:
        """:meth:`describe` without the training wall time, for answers: the same model and query give the same
        file (the wall time stays in the model card)."""
        return {k: v for k, v in self.describe().items() if k != "train_wall_s"}

    # ------------------------------------------------------------------ write
    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON fields) of the model folder; the module must be trained."""
        if self.module is None:
            raise BioworldError("the model is not trained yet; call wm.train() or load a trained model directory")
        tensors = {f"module.{k}": v.detach().cpu() for k, v in self.module.state_dict().items()}
        tensors.update({
            "norm.mu": torch.from_numpy(self.mu), "norm.sd": torch.from_numpy(self.sd),
            "reference": torch.from_numpy(self.reference), "membership": torch.from_numpy(self.membership),
        })
        space_tensors, space_meta = self.space.state()  # gene_features; actions, gene_bank, gene_feature_genes, smiles
        tensors.update({k: torch.from_numpy(v) for k, v in space_tensors.items()})
        effects = self.single_effects or {}
        if effects:
            tensors["single_effects"] = torch.from_numpy(np.stack([v[1] for v in effects.values()]))
        if self.combination_prior is not None:
            tensors["combination_prior"] = torch.from_numpy(np.asarray(self.combination_prior, np.float32))
        heads = self.silence_heads or {}
        if heads:
            tensors["silence_heads"] = torch.from_numpy(np.stack([np.asarray(v, np.float32) for v in heads.values()]))
        tr = self.train_result
        meta = {
            "model_config": self.model_config.to_dict(), "train_config": self.train_config.to_dict(),
            "registration": self.registration.to_dict(), "var_names": self.var_names, "genes": self.genes,
            "entities": self.entity_set.to_dict(), "entity_hash": self.entity_set.hash(),
            "entity_names": self.entity_names, "control": self.control, **space_meta,
            "single_effect_labels": [v[0] for v in effects.values()],
            "silence_head_entities": list(heads),
            "train_labels": self.train_labels, "holdout": self.holdout,
            "findings": self.findings, "meta": self.meta,
            "train_result": None if tr is None else {"steps": tr.steps, "wall_s": tr.wall_s,
                                                      "cells_per_s": tr.cells_per_s, "history": tr.history,
                                                      "resumed_from": tr.resumed_from, "validation": tr.validation},
        }
        return tensors, meta

    # ------------------------------------------------------------------- read
    @classmethod
    def from_checkpoint(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], directory: Any) -> "ModelState":
        """The state stored in a model folder (``meta`` already checked by the schema); refuses inconsistent files."""
        try:
            fields = dict(
                model_config=JEPAConfig.from_dict(_stored_model_config(meta["model_config"])),
                train_config=TrainConfig.from_dict(_stored_train_config(meta["train_config"])),
                registration=Registration.from_dict(meta["registration"]),
                var_names=list(meta["var_names"]), genes=list(meta["genes"]),
                entity_set=EntitySet.from_dict(meta["entities"]), entity_names=list(meta["entity_names"]),
                control=meta["control"], train_labels=list(meta["train_labels"]), holdout=list(meta["holdout"]),
                findings=list(meta["findings"]), meta=dict(meta["meta"]),
            )
            gene_genes = list(meta["gene_feature_genes"])
            space_meta = {k: meta[k] for k in _SPACE_FIELDS if k in meta}
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{directory}: bioworld.json lacks or mangles field {e}; the checkpoint is incomplete") from None
        except (BioworldError, ValueError) as e:
            raise CheckpointError(f"{directory}: bioworld.json holds invalid definitions ({e}); the checkpoint is corrupt") from None
        _check_slots(fields["entity_set"], fields["genes"], fields["entity_names"], meta.get("entity_hash"), tensors, directory)
        G, E = len(fields["genes"]), len(fields["entity_names"])
        _check_shapes(tensors, G, E, len(gene_genes), fields["model_config"].gene_feature_dim, directory)
        try:
            space = ActionSpace.from_state(
                {k: tensors[k].numpy() for k in ("gene_features", "compound_knowledge") if k in tensors}, space_meta,
                control=fields["control"], entity_set=fields["entity_set"], entity_names=fields["entity_names"],
                panel_genes=fields["genes"], max_components=fields["model_config"].max_components)
        except BioworldError as e:
            raise CheckpointError(f"{directory}: bioworld.json holds an action the parser refuses ({e}); the checkpoint "
                                  "is corrupt or was edited") from None
        membership = tensors["membership"].numpy()
        tr = meta.get("train_result")
        return cls(
            **fields, membership=membership, mu=tensors["norm.mu"].numpy(), sd=tensors["norm.sd"].numpy(),
            reference=tensors["reference"].numpy(), space=space,
            single_effects=_single_effects(tensors, meta, space, fields["train_labels"], G, directory),
            combination_prior=_combination_prior(tensors, G, directory),
            silence_heads=_silence_heads(tensors, meta, fields["entity_names"], G, directory),
            module=_module(fields["model_config"], membership, tensors, directory),
            train_result=None if tr is None else TrainResult(**tr),
        )


def _check_slots(entity_set: EntitySet, genes: list[str], names: list[str], stored_hash: Any,
                 tensors: Mapping[str, torch.Tensor], directory: Any) -> None:
    """The stored entities hash as recorded and map onto the stored panel as the stored membership."""
    if entity_set.hash() != stored_hash:
        raise CheckpointError(
            f"{directory}: entity definitions hash to {entity_set.hash()[:12]}… but the checkpoint records "
            f"{str(stored_hash)[:12]}…; the entity set was modified. Restore the directory or retrain."
        )
    panel = quiet_map_to_panel(entity_set, genes, min_genes=1)
    stored = tensors.get("membership")
    if stored is None or tuple(stored.shape) != tuple(panel.membership.shape):
        raise CheckpointError(
            f"{directory}: tensor 'membership' has shape {tuple(stored.shape) if stored is not None else 'missing'}, "
            f"expected {tuple(panel.membership.shape)} (entities x genes); the checkpoint is corrupt"
        )
    if panel.names != names or not np.allclose(panel.membership, stored.numpy()):
        raise CheckpointError(
            f"{directory}: the stored entities do not map onto the stored gene panel as they did in training "
            f"({len(panel.names)} vs {len(names)} slots); the checkpoint is inconsistent"
        )


def _check_shapes(tensors: Mapping[str, torch.Tensor], G: int, E: int, n_feature_genes: int, feature_dim: int,
                  directory: Any) -> None:
    expect = {"norm.mu": (G,), "norm.sd": (G,), "gene_features": (n_feature_genes, feature_dim), "membership": (E, G)}
    ref = tensors.get("reference")
    if ref is None or ref.dim() != 2 or ref.shape[1] != G or ref.shape[0] < 1:
        raise CheckpointError(
            f"{directory}: tensor 'reference' has shape {tuple(ref.shape) if ref is not None else 'missing'}, "
            f"expected (cells, {G}); the checkpoint is corrupt"
        )
    for k, shape in expect.items():
        if k not in tensors or tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{directory}: tensor {k!r} has shape {tuple(tensors[k].shape) if k in tensors else 'missing'}, expected {shape}")


def _single_effects(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], space: ActionSpace,
                    train_labels: list[str], G: int, directory: Any) -> dict[Any, tuple[str, np.ndarray]]:
    """Trained single component -> (label, observed mean effect [G]) from ``single_effects`` + its labels."""
    labels = list(meta.get("single_effect_labels", []))
    eff = tensors.get("single_effects")
    if labels and (eff is None or tuple(eff.shape) != (len(labels), G)) or (eff is not None and not labels):
        raise CheckpointError(
            f"{directory}: tensor 'single_effects' has shape {None if eff is None else tuple(eff.shape)}, expected "
            f"({len(labels)}, {G}) for the {len(labels)} labels in bioworld.json; the checkpoint is corrupt"
        )
    out = {}
    for lab, row in zip(labels, [] if eff is None else eff.numpy()):
        if lab not in train_labels:
            raise CheckpointError(f"{directory}: single effect {lab!r} is not a training label; the checkpoint is corrupt")
        comps = space.actions[lab].components
        if len(comps) != 1:
            raise CheckpointError(f"{directory}: single effect {lab!r} is not a single perturbation; the checkpoint is corrupt")
        out[comps[0]] = (lab, row)
    return out


def _module(cfg: JEPAConfig, membership: np.ndarray, tensors: Mapping[str, torch.Tensor], directory: Any) -> JEPA:
    """The JEPA with the stored weights (in eval mode); refuses weights that do not match the config."""
    module = JEPA(cfg, torch.from_numpy(membership))
    state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
    own = module.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or set(state) - set(own):
        raise CheckpointError(
            f"{directory}: weights do not match the stored config (mismatched/missing: {bad[:4]}, "
            f"unexpected: {sorted(set(state) - set(own))[:4]}); the checkpoint was tampered with or is corrupt"
        )
    module.load_state_dict(state)
    module.eval()
    return module


def _combination_prior(tensors: Mapping[str, torch.Tensor], G: int, directory: Any) -> np.ndarray | None:
    """The stored ``combination_prior`` ``[G]`` (finite), or None for a model without one."""
    t = tensors.get("combination_prior")
    if t is None:
        return None
    if tuple(t.shape) != (G,) or not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{directory}: tensor 'combination_prior' has shape {tuple(t.shape)} or non-finite values; "
                              f"expected {G} finite values, one per gene. The checkpoint is corrupt: retrain or restore it.")
    return t.numpy().astype(np.float32)


def _silence_heads(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], entity_names: list[str], G: int,
                   directory: Any) -> dict[str, np.ndarray]:
    """Entity -> stored response slope ``[G]`` of its untrained silence (none in checkpoints written before heads)."""
    names = list(meta.get("silence_head_entities", []))
    t = tensors.get("silence_heads")
    if (t is None) != (not names) or (t is not None and (tuple(t.shape) != (len(names), G)
                                                         or not bool(torch.isfinite(t).all()))):
        raise CheckpointError(f"{directory}: tensor 'silence_heads' has shape {None if t is None else tuple(t.shape)} "
                              f"(or non-finite values), expected ({len(names)}, {G}) finite values for the {len(names)} "
                              "entities in 'silence_head_entities'. The checkpoint is corrupt: retrain or restore it.")
    unknown = [n for n in names if n not in entity_names]
    if unknown:
        raise CheckpointError(f"{directory}: silence heads for {unknown[:3]}, which are not entity slots of the model; "
                              "the checkpoint is corrupt: retrain or restore it.")
    return {n: row for n, row in zip(names, [] if t is None else t.numpy().astype(np.float32))}


def _stored_model_config(d: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's model config as it was trained: the own compound embedding had no multiplier (1.0)
    before ``compound_embedding_scale`` existed."""
    return {"compound_embedding_scale": 1.0, **d}


def _stored_train_config(d: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's training config as it was trained: loss weights added after it was written were
    off then (a model saved before the group mean-effect term has ``loss.effect`` 0, not today's default),
    and every group was drawn ``cells_per_group`` times before ``small_group_share`` existed (1.0)."""
    d = dict(d)
    d.setdefault("small_group_share", 1.0)
    if isinstance(d.get("loss"), Mapping) and "effect" not in d["loss"]:
        d["loss"] = {**d["loss"], "effect": 0.0}
    elif "loss" not in d and "w_effect" not in d:  # the flat form of earlier versions
        d["w_effect"] = 0.0
    return d
