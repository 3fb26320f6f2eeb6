"""The storage contract shared by local, s3 and the Lua ``storage`` API.

Keys are relative, '/'-separated paths ("heaps/default/web/2026...-app-12.pb.gz"). A key that is
absolute, empty, or holds a ".." part is refused with StorageError before anything is touched.
Every failure is a StorageError naming the backend and the key (``raise ... from exc``).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO


def validate_key(key: str) -> str:
    from pressured.errors import StorageError, quote  # noqa: PLC0415

    if not isinstance(key, str) or not key or key.startswith("/") or "\0" in key:
        raise StorageError(f"invalid storage key {quote(key)}: must be a non-empty relative path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {quote(key)}: empty, '.' or '..' path parts")
    return key


@dataclass(frozen=True)
class Destination:
    """Where a backend's writes land, in a form that survives a restart (JSON in a spool entry).

    ``where`` names the place (for S3: bucket, prefix, endpoint): two destinations with the same
    type and ``where`` are the same place. ``how`` holds what reaching it takes (for S3: region,
    path style); it may change between configurations without changing the place.
    """

    type: str
    where: Mapping[str, str | None]
    how: Mapping[str, str | bool | None] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The place as one comparable string."""
        return json.dumps([self.type, dict(self.where)], sort_keys=True)

    def describe(self) -> str:
        from pressured.errors import quote  # noqa: PLC0415

        parts = ", ".join(f"{k}={quote(v)}" for k, v in sorted(self.where.items()) if v)
        return f"{self.type}({parts})"

    def to_json(self) -> dict[str, object]:
        return {"type": self.type, "where": dict(self.where), "how": dict(self.how)}

    @classmethod
    def from_json(cls, value: object) -> Destination:
        """The inverse of ``to_json``; ValueError for anything else."""
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise ValueError("destination: not a mapping with a type")
        where, how = value.get("where"), value.get("how", {})
        if not isinstance(where, dict) or not isinstance(how, dict):
            raise ValueError("destination: where and how must be mappings")
        if not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in where.items()
        ):
            raise ValueError("destination: where holds strings only")
        if not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, bool))) for k, v in how.items()
        ):
            raise ValueError("destination: how holds strings and booleans only")
        return cls(value["type"], dict(where), dict(how))


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

    def destination(self) -> Destination | None:
        """Where writes land, for the spool to record; None when it cannot be described (the
        spool then retries its entries against whatever primary it has)."""
        return None

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
