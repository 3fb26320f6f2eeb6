"""What every host function exposed to a script shares.

A host function is a Python callable the prelude wraps in a Lua closure (``host`` in
prelude.lua). It answers ``(True, values...)`` or ``(False, message[, timed_out])`` and never
raises into Lua: lupa would hand a Python exception object to the script. ``Host.guard`` turns
one call into that answer; ``Host.result`` pushes a table answer within the memory budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pressured.actions.lua.budget import Budget
from pressured.actions.lua.convert import Converter, as_text, estimate, lua_kind
from pressured.errors import PressuredError
from pressured.storage.base import Storage

log = logging.getLogger("pressured.lua")
"""What scripts log and what the host logs about them."""

HostAnswer = tuple[Any, ...]
"""``(True, values...)`` or ``(False, message[, timed_out])``."""


class ScriptMistake(Exception):
    """A script called a host function wrongly; becomes a Lua error with this message."""


class Timeout(Exception):
    """The script's deadline passed while the host was working for it."""


class Owner(Protocol):
    """What a sandbox and its host functions use of the worker that holds them (worker.py)."""

    dry_run: bool
    """Dry run of the event being handled."""
    env_allow: frozenset[str]
    timeout_ms: int
    memory_mb: int
    config: Mapping[str, Any]
    """The whole effective configuration (the script's global ``config``)."""

    def http(self) -> Any:
        """The httpx.Client the scripts share."""

    def storage(self) -> Storage:
        """The configured storage (the daemon's, through the pipe); raises ScriptMistake when
        there is none."""


class Host:
    """One script's side of the host: its name, owner, budget and converter."""

    def __init__(self, script: str, owner: Owner, budget: Budget, convert: Converter) -> None:
        self.script = script
        self.owner = owner
        self.budget = budget
        self.convert = convert

    def guard(self, fn: Callable[[], HostAnswer]) -> HostAnswer:
        """Run ``fn`` for the script; every failure becomes a ``(False, message...)`` answer."""
        try:
            if self.budget.expired():
                raise Timeout
            return fn()
        except Timeout:
            return (False, self.budget.timeout_message.encode(), True)
        except ScriptMistake as exc:
            return (False, str(exc).encode())
        except (PressuredError, OSError) as exc:
            return (False, f"{type(exc).__name__}: {exc}".encode())
        except Exception as exc:
            # anything else is a host bug; the script still gets a string, never the exception
            log.exception("%s: host function failed", self.script)
            return (False, f"pressured: internal error: {type(exc).__name__}: {exc}".encode())

    def result(self, values: Mapping[str, Any]) -> HostAnswer:
        """A successful answer carrying ``values`` as a Lua table."""
        self.budget.reserve(estimate(values))
        return (True, self.convert.to_lua(values))

    def opts(self, value: Any, what: str) -> dict[str, Any]:
        """An options table given by the script (nil: none), with its string keys."""
        if value is None:
            return {}
        if not self.convert.is_table(value):
            raise ScriptMistake(f"{what}: options must be a table (got {lua_kind(value)})")
        return {as_text(k): v for k, v in value.items() if isinstance(k, bytes)}
