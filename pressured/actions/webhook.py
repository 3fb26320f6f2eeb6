"""webhook: POST the event JSON with httpx; headers, timeout, bounded retries with backoff.

``format: oomhero`` sends a flat body in OOMHero's vocabulary (warning/critical, the signal it
would have sent) instead of the event contract: {"pod", "namespace", "container", "severity",
"usage_percent", "usage_bytes", "limit_bytes", "signal", "time"}.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

from pressured import __version__
from pressured.actions.base import Action, ActionContext
from pressured.errors import ActionError, ConfigError
from pressured.model import Event

log = logging.getLogger("pressured.actions.webhook")
OOMHERO_SEVERITY = {"warn": "warning", "critical": "critical", "recovered": "ok", "oom_killed": "oom_killed"}
OOMHERO_SIGNAL = {"warn": "SIGUSR1", "critical": "SIGUSR2"}


def oomhero_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    sev = str(doc.get("severity") or ("oom_killed" if doc.get("event_type") == "oom_killed" else ""))
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

    def __init__(self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]") -> None:
        super().__init__(options, ctx, where)
        self.reject_unknown({"url", "headers", "timeout_ms", "retries", "backoff_ms", "format", "severities"})
        self.url = self.opt("url", str, required=True)
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"{where}.url: not a URL: {self.url!r} ({exc})") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"{where}.url: must be an http(s) URL with a host, got {self.url!r}")
        self.headers = {str(k): str(v) for k, v in self.opt("headers", dict, {}).items()}
        self.headers.setdefault("User-Agent", f"pressured/{__version__}")
        self.timeout = self.opt("timeout_ms", int, 3000) / 1000
        self.retries = self.opt("retries", int, 3)
        self.backoff = self.opt("backoff_ms", int, 200) / 1000
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ConfigError(f"{where}: timeout_ms must be positive, retries and backoff_ms not negative")
        self.format = self.opt("format", str, "pressured")
        if self.format not in ("pressured", "oomhero"):
            raise ConfigError(f"{where}.format: must be 'pressured' or 'oomhero', got {self.format!r}")
        sev = self.opt("severities", list, ["warn", "critical", "recovered", "oom_killed"])
        self.severities = {str(s) for s in sev}
        self._client = httpx.Client(timeout=self.timeout, headers=self.headers)

    def run(self, event: Event) -> None:
        if event.severity not in self.severities:
            return
        doc = event.to_json()
        body = oomhero_body(doc) if self.format == "oomhero" else doc
        if self.ctx.dry_run:
            log.info("dry-run: would POST %s event for %s to %s", event.severity, event.cgroup, self.url)
            return
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
            try:
                reply = self._client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if reply.status_code < 300:
                return
            last = f"HTTP {reply.status_code}"
            if reply.status_code < 500 and reply.status_code != 429:
                break  # the receiver refused this body: a retry would be refused too
        raise ActionError(f"webhook {self.url}: {last} after {attempt + 1} attempt(s)")

    def close(self) -> None:
        self._client.close()
