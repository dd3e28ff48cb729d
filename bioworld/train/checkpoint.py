"""Checkpoints: safetensors weights + JSON metadata, no pickled code, written atomically.

A model directory holds ``model.safetensors`` and ``bioworld.json``; the JSON records the
SHA-256 of the weights file so a truncated or swapped file is refused, and the SHA-256 of its own
canonical content (``meta_sha256``) so an edited JSON is refused (checkpoints written before
``meta_sha256`` existed load without that check). The JSON is parsed with bounds on nesting and
number size, and every weight must be finite. A resumable training
state (optimiser moments, RNG states, step) lives beside it in ``train_state.safetensors`` +
``train_state.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bioworld._atomic import clean_stale, write_files
from bioworld.errors import CheckpointError
from bioworld.errors import user_stacklevel

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


def _tensor_writer(tensors: dict[str, torch.Tensor]):
    def write(tmp: str) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)

    return write


def _json_bytes(meta: dict[str, Any], **kw: Any) -> bytes:
    return json.dumps(meta, sort_keys=True, **kw).encode()


#: Deepest nesting of objects / arrays accepted in a checkpoint's JSON (bioworld writes < 10).
MAX_JSON_DEPTH = 64
#: Longest number literal accepted (digits of an integer, characters of a float).
MAX_NUMBER_CHARS = 40
_JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata in canonical form (sorted keys, compact), without ``meta_sha256``."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"}))  # as read back
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_CHARS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_NUMBER_CHARS} accepted)")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number written with {len(text)} characters (at most {MAX_NUMBER_CHARS} accepted)")
    return float(text)


def read_json(path: Path, what: str = "checkpoint") -> Any:
    """Parse a JSON file written by bioworld, refusing what no writer of ours produces.

    Nesting deeper than :data:`MAX_JSON_DEPTH` and number literals longer than
    :data:`MAX_NUMBER_CHARS` are refused before (depth) or while (numbers) parsing, so a crafted
    file cannot exhaust the stack or spend minutes converting a 100,000-digit integer.
    """
    import numpy as np

    raw = path.read_bytes()
    skeleton = np.frombuffer(_JSON_STRINGS.sub(b'""', raw), dtype=np.uint8)
    step = (np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(skeleton, (ord("]"), ord("}"))).astype(np.int64))
    depth = int(np.cumsum(step).max()) if len(step) else 0
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} nests {depth} levels deep; expected at most {MAX_JSON_DEPTH} (bioworld writes "
                              f"fewer than 10): the {what} is corrupt or was edited. Restore it or retrain.")
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_bounded_int, parse_float=_bounded_float)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the {what} is corrupt") from None


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write weights then metadata, all-or-nothing (:func:`bioworld._atomic.write_files`).

    The metadata names the weights' SHA-256. A write failure (disk full, permission) is an
    :class:`~bioworld.errors.OutputError` naming the model file and leaves any earlier checkpoint
    in ``directory`` intact; only a hard kill between the two renames can leave new weights beside
    old metadata, which :func:`load_checkpoint` refuses (hash mismatch).
    """
    from bioworld._version import __version__

    d = Path(directory)
    written: dict[str, str] = {}
    write_weights = _tensor_writer(tensors)

    def weights(tmp: str) -> None:
        write_weights(tmp)
        written["weights"] = tmp

    def metadata(tmp: str) -> None:
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bioworld_version": __version__,
            "weights_sha256": _sha256(Path(written["weights"])),
            **meta,
        }
        full["meta_sha256"] = meta_digest(full)
        Path(tmp).write_bytes(_json_bytes(full, indent=1))

    write_files([(d / WEIGHTS, weights), (d / META, metadata)], what="model file")
    return d


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a model directory; :class:`CheckpointError` says what is wrong."""
    from bioworld._version import __version__

    d = Path(directory)
    if d.is_file():
        raise CheckpointError(f"{str(d)!r} is a file; expected the model folder (written by `bioworld train --out` / "
                              f"WorldModel.save). Fix: load the folder that holds it: {str(d.parent)!r}")
    if not d.is_dir():
        raise CheckpointError(f"model directory {str(d)!r} does not exist; expected a folder written by `bioworld train --out`")
    meta_path, w_path = d / META, d / WEIGHTS
    for p in (meta_path, w_path):
        if not p.is_file():
            ensemble = (d / "ensemble.json").is_file()
            raise CheckpointError(
                f"{str(d)!r} has no {p.name}; expected {META} + {WEIGHTS} as written by `bioworld train`. "
                + ("It holds ensemble.json: it is a seed ensemble; load it with bioworld.Ensemble.load." if ensemble else
                   "The directory is incomplete (interrupted copy?) — retrain or copy it again.")
            )
    meta = read_json(meta_path)
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
            stacklevel=user_stacklevel(),
        )
    digest = _sha256(w_path)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(
            f"{w_path} has SHA-256 {digest[:12]}…, but {META} records {str(meta.get('weights_sha256'))[:12]}…: "
            "the weights were truncated, modified or come from another model. Retrain or restore the directory."
        )
    if "meta_sha256" in meta and meta_digest(meta) != meta["meta_sha256"]:
        raise CheckpointError(
            f"{meta_path} does not match the SHA-256 it records ({str(meta['meta_sha256'])[:12]}…): the file was "
            "edited after it was written. Restore the model folder or retrain."
        )
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{w_path} cannot be read as safetensors ({e}); the checkpoint is corrupt") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{w_path}: tensor {name!r} holds {n_bad} NaN / infinite value(s); expected finite weights (a "
                "diverged or tampered model). Restore the model folder or retrain."
            )
    return tensors, meta


def save_train_state(directory: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write the resumable training state (weights + JSON naming their hash), all-or-nothing."""
    d = Path(directory)
    written: dict[str, str] = {}
    write_weights = _tensor_writer(tensors)

    def weights(tmp: str) -> None:
        write_weights(tmp)
        written["weights"] = tmp

    def metadata(tmp: str) -> None:
        Path(tmp).write_bytes(_json_bytes({**state, "weights_sha256": _sha256(Path(written["weights"]))}))

    write_files([(d / STATE_WEIGHTS, weights), (d / STATE_META, metadata)], what="training state file")


def load_train_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The resumable training state, or ``None`` when there is none (or it is incomplete)."""
    d = Path(directory)
    if not (d / STATE_META).is_file() or not (d / STATE_WEIGHTS).is_file():
        return None
    state = read_json(d / STATE_META, "training state (delete it to train from scratch)")
    if not isinstance(state, dict):
        raise CheckpointError(f"{d / STATE_META} holds a {type(state).__name__}; expected a JSON object. The training "
                              "state is corrupt: delete it to train from scratch.")
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
    clean_stale(d)
