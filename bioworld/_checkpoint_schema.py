"""What a model folder's ``bioworld.json`` may hold, checked before anything is built from it.

:func:`validate_model_meta` checks every field :meth:`bioworld.WorldModel.load` reads: its type,
its range, and its consistency with the weights (sizes in ``model_config`` against the tensors'
shapes, list lengths against tensor rows). The module the config describes is first built on
torch's ``meta`` device (no memory) and its parameter shapes compared with the stored tensors, so
an edited size (``latent_dim = 10**9``) is refused before a byte is allocated: after these checks,
loading allocates what the weights file holds, no more. Every failure is a
:class:`~bioworld.errors.CheckpointError` naming the field, what was found and what was expected.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch

from bioworld.errors import BioworldError, CheckpointError

__all__ = ["validate_model_meta", "MAX_SIZE", "MAX_DEPTH_LAYERS"]

#: Largest size field accepted (latent width, hidden width, genes, ...) before shapes are compared.
MAX_SIZE = 1 << 24
#: Most transformer blocks in the encoder or predictor.
MAX_DEPTH_LAYERS = 64

_REQUIRED = ("model_config", "train_config", "registration", "var_names", "genes", "entities", "entity_hash",
             "entity_names", "control", "actions", "train_labels", "holdout", "gene_bank", "gene_feature_genes",
             "smiles", "findings", "meta")


class _Check:
    def __init__(self, directory: Any) -> None:
        self.where = f"{directory}: bioworld.json"

    def fail(self, field: str, found: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{self.where} field {field!r} is {found}; expected {expected}. The file was edited or "
                               "is corrupt: restore the model folder or retrain.")

    @staticmethod
    def _show(value: Any) -> str:
        text = repr(value)
        return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"

    def mapping(self, meta: Mapping[str, Any], field: str) -> dict:
        v = meta[field]
        if not isinstance(v, dict):
            raise self.fail(field, self._show(v), "a JSON object")
        return v

    def strings(self, meta: Mapping[str, Any], field: str, *, unique: bool = False, nonempty: bool = False) -> list[str]:
        v = meta[field]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            bad = v if not isinstance(v, list) else next(x for x in v if not isinstance(x, str))
            raise self.fail(field, self._show(bad), "a list of strings")
        if nonempty and not v:
            raise self.fail(field, "an empty list", "at least one name")
        if unique and len(set(v)) != len(v):
            dup = sorted({x for x in v if v.count(x) > 1})[:3]
            raise self.fail(field, f"a list with duplicates {dup}", "unique names")
        return v

    def str_map(self, meta: Mapping[str, Any], field: str) -> dict[str, str]:
        v = self.mapping(meta, field)
        for k, x in v.items():
            if not isinstance(x, str):
                raise self.fail(f"{field}.{k}", self._show(x), "a string")
        return v

    def integer(self, d: Mapping[str, Any], field: str, lo: int, hi: int, prefix: str = "") -> int:
        v = d.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(prefix + field, self._show(v), f"an integer in [{lo}, {hi}]")
        return v

    def number(self, d: Mapping[str, Any], field: str, lo: float, hi: float, prefix: str = "", *,
               lo_open: bool = False, hi_open: bool = False) -> float:
        v = d.get(field)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok:
            ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise self.fail(prefix + field, self._show(v), f"a finite number in {rng}")
        return float(v)

    def boolean(self, d: Mapping[str, Any], field: str, prefix: str = "") -> bool:
        v = d.get(field)
        if not isinstance(v, bool):
            raise self.fail(prefix + field, self._show(v), "true or false")
        return v


def _model_config(c: _Check, meta: Mapping[str, Any], n_genes: int, n_entities: int, n_bank: int):
    from bioworld.model import JEPAConfig

    cfg = c.mapping(meta, "model_config")
    p = "model_config."
    sizes = {
        "n_genes": (1, MAX_SIZE), "n_entities": (1, MAX_SIZE), "gene_feature_dim": (1, MAX_SIZE),
        "compound_feature_dim": (0, MAX_SIZE), "latent_dim": (1, MAX_SIZE), "token_dim": (1, MAX_SIZE),
        "encoder_depth": (0, MAX_DEPTH_LAYERS), "predictor_depth": (0, MAX_DEPTH_LAYERS),
        "n_heads": (1, 4096), "max_components": (1, 64), "readout_hidden": (1, MAX_SIZE),
        "gene_bank_size": (0, MAX_SIZE), "slot_block": (0, MAX_SIZE), "dense_max_slots": (0, MAX_SIZE),
        "compound_bank_size": (0, MAX_SIZE),
    }
    known = {f for f in JEPAConfig.__dataclass_fields__}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise c.fail("model_config", f"an object with unknown fields {unknown[:4]}",
                     f"only {sorted(known)} (a checkpoint of another bioworld version?)")
    for name, (lo, hi) in sizes.items():
        if name in cfg or name in ("n_genes", "n_entities", "gene_feature_dim"):
            c.integer(cfg, name, lo, hi, p)
    if "latent_dim" in cfg and "n_heads" in cfg and cfg["latent_dim"] % cfg["n_heads"]:
        raise c.fail(p + "latent_dim", f"{cfg['latent_dim']} with n_heads {cfg['n_heads']}",
                     "a multiple of n_heads (attention splits the latent across heads)")
    for name, lo, hi, lo_open, hi_open in (("mlp_ratio", 0.0, 64.0, True, False), ("dropout", 0.0, 1.0, False, True),
                                           # (cosines / temperature stay finite in float32 down to 1e-6)
                                           ("retrieval_temperature", 1e-6, 1e6, False, False),
                                           ("own_embedding_dropout", 0.0, 1.0, False, False),
                                           ("compound_embedding_dropout", 0.0, 1.0, False, False),
                                           ("compound_embedding_scale", 0.0, 1e6, True, False)):
        if name in cfg:
            c.number(cfg, name, lo, hi, p, lo_open=lo_open, hi_open=hi_open)
    for name in ("residual_readout", "use_gene_mlp", "additive_combinations"):
        if name in cfg:
            c.boolean(cfg, name, p)
    for name, want, what in (("n_genes", n_genes, "the number of 'genes'"),
                             ("n_entities", n_entities, "the number of 'entity_names'"),
                             ("gene_bank_size", n_bank, "the number of 'gene_bank' entries"),
                             ("compound_bank_size", len(meta.get("compound_bank", [])),
                              "the number of 'compound_bank' entries")):
        if name in cfg and cfg[name] != want:
            raise c.fail(p + name, str(cfg[name]), f"{want}, {what}")
    try:
        return JEPAConfig.from_dict(cfg)
    except BioworldError as e:  # a field the checks above do not know yet: still a corrupt checkpoint
        raise c.fail("model_config", f"a config the model refuses ({e})", "a consistent config") from None


def _module_shapes(c: _Check, cfg: Any, tensors: Mapping[str, torch.Tensor], E: int, G: int) -> None:
    """Build the module on the meta device (no memory) and compare every shape with the weights."""
    from bioworld.model import JEPA

    try:
        with torch.device("meta"):
            module = JEPA(cfg, torch.ones(E, G))
    except (ValueError, RuntimeError, TypeError) as e:  # a config no module can be built from
        raise c.fail("model_config", f"a config the model cannot be built from ({e})", "a consistent config") from None
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stored = {k[len("module."):]: tuple(v.shape) for k, v in tensors.items() if k.startswith("module.")}
    bad = sorted(k for k in own if stored.get(k) != own[k])
    extra = sorted(set(stored) - set(own))
    if bad or extra:
        k = (bad or extra)[0]
        raise CheckpointError(
            f"{c.where}: the weights do not match 'model_config' (tensor 'module.{k}' has shape "
            f"{stored.get(k, 'missing')}, the config implies {own.get(k, 'no such tensor')}; {len(bad)} mismatched, "
            f"{len(extra)} unexpected); the file was edited or is corrupt: restore the model folder or retrain."
        )


def _train_result(c: _Check, meta: Mapping[str, Any]) -> None:
    tr = meta.get("train_result")
    if tr is None:
        return
    if not isinstance(tr, dict):
        raise c.fail("train_result", c._show(tr), "null or an object {steps, wall_s, cells_per_s, history}")
    from bioworld.train import TrainResult

    known = set(TrainResult.__dataclass_fields__)
    unknown = sorted(set(tr) - known)
    if unknown:
        raise c.fail("train_result", f"an object with unknown fields {unknown[:4]}", f"only {sorted(known)}")
    c.integer(tr, "steps", 0, 1 << 40, "train_result.")
    for name in ("wall_s", "cells_per_s"):
        v = tr.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise c.fail(f"train_result.{name}", c._show(v), "a number")
    if tr.get("resumed_from") is not None:
        c.integer(tr, "resumed_from", 0, 1 << 40, "train_result.")
    hist = tr.get("history", [])
    if not isinstance(hist, list) or not all(isinstance(h, dict) for h in hist):
        raise c.fail("train_result.history", c._show(hist), "a list of objects (one per logged step)")
    for h in hist:
        for k, v in h.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise c.fail(f"train_result.history[].{k}", c._show(v), "a number")
    val = tr.get("validation", [])
    if not isinstance(val, list) or not all(isinstance(h, dict) for h in val):
        raise c.fail("train_result.validation", c._show(val), "a list of objects {step, val} (one per validation pass)")
    for h in val:
        for k, v in h.items():
            if k not in ("step", "val") or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise c.fail(f"train_result.validation[].{k}", c._show(v), "step and val, numbers")


def validate_model_meta(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], directory: str | Path) -> None:
    """Check every field of a model's ``bioworld.json`` against its type, range and the weights.

    Raises
    ------
    CheckpointError
        Naming the first field that is missing, of the wrong type, out of range or inconsistent with
        the stored tensors.
    """
    c = _Check(directory)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{c.where} lacks or mangles field {missing[0]!r} (missing: {missing}); the checkpoint "
                              "is incomplete: restore the model folder or retrain.")
    genes = c.strings(meta, "genes", unique=True, nonempty=True)
    var_names = c.strings(meta, "var_names", unique=True, nonempty=True)
    if len(var_names) != len(genes):
        raise c.fail("var_names", f"a list of {len(var_names)} names", f"{len(genes)}, one per entry of 'genes'")
    names = c.strings(meta, "entity_names", unique=True, nonempty=True)
    bank = c.strings(meta, "gene_bank", unique=True)
    if "compound_bank" in meta:  # trained compound-doses with their own embedding (absent in earlier checkpoints)
        c.strings(meta, "compound_bank", unique=True)
    c.strings(meta, "gene_feature_genes", unique=True)
    c.strings(meta, "train_labels", unique=True, nonempty=True)
    c.strings(meta, "holdout", unique=True)
    c.strings(meta, "findings")
    if "single_effect_labels" in meta:  # observed single effects the combinations are anchored on
        eff = c.strings(meta, "single_effect_labels", unique=True)
        outside = [lab for lab in eff if lab not in set(meta["train_labels"])]
        if outside:
            raise c.fail("single_effect_labels", f"a list with {outside[:3]}", "training labels only")
        t = tensors.get("single_effects")
        if (t is None) != (not eff) or (t is not None and tuple(t.shape) != (len(eff), len(meta["genes"]))):
            raise c.fail("single_effect_labels", f"{len(eff)} labels with tensor 'single_effects' of shape "
                         f"{None if t is None else tuple(t.shape)}", "one row of 'single_effects' per label, one column per gene")
    if "silence_head_entities" in meta:  # response heads of untrained silences (bioworld.query._response)
        heads = c.strings(meta, "silence_head_entities", unique=True)
        t = tensors.get("silence_heads")
        if (t is None) != (not heads) or (t is not None and tuple(t.shape) != (len(heads), len(meta["genes"]))):
            raise c.fail("silence_head_entities", f"{len(heads)} entities with tensor 'silence_heads' of shape "
                         f"{None if t is None else tuple(t.shape)}", "one row of 'silence_heads' per entity, one column per gene")
    if not isinstance(meta["control"], str) or not meta["control"]:
        raise c.fail("control", c._show(meta["control"]), "the non-empty control label")
    if not isinstance(meta["entity_hash"], str):
        raise c.fail("entity_hash", c._show(meta["entity_hash"]), "a SHA-256 hex string")
    actions = c.str_map(meta, "actions")
    missing_actions = [lab for lab in [meta["control"], *meta["train_labels"], *meta["holdout"]] if lab not in actions]
    if missing_actions:
        raise c.fail("actions", f"an object without {missing_actions[:3]}",
                     "an entry for the control, every training label and every held-out label")
    if meta["control"] not in meta["train_labels"]:
        raise c.fail("train_labels", "a list without the control label", f"{meta['control']!r} among them")
    c.str_map(meta, "smiles")
    c.mapping(meta, "meta")
    c.mapping(meta, "entities")
    c.mapping(meta, "train_config")
    reg = c.mapping(meta, "registration")
    for key in ("n_cells", "n_genes", "control_n_cells", "min_cells_per_group"):
        if key in reg:
            c.integer(reg, key, 0, 1 << 40, "registration.")
    _train_result(c, meta)

    G, E = len(genes), len(names)
    membership = tensors.get("membership")
    if membership is None or tuple(membership.shape) != (E, G):
        raise CheckpointError(
            f"{c.where}: tensor 'membership' has shape {None if membership is None else tuple(membership.shape)}, "
            f"expected {(E, G)} (entity_names x genes); the checkpoint is corrupt or was edited."
        )
    cfg = _model_config(c, meta, G, E, len(bank))
    feats = tensors.get("gene_features")
    if feats is not None and feats.dim() == 2 and feats.shape[1] != cfg.gene_feature_dim:
        raise c.fail("model_config.gene_feature_dim", str(cfg.gene_feature_dim),
                     f"{feats.shape[1]}, the width of the stored 'gene_features'")
    _module_shapes(c, cfg, tensors, E, G)
