"""Atomic, no-clobber output: write into a hidden temporary folder beside the target, then move into place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medstack.errors import OutputExistsError, WriteError

try:  # POSIX: the writer holds an advisory lock on its temporary for its whole life
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale temporaries are never cleaned
    fcntl = None

PARTIAL_SUFFIX = ".partial"
#: Marker file inside every temporary folder made by :func:`atomic_output`: it identifies the folder as
#: medstack's own, and its writer holds an exclusive ``flock`` on it until the folder is gone.
LOCK_NAME = ".medstack-partial.lock"
_LOCK_MAGIC = b"medstack-partial 1\n"
#: Bytes kept free beyond the data when checking the space left before a write (headers, metadata, chunk index).
SPACE_MARGIN = 16 << 20


def check_free_space(path, nbytes: int, *, margin: int = SPACE_MARGIN) -> None:
    """Raise :class:`WriteError` (errno ENOSPC) when the folder of ``path`` has less than ``nbytes + margin`` free."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows) or unreadable: let the write itself fail
        return
    free = int(st.f_bavail) * int(st.f_frsize or st.f_bsize)
    need = int(nbytes) + int(margin)
    if free < need:
        raise WriteError(errno.ENOSPC, f"{path}: not enough free space to write it: needs about {need} bytes "
                                       f"(data {int(nbytes)} + margin {int(margin)}), {free} free in {folder}")  # fmt: skip


def _lock_temporary(tmpdir: Path):
    """Create the lock marker of ``tmpdir`` already locked (made under another name, locked, then renamed, so a
    cleaner never sees an unlocked marker of a live writer). Returns the open descriptor, or None without fcntl."""
    if fcntl is None:
        return None
    staging = tmpdir / (LOCK_NAME + ".new")
    fd = os.open(staging, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _LOCK_MAGIC + f"{os.getpid()}\n".encode())
        os.replace(staging, tmpdir / LOCK_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path with the same file name as ``path`` in a hidden folder beside it.

    The writer writes there (plus any companion files, e.g. an .mhd's .raw). On success every file is
    flushed to disk and moved into the target folder, the file named like ``path`` last, so a reader
    never sees a partial output. On error or interruption nothing is left behind. Without
    ``overwrite`` an existing target is never replaced, not even by a concurrent writer (hard-link
    publish fails if the name exists). While it exists, the temporary folder holds a lock marker
    (:data:`LOCK_NAME`) locked by this process, so :func:`clean_stale_partials` never removes it.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file name to write to")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno, f"{path}: cannot create output folder {parent}: {e.strerror}") from e
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=parent))
    except OSError as e:
        raise WriteError(e.errno, f"{path}: cannot create a temporary folder in {parent}: {e.strerror}") from e
    lock_fd = None
    try:
        lock_fd = _lock_temporary(tmpdir)
        yield tmpdir / path.name
        files = sorted((f for f in tmpdir.iterdir() if f.name != LOCK_NAME),
                       key=lambda p: p.name == path.name)  # main file last  # fmt: skip
        for f in files:
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            _publish(f, parent / f.name, overwrite=overwrite)
        with contextlib.suppress(OSError):
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock, after the folder is gone


def _publish(src: Path, dst: Path, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst)  # atomic and fails if dst exists
    except FileExistsError as e:
        raise OutputExistsError(f"{dst}: already exists; pass overwrite=True (CLI: --overwrite) to replace it") from e
    except OSError:  # filesystem without hard links
        if dst.exists():
            raise OutputExistsError(f"{dst}: already exists; pass overwrite=True to replace it") from None
        os.replace(src, dst)


def _stale(folder: Path) -> int | None:
    """If ``folder`` is a temporary of :func:`atomic_output` whose writer is gone, an open descriptor holding
    its lock (the caller removes the folder, then closes it); None for anything else (a live writer holds the
    lock, no medstack marker, not a plain folder)."""
    if fcntl is None or folder.is_symlink() or not folder.is_dir():
        return None
    marker = folder / LOCK_NAME
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # not ours (or a writer still creating its marker)
    try:
        if os.read(fd, len(_LOCK_MAGIC)) != _LOCK_MAGIC:
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: a live writer holds it
        os.close(fd)
        return None
    return fd


def _empty_and_orphaned(folder: Path, pid: int) -> bool:
    """A temporary folder holding no data (at most its lock marker, complete or still being staged) whose writer
    process no longer exists: killed between mkdtemp and its lock, or while removing it; nothing to lose."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if {p.name for p in folder.iterdir()} - {LOCK_NAME, LOCK_NAME + ".new"}:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def clean_stale_partials(folder) -> list[Path]:
    """Remove temporary folders left in ``folder`` (recursively) by writers that were killed.

    Only folders named by :func:`atomic_output` (``.NAME.PID.XXXX.partial``) that hold medstack's lock marker
    and whose lock is free (its writer is gone: the kernel drops a process's locks when it dies) are removed;
    a temporary still locked by a live writer, in this or another process, is never touched, nor is anything
    without the marker. Returns what was removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in list(folder.rglob(f".*{PARTIAL_SUFFIX}")):
        parts = p.name[: -len(PARTIAL_SUFFIX)].split(".")  # ["", NAME..., PID, RANDOM]
        if len(parts) < 4 or not parts[-2].isdigit():
            continue
        fd = _stale(p)
        if fd is None:
            if _empty_and_orphaned(p, int(parts[-2])):  # killed between mkdtemp and its lock marker
                shutil.rmtree(p, ignore_errors=True)
                if not p.exists():
                    removed.append(p)
            continue
        try:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(p)
    return removed
