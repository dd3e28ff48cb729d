"""Checkpoints: safetensors weights + JSON metadata, no pickled code, written atomically.

A model directory holds ``model.safetensors`` and ``bioworld.json``; the JSON records the
SHA-256 of the weights file so a truncated or swapped file is refused. A resumable training
state (optimiser moments, RNG states, step) lives beside it in ``train_state.safetensors`` +
``train_state.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bioworld.errors import CheckpointError

FORMAT = "bioworld-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "bioworld.json"
STATE_WEIGHTS = "train_state.safetensors"
STATE_META = "train_state.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_temp_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` durably to a temporary file beside ``path``; returns the temporary name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _write_temp_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` durably (safetensors) to a temporary file beside ``path``; returns its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _discard(*paths: str) -> None:
    for tmp in paths:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _commit(weights: tuple[str, Path], meta: tuple[str, Path]) -> None:
    """Rename both fully written temporary files into place, weights first, then the metadata.

    Everything that can fail (serialising, writing, fsync) happens before the first rename, so an
    error leaves the previous checkpoint untouched; only a hard kill between the two renames can
    leave new weights beside old metadata, which :func:`load_checkpoint` refuses (hash mismatch).
    """
    try:
        os.replace(*weights)
        os.replace(*meta)
    except BaseException:
        _discard(weights[0], meta[0])
        raise


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write weights then metadata (each atomically); the metadata names the weights' hash."""
    from bioworld import __version__

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp_w = _write_temp_tensors(d / WEIGHTS, tensors)
    try:
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bioworld_version": __version__,
            "weights_sha256": _sha256(Path(tmp_w)),
            **meta,
        }
        tmp_m = _write_temp_bytes(d / META, json.dumps(full, indent=1, sort_keys=True).encode())
    except BaseException:
        _discard(tmp_w)
        raise
    _commit((tmp_w, d / WEIGHTS), (tmp_m, d / META))
    return d


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a model directory; :class:`CheckpointError` says what is wrong."""
    from bioworld import __version__

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"model directory {str(d)!r} does not exist; expected a folder written by `bioworld train --out`")
    meta_path, w_path = d / META, d / WEIGHTS
    for p in (meta_path, w_path):
        if not p.is_file():
            raise CheckpointError(
                f"{str(d)!r} has no {p.name}; expected {META} + {WEIGHTS} as written by `bioworld train`. "
                "The directory is incomplete (interrupted copy?) — retrain or copy it again."
            )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a bioworld checkpoint (format field {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {meta.get('format_version')} (written by bioworld "
            f"{meta.get('bioworld_version')}), this is bioworld {__version__} reading format {FORMAT_VERSION}; "
            "retrain with this version or install the one that wrote it"
        )
    if meta.get("bioworld_version") != __version__:
        import warnings

        warnings.warn(
            f"{d} was written by bioworld {meta.get('bioworld_version')} and is loaded by bioworld {__version__} "
            f"(same checkpoint format {FORMAT_VERSION}); predictions may differ if the model code changed",
            UserWarning,
            stacklevel=3,
        )
    digest = _sha256(w_path)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(
            f"{w_path} has SHA-256 {digest[:12]}…, but {META} records {str(meta.get('weights_sha256'))[:12]}…: "
            "the weights were truncated, modified or come from another model. Retrain or restore the directory."
        )
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{w_path} cannot be read as safetensors ({e}); the checkpoint is corrupt") from None
    return tensors, meta


def save_train_state(directory: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp_w = _write_temp_tensors(d / STATE_WEIGHTS, tensors)
    try:
        state = {**state, "weights_sha256": _sha256(Path(tmp_w))}
        tmp_m = _write_temp_bytes(d / STATE_META, json.dumps(state, sort_keys=True).encode())
    except BaseException:
        _discard(tmp_w)
        raise
    _commit((tmp_w, d / STATE_WEIGHTS), (tmp_m, d / STATE_META))


def load_train_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The resumable training state, or ``None`` when there is none (or it is incomplete)."""
    d = Path(directory)
    if not (d / STATE_META).is_file() or not (d / STATE_WEIGHTS).is_file():
        return None
    try:
        state = json.loads((d / STATE_META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{d / STATE_META} is corrupt ({e}); delete it to train from scratch") from None
    if _sha256(d / STATE_WEIGHTS) != state.get("weights_sha256"):
        raise CheckpointError(
            f"{d / STATE_WEIGHTS} does not match {STATE_META}: the training state is inconsistent; delete both to train from scratch"
        )
    return load_file(str(d / STATE_WEIGHTS)), state


def clear_train_state(directory: str | Path) -> None:
    """Remove the training state, including temporary files a killed save left behind."""
    d = Path(directory)
    for name in (STATE_META, STATE_WEIGHTS):
        p = d / name
        if p.exists():
            p.unlink()
    for name in (STATE_META, STATE_WEIGHTS):
        for stale in d.glob(f".{name}.*.tmp"):
            stale.unlink()
