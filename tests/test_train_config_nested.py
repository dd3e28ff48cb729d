"""TrainConfig nests its groups (mask, loss, buffer), each default written once; flat names of earlier
versions still load (issue 16 item: nested configs)."""

from __future__ import annotations

import json

import pytest

from bioworld.data.collate import MaskingConfig
from bioworld.errors import BioworldError
from bioworld.model.jepa import LossWeights
from bioworld.train import TrainConfig
from bioworld.train.config import FLAT_ALIASES, BufferConfig


def _flat(cfg: TrainConfig) -> dict:
    """The config as an earlier version wrote it: flat fields, no groups."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("mask", "loss", "buffer")}
    for flat, (group, key) in FLAT_ALIASES.items():
        v = getattr(getattr(cfg, group), key)
        d[flat] = list(v) if isinstance(v, tuple) else v
    return d


def test_groups_are_their_own_dataclasses_with_one_set_of_defaults():
    cfg = TrainConfig()
    assert cfg.mask == MaskingConfig() and cfg.loss == LossWeights() and cfg.buffer == BufferConfig()
    d = cfg.to_dict()
    assert set(d["mask"]) == {"mode", "self_ratio", "transition_ratio", "structured_prob"}
    assert d["loss"]["energy"] == LossWeights().energy and "w_energy" not in d
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg  # the JSON round trip of a checkpoint


def test_nested_constructor_and_flat_reads():
    cfg = TrainConfig(mask=MaskingConfig(mode="gene", self_ratio=(0.2, 0.4)), loss=LossWeights(latent=2.0),
                      buffer={"block_size": 32})
    assert cfg.mask_mode == "gene" and cfg.self_mask_ratio == (0.2, 0.4)
    assert cfg.w_latent == 2.0 and cfg.w_expr == LossWeights().expr
    assert cfg.block_size == 32 and cfg.buffer_blocks == BufferConfig().buffer_blocks
    assert isinstance(cfg.buffer, BufferConfig)


def test_old_flat_configs_still_load_and_flat_overrides_touch_one_field():
    cfg = TrainConfig(seed=3, mask=MaskingConfig(mode="none"), loss=LossWeights(variance=0.5))
    assert TrainConfig.from_dict(_flat(cfg)) == cfg
    changed = TrainConfig.from_dict({**cfg.to_dict(), "w_latent": 2.0, "block_size": 64})
    assert changed.loss == LossWeights(latent=2.0, variance=0.5) and changed.buffer.block_size == 64
    assert changed.mask == cfg.mask and changed.seed == 3


def test_bad_group_fields_are_named():
    with pytest.raises(BioworldError, match=r"mask\.mod"):
        TrainConfig.from_dict({"mask": {"mod": "gene"}})
    with pytest.raises(BioworldError, match="w_expr"):
        TrainConfig.from_dict({"loss": {"expr": -1.0}})
    with pytest.raises(BioworldError, match="mask_mode"):
        TrainConfig(mask={"mode": "patch"})
    with pytest.raises(BioworldError, match="loss"):
        TrainConfig(loss=[1.0])


def test_a_model_folder_with_a_flat_train_config_loads(tiny_trained, tmp_path):
    import bioworld as bw
    from bioworld.train.checkpoint import META, meta_digest

    d = tiny_trained.save(tmp_path / "m")
    meta = json.loads((d / META).read_text())
    assert "mask" in meta["train_config"]  # written nested
    meta["train_config"] = _flat(tiny_trained.train_config)  # as an earlier version wrote it
    meta["meta_sha256"] = meta_digest(meta)
    (d / META).write_text(json.dumps(meta))
    loaded = bw.WorldModel.load(d)
    assert loaded.train_config == tiny_trained.train_config


def test_a_checkpoint_written_before_the_mean_effect_term_reads_it_as_off():
    from bioworld.train.state import _stored_train_config

    stored = TrainConfig().to_dict()
    assert stored["loss"]["effect"] == 1.0  # today's default, written into every new checkpoint
    old = json.loads(json.dumps(stored))
    del old["loss"]["effect"]  # the form checkpoints took before the term existed
    assert TrainConfig.from_dict(_stored_train_config(old)).loss.effect == 0.0
    assert TrainConfig.from_dict(_stored_train_config(stored)).loss.effect == 1.0
    assert TrainConfig.from_dict(_stored_train_config({**stored, "w_effect": 0.5})).w_effect == 0.5
    flat = {k: v for k, v in stored.items() if k != "loss"} | {"w_latent": 1.0, "w_expr": 1.0}  # flat, older still
    assert TrainConfig.from_dict(_stored_train_config(flat)).loss.effect == 0.0
