"""Per-pod settings from ``pressured.io/*`` annotations.

    pressured.io/warn-percent       0 < p <= 100
    pressured.io/critical-percent   0 < p <= 100
    pressured.io/cooldown-seconds   >= 0
    pressured.io/pprof-enabled      true/false (also 1/0, yes/no, on/off)
    pressured.io/pprof-port         1..65535, decimal digits only
    pressured.io/pprof-path         an absolute URL path, e.g. /debug/pprof/heap: no "@", "//",
                                    backslash, space or control character, so that nothing
                                    pasted after "http://<host>:<port>" can name another host

A pod's owner writes these, not the operator, so a bad value never stops anything: it keeps
the default and comes back as a warning the caller logs and posts as a Warning Event.
``pprof_enabled``, ``pprof_port`` and ``pprof_path`` are the one check of the pprof values
(the port and the path end up in a URL; the heapdump action uses these, not a copy);
``validated_annotations`` is what a pod's annotations look like once the refused
``pressured.io/*`` values are left out (what Lua scripts see).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pressured.errors import QUOTE_LIMIT, quote
from pressured.model import Overrides

PREFIX = "pressured.io/"
WARN_PERCENT = PREFIX + "warn-percent"
CRITICAL_PERCENT = PREFIX + "critical-percent"
COOLDOWN_SECONDS = PREFIX + "cooldown-seconds"
PPROF_ENABLED = PREFIX + "pprof-enabled"
PPROF_PORT = PREFIX + "pprof-port"
PPROF_PATH = PREFIX + "pprof-path"
KNOWN = frozenset(
    {WARN_PERCENT, CRITICAL_PERCENT, COOLDOWN_SECONDS, PPROF_ENABLED, PPROF_PORT, PPROF_PATH}
)

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_PORT = re.compile(r"[0-9]{1,5}")
_PATH_REFUSED = ("//", "@", "\\")


def pprof_enabled(raw: str) -> bool:
    """The switch an annotation value names (true/false, 1/0, yes/no, on/off, any case,
    surrounding spaces allowed); ValueError for anything else."""
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected true or false")


def pprof_port(raw: str) -> int:
    """The TCP port an annotation value names (surrounding spaces allowed); ValueError says why
    it is not one."""
    text = raw.strip()
    if not _PORT.fullmatch(text):
        raise ValueError("not a port number")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError("must be between 1 and 65535")
    return port


def pprof_path(raw: str) -> str:
    """The URL path an annotation value names (surrounding spaces allowed); ValueError says why
    it is not one. What it accepts, put after "http://<host>:<port>", keeps that host: it
    starts with "/" and has no "//", "@", backslash, space or control character."""
    path = raw.strip()
    if (
        not path.startswith("/")
        or any(bad in path for bad in _PATH_REFUSED)
        or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path)
    ):
        raise ValueError(
            "must be an absolute URL path such as /debug/pprof/heap "
            "(no '//', '@', backslash, space or control character)"
        )
    return path


@dataclass(frozen=True)
class Pprof:
    enabled: bool | None = None
    port: int | None = None
    path: str | None = None


@dataclass(frozen=True)
class PodSettings:
    overrides: Overrides = field(default_factory=Overrides)
    pprof: Pprof = field(default_factory=Pprof)
    warnings: tuple[str, ...] = ()


def parse_annotations(annotations: Mapping[str, str], where: str = "pod") -> PodSettings:
    """Overrides and pprof settings from a pod's annotations. ``where`` names the pod in the
    warnings ("namespace/name"); every warning names the annotation and the bad value."""
    warnings: list[str] = []

    def bad(key: str, value: str, why: str) -> None:
        name = key if len(key) <= QUOTE_LIMIT else quote(key)
        warnings.append(f"{where}: annotation {name}={quote(value)} ignored: {why}")

    def percent(key: str) -> float | None:
        raw = annotations.get(key)
        if raw is None:
            return None
        try:
            value = float(raw.strip().removesuffix("%"))
        except ValueError:
            bad(key, raw, "not a number")
            return None
        if not math.isfinite(value) or not 0 < value <= 100:
            bad(key, raw, "must be a percentage above 0 and at most 100")
            return None
        return value

    warn = percent(WARN_PERCENT)
    critical = percent(CRITICAL_PERCENT)
    if warn is not None and critical is not None and warn > critical:
        bad(
            WARN_PERCENT,
            annotations[WARN_PERCENT],
            f"above {CRITICAL_PERCENT} ({critical:g})",
        )
        warn = None

    cooldown: float | None = None
    raw = annotations.get(COOLDOWN_SECONDS)
    if raw is not None:
        try:
            cooldown = float(raw.strip().removesuffix("s"))
        except ValueError:
            bad(COOLDOWN_SECONDS, raw, "not a number of seconds")
        else:
            if not math.isfinite(cooldown) or cooldown < 0:
                bad(COOLDOWN_SECONDS, raw, "must be zero or more seconds")
                cooldown = None

    enabled: bool | None = None
    raw = annotations.get(PPROF_ENABLED)
    if raw is not None:
        try:
            enabled = pprof_enabled(raw)
        except ValueError as exc:
            bad(PPROF_ENABLED, raw, str(exc))

    port: int | None = None
    raw = annotations.get(PPROF_PORT)
    if raw is not None:
        try:
            port = pprof_port(raw)
        except ValueError as exc:
            bad(PPROF_PORT, raw, str(exc))

    path: str | None = None
    raw = annotations.get(PPROF_PATH)
    if raw is not None:
        try:
            path = pprof_path(raw)
        except ValueError as exc:
            bad(PPROF_PATH, raw, str(exc))

    for key in sorted(k for k in annotations if k.startswith(PREFIX) and k not in KNOWN):
        bad(key, annotations[key], f"unknown (known: {', '.join(sorted(KNOWN))})")

    return PodSettings(
        overrides=Overrides(
            warn_percent=warn, critical_percent=critical, cooldown_seconds=cooldown
        ),
        pprof=Pprof(enabled, port, path),
        warnings=tuple(warnings),
    )


_BULKY = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})


def event_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """The pod annotations actions see in ``event.annotations``: all of them (a Lua script or a
    webhook may key on the owner's own), except kubectl's copy of the whole manifest."""
    return {k: v for k, v in annotations.items() if k not in _BULKY}


def validated_annotations(
    annotations: Mapping[str, str], where: str = "pod"
) -> tuple[dict[str, str], PodSettings]:
    """``annotations`` with only the ``pressured.io/*`` values parse_annotations accepts (the
    port and the path in their checked form; unknown ``pressured.io/*`` names left out), and
    the parsed settings, whose ``warnings`` name every value left out."""
    settings = parse_annotations(annotations, where)
    accepted = {
        WARN_PERCENT: settings.overrides.warn_percent is not None,
        CRITICAL_PERCENT: settings.overrides.critical_percent is not None,
        COOLDOWN_SECONDS: settings.overrides.cooldown_seconds is not None,
        PPROF_ENABLED: settings.pprof.enabled is not None,
    }
    out: dict[str, str] = {}
    for key, value in annotations.items():
        if not key.startswith(PREFIX):
            out[key] = value
        elif key == PPROF_PORT and settings.pprof.port is not None:
            out[key] = str(settings.pprof.port)
        elif key == PPROF_PATH and settings.pprof.path is not None:
            out[key] = settings.pprof.path
        elif accepted.get(key):
            out[key] = value
    return out, settings
