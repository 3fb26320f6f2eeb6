"""webhook: POST the event JSON with httpx; headers, timeout, bounded retries with backoff.

A reply below 300 is success. 5xx, 429 and transport errors (refused, reset, timeout) are
retried up to ``retries`` times, sleeping ``backoff_ms`` and doubling it each time; any other
status means the receiver refused this body, and a retry would be refused too.

One run (every attempt and every backoff) lasts at most ``run_deadline_s()``: ``timeout_ms`` per
attempt plus the backoffs (13.4 s with the defaults). No attempt starts with less than its
timeout left; the runner abandons a run that still goes past that (a server trickling bytes).

``format: oomhero`` sends a flat body in OOMHero's vocabulary (warning/critical, the signal it
would have sent) instead of the event contract: {"pod", "namespace", "container", "cgroup",
"severity", "usage_percent", "usage_bytes", "limit_bytes", "signal", "time"}.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pressured import __version__
from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError, quote
from pressured.model import Event

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("pressured.actions.webhook")
OOMHERO_SEVERITY = {
    "warn": "warning",
    "critical": "critical",
    "recovered": "ok",
    "oom_killed": "oom_killed",
}
OOMHERO_SIGNAL = {"warn": "SIGUSR1", "critical": "SIGUSR2"}
FORMATS = ("pressured", "oomhero")
MAX_RETRIES = 10
"""With the doubling backoff, ten retries already span minutes: more only delays this webhook's
later events (its lane runs them in order)."""
MAX_TIMEOUT_MS = 60_000
"""Per attempt: a receiver that has not answered in a minute is not going to."""
MAX_BACKOFF_MS = 60_000


def oomhero_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    sev = str(doc.get("severity") or doc.get("event_type") or "")
    return {
        "pod": doc.get("pod_name"),
        "namespace": doc.get("namespace"),
        "container": doc.get("container_name"),
        "cgroup": doc.get("cgroup"),
        "severity": OOMHERO_SEVERITY.get(sev, sev),
        "usage_percent": doc.get("usage_percent"),
        "usage_bytes": doc.get("usage_bytes"),
        "limit_bytes": doc.get("limit_bytes"),
        "signal": OOMHERO_SIGNAL.get(sev),
        "time": doc.get("time"),
    }


class WebhookAction(Action):
    type = "webhook"

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        import httpx  # noqa: PLC0415 - only where a webhook is configured

        super().__init__(options, ctx, where)
        self.reject_unknown(
            {"url", "headers", "timeout_ms", "retries", "backoff_ms", "format", "severities"}
        )
        self.url = self.opt("url", str, required=True)
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"{where}.url: not a URL: {quote(self.url)} ({exc})") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(
                f"{where}.url: must be an http(s) URL with a host, got {quote(self.url)}"
            )
        headers = self.opt("headers", dict, {})
        for k, v in headers.items():
            if not isinstance(k, str) or not isinstance(v, str | int | float):
                raise ConfigError(f"{where}.headers.{k}: expected a text value, got {quote(v)}")
        self.headers = {k: str(v) for k, v in headers.items()}
        self.headers.setdefault("User-Agent", f"pressured/{__version__}")
        timeout_ms = self.opt("timeout_ms", int, 3000)
        if timeout_ms <= 0:
            raise ConfigError(f"{where}.timeout_ms: must be positive, got {timeout_ms}")
        self.at_most("timeout_ms", timeout_ms, MAX_TIMEOUT_MS)
        self.retries = self.opt("retries", int, 3)
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ConfigError(
                f"{where}.retries: must be between 0 and {MAX_RETRIES}, got {self.retries}"
            )
        backoff_ms = self.opt("backoff_ms", int, 200)
        if backoff_ms < 0:
            raise ConfigError(f"{where}.backoff_ms: must not be negative, got {backoff_ms}")
        self.at_most("backoff_ms", backoff_ms, MAX_BACKOFF_MS)
        self.timeout = timeout_ms / 1000
        self.backoff = backoff_ms / 1000
        self.format = self.opt("format", str, "pressured")
        if self.format not in FORMATS:
            raise ConfigError(
                f"{where}.format: must be 'pressured' or 'oomhero', got {quote(self.format)}"
            )
        self.severities = self.severities_opt()
        self._client: httpx.Client = httpx.Client(timeout=self.timeout, headers=self.headers)

    def run(self, event: Event) -> None:
        import httpx  # noqa: PLC0415 - imported once by __init__

        if event.severity not in self.severities:
            return
        doc = event.to_json()
        body = oomhero_body(doc) if self.format == "oomhero" else doc
        if self.ctx.dry_run:
            log.info(
                "dry-run: would POST %s event for %s to %s", event.severity, event.cgroup, self.url
            )
            return
        last = ""
        attempts = 0
        end = time.monotonic() + self.run_deadline_s()
        for attempt in range(self.retries + 1):
            pause = self.backoff * (2 ** (attempt - 1)) if attempt else 0.0
            left = end - time.monotonic() - pause
            if left <= 0:
                break  # the attempts took longer than their timeouts: no time for another
            time.sleep(pause)
            attempts += 1
            try:
                reply = self._client.post(self.url, json=body, timeout=min(self.timeout, left))
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if reply.status_code < 300:
                return
            last = f"HTTP {reply.status_code}"
            if reply.status_code < 500 and reply.status_code != 429:
                break  # the receiver refused this body: a retry would be refused too
        raise ActionError(f"webhook {self.url}: {last} after {attempts} attempt(s)")

    def run_deadline_s(self) -> float:
        """Every attempt's timeout and every backoff between them."""
        pauses = sum(self.backoff * 2**i for i in range(self.retries))
        return float((self.retries + 1) * self.timeout + pauses)

    def close(self) -> None:
        self._client.close()
