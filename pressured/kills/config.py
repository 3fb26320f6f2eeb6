"""The ``kills`` section of the configuration, and the one rule it is checked by: at load
(pressured.config delegates the section here) and when the daemon opens its kill sources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pressured.errors import ConfigError, quote


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
        problems: list[str] = []
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping (got {quote(data)})")
        known = {"kmsg", "tracepoint", "bcc", "window_seconds"}
        problems += [
            f"{where}.{k}: unknown key (got {quote(data[k])})" for k in data if k not in known
        ]

        def section(name: str, keys: set[str]) -> Mapping[str, Any]:
            value = data.get(name, {})
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                problems.append(f"{where}.{name}: expected a mapping (got {quote(value)})")
                return {}
            problems.extend(
                f"{where}.{name}.{k}: unknown key (got {quote(value[k])})"
                for k in value
                if k not in keys
            )
            return value

        def flag(sec: Mapping[str, Any], path: str, name: str, default: bool) -> bool:
            value = sec.get(name, default)
            if not isinstance(value, bool):
                problems.append(f"{path}.{name}: expected true or false (got {quote(value)})")
                return default
            return value

        def text(sec: Mapping[str, Any], path: str, name: str, default: str) -> str:
            value = sec.get(name, default)
            if not isinstance(value, str) or not value.startswith("/"):
                problems.append(f"{path}.{name}: expected an absolute path (got {quote(value)})")
                return default
            return value

        kmsg = section("kmsg", {"enabled", "path", "replay"})
        tp = section("tracepoint", {"enabled", "tracefs"})
        bcc = section("bcc", {"enabled"})
        window = data.get("window_seconds", cls.window_seconds)
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 300:
            problems.append(
                f"{where}.window_seconds: expected a number of seconds in (0, 300] "
                f"(got {quote(window)})"
            )
            window = cls.window_seconds
        out = cls(
            kmsg_enabled=flag(kmsg, f"{where}.kmsg", "enabled", cls.kmsg_enabled),
            kmsg_path=text(kmsg, f"{where}.kmsg", "path", cls.kmsg_path),
            kmsg_replay=flag(kmsg, f"{where}.kmsg", "replay", cls.kmsg_replay),
            tracepoint_enabled=flag(tp, f"{where}.tracepoint", "enabled", cls.tracepoint_enabled),
            tracefs=text(tp, f"{where}.tracepoint", "tracefs", cls.tracefs),
            bcc_enabled=flag(bcc, f"{where}.bcc", "enabled", cls.bcc_enabled),
            window_seconds=float(window),
        )
        if problems:
            raise ConfigError(problems)
        return out
