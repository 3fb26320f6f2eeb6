"""The ``kills`` section of the configuration, and the one rule it is checked by: at load
(pressured.config delegates the section here) and when the daemon opens its kill sources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pressured.settings import Checker

_KEYS = ("kmsg", "tracepoint", "bcc", "window_seconds")
_KMSG_KEYS = ("enabled", "path", "replay")
_TRACEPOINT_KEYS = ("enabled", "tracefs")
_BCC_KEYS = ("enabled",)
MAX_WINDOW_SECONDS = 300
"""The longest ``window_seconds``: how long the reconciler waits for a kill's other records
before it reports the kill (its ``window_s``)."""


@dataclass(frozen=True)
class KillsConfig:
    """The ``kills`` section of the configuration."""

    kmsg_enabled: bool = True
    kmsg_path: str = "/dev/kmsg"
    kmsg_replay: bool = False
    tracepoint_enabled: bool = True
    tracefs: str = "/sys/kernel/tracing"
    bcc_enabled: bool = False
    window_seconds: float = 5.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "kills") -> KillsConfig:
        """Validate the section; every problem is reported at once in one ConfigError."""
        check = Checker()
        top = check.section(data, where, _KEYS)
        kmsg = check.section(top.get("kmsg"), f"{where}.kmsg", _KMSG_KEYS)
        tp = check.section(top.get("tracepoint"), f"{where}.tracepoint", _TRACEPOINT_KEYS)
        bcc = check.section(top.get("bcc"), f"{where}.bcc", _BCC_KEYS)
        window = check.number(
            top.get("window_seconds", cls.window_seconds),
            f"{where}.window_seconds",
            cls.window_seconds,
            above=0,
            max=MAX_WINDOW_SECONDS,
            expected=f"a number of seconds in (0, {MAX_WINDOW_SECONDS}]",
        )
        out = cls(
            kmsg_enabled=check.flag(
                kmsg.get("enabled", cls.kmsg_enabled), f"{where}.kmsg.enabled", cls.kmsg_enabled
            ),
            kmsg_path=check.path(
                kmsg.get("path", cls.kmsg_path), f"{where}.kmsg.path", cls.kmsg_path
            ),
            kmsg_replay=check.flag(
                kmsg.get("replay", cls.kmsg_replay), f"{where}.kmsg.replay", cls.kmsg_replay
            ),
            tracepoint_enabled=check.flag(
                tp.get("enabled", cls.tracepoint_enabled),
                f"{where}.tracepoint.enabled",
                cls.tracepoint_enabled,
            ),
            tracefs=check.path(
                tp.get("tracefs", cls.tracefs), f"{where}.tracepoint.tracefs", cls.tracefs
            ),
            bcc_enabled=check.flag(
                bcc.get("enabled", cls.bcc_enabled), f"{where}.bcc.enabled", cls.bcc_enabled
            ),
            window_seconds=window,
        )
        check.raise_if_any()
        return out
