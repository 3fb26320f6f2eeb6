"""The small host functions of a script: ``log.*`` and ``print``, ``ctx.time_iso`` and
``ctx.getenv``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from pressured.actions.lua.convert import as_text, lua_kind
from pressured.actions.lua.host import Host, HostAnswer, ScriptMistake, log
from pressured.model import rfc3339

TRACE = 5
"""Level of log.trace, below DEBUG."""

_ENV_PREFIX = "PRESSURED_"
_LOG_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

if logging.getLevelName(TRACE) == f"Level {TRACE}":
    logging.addLevelName(TRACE, "TRACE")


class CtxApi:
    """Logging and the ``ctx`` functions for one script."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The host functions the prelude wraps, by name."""
        return {"log": self.log, "time_iso": self.time_iso, "getenv": self.getenv}

    def log(self, level: Any, message: Any) -> None:
        log.log(
            _LOG_LEVELS.get(as_text(level), logging.INFO),
            "%s: %s",
            self.host.script,
            as_text(message),
        )

    def time_iso(self, when: Any = None) -> HostAnswer:
        def fmt() -> HostAnswer:
            if when is None:
                return (True, rfc3339(time.time()).encode())
            if isinstance(when, bool) or not isinstance(when, int | float):
                raise ScriptMistake(f"ctx.time_iso: expected epoch seconds, got {lua_kind(when)}")
            try:
                return (True, rfc3339(float(when)).encode())
            except (ValueError, OverflowError, OSError) as exc:
                raise ScriptMistake(f"ctx.time_iso({when!r}): {exc}") from exc

        return self.host.guard(fmt)

    def getenv(self, name: Any) -> HostAnswer:
        def get() -> HostAnswer:
            if not isinstance(name, bytes):
                raise ScriptMistake(f"ctx.getenv: expected a name, got {lua_kind(name)}")
            key = as_text(name)
            if not (key.startswith(_ENV_PREFIX) or key in self.host.owner.env_allow):
                log.debug(
                    "%s: ctx.getenv(%r) refused: not PRESSURED_* nor in env_allow",
                    self.host.script,
                    key,
                )
                return (True, None)
            value = os.environ.get(key)
            return (True, None if value is None else value.encode())

        return self.host.guard(get)
