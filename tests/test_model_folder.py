"""Nothing trusted (issue 17 item 2): every field of a model folder's bioworld.json is checked
(type, range, consistency with the weights) before anything is built; JSON depth and number size
are bounded; the JSON records its own hash; weights must be finite. Includes a property test over
bioworld.json fields that may find no traceback and no allocation beyond the data's size."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import bioworld as bw
from bioworld.errors import BioworldError, CheckpointError
from bioworld.train.checkpoint import meta_digest

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(tiny_trained, tmp_path_factory):
    d = tmp_path_factory.mktemp("model_folder") / "model"
    tiny_trained.save(d)
    return d


@pytest.fixture(scope="module")
def pristine(saved):
    return json.loads((saved / "bioworld.json").read_text())


def _copy(saved: Path, dest: Path) -> Path:
    return Path(shutil.copytree(saved, dest))


def _write(d: Path, meta: dict, *, rehash: bool = True) -> None:
    """Write an edited bioworld.json; ``rehash``: recompute both hashes, as a thorough tamperer would."""
    if rehash:
        meta["weights_sha256"] = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
        meta["meta_sha256"] = meta_digest(meta)
    (d / "bioworld.json").write_text(json.dumps(meta))


@contextlib.contextmanager
def _address_space(extra_bytes: int):
    """Cap this process's address space at its current size + ``extra_bytes`` (restored after)."""
    size_kb = int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size_kb * 1024 + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


#: the model's data are a few hundred kB; loading may use this much more, not gigabytes
HEADROOM = 768 << 20


# ================================================================================ compatibility
def test_checkpoint_without_json_hash_still_loads(tiny_trained, saved, tmp_path):
    """Model folders written before bioworld.json recorded its own hash load as before."""
    d = _copy(saved, tmp_path / "m")
    meta = json.loads((d / "bioworld.json").read_text())
    assert meta["meta_sha256"] == meta_digest(meta)
    del meta["meta_sha256"]
    (d / "bioworld.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    wm = bw.WorldModel.load(d)
    assert np.array_equal(wm.predict(["P1_DRV1"]).X, tiny_trained.predict(["P1_DRV1"]).X)


def test_edited_json_is_refused_by_its_own_hash(saved, tmp_path):
    d = _copy(saved, tmp_path / "m")
    meta = json.loads((d / "bioworld.json").read_text())
    meta["model_config"]["retrieval_temperature"] = 0.2  # a plausible, silent edit
    (d / "bioworld.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="edited after it was written"):
        bw.WorldModel.load(d)


# ============================================================================= crafted edits
def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


EDITS = {
    "latent_dim_1e9": (_set("model_config.latent_dim", 10**9), "latent_dim"),
    "readout_hidden_1e10": (_set("model_config.readout_hidden", 1e10), "readout_hidden"),
    "readout_hidden_big_int": (_set("model_config.readout_hidden", 4096), "do not match 'model_config'"),
    "negative_size": (_set("model_config.token_dim", -3), "token_dim"),
    "string_size": (_set("model_config.latent_dim", "32"), "latent_dim"),
    "bool_size": (_set("model_config.n_heads", True), "n_heads"),
    "indivisible_heads": (_set("model_config.n_heads", 5), "multiple of n_heads"),
    "depth_1e6": (_set("model_config.encoder_depth", 10**6), "encoder_depth"),
    "nan_dropout": (_set("model_config.dropout", float("nan")), "dropout"),
    # (found by the fuzz test below: cosines / 1e-272 overflow to inf and every answer was NaN)
    "tiny_retrieval_temperature": (_set("model_config.retrieval_temperature", 1.36e-272), "retrieval_temperature"),
    "n_genes_mismatch": (_set("model_config.n_genes", 81), "n_genes"),
    "registration_string_count": (_set("registration.n_cells", "abc"), "registration.n_cells"),
    "registration_not_object": (_set("registration", [1, 2]), "registration"),
    "train_result_string_steps": (_set("train_result.steps", "many"), "train_result.steps"),
    "train_result_unknown_field": (_set("train_result.bogus", 1), "bogus"),
    "train_result_list": (_set("train_result", [1]), "train_result"),
    "genes_not_strings": (_set("genes", [1, 2, 3]), "genes"),
    "duplicate_entity_names": (lambda m: m.update(entity_names=[m["entity_names"][0]] * len(m["entity_names"])), "duplicates"),
    "actions_not_strings": (_set("actions", {"P1_DRV1": 3}), "actions"),
    "bad_action_label": (lambda m: m["actions"].update({"kd:P1_DRV1:7": "kd:P1_DRV1:7"}), "action"),
    "actions_missing_labels": (_set("actions", {}), "actions"),
    "control_number": (_set("control", 0), "control"),
    "train_config_string_steps": (_set("train_config.max_steps", "abc"), "max_steps"),
    "train_config_negative_threads": (_set("train_config.num_threads", -1), "num_threads"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_crafted_bioworld_json_is_refused_before_anything_is_built(saved, pristine, tmp_path, name):
    edit, fact = EDITS[name]
    d = _copy(saved, tmp_path / "m")
    meta = copy.deepcopy(pristine)
    edit(meta)
    _write(d, meta)
    with _address_space(HEADROOM), pytest.raises(CheckpointError) as err:
        bw.WorldModel.load(d)
    assert fact in str(err.value), str(err.value)


def test_deep_nesting_and_huge_numbers_are_refused_quickly(saved, tmp_path):
    d = _copy(saved, tmp_path / "m")
    text = (d / "bioworld.json").read_text()
    deep = text.replace('"findings": [', '"findings": [' + "[" * 200_000 + "]" * 200_000 + ",", 1)
    (d / "bioworld.json").write_text(deep)
    with pytest.raises(CheckpointError, match=r"nests 2000\d\d levels"):
        bw.WorldModel.load(d)
    huge = re.sub(r'"latent_dim": \d+', '"latent_dim": ' + "9" * 100_000, text)
    (d / "bioworld.json").write_text(huge)
    with pytest.raises(CheckpointError, match="100000 digits"):
        bw.WorldModel.load(d)
    (d / "bioworld.json").write_text(re.sub(r'"lr": [0-9.e-]+', '"lr": 1.' + "5" * 5000, text))
    with pytest.raises(CheckpointError, match="characters"):
        bw.WorldModel.load(d)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_even_with_a_matching_hash(saved, pristine, tmp_path, value):
    d = _copy(saved, tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    key = "module.readout_head.net.0.weight" if "module.readout_head.net.0.weight" in tensors else \
        next(k for k in tensors if k.startswith("module.") and tensors[k].is_floating_point())
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, str(d / "model.safetensors"))
    _write(d, copy.deepcopy(pristine))
    with pytest.raises(CheckpointError, match="NaN / infinite"):
        bw.WorldModel.load(d)


def test_cli_predict_on_crafted_model_is_one_line(saved, pristine, tmp_path):
    from typer.testing import CliRunner

    from bioworld.cli import app

    d = _copy(saved, tmp_path / "m")
    meta = copy.deepcopy(pristine)
    meta["model_config"]["latent_dim"] = 10**9
    _write(d, meta)
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    with _address_space(HEADROOM):
        res = runner.invoke(app, ["predict", str(d), "--perturbations", "control", "--out", str(tmp_path / "p.h5ad")])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "latent_dim" in lines[0], lines
    assert not (tmp_path / "p.h5ad").exists()


# ============================================================================ property test
def _leaf_paths(meta: dict) -> list[tuple]:
    paths: list[tuple] = [(k,) for k in meta if k not in ("format", "format_version", "weights_sha256", "meta_sha256")]
    for group in ("model_config", "train_config", "registration", "train_result", "meta"):
        if isinstance(meta.get(group), dict):
            paths += [(group, k) for k in meta[group]]
    paths += [("entities", "entities", 0, k) for k in ("name", "genes", "weights", "source")]
    paths += [("train_result", "history", 0, "total")]
    return paths


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-3, 3)
                | st.sampled_from([10**9, 10**12, 2**63, -(2**63) - 1, 4096, 0, -1])
                | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e10, -0.0, 1e-300, 1e308])
                | st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                           max_leaves=12)


@pytest.fixture(scope="module")
def fuzz_dir(saved, tmp_path_factory):
    return _copy(saved, tmp_path_factory.mktemp("fuzz") / "m")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_bioworld_json_fields_no_traceback_no_big_allocation(fuzz_dir, pristine, data):
    """Any JSON value in any field (hashes recomputed, so only the field checks stand guard):
    loading raises a CheckpointError or gives a model whose answers are finite or refused with a
    BioworldError; never another exception, never an allocation beyond the data's size."""
    meta = copy.deepcopy(pristine)
    n_edits = data.draw(st.integers(1, 3), label="n_edits")
    for _ in range(n_edits):
        path = data.draw(st.sampled_from(_leaf_paths(meta)), label="field")
        value = data.draw(JSON_VALUES, label="value")
        node = meta
        try:
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit replaced a parent; the edit that did so stands
    _write(fuzz_dir, meta)
    with _address_space(HEADROOM):
        try:
            wm = bw.WorldModel.load(fuzz_dir)
        except CheckpointError:
            return
        try:
            pred = wm.predict(["control", "P1_DRV1"])
        except BioworldError:
            return
    assert np.isfinite(np.asarray(pred.X)).all()
