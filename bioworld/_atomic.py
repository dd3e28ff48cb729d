"""The one way bioworld writes files: atomically, with normal modes, and with one-line errors.

Every file the package writes (model and ensemble folders, training state, predictions,
counterfactuals, reports, the demo's cache key) goes through :func:`write_files`: each file is
written completely to a hidden temporary file beside its destination
(``.<name>.<pid>.<random>.bwtmp``), flushed to disk, given the mode a new file gets under the
process umask (``0o666 & ~umask``, 0644 under the usual umask 022), and only then renamed over the
destination. A failure at any point (disk full, permission denied, an exception while
serialising) removes the temporary files, leaves the destinations as they were, and is raised as
:class:`~bioworld.errors.OutputError` naming the destination path (never the temporary file).
A process killed while writing leaves its temporary file behind; the next write into the same
folder removes temporary files whose process is gone (:func:`clean_stale`).

:func:`folder_lock` holds an exclusive lock on a folder for the length of a job (``bioworld
train --out``), so two jobs never write one folder at once.

This module imports nothing from bioworld but :mod:`bioworld.errors`: every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bioworld.errors import OutputError

__all__ = ["TMP_SUFFIX", "LOCK_NAME", "clean_stale", "file_mode", "folder_lock", "write_files",
           "write_bytes", "write_text", "check_writable"]

TMP_SUFFIX = ".bwtmp"
LOCK_NAME = ".bioworld.lock"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+" + re.escape(TMP_SUFFIX) + r"$")
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a newly created file gets: ``0o666 & ~umask`` (0644 under umask 022)."""
    return 0o666 & ~_umask()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def clean_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files in ``directory`` left by bioworld writers that were killed.

    Only names of the form ``.<name>.<pid>.<random>.bwtmp`` whose process no longer runs are
    removed (a writer that is still running keeps its file). Returns the removed paths.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_RE.match(p.name)
        if m is None or _alive(int(m.group("pid"))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # not ours to remove (another user's folder); harmless
    return removed


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        code = exc.errno
        text = exc.strerror or str(exc)
        return f"{text} (errno {code})" if code is not None else text
    return f"{type(exc).__name__}: {exc}"


def _fix_for(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "No space left" in text or "StorageFull" in text:
        return "Fix: free space on that filesystem, or write to another one."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "Permission denied" in text:
        return "Fix: write to a folder you have write permission for."
    return "Fix: check that the destination folder exists, is writable and has free space."


def output_error(path: str | os.PathLike, exc: BaseException, what: str = "") -> OutputError:
    """An :class:`OutputError` for a failed write of ``path`` (naming it, not a temporary file)."""
    reason = _reason(exc)
    if not isinstance(exc, OSError):
        # e.g. SafetensorError "Error while serializing: IoError(Os { code: 28, ... })"
        m = re.search(r"code:\s*(\d+)", str(exc))
        if m:
            exc = OSError(int(m.group(1)), os.strerror(int(m.group(1))))
            reason = _reason(exc)
    return OutputError(
        f"could not write {what + ' ' if what else ''}{str(path)!r}: {reason}; nothing was written "
        f"there (an earlier file at that path is unchanged). {_fix_for(exc)}"
    )


def _is_write_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    return type(exc).__name__ == "SafetensorError" and ("IoError" in str(exc) or "code:" in str(exc))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p; returns the folders it created (outermost first), to remove after a failure."""
    created: list[Path] = []
    missing = []
    p = directory
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for q in reversed(missing):
        try:
            q.mkdir()
            created.append(q)
        except FileExistsError:
            pass
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove folders :func:`_make_parents` created (innermost first) if they are empty."""
    for q in reversed(list(created)):
        try:
            q.rmdir()
        except OSError:
            return


def write_files(targets: Sequence[tuple[str | os.PathLike, Callable[[str], Any]]], *, what: str = "") -> list[Path]:
    """Write several files all-or-nothing: each ``writer(tmp_path)`` fills a temporary file.

    All temporary files are written and flushed before the first rename, so an error (raised as
    :class:`OutputError` for write failures, as itself otherwise) leaves every destination as it
    was; the renames happen in the order given (put the file that makes the others valid, e.g. a
    checkpoint's metadata, last). Folders are created as needed and removed again on failure.
    """
    paths = [Path(p) for p, _ in targets]
    created: list[Path] = []
    for p in paths:
        created += _make_parents(p.parent)
    for parent in dict.fromkeys(p.parent for p in paths):
        clean_stale(parent)
    temps: list[str] = []
    mode = file_mode()
    current = paths[0] if paths else None
    try:
        for (_path, writer), p in zip(targets, paths):
            current = p
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
            os.close(fd)
            temps.append(tmp)
            writer(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
        for tmp, p in zip(temps, paths):
            current = p
            os.replace(tmp, p)
    except BaseException as exc:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        remove_created(created)
        if isinstance(exc, Exception) and _is_write_error(exc) and current is not None:
            raise output_error(current, exc, what) from None
        raise
    for parent in dict.fromkeys(p.parent for p in paths):
        _fsync_dir(parent)
    return paths


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_files`)."""

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()

    return write_files([(path, writer)], what=what)[0]


def write_text(path: str | os.PathLike, text: str, *, what: str = "") -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_files`)."""
    return write_bytes(path, text.encode("utf-8"), what=what)


def check_writable(path: str | os.PathLike, *, option: str = "--out") -> None:
    """Refuse early (before any work) when ``path`` could not be created or replaced.

    Checks the nearest existing folder on the way to ``path`` for write permission; the error
    names ``option``.
    """
    p = Path(path)
    probe = p if p.is_dir() else p.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {str(path)!r}: {str(probe)!r} is a file, so the folder cannot be created; "
                          f"expected a path under a folder. Fix: choose another {option}.")
    try:  # a real probe: permission bits, read-only mounts, special filesystems, quotas
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=f".{p.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{option} {str(path)!r}: cannot write in the folder {str(probe)!r} ({_reason(e)}); "
                          f"expected a folder you can write to. {_fix_for(e)} Or choose another {option}.") from None


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike, *, option: str = "--out") -> Iterator[list[Path]]:
    """Hold an exclusive lock on ``directory`` (created if needed) for the ``with`` block.

    The lock is a file ``.bioworld.lock`` in the folder, locked with ``flock``; a second job on the
    same folder gets an :class:`OutputError` at once. Yields the list of folders this call created
    (so a failed job can remove them); the lock file is removed at the end.
    """
    d = Path(directory)
    check_writable(d, option=option)
    try:
        created = _make_parents(d)
    except OSError as e:
        raise output_error(d, e, "folder") from None
    lock_path = d / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: exclusive creation instead of flock
        fcntl = None  # type: ignore[assignment]
    fd = -1
    try:
        while True:
            if fcntl is None:  # pragma: no cover
                try:
                    fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
                except FileExistsError:
                    raise _busy(d, option) from None
                break
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                fd = -1
                raise _busy(d, option) from None
            try:  # the holder before us may have removed the file between our open and our lock
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        remove_created(created)
        if isinstance(exc, OSError):
            raise output_error(lock_path, exc, "lock file") from None
        raise
    try:
        yield created
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _busy(d: Path, option: str) -> OutputError:
    return OutputError(f"{option} {str(d)!r} is being written by another bioworld process (it holds "
                       f"{LOCK_NAME}); expected a folder no other job writes to. Fix: wait for that job to "
                       f"finish, or choose another {option}.")
