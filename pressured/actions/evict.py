"""Action ``evict``: the opt-in last rung of a ladder, through the Eviction API (policy/v1).

Eviction, unlike a delete, honours PodDisruptionBudgets: when a budget does not allow it the
API server answers 429, and that answer is reported (ActionError naming the pod and the
budget's message) and not retried in a loop: the pod is left alone for
``refused_backoff_seconds`` before an eviction is tried again. An evicted pod is not evicted
twice, and gets a Warning Event (reason Evicted) saying pressured evicted it and why (posted
when the Events are allowed: the chart's ``actions.events``).

The action is destructive: the daemon re-reads the target before running it (the pressure may
have passed). Put it after the gentler actions and narrow it:

    - type: evict
      severities: [critical]      # default
      max_eta_seconds: 30         # only while the limit is less than 30 s away
      grace_period_seconds: 10    # the pod's own terminationGracePeriodSeconds when unset

With ``max_eta_seconds`` set, an event without an ETA (usage not growing) does not evict.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pressured.actions.base import Action, ActionContext
from pressured.actions.k8s_event import needs_kube, severities_option
from pressured.errors import ActionError, ConfigError, KubernetesError
from pressured.k8s.client import EvictionRefused
from pressured.model import Event, PressureEvent

EVICTED_REASON = "Evicted"
"""The reason of the Event on an evicted pod (the kubelet's, for its own evictions)."""
KNOWN_OPTIONS = {"severities", "max_eta_seconds", "grace_period_seconds", "refused_backoff_seconds"}


class EvictAction(Action):
    type: ClassVar[str] = "evict"
    destructive: ClassVar[bool] = True

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
        self.kube = needs_kube(ctx, where, "evict")
        self.severities = severities_option(self, ("warn", "critical"), ["critical"])
        self.max_eta: float | None = self.opt("max_eta_seconds", float, None)
        if self.max_eta is not None and self.max_eta <= 0:
            raise ConfigError(
                f"{where}.max_eta_seconds: expected a positive number (got {self.max_eta!r})"
            )
        self.at_most("max_eta_seconds", self.max_eta, 86_400)
        self.grace: int | None = self.opt("grace_period_seconds", int, None)
        if self.grace is not None and self.grace < 0:
            raise ConfigError(
                f"{where}.grace_period_seconds: expected zero or more (got {self.grace!r})"
            )
        self.at_most("grace_period_seconds", self.grace, 86_400)
        self.backoff = self.opt("refused_backoff_seconds", float, 300.0)
        if self.backoff < 0:
            raise ConfigError(
                f"{where}.refused_backoff_seconds: expected zero or more (got {self.backoff!r})"
            )
        self.at_most("refused_backoff_seconds", self.backoff, 3_600)
        self._clock = clock
        self._refused: dict[str, float] = {}
        self._evicted: set[str] = set()
        self._lock = threading.Lock()

    def wants(self, event: Event) -> bool:
        """Whether this event is one the ladder says to evict for."""
        if not isinstance(event, PressureEvent) or event.severity not in self.severities:
            return False
        if self.max_eta is not None:
            return event.eta_seconds is not None and event.eta_seconds < self.max_eta
        return True

    def run(self, event: Event) -> None:
        if not isinstance(event, PressureEvent) or not self.wants(event):
            return
        ident = event.identity
        if not (ident.pod_name and ident.namespace and ident.pod_uid):
            self.ctx.logger.info("evict: %s has no pod identity; nothing to evict", event.key)
            return
        pod = f"{ident.namespace}/{ident.pod_name}"
        now = self._clock()
        with self._lock:
            for uid in [u for u, t in self._refused.items() if now - t >= self.backoff]:
                del self._refused[uid]
            if ident.pod_uid in self._evicted:
                return
            refused_at = self._refused.get(ident.pod_uid)
            if refused_at is not None and now - refused_at < self.backoff:
                self.ctx.logger.debug(
                    "evict: %s was refused %.0f s ago; not asking again yet", pod, now - refused_at
                )
                return
        why = f"{event.severity} {event.usage_percent:.1f}%" + (
            f", ETA {event.eta_seconds:.0f}s" if event.eta_seconds is not None else ""
        )
        if self.ctx.dry_run or event.dry_run:
            self.ctx.logger.warning("dry run: would evict pod %s (%s)", pod, why)
            return
        try:
            self.kube.evict(ident.pod_name, ident.namespace, grace_period_seconds=self.grace)
        except EvictionRefused as exc:
            with self._lock:
                self._refused[ident.pod_uid] = now
            raise ActionError(
                f"{self.where}: eviction of pod {pod} refused by a PodDisruptionBudget; "
                f"not retried for {self.backoff:.0f}s: {exc}"
            ) from exc
        except KubernetesError as exc:
            raise ActionError(f"{self.where}: eviction of pod {pod} failed: {exc}") from exc
        with self._lock:
            self._evicted.add(ident.pod_uid)
            self._refused.pop(ident.pod_uid, None)
        self.ctx.logger.warning("evicted pod %s (%s)", pod, why)
        # The pod is gone from the API server; its Events stay (an hour): say who evicted it
        # and why, as the kubelet does for its own evictions.
        try:
            self.kube.record_event(
                namespace=ident.namespace,
                pod_name=ident.pod_name,
                pod_uid=ident.pod_uid,
                container=ident.container_name,
                reason=EVICTED_REASON,
                message=f"Evicted by pressured: memory {why}",
                wall=event.time,
            )
        except KubernetesError as exc:
            self.ctx.logger.warning(
                "evicted pod %s, but the Event saying so was not posted: %s", pod, exc
            )
