"""The ``storage`` host functions of a script: ``storage.write/read/remove/exists/rename`` and
``storage.open`` with its handles (``h:read``, ``h:write``, ``h:close``).

Keys are checked by the storage contract (pressured.storage.base.validate_key). A storage
failure (bad key, missing key, backend error) is answered Lua style, ``nil, "message"``, never
raised. What a read hands to the script must fit under its memory cap. In dry-run mode writes,
removals and renames are logged, not done. A handle left open when on_event returns is closed;
an unclosed write is discarded, never committed half-done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from pressured.actions.lua.budget import PUSH_SLACK
from pressured.actions.lua.convert import as_text, lua_kind
from pressured.actions.lua.host import Host, HostAnswer, ScriptMistake, log
from pressured.errors import PressuredError
from pressured.storage.base import Storage, Writer, validate_key


class StorageApi:
    """The ``storage`` table of one script, and the handles it opened."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.budget = host.budget
        self._handles: dict[int, Writer | IO[bytes] | _DryWriter] = {}
        self._next_handle = 1

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The host functions the prelude wraps, by name."""
        return {
            "write": self.write,
            "read": self.read,
            "remove": self.remove,
            "exists": self.exists,
            "rename": self.rename,
            "open": self.open,
            "h_read": self.h_read,
            "h_write": self.h_write,
            "h_close": self.h_close,
        }

    def _call(self, what: str, fn: Callable[[Storage], HostAnswer]) -> HostAnswer:
        def call() -> HostAnswer:
            try:
                return fn(self.host.owner.storage())
            except (PressuredError, OSError) as exc:
                return (True, None, f"storage.{what}: {exc}".encode())

        return self.host.guard(call)

    def _key(self, value: Any, what: str) -> str:
        if not isinstance(value, bytes):
            raise ScriptMistake(f"storage.{what}: expected a key string, got {lua_kind(value)}")
        return validate_key(as_text(value))

    def _dry(self, what: str) -> bool:
        if self.host.owner.dry_run:
            log.info("%s: dry run: would %s", self.host.script, what)
            return True
        return False

    def write(self, key: Any = None, data: Any = None) -> HostAnswer:
        def write(storage: Storage) -> HostAnswer:
            k = self._key(key, "write")
            payload = data if isinstance(data, bytes) else _data(data, "storage.write")
            if not self._dry(f"write {len(payload)} bytes to storage key {k!r}"):
                storage.write(k, payload)
            return (True, True)

        return self._call("write", write)

    def read(self, key: Any = None) -> HostAnswer:
        def read(storage: Storage) -> HostAnswer:
            k = self._key(key, "read")
            with storage.open_read(k) as f:
                data = self._read_limited(f, None)
            if data is None:
                return (True, None, self._too_big(f"storage.read({k!r})"))
            return (True, data)

        return self._call("read", read)

    def _read_limited(self, f: IO[bytes], count: int | None) -> bytes | None:
        """Read ``count`` bytes (all when None) if they fit under the script's cap, else None."""
        room = max(self.budget.room() - PUSH_SLACK, 0)
        if count is None or count > room:
            self.budget.lua.gccollect()
            room = max(self.budget.room() - PUSH_SLACK, 0)
        want = room + 1 if count is None else min(count, room + 1)
        data = f.read(want)
        if len(data) > room:
            return None
        self.budget.reserve(len(data))
        return data

    def _too_big(self, what: str) -> bytes:
        return f"{what}: does not fit in memory_mb={self.budget.memory_mb}".encode()

    def remove(self, key: Any = None) -> HostAnswer:
        def remove(storage: Storage) -> HostAnswer:
            k = self._key(key, "remove")
            if not self._dry(f"remove storage key {k!r}"):
                storage.remove(k)
            return (True, True)

        return self._call("remove", remove)

    def exists(self, key: Any = None) -> HostAnswer:
        def exists(storage: Storage) -> HostAnswer:
            return (True, storage.exists(self._key(key, "exists")))

        return self._call("exists", exists)

    def rename(self, src: Any = None, dst: Any = None) -> HostAnswer:
        def rename(storage: Storage) -> HostAnswer:
            s, d = self._key(src, "rename"), self._key(dst, "rename")
            if not self._dry(f"rename storage key {s!r} to {d!r}"):
                storage.rename(s, d)
            return (True, True)

        return self._call("rename", rename)

    def open(self, key: Any = None, mode: Any = None) -> HostAnswer:
        def open_(storage: Storage) -> HostAnswer:
            k = self._key(key, "open")
            m = as_text(mode) if isinstance(mode, bytes) else "r" if mode is None else None
            handle: Writer | IO[bytes] | _DryWriter
            if m in ("r", "rb"):
                handle = storage.open_read(k)
            elif m in ("w", "wb"):
                handle = _DryWriter(k) if self.host.owner.dry_run else storage.open_write(k)
            else:
                raise ScriptMistake(f'storage.open: mode must be "r" or "w" (got {mode!r})')
            hid = self._next_handle
            self._next_handle += 1
            self._handles[hid] = handle
            return (True, hid)

        return self._call("open", open_)

    def _handle(self, hid: Any) -> Writer | IO[bytes] | _DryWriter:
        handle = self._handles.get(hid) if isinstance(hid, int) else None
        if handle is None:
            raise ScriptMistake("storage handle is closed")
        return handle

    def h_read(self, hid: Any = None, n: Any = None) -> HostAnswer:
        def read(_storage: Storage) -> HostAnswer:
            handle = self._handle(hid)
            if isinstance(handle, Writer | _DryWriter):
                raise ScriptMistake("h:read on a handle opened for writing")
            if n is None or n in (b"a", b"*a"):
                data = self._read_limited(handle, None)
                return (True, None, self._too_big("h:read()")) if data is None else (True, data)
            if isinstance(n, bool) or not isinstance(n, int | float) or n < 0:
                raise ScriptMistake(f'h:read: expected a byte count or "a" (got {as_text(n)!r})')
            chunk = self._read_limited(handle, int(n))
            if chunk is None:
                return (True, None, self._too_big(f"h:read({int(n)})"))
            if n > 0 and not chunk:
                return (True, None)
            return (True, chunk)

        return self._call("read", read)

    def h_write(self, hid: Any = None, data: Any = None) -> HostAnswer:
        def write(_storage: Storage) -> HostAnswer:
            handle = self._handle(hid)
            if not isinstance(handle, Writer | _DryWriter):
                raise ScriptMistake("h:write on a handle opened for reading")
            payload = data if isinstance(data, bytes) else _data(data, "h:write")
            handle.write(payload)
            return (True, True)

        return self._call("write", write)

    def h_close(self, hid: Any = None) -> HostAnswer:
        def close(_storage: Storage) -> HostAnswer:
            handle = self._handles.pop(hid, None) if isinstance(hid, int) else None
            if handle is None:
                return (True, True)  # closing twice is harmless, as with io
            handle.close()
            return (True, True)

        return self._call("close", close)

    def close_leftovers(self) -> None:
        """Close what the script left open: readers are closed, writers discarded."""
        for handle in self._handles.values():
            try:
                if isinstance(handle, Writer | _DryWriter):
                    log.warning(
                        "%s: a storage write handle was left open; discarded", self.host.script
                    )
                    handle.abort()
                else:
                    handle.close()
            except (PressuredError, OSError) as exc:
                log.warning("%s: closing a leftover storage handle: %s", self.host.script, exc)
        self._handles.clear()


class _DryWriter:
    """A write handle in dry-run mode: counts bytes, logs, stores nothing."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        log.info("dry run: would write %d bytes to storage key %r", self.size, self.key)

    def abort(self) -> None:
        pass


def _data(value: Any, what: str) -> bytes:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    raise ScriptMistake(f"{what}: expected a string (got {lua_kind(value)})")
