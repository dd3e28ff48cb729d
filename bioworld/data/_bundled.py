"""Bundled data files: where they live and whether they are intact.

Every file shipped in the package's ``bioworld/_data/`` folder (package data: it is inside the
wheel) is listed, with its SHA-256, in ``bioworld/_data/SHA256SUMS`` (paths relative to that folder). :func:`bundled_path` resolves a name to a path
and checks the file against that list once per process; nothing is ever downloaded.

The folder is ``bioworld/_data`` (installed with the package) unless the environment variable
``BIOWORLD_DATA_DIR`` names another folder. The *expected* checksums are always read from the
package's own ``_data/SHA256SUMS`` when it exists, so pointing ``BIOWORLD_DATA_DIR`` at a modified
copy cannot also replace the reference checksums; only when the package was installed without its
data is ``<BIOWORLD_DATA_DIR>/SHA256SUMS`` used instead.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path

from bioworld.errors import DataValidationError

__all__ = ["bundled_path", "verify_bundled", "data_dir"]

ENV_VAR = "BIOWORLD_DATA_DIR"
_SUMS_NAME = "SHA256SUMS"
_REPO_DATA_DIR = Path(__file__).resolve().parents[1] / "_data"

# (resolved path, size, mtime_ns) -> sha256 hex digest; a file changed in-process is re-hashed
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def data_dir() -> Path:
    """Folder holding the bundled files: ``$BIOWORLD_DATA_DIR`` if set, else ``bioworld/_data``."""
    override = os.environ.get(ENV_VAR)
    return Path(override).expanduser() if override else _REPO_DATA_DIR


def _sums_file() -> Path:
    repo_sums = _REPO_DATA_DIR / _SUMS_NAME
    return repo_sums if repo_sums.is_file() else data_dir() / _SUMS_NAME


def _expected_checksums() -> dict[str, str]:
    """Parse ``SHA256SUMS`` (``<hex>  <relative path>`` per line) into ``{name: hex}``."""
    sums = _sums_file()
    if not sums.is_file():
        raise DataValidationError(
            f"checksum list not found: looked for {sums}. Expected the file SHA256SUMS listing the "
            f"bundled data. Fix: restore it from the repository (git checkout -- bioworld/_data/{_SUMS_NAME}) "
            f"or set {ENV_VAR} to a folder that contains it."
        )
    table: dict[str, str] = {}
    for lineno, line in enumerate(sums.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataValidationError(
                f"{sums}:{lineno}: malformed line {line!r}; expected '<64 hex digits>  <path>'. "
                f"Fix: restore {_SUMS_NAME} from the repository."
            )
        table[parts[1].strip().lstrip("*")] = parts[0].lower()
    return table


def _sha256(path: Path) -> str:
    """SHA-256 of ``path``, cached per process by (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _HASH_CACHE[key] = digest
    return digest


def bundled_path(name: str) -> Path:
    """Path of a bundled data file, checked against ``bioworld/_data/SHA256SUMS``.

    Parameters
    ----------
    name
        Path relative to ``bioworld/_data/`` exactly as listed in ``bioworld/_data/SHA256SUMS``, e.g.
        ``"perturbseq/papalexi2021_thp1_ko.h5ad"``.

    Returns
    -------
    The absolute path of the file (under ``$BIOWORLD_DATA_DIR`` if set). The SHA-256 is computed
    once per process and file version.

    Raises
    ------
    DataValidationError
        If ``name`` is not a bundled file, the file is missing, or its checksum differs.
    """
    expected = _expected_checksums()
    key = str(name).replace(os.sep, "/")
    if key not in expected:
        close = difflib.get_close_matches(key, list(expected), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataValidationError(
            f"unknown bundled file {name!r}; expected one of the {len(expected)} names in "
            f"{_sums_file()}.{hint} Fix: use a listed name (see bioworld/_data/README.md)."
        )
    path = data_dir() / key
    if not path.is_file():
        raise DataValidationError(
            f"bundled file missing: {path} does not exist; expected the file listed in "
            f"{_SUMS_NAME} as {key!r}. Fix: restore it from the repository "
            f"(git checkout -- bioworld/_data/{key}) or unset/correct {ENV_VAR}."
        )
    found = _sha256(path)
    if found != expected[key]:
        raise DataValidationError(
            f"checksum mismatch for bundled file {path}: found SHA-256 {found}, expected "
            f"{expected[key]} (from {_sums_file()}). The file is corrupt or was modified. Fix: "
            f"restore it from the repository (git checkout -- bioworld/_data/{key})."
        )
    return path


def verify_bundled() -> dict[str, bool]:
    """Check every file listed in ``bioworld/_data/SHA256SUMS``.

    Returns
    -------
    ``{name: ok}`` for every listed file; ``ok`` is False when the file is missing or its SHA-256
    differs. Never raises for a bad file (use :func:`bundled_path` for the detailed error).
    """
    result: dict[str, bool] = {}
    folder = data_dir()
    for key, digest in _expected_checksums().items():
        path = folder / key
        result[key] = path.is_file() and _sha256(path) == digest
    return result
