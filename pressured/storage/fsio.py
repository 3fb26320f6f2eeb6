"""Durable local files, for the local backend and the spool in front of a remote one.

A write goes to a new file created exclusively beside its target and is renamed over it only
after ``fsync``; the rename is durable once its directory is synced too (fsync(2), "Notes").
An uncommitted write is discarded: its fd closed and its file removed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` with ``mode`` on every directory it creates: Path.mkdir(parents=True) and
    os.makedirs give intermediate directories the umask default instead."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise


def create_exclusive(path: Path, mode: int = FILE_MODE) -> int:
    """A new file opened for writing (its fd); FileExistsError when ``path`` exists."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data``: os.write may write less than it was given."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    """Make the renames and new entries in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(fd: int, path: Path) -> None:
    """Drop an uncommitted write: close its fd (if still open) and remove its file."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "create_exclusive",
    "discard",
    "fsync_dir",
    "make_dirs",
    "write_all",
]
