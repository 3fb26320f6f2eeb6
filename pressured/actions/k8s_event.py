"""Action ``k8s-event``: a core/v1 Event on the pod, so ``kubectl describe pod`` shows it.

Reasons: MemoryPressureWarning (warn), MemoryPressureCritical (critical), OOMKillConfirmed
(a confirmed kill). The message carries usage, limit, percent, growth and ETA, and the top
allocating function when a heap profile was analysed (``event.extra["pprof_top"]``).

Repeats aggregate into one Event per (pod, container, reason) whose count and lastTimestamp
are patched, as the kubelet's recorder does ("x3 over 2m"). Writes are rate-limited twice: at
most one API write per (pod, container, reason) every ``min_interval_seconds`` (repeats in
between are folded into the next write's count), and at most ``max_per_minute`` writes in all,
so a node-wide pressure storm cannot flood the API server.

Options:
    severities            which of warn, critical, oom_killed (default all three)
    min_interval_seconds  per pod/container/reason (default 30)
    max_per_minute        across all pods (default 60)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError, KubernetesError, quote
from pressured.model import Event, OomKill

REASONS: dict[str, str] = {
    "warn": "MemoryPressureWarning",
    "critical": "MemoryPressureCritical",
    "oom_killed": "OOMKillConfirmed",
}
KNOWN_OPTIONS = {"severities", "min_interval_seconds", "max_per_minute"}


def needs_kube(ctx: ActionContext, where: str, type_name: str) -> Any:
    if ctx.kube is None:
        raise ConfigError(
            f"{where}: {type_name} needs a Kubernetes mode (source.mode node, sidecar or "
            f"cluster, with API credentials) (got mode {ctx.mode!r})"
        )
    return ctx.kube


def severities_option(action: Action, allowed: tuple[str, ...], default: list[str]) -> set[str]:
    value = action.opt("severities", list, default)
    bad = [s for s in value if s not in allowed]
    if bad or not value:
        raise ConfigError(
            f"{action.where}.severities: expected a non-empty list of {', '.join(allowed)} "
            f"(got {quote(value)})"
        )
    return set(value)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unlimited"
    value = float(n)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}Ti"  # pragma: no cover - the loop returns


def heap_top_text(top: Any) -> str | None:
    """A JVM histogram's top class as text ("com.x.Cache$Entry 27.5Mi in 200000 instances"),
    from the heapdump action's ``event.extra["heap_top"]`` (named in the message as "top
    class"); None when unusable."""
    first = top[0] if isinstance(top, list | tuple) and top else None
    if not isinstance(first, Mapping) or not isinstance(first.get("name"), str):
        return None
    size, count = first.get("bytes"), first.get("instances")
    if isinstance(size, int) and isinstance(count, int):
        return f"{first['name']} {human_bytes(size)} in {count} instances"
    return str(first["name"])


def pprof_top_text(top: Any) -> str | None:
    """The heap analysis' top allocator as text: the heapdump action puts a list of
    {function, flat, flat_pct, unit, ...} (pressured.pprof.summarize_top) into
    ``event.extra["pprof_top"]``; the first is the top one. A plain string is taken as is;
    anything else unusable is left out rather than failing the Event."""
    if isinstance(top, str):
        return top or None
    if isinstance(top, list | tuple):
        top = top[0] if top else None
    if not isinstance(top, Mapping) or not top.get("function"):
        return None
    from pressured.pprof import summary_text  # noqa: PLC0415

    try:
        return summary_text([dict(top)])
    except (KeyError, TypeError, ValueError):
        return str(top["function"])


def event_message(event: Event) -> str:
    if isinstance(event, OomKill):
        parts = ["OOM kill confirmed"]
        if event.comm or event.pid:
            parts.append(f"of {event.comm or '?'} (pid {event.pid if event.pid else '?'})")
        if event.warned_seconds_before is not None:
            parts.append(f"{event.warned_seconds_before:.0f}s after the first warning")
        else:
            parts.append("without an earlier warning")
        text = " ".join(parts)
    else:
        text = (
            f"memory {human_bytes(event.working_set_bytes)} working set, "
            f"{human_bytes(event.usage_bytes)} usage of {human_bytes(event.limit_bytes)} limit "
            f"({event.usage_percent:.1f}%)"
        )
        if event.growth_bytes_per_s is not None and event.growth_bytes_per_s > 0:
            text += f", growing {human_bytes(event.growth_bytes_per_s)}/s"
        if event.eta_seconds is not None:
            text += f", ETA {event.eta_seconds:.0f}s to the limit"
        if event.rule:
            text += f" [{event.rule}]"
    top = pprof_top_text(event.extra.get("pprof_top"))
    if top:
        text += f"; top allocator: {top}"
    top_class = heap_top_text(event.extra.get("heap_top"))
    if top_class:
        text += f"; top class: {top_class}"
    return text[:1024]


@dataclass
class _Pending:
    last_write: float
    folded: int = 0
    message: str = ""


class K8sEventAction(Action):
    type: ClassVar[str] = "k8s-event"

    def __init__(
        self,
        options: Mapping[str, Any],
        ctx: ActionContext,
        where: str = "actions[]",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown(KNOWN_OPTIONS)
        self.kube = needs_kube(ctx, where, "k8s-event")
        self.severities = severities_option(self, tuple(REASONS), list(REASONS))
        self.min_interval = self.opt("min_interval_seconds", float, 30.0)
        if self.min_interval < 0:
            raise ConfigError(
                f"{where}.min_interval_seconds: expected zero or more (got {self.min_interval!r})"
            )
        self.at_most("min_interval_seconds", self.min_interval, 3_600)
        self.max_per_minute = self.opt("max_per_minute", int, 60)
        if self.max_per_minute <= 0:
            raise ConfigError(
                f"{where}.max_per_minute: expected a positive number (got {self.max_per_minute!r})"
            )
        self.at_most("max_per_minute", self.max_per_minute, 10_000)
        self._clock = clock
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._tokens = float(self.max_per_minute)
        self._refilled = clock()
        self._lock = threading.Lock()
        self.suppressed = 0
        """Writes dropped by the global limit (their counts are kept for the next write)."""

    def run(self, event: Event) -> None:
        severity = event.severity
        if severity not in self.severities or severity not in REASONS:
            return
        ident = event.identity
        if not (ident.pod_name and ident.namespace and ident.pod_uid):
            self.ctx.logger.debug("k8s-event: %s has no pod identity yet; no Event", event.key)
            return
        reason = REASONS[severity]
        message = event_message(event)
        key = (ident.pod_uid, ident.container_name or "", reason)
        now = self._clock()
        with self._lock:
            if len(self._pending) > 512:
                self._forget_idle(now)
            pending = self._pending.get(key)
            if pending is not None and now - pending.last_write < self.min_interval:
                pending.folded += 1
                pending.message = message
                return
            if not self._take_token(now):
                self.suppressed += 1
                if pending is None:
                    pending = self._pending[key] = _Pending(now - self.min_interval)
                pending.folded += 1
                pending.message = message
                return
            occurrences = 1 + (pending.folded if pending is not None else 0)
            self._pending[key] = _Pending(now)
        if self.ctx.dry_run or event.dry_run:
            self.ctx.logger.info(
                "dry run: would record Event %s on pod %s/%s (x%d): %s",
                reason,
                ident.namespace,
                ident.pod_name,
                occurrences,
                message,
            )
            return
        try:
            self.kube.record_event(
                namespace=ident.namespace,
                pod_name=ident.pod_name,
                pod_uid=ident.pod_uid,
                container=ident.container_name,
                reason=reason,
                message=message,
                occurrences=occurrences,
                wall=event.time,
            )
        except KubernetesError as exc:
            raise ActionError(
                f"{self.where}: Event {reason} on pod {ident.namespace}/{ident.pod_name}: {exc}"
            ) from exc

    def _forget_idle(self, now: float) -> None:
        """Drop keys with nothing held back whose interval has passed (pods come and go)."""
        for key in [
            k
            for k, p in self._pending.items()
            if p.folded == 0 and now - p.last_write >= self.min_interval
        ]:
            del self._pending[key]

    def _take_token(self, now: float) -> bool:
        rate = self.max_per_minute / 60.0
        self._tokens = min(float(self.max_per_minute), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
