"""Python <-> Lua values for the sandbox.

The interpreters run with ``encoding=None``: a Lua string reaches Python as bytes, and the host
pushes bytes, never str. Python data (the event, the configuration, host answers) becomes nested
Lua tables; None values are left out, so they read as nil. ``estimate`` sizes a value before it
is pushed, because the memory cap must be raised first (see budget.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

MAX_DEPTH = 64
"""Deeper Python data is pushed as the string "(nested too deep)"."""
QUOTE_CHARS = 200
"""How much of a Lua error message is quoted in logs, events and errors."""
_CLIP_MARGIN = 32


class Converter:
    """Builds Lua values in one interpreter."""

    def __init__(self, lua: Any, lua_type: Callable[[Any], str | None]) -> None:
        self.lua = lua
        self._lua_type = lua_type

    def table(self, items: Mapping[str, Any], raw: bool = False) -> Any:
        """A Lua table of ``items``; ``raw`` puts the values in as they are (Python callables)."""
        t = self.lua.table()
        for k, v in items.items():
            t[k.encode()] = v if raw else self.to_lua(v)
        return t

    def to_lua(self, value: Any, depth: int = 0) -> Any:
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**63 else float(value)
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if depth > MAX_DEPTH:
            return b"(nested too deep)"
        if isinstance(value, Mapping):
            t = self.lua.table()
            for k, v in value.items():
                if v is not None:
                    key = k if isinstance(k, int) and not isinstance(k, bool) else str(k).encode()
                    t[key] = self.to_lua(v, depth + 1)
            return t
        if isinstance(value, list | tuple | set | frozenset):
            t = self.lua.table()
            for i, v in enumerate(value, 1):
                if v is not None:
                    t[i] = self.to_lua(v, depth + 1)
            return t
        return str(value).encode()

    def is_table(self, value: Any) -> bool:
        return self._lua_type(value) == "table"


def as_text(value: Any) -> str:
    """A Lua string (bytes) or any other value as Python text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` when short, else its first ``limit`` characters, "..." and its size: a script
    can raise an error of many megabytes, which must not reach a log line in full. Clipping
    clipped text changes nothing (the margin is longer than the tail it adds)."""
    if len(text) <= limit + _CLIP_MARGIN:
        return text
    size = len(text.encode("utf-8", errors="replace"))
    return f"{text[:limit]}... ({size} bytes)"


def lua_kind(value: Any) -> str:
    """What a script passed, for error messages: "nil", "boolean", "number", "string"..."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, bytes):
        return "string"
    return "a table or function"


def estimate(value: Any, depth: int = 0) -> int:
    """Rough bytes Lua needs to hold ``value`` as strings and tables."""
    if isinstance(value, str | bytes | bytearray):
        return len(value) + 40
    if depth > MAX_DEPTH:
        return 64
    if isinstance(value, Mapping):
        return 64 + sum(
            estimate(k, depth + 1) + estimate(v, depth + 1) + 32 for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return 64 + sum(estimate(v, depth + 1) + 16 for v in value)
    return 16
