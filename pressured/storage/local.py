"""Local filesystem storage: one file per key under a root directory.

A write goes to a hidden temporary file beside its target and is renamed over it only after
``fsync``, so a reader never sees a half-written heap profile and a crash leaves either the old
object or the new one (rename(2) is atomic within a filesystem).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pressured.errors import StorageError, quote
from pressured.storage.base import Destination, Storage, Writer, validate_key
from pressured.storage.fsio import create_exclusive, discard, fsync_dir, make_dirs, write_all

log = logging.getLogger("pressured.storage.local")

DEFAULT_ROOT = "/var/lib/pressured/storage"
# Temporary names are hidden and carry this marker so list() can skip writes in progress and
# leftovers from a crash; a key whose last part looks like this is refused.
_TMP_PREFIX = ".pressured-tmp-"


class LocalWriter(Writer):
    def __init__(self, storage: LocalStorage, key: str, target: Path) -> None:
        self._storage = storage
        self._key = key
        self._target = target
        self._tmp = target.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        self._done = False
        try:
            self._fd: int = create_exclusive(self._tmp)
        except OSError as exc:
            raise storage._error("open for writing", key, exc) from exc

    def write(self, data: bytes) -> int:
        if self._done:
            raise StorageError(
                f"{self._storage.name}: write to closed writer for key {quote(self._key)}"
            )
        try:
            write_all(self._fd, data)
        except OSError as exc:
            self.abort()
            raise self._storage._error("write", self._key, exc) from exc
        return len(data)

    def close(self) -> None:
        if self._done:
            return
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self._target)
            fsync_dir(self._target.parent)
        except OSError as exc:
            self.abort()
            raise self._storage._error("commit", self._key, exc) from exc
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        discard(self._fd, self._tmp)
        self._fd = -1


class LocalStorage(Storage):
    """Files under ``root``; keys map to relative paths, directories are created on demand."""

    name = "local"

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r})"

    def destination(self) -> Destination:
        return Destination("local", {"path": str(self.root)})

    def _error(self, what: str, key: str, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        return StorageError(
            f"{self.name}: cannot {what} key {quote(key)} under {self.root}: {reason}"
        )

    def _real_root(self, create: bool = False) -> Path:
        if create:
            try:
                make_dirs(self.root)
            except OSError as exc:
                raise StorageError(
                    f"{self.name}: cannot create storage root {self.root}: {exc.strerror or exc}"
                ) from exc
        return self.root.resolve()

    def _path(self, key: str, create: bool = False) -> Path:
        validate_key(key)
        if key.rsplit("/", 1)[-1].startswith(_TMP_PREFIX):
            raise StorageError(f"invalid storage key {quote(key)}: reserved temporary name")
        root = self._real_root(create)
        path = root / key
        # validate_key refuses '..' in the key; a symlink inside the root could still point out.
        if not path.resolve().is_relative_to(root):
            raise StorageError(f"{self.name}: key {quote(key)} resolves outside {self.root}")
        return path

    def _ensure_parent(self, key: str, path: Path) -> None:
        try:
            make_dirs(path.parent)
        except OSError as exc:
            raise self._error("create the directory for", key, exc) from exc

    def open_write(self, key: str) -> Writer:
        path = self._path(key, create=True)
        self._ensure_parent(key, path)
        return LocalWriter(self, key, path)

    def open_read(self, key: str) -> IO[bytes]:
        path = self._path(key)
        try:
            return path.open("rb")
        except OSError as exc:
            raise self._error("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def remove(self, key: str) -> None:
        """Delete ``key``; a key that does not exist is not an error (as with S3)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._error("remove", key, exc) from exc

    def rename(self, src: str, dst: str) -> None:
        src_path = self._path(src)
        dst_path = self._path(dst, create=True)
        self._ensure_parent(dst, dst_path)
        try:
            os.replace(src_path, dst_path)
            fsync_dir(dst_path.parent)
        except OSError as exc:
            raise self._error(f"rename to {quote(dst)} the", src, exc) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as in S3), sorted."""
        directory, _, _ = prefix.rpartition("/")
        if directory:
            validate_key(directory)
        root = self._real_root()
        start = root / directory if directory else root
        if not start.is_dir():
            return iter(())
        keys: list[str] = []

        def failed(exc: OSError) -> None:
            raise self._error("list", prefix or "(all)", exc) from exc

        for dirpath, dirnames, filenames in os.walk(start, onerror=failed):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))
