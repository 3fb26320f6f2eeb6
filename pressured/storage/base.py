"""The storage contract shared by local, s3 and the Lua ``storage`` API.

Keys are relative, '/'-separated paths ("heaps/default/web/2026...-app-12.pb.gz"). A key that is
absolute, empty, or holds a ".." part is refused with StorageError before anything is touched.
Every failure is a StorageError naming the backend and the key (``raise ... from exc``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import IO


def validate_key(key: str) -> str:
    from pressured.errors import StorageError  # noqa: PLC0415

    if not isinstance(key, str) or not key or key.startswith("/") or "\0" in key:
        raise StorageError(f"invalid storage key {key!r}: must be a non-empty relative path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}: empty, '.' or '..' path parts")
    return key


class Writer(abc.ABC):
    """A streaming write: ``write`` chunks, then ``close`` commits or ``abort`` discards."""

    @abc.abstractmethod
    def write(self, data: bytes) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Storage(abc.ABC):
    name: str = "storage"

    @abc.abstractmethod
    def open_write(self, key: str) -> Writer: ...

    @abc.abstractmethod
    def open_read(self, key: str) -> IO[bytes]: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def remove(self, key: str) -> None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]: ...

    def write(self, key: str, data: bytes) -> None:
        with self.open_write(key) as w:
            w.write(data)

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        total = 0
        with self.open_write(key) as w:
            for chunk in chunks:
                total += w.write(chunk)
        return total

    def read(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing
        """Release clients and stop background work (the spool retrier)."""
