"""Atomic, no-clobber output: write into a hidden temporary folder beside the target, then move into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medstack.errors import MedstackError, OutputExistsError

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path with the same file name as ``path`` in a hidden folder beside it.

    The writer writes there (plus any companion files, e.g. an .mhd's .raw). On success every file is
    flushed to disk and moved into the target folder, the file named like ``path`` last, so a reader
    never sees a partial output. On error or interruption nothing is left behind. Without
    ``overwrite`` an existing target is never replaced, not even by a concurrent writer (hard-link
    publish fails if the name exists).
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
        raise MedstackError(f"{path}: cannot create output folder {parent}: {e.strerror}") from e
    # the pid in the name lets clean_stale_partials() remove what a killed writer left behind
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=parent))
    try:
        yield tmpdir / path.name
        files = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)  # main file last
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(folder) -> list[Path]:
    """Remove temporary folders left in ``folder`` (recursively) by writers that were killed.

    Only folders named by :func:`atomic_output` (``.NAME.PID.XXXX.partial``) whose process is gone are
    removed. Returns what was removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f".*{PARTIAL_SUFFIX}"):
        parts = p.name[: -len(PARTIAL_SUFFIX)].split(".")  # ["", NAME..., PID, RANDOM]
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        if p.is_dir() and pid is not None and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
