"""The ``metrics`` config section, apart from the Prometheus families and the HTTP endpoint
(pressured/metrics.py) so that checking a config or running with metrics off does not import
prometheus_client and the HTTP server stack."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pressured.settings import Checker

__all__ = ["ALL_INTERFACES", "MetricsSettings"]

ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104 - a DaemonSet is scraped from other nodes
_SETTINGS_KEYS: Final = (
    "enabled",
    "port",
    "address",
    "pid_labels",
    "self_degraded_percent",
    "self_shed_percent",
)


@dataclass(frozen=True)
class MetricsSettings:
    """The ``metrics`` config section."""

    enabled: bool = True
    port: int = 9000
    address: str = ALL_INTERFACES
    pid_labels: bool = False
    self_degraded_percent: float = 85.0
    """/healthz says degraded at or above this percent of the daemon's own memory limit."""
    self_shed_percent: float = 90.0
    """Optional work (heap captures, Lua) is shed at or above this percent of its own limit."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "metrics") -> MetricsSettings:
        """Build from the root config mapping's ``metrics`` section (``where`` is its path)."""
        check = Checker()
        section = check.section(cfg.get(where.rpartition(".")[2]), where, _SETTINGS_KEYS)
        enabled = check.flag(section.get("enabled", cls.enabled), f"{where}.enabled", cls.enabled)
        pid_labels = check.flag(
            section.get("pid_labels", cls.pid_labels), f"{where}.pid_labels", cls.pid_labels
        )
        port = check.number(
            section.get("port", cls.port),
            f"{where}.port",
            cls.port,
            min=0,
            max=65535,
            integer=True,
            from_text=True,
            expected="a port number 0-65535",
        )
        address = check.text(
            section.get("address", cls.address),
            f"{where}.address",
            cls.address,
            empty=False,
            expected="a host address",
        )
        degraded = check.number(
            section.get("self_degraded_percent", cls.self_degraded_percent),
            f"{where}.self_degraded_percent",
            cls.self_degraded_percent,
            min=1,
            max=100,
            from_text=True,
            expected="a percent 1-100",
        )
        shed = check.number(
            section.get("self_shed_percent", cls.self_shed_percent),
            f"{where}.self_shed_percent",
            cls.self_shed_percent,
            min=1,
            max=100,
            from_text=True,
            expected="a percent 1-100",
        )
        check.raise_if_any()
        return cls(enabled, port, address, pid_labels, float(degraded), float(shed))
