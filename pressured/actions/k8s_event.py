"""Action ``k8s-event``: a core/v1 Event on the pod, so ``kubectl describe pod`` shows it.

Reasons: MemoryPressureWarning (warn), MemoryPressureCritical (critical), OOMKillConfirmed
(a confirmed kill), MemoryThrottled (a memory_throttled event, taken with warn). The message
carries usage, limit, percent, growth and ETA, and the top allocating function when a heap
profile was analysed (``event.extra["pprof_top"]``); a kill's says which limit killed
(``event.extra["limit"]["text"]``, pressured.kills.limits), a throttled one its evidence.

Repeats aggregate into one Event per (pod, container, reason) whose count and lastTimestamp
are patched, as the kubelet's recorder does ("x3 over 2m"). Writes are rate-limited twice: at
most one API write per (pod, container, reason) every ``min_interval_seconds`` (repeats in
between are folded into the next write's count), and at most ``max_per_minute`` writes in all,
so a node-wide pressure storm cannot flood the API server.

A write the API server does not take (it is down, say) fails the action run (logged and counted
in pressured_actions_failed_total) and is held: a thread tries it again every RETRY_SECONDS,
repeats of the same Event joining its count meanwhile, for up to HOLD_SECONDS.

Options:
    severities            which of warn, critical, oom_killed (default all three)
    min_interval_seconds  per pod/container/reason (default 30)
    max_per_minute        across all pods (default 60)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError, KubernetesError, quote
from pressured.k8s.client import Rejected
from pressured.model import Event, OomKill

REASONS: dict[str, str] = {
    "warn": "MemoryPressureWarning",
    "critical": "MemoryPressureCritical",
    "oom_killed": "OOMKillConfirmed",
}
THROTTLED_REASON = "MemoryThrottled"
"""A memory_throttled event (severity warn): held at memory.high, memory stalled."""
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


def throttle_text(evidence: Mapping[str, Any]) -> str:
    """A memory_throttled event's evidence (engine.py) in words; what is missing is left out."""

    def number(key: str) -> float | None:
        value = evidence.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    high, held = number("memory_high_bytes"), number("held_seconds")
    text = "held at memory.high" + (f" {human_bytes(high)}" if high is not None else "")
    if held is not None:
        text += f" for {held:.0f}s"
    facts = []
    if (delta := number("high_events_delta")) is not None:
        facts.append(f"memory.events high +{delta:.0f}")
    if (full := number("psi_full_avg10")) is not None:
        facts.append(f"memory PSI full avg10 {full:.1f}%")
    if (stall := number("full_stall_us")) is not None:
        facts.append(f"{stall / 1e6:.1f}s fully stalled")
    return text + (": " + ", ".join(facts) if facts else "")


def event_message(event: Event) -> str:
    if isinstance(event, OomKill):
        # kubectl describe shows the message, not involvedObject.fieldPath: name the container.
        container = event.identity.container_name
        where = f" in container {container}" if container else ""
        who = "a process"
        if event.comm or event.pid:
            who = f"{event.comm or '?'} (pid {event.pid if event.pid else '?'})"
        if event.warned_seconds_before is not None:
            when = f"{event.warned_seconds_before:.0f}s after the first warning"
        else:
            when = "without an earlier warning"
        text = f"OOM kill confirmed{where}: {who} killed, {when}"
        limit = event.extra.get("limit")
        if isinstance(limit, Mapping) and isinstance(limit.get("text"), str):
            text += f"; {limit['text']}"  # which limit killed (pressured.kills.limits)
    else:
        risk = (
            ""
            if event.unreclaimable_bytes is None
            else f"{human_bytes(event.unreclaimable_bytes)} unreclaimable (OOM risk), "
        )
        text = (
            f"memory {risk}{human_bytes(event.working_set_bytes)} working set, "
            f"{human_bytes(event.usage_bytes)} usage of {human_bytes(event.limit_bytes)} limit "
            f"({event.usage_percent:.1f}% by {event.decided_by})"
        )
        if event.growth_bytes_per_s is not None and event.growth_bytes_per_s > 0:
            text += f", growing {human_bytes(event.growth_bytes_per_s)}/s"
        if event.eta_seconds is not None:
            text += f", ETA {event.eta_seconds:.0f}s to the limit"
        if event.rule:
            text += f" [{event.rule}]"
    throttle = event.extra.get("throttle") if event.event_type == "memory_throttled" else None
    if isinstance(throttle, Mapping):
        text += f"; {throttle_text(throttle)}"
    top = pprof_top_text(event.extra.get("pprof_top"))
    if top:
        text += f"; top allocator: {top}"
    top_class = heap_top_text(event.extra.get("heap_top"))
    if top_class:
        text += f"; top class: {top_class}"
    return text[:1024]


RETRY_SECONDS = 5.0
"""How often Events the API server did not take are tried again."""
HOLD_SECONDS = 900.0
"""How long such an Event is kept for another try (an outage longer than this loses it)."""
MAX_HELD = 512


@dataclass
class _Write:
    """One Event write: the first of its key, or a repeat folded into a count."""

    key: tuple[str, str, str]
    namespace: str
    pod_name: str
    pod_uid: str
    container: str | None
    reason: str
    message: str
    occurrences: int
    wall: float
    since: float
    """When it was first tried (the action's clock)."""


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
        self._held: dict[tuple[str, str, str], _Write] = {}
        self._post_lock = threading.Lock()
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()
        self.retry_seconds = RETRY_SECONDS
        self.unposted = 0
        """Writes the API server did not take (each held for a retry, or dropped)."""
        self.dropped = 0
        """Held writes given up (too many held, or not posted within HOLD_SECONDS)."""

    def run(self, event: Event) -> None:
        severity = event.severity
        if severity not in self.severities or severity not in REASONS:
            return
        ident = event.identity
        if not (ident.pod_name and ident.namespace and ident.pod_uid):
            self.ctx.logger.debug("k8s-event: %s has no pod identity yet; no Event", event.key)
            return
        reason = THROTTLED_REASON if event.event_type == "memory_throttled" else REASONS[severity]
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
        write = _Write(
            key=key,
            namespace=ident.namespace,
            pod_name=ident.pod_name,
            pod_uid=ident.pod_uid,
            container=ident.container_name,
            reason=reason,
            message=message,
            occurrences=occurrences,
            wall=event.time,
            since=now,
        )
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                # An earlier write of this Event waits for the API server: this one joins it.
                held.occurrences += occurrences
                held.message = message
                held.wall = event.time
                return
        try:
            self._post(write)
        except Rejected as exc:
            # the API server will answer the same again (RBAC, a bad object, a namespace
            # gone): holding it would only repeat the refusal
            with self._lock:
                self.unposted += 1
                self.dropped += 1
            raise ActionError(
                f"{self.where}: Event {reason} on pod {ident.namespace}/{ident.pod_name}: {exc}"
            ) from exc
        except KubernetesError as exc:
            self._hold(write)
            raise ActionError(
                f"{self.where}: Event {reason} on pod {ident.namespace}/{ident.pod_name}: {exc} "
                f"(held, retried every {self.retry_seconds:g}s for up to {HOLD_SECONDS:.0f}s)"
            ) from exc

    # ---- writes the API server did not take, retried
    def _post(self, write: _Write) -> None:
        with self._post_lock:
            self.kube.record_event(
                namespace=write.namespace,
                pod_name=write.pod_name,
                pod_uid=write.pod_uid,
                container=write.container,
                reason=write.reason,
                message=write.message,
                occurrences=write.occurrences,
                wall=write.wall,
            )

    def _hold(self, write: _Write) -> None:
        with self._lock:
            self.unposted += 1
            if len(self._held) >= MAX_HELD:
                self.dropped += 1
                self.ctx.logger.warning(
                    "k8s-event: %d Events already wait for the API server; Event %s on pod "
                    "%s/%s dropped",
                    len(self._held),
                    write.reason,
                    write.namespace,
                    write.pod_name,
                )
                return
            self._held[write.key] = write
            if self._retrier is None or not self._retrier.is_alive():
                self._retrier = threading.Thread(
                    target=self._retry_loop, name="pressured-k8s-event-retry", daemon=True
                )
                self._retrier.start()

    def _retry_loop(self) -> None:
        while not self._closed.wait(self.retry_seconds):
            with self._lock:
                pending = list(self._held.values())
            if not pending:
                return
            posted = 0
            for write in pending:
                if self._closed.is_set() or getattr(self.kube, "closed", False):
                    return
                with self._lock:
                    # the write as it is now: repeats may have joined it meanwhile
                    current = self._held.get(write.key)
                if current is None:
                    continue
                if self._clock() - current.since > HOLD_SECONDS:
                    with self._lock:
                        self._held.pop(current.key, None)
                        self.dropped += 1
                    self.ctx.logger.warning(
                        "k8s-event: Event %s on pod %s/%s (x%d) not posted within %.0fs; dropped",
                        current.reason,
                        current.namespace,
                        current.pod_name,
                        current.occurrences,
                        HOLD_SECONDS,
                    )
                    continue
                with self._lock:
                    sent = replace(current)  # repeats may join ``current`` while this is sent
                try:
                    self._post(sent)
                except Rejected as exc:
                    with self._lock:
                        if self._held.get(current.key) is current:
                            del self._held[current.key]
                        self.dropped += 1
                    self.ctx.logger.warning(
                        "k8s-event: Event %s on pod %s/%s refused; dropped: %s",
                        current.reason,
                        current.namespace,
                        current.pod_name,
                        exc,
                    )
                    continue
                except KubernetesError as exc:
                    self.ctx.logger.debug("k8s-event: still not posted: %s", exc)
                    continue
                except Exception:  # a thread of its own: nothing may end it with a traceback
                    self.ctx.logger.exception("k8s-event: retrying a held Event failed")
                    continue
                with self._lock:
                    left = current.occurrences - sent.occurrences
                    if left > 0:
                        current.occurrences = left  # those joined meanwhile: the next round
                    elif self._held.get(current.key) is current:
                        del self._held[current.key]
                posted += 1
            if posted:
                self.ctx.logger.info(
                    "k8s-event: posted %d Event(s) held while the API server was unreachable",
                    posted,
                )

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            left = len(self._held)
        if left:
            self.ctx.logger.warning(
                "k8s-event: %d Event(s) never reached the API server (stopping)", left
            )

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
